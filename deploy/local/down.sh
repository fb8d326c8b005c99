#!/usr/bin/env bash
# Stops what deploy/local/up.sh started: ingest first, then the dispatchers, then consumer-api
# (each gets SIGTERM and time to drain), then the RabbitMQ node if deploy/local/broker.sh
# started it (or the 3-node cluster after `up.sh --cluster`). Data (relay.db, the broker's
# queues, keys, logs) stays in $RELAY_HOME.
#
# Usage: deploy/local/down.sh [--keep-broker]
#
# Environment: RELAY_HOME (default: ./.relay), RELAY_STOP_TIMEOUT (seconds per process, 30).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

keep_broker=false
case ${1:-} in
  '') ;;
  --keep-broker) keep_broker=true ;;
  -h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
    ;;
  *)
    echo "down.sh: unknown argument '$1' (--keep-broker)" >&2
    exit 2
    ;;
esac

export RELAY_HOME=${RELAY_HOME:-$root/.relay}
[[ $RELAY_HOME == /* ]] || RELAY_HOME=$PWD/$RELAY_HOME
pids=$RELAY_HOME/pids
stop_timeout=${RELAY_STOP_TIMEOUT:-30}

# Stops the process recorded in pids/$1.pid: SIGTERM, then SIGKILL after the timeout.
stop() {
  local name=$1 pid deadline
  [[ -f $pids/$name.pid ]] || return 0
  pid=$(<"$pids/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    echo "==> stopping $name (pid $pid)" >&2
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + stop_timeout))
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        echo "down.sh: $name did not stop within ${stop_timeout}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
  fi
  rm -f "$pids/$name.pid"
}

stop ingest
if [[ -d $pids ]]; then
  for file in "$pids"/dispatch-*.pid; do
    [[ -e $file ]] || continue
    name=${file##*/}
    stop "${name%.pid}"
  done
fi
stop consumer-api

if [[ $keep_broker == false ]]; then
  if [[ -f $RELAY_HOME/cluster.mode ]]; then
    "$root/deploy/local/cluster.sh" down
  else
    "$root/deploy/local/broker.sh" stop
  fi
fi
