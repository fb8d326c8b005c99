#!/usr/bin/env bash
# Starts Relay locally: a RabbitMQ broker, consumer-api, N dispatchers and ingest, each a
# background process on loopback with its log in $RELAY_HOME/logs and pid in $RELAY_HOME/pids.
#
# Usage: deploy/local/up.sh [--dispatchers N] [--cluster]   (stop everything with down.sh)
#   --cluster   run on a local 3-node RabbitMQ cluster (deploy/local/cluster.sh) instead of one
#               node; every process gets the three node URLs (RELAY__AMQP__URLS)
#
# State lives in $RELAY_HOME (default: ./.relay): keys.env (generated once, reused), relay.toml
# (generated when missing; edit freely, delete to regenerate), relay.db, logs/, pids/, rabbitmq/.
# Processes already running are left as they are, so running up.sh twice is harmless.
#
# Environment: RELAY_HOME, RELAY_AMQP_PORT (default 5672), RELAY_READY_TIMEOUT (seconds, 60).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

dispatchers=1
cluster=false
while (($# > 0)); do
  case $1 in
    --cluster)
      cluster=true
      shift
      ;;
    --dispatchers)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || {
        echo "up.sh: --dispatchers needs a positive number" >&2
        exit 2
      }
      dispatchers=$2
      shift 2
      ;;
    --dispatchers=*)
      dispatchers=${1#*=}
      [[ $dispatchers =~ ^[1-9][0-9]*$ ]] || {
        echo "up.sh: --dispatchers needs a positive number" >&2
        exit 2
      }
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "up.sh: unknown argument '$1'" >&2
      usage >&2
      exit 2
      ;;
  esac
done

export RELAY_HOME=${RELAY_HOME:-$root/.relay}
[[ $RELAY_HOME == /* ]] || RELAY_HOME=$PWD/$RELAY_HOME
ready_timeout=${RELAY_READY_TIMEOUT:-60}
logs=$RELAY_HOME/logs
pids=$RELAY_HOME/pids
config=$RELAY_HOME/relay.toml
mkdir -p "$logs" "$pids"

step() { printf '==> %s\n' "$*" >&2; }

step "broker"
if [[ $cluster == true ]]; then
  "$root/deploy/local/cluster.sh" up >/dev/null
  # The environment overrides relay.toml's [amqp] url for every process started below.
  RELAY__AMQP__URLS=$("$root/deploy/local/cluster.sh" urls)
  export RELAY__AMQP__URLS
  amqp_url=${RELAY__AMQP__URLS%%,*}
  : >"$RELAY_HOME/cluster.mode"
else
  amqp_url=$("$root/deploy/local/broker.sh" start)
  rm -f "$RELAY_HOME/cluster.mode"
fi

step "building release binaries"
cargo build --release --bins
bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
for bin in relay consumer-api; do
  [[ -x $bin_dir/$bin ]] || {
    echo "up.sh: $bin_dir/$bin was not built" >&2
    exit 1
  }
done

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
if [[ ! -f $RELAY_HOME/keys.env ]]; then
  step "generating keys in $RELAY_HOME/keys.env"
  (
    umask 077
    cat >"$RELAY_HOME/keys.env" <<EOF
# Generated once by deploy/local/up.sh; delete this file to get new keys.
RELAY__INGEST__PUBLISHER_KEYS=pk_$(random_hex 16)
RELAY__API__ADMIN_KEY=ak_$(random_hex 16)
EOF
  )
fi
# Dispatchers read the directory with their own scoped key, never the admin key (older
# keys.env files lack it: add one).
if ! grep -q '^RELAY__DISPATCH__DIRECTORY_KEY=' "$RELAY_HOME/keys.env"; then
  directory_key=dk_$(random_hex 16)
  printf 'RELAY__DISPATCH__DIRECTORY_KEY=%s\nRELAY__API__DIRECTORY_KEYS=%s\n' \
    "$directory_key" "$directory_key" >>"$RELAY_HOME/keys.env"
fi
# Ingest reads the event-type catalogue with a directory key (older keys.env files lack it).
if ! grep -q '^RELAY__INGEST__CATALOGUE_KEY=' "$RELAY_HOME/keys.env"; then
  printf 'RELAY__INGEST__CATALOGUE_KEY=%s\n' \
    "$(sed -n 's/^RELAY__DISPATCH__DIRECTORY_KEY=//p' "$RELAY_HOME/keys.env")" >>"$RELAY_HOME/keys.env"
fi
set -a
# shellcheck source=/dev/null
source "$RELAY_HOME/keys.env"
set +a

if [[ ! -f $config ]]; then
  step "writing $config"
  cat >"$config" <<EOF
# Local configuration written by deploy/local/up.sh; edit freely, delete to regenerate.
# Keys come from keys.env (RELAY__INGEST__PUBLISHER_KEYS, RELAY__API__ADMIN_KEY, the directory
# key pair RELAY__DISPATCH__DIRECTORY_KEY / RELAY__API__DIRECTORY_KEYS); every key
# here can also be overridden with RELAY__SECTION__KEY environment variables.

[amqp]
url = "${amqp_url}"
prefix = "relay."

[ingest]
listen = "127.0.0.1:8080"

[dispatch]
# Dispatcher i listens on 127.0.0.1:(9090 + i); up.sh sets RELAY__DISPATCH__LISTEN per process.
listen = "127.0.0.1:9090"
directory_url = "http://127.0.0.1:8090"

[api]
listen = "127.0.0.1:8090"
database_url = "sqlite://${RELAY_HOME}/relay.db?mode=rwc"

[log]
format = "pretty"
level = "info"

[security]
# Local receivers (127.0.0.1, plain http) are allowed explicitly for this local run; a
# production configuration leaves both off (SSRF protection).
allowed_networks = ["127.0.0.0/8", "::1/128"]
allow_http = true
EOF
fi

# HTTP status of GET http://127.0.0.1:$1$2, or 000 when nothing answers.
http_status() {
  local status
  status=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS=' ' read -r -t 2 _ code _ <&3 && printf '%s' "$code"
  ) || true
  printf '%s\n' "${status:-000}"
}

# True when the process recorded in pids/$1.pid is running.
running() {
  local pid
  [[ -f $pids/$1.pid ]] && pid=$(<"$pids/$1.pid") && kill -0 "$pid" 2>/dev/null
}

# start NAME PORT [VAR=VALUE...] -- COMMAND...: starts COMMAND in the background unless NAME
# is already running, then waits until GET /readyz on PORT answers 200.
start() {
  local name=$1 port=$2 deadline
  shift 2
  local env=()
  while [[ $1 != -- ]]; do
    env+=("$1")
    shift
  done
  shift
  if running "$name"; then
    step "$name already running (pid $(<"$pids/$name.pid"))"
  else
    step "starting $name"
    printf '\n--- %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logs/$name.log"
    env "${env[@]}" setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$pids/$name.pid"
  fi
  deadline=$((SECONDS + ready_timeout))
  until [[ $(http_status "$port" /readyz) == 200 ]]; do
    if ! running "$name"; then
      echo "up.sh: $name exited; last lines of $logs/$name.log:" >&2
      tail -n 40 "$logs/$name.log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "up.sh: $name not ready on 127.0.0.1:$port/readyz after ${ready_timeout}s;" \
        "last lines of $logs/$name.log:" >&2
      tail -n 40 "$logs/$name.log" >&2
      exit 1
    fi
    sleep 0.3
  done
}

start consumer-api 8090 -- "$bin_dir/consumer-api" --config "$config"
for ((i = 0; i < dispatchers; i++)); do
  port=$((9090 + i))
  start "dispatch-$i" "$port" "RELAY__DISPATCH__LISTEN=127.0.0.1:$port" -- \
    "$bin_dir/relay" dispatch --config "$config"
done
start ingest 8080 -- "$bin_dir/relay" ingest --config "$config"

publisher_key=${RELAY__INGEST__PUBLISHER_KEYS%%,*}
dispatch_ports=9090
((dispatchers == 1)) || dispatch_ports="9090-$((9089 + dispatchers))"
cat <<EOF

Relay is up (state in $RELAY_HOME, logs in $logs).

  ingest        http://127.0.0.1:8080    publisher key: $publisher_key
  consumer-api  http://127.0.0.1:8090    admin key:     $RELAY__API__ADMIN_KEY
  dispatchers   $dispatchers, metrics and health on 127.0.0.1:$dispatch_ports
  RabbitMQ      ${RELAY__AMQP__URLS:-$amqp_url}

Send an event:
  curl -sS -X POST http://127.0.0.1:8080/v1/events \\
    -H 'Authorization: Bearer $publisher_key' -H 'Content-Type: application/json' \\
    -d '{"type":"order.created","data":{"order":1}}'

Stop everything: deploy/local/down.sh
EOF
