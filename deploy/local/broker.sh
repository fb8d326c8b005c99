#!/usr/bin/env bash
# Ensures a RabbitMQ broker for local use and prints its AMQP URL on stdout (messages go to
# stderr, so `url=$(deploy/local/broker.sh)` works).
#
# Usage: deploy/local/broker.sh [start|stop|status|ctl ARGS...]
#   start (default)  Reuse whatever already accepts connections on 127.0.0.1:$RELAY_AMQP_PORT;
#                    otherwise install RabbitMQ if it is missing (apt) and start a node of our own
#                    with its data, logs and Erlang cookie under $RELAY_HOME/rabbitmq. Idempotent.
#   stop             Stop the node this script started (a broker it did not start is left alone).
#                    Its data stays in $RELAY_HOME/rabbitmq.
#   status           Say what answers on the port and whether this script started it.
#   ctl ARGS...      Run rabbitmqctl against the node this script started (e.g. `ctl list_queues`).
#
# Environment:
#   RELAY_HOME              state directory (default: $PWD/.relay)
#   RELAY_AMQP_PORT         AMQP port on 127.0.0.1 (default: 5672)
#   RELAY_AMQP_DIST_PORT    Erlang distribution port on 127.0.0.1 (default: AMQP port + 20000)
#   RELAY_RABBITMQ_NODE     Erlang node name (default: relay-<AMQP port>@localhost)
#   RELAY_BROKER_TIMEOUT    seconds to wait for the node to accept connections (default: 90)
#   RELAY_BROKER_ADVANCED_CONFIG  advanced.config for the node (default: none, `[].`)
#   RELAY_BROKER_EXTRA_CONF text appended to the node's rabbitmq.conf (default: none)
# A cookie already in $RELAY_HOME/rabbitmq/home/.erlang.cookie is kept (cluster.sh gives every
# node of its cluster the same one this way).
set -euo pipefail

relay_home=${RELAY_HOME:-$PWD/.relay}
[[ $relay_home == /* ]] || relay_home=$PWD/$relay_home
port=${RELAY_AMQP_PORT:-5672}
dist_port=${RELAY_AMQP_DIST_PORT:-$((port + 20000))}
node=${RELAY_RABBITMQ_NODE:-relay-${port}@localhost}
wait_secs=${RELAY_BROKER_TIMEOUT:-90}
base=$relay_home/rabbitmq
url="amqp://guest:guest@127.0.0.1:${port}/%2f"

log() { printf 'broker: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when process $1 exists.
alive() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null
}

# The pid of the launcher this script started, if it is still running.
started_pid() {
  local pid
  [[ -f $base/launcher.pid ]] || return 1
  pid=$(<"$base/launcher.pid")
  alive "$pid" && printf '%s\n' "$pid"
}

# The directory with the real rabbitmq-server and rabbitmqctl scripts. Debian's /usr/sbin
# wrappers switch to the rabbitmq user when run as root (and then use that user's Erlang
# cookie and data directory), so the scripts behind them are used directly.
find_bin_dir() {
  if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    printf '%s\n' /usr/lib/rabbitmq/bin
  elif command -v rabbitmq-server >/dev/null 2>&1; then
    dirname "$(command -v rabbitmq-server)"
  else
    return 1
  fi
}

install_rabbitmq() {
  command -v apt-get >/dev/null 2>&1 ||
    die "rabbitmq-server is not installed and apt-get is not available; install RabbitMQ 3.10+ and retry"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "rabbitmq-server is not installed; run as root or install sudo"
    sudo=(sudo)
  fi
  log "installing rabbitmq-server with apt-get"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  # The package may try to start its own service; if that fails the install still succeeds.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    rabbitmq-server >&2 || die "apt-get install rabbitmq-server failed"
}

# Exports what rabbitmq-server and rabbitmqctl need to find this node, its files and its cookie.
node_env() {
  export HOME=$base/home
  export RABBITMQ_NODENAME=$node
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$port
  export RABBITMQ_DIST_PORT=$dist_port
  export RABBITMQ_MNESIA_BASE=$base/mnesia
  export RABBITMQ_LOG_BASE=$base/log
  export RABBITMQ_PID_FILE=$base/rabbitmq.pid
  export RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$base/advanced.config
  export RABBITMQ_CONF_ENV_FILE=$base/rabbitmq-env.conf
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
  export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
  export RABBITMQ_CTL_DIST_PORT_MIN=0 RABBITMQ_CTL_DIST_PORT_MAX=0
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_CRASH_DUMP=$base/log/erl_crash.dump
}

# Reads the node settings recorded at start, so stop/ctl reach the node that was started.
load_started() {
  [[ -f $base/node.env ]] || return 1
  # shellcheck source=/dev/null
  source "$base/node.env"
}

write_node_files() {
  mkdir -p "$base/home" "$base/mnesia" "$base/log"
  # Sharded ingress (amqp.ingress_shards > 1) routes with the consistent-hash exchange.
  printf '[rabbitmq_consistent_hash_exchange].\n' >"$base/enabled_plugins"
  if [[ -n ${RELAY_BROKER_ADVANCED_CONFIG:-} ]]; then
    cp "$RELAY_BROKER_ADVANCED_CONFIG" "$base/advanced.config"
  else
    printf '[].\n' >"$base/advanced.config"
  fi
  # Replaces /etc/rabbitmq/rabbitmq-env.conf for this node.
  : >"$base/rabbitmq-env.conf"
  cat >"$base/rabbitmq.conf" <<EOF
# Written by deploy/local/broker.sh for a local node.
listeners.tcp.default = 127.0.0.1:${port}
loopback_users.guest = true
log.console = false
log.file.level = info
${RELAY_BROKER_EXTRA_CONF:-}
EOF
  if [[ ! -s $base/home/.erlang.cookie ]]; then
    (
      umask 077
      od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$base/home/.erlang.cookie"
    )
  fi
  chmod 0400 "$base/home/.erlang.cookie"
  cat >"$base/node.env" <<EOF
port=${port}
dist_port=${dist_port}
node=${node}
url='${url}'
EOF
}

log_tail() {
  local file
  for file in "$base/log/$node.log" "$base/log/stdout.log"; do
    [[ -f $file ]] || continue
    log "--- last lines of $file ---"
    tail -n 30 "$file" >&2
  done
}

wait_for_port() {
  local pid=$1 deadline=$((SECONDS + wait_secs))
  until port_open "$port"; do
    if ! alive "$pid"; then
      log "the node exited while starting"
      log_tail
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "the node did not accept connections on port $port within ${wait_secs}s"
      log_tail
      exit 1
    fi
    sleep 0.2
  done
}

cmd_start() {
  local pid bin_dir
  if pid=$(started_pid); then
    load_started || true
    wait_for_port "$pid"
    log "using node $node started by broker.sh (pid $pid)"
    printf '%s\n' "$url"
    return
  fi
  if port_open "$port"; then
    log "using the broker already listening on 127.0.0.1:$port"
    printf '%s\n' "$url"
    return
  fi
  if ! bin_dir=$(find_bin_dir); then
    install_rabbitmq
    bin_dir=$(find_bin_dir) || die "rabbitmq-server still not found after installing it"
    # The package may have started its own service on this port.
    if port_open "$port"; then
      log "using the broker the rabbitmq-server package started on 127.0.0.1:$port"
      printf '%s\n' "$url"
      return
    fi
  fi
  ((dist_port <= 65535)) || die "RELAY_AMQP_DIST_PORT must be set when RELAY_AMQP_PORT > 45535"

  write_node_files
  node_env
  log "starting node $node on 127.0.0.1:$port (data in $base)"
  # A session of its own: Ctrl-C in the calling terminal does not reach the broker.
  setsid "$bin_dir/rabbitmq-server" >"$base/log/stdout.log" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$base/launcher.pid"
  wait_for_port "$pid"
  log "node $node is up; stop it with: $0 stop"
  printf '%s\n' "$url"
}

cmd_stop() {
  local pid bin_dir beam deadline
  if ! pid=$(started_pid); then
    log "no broker started by broker.sh is running (state: $base)"
    rm -f "$base/launcher.pid"
    return
  fi
  load_started || die "$base/node.env is missing; stop the broker (pid $pid) by hand"
  node_env
  bin_dir=$(find_bin_dir) || die "rabbitmqctl not found"
  beam=$(cat "$base/rabbitmq.pid" 2>/dev/null || true)
  log "stopping node $node (pid $pid)"
  if ! timeout 60 "$bin_dir/rabbitmqctl" -n "$node" stop >&2; then
    log "rabbitmqctl stop failed; terminating the processes"
    kill -TERM "$pid" 2>/dev/null || true
  fi
  deadline=$((SECONDS + 30))
  while alive "$pid" || alive "$beam"; do
    if ((SECONDS >= deadline)); then
      log "still running after 30s; killing it"
      kill -KILL "$beam" "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$base/launcher.pid"
  log "stopped"
}

cmd_status() {
  local pid
  if pid=$(started_pid); then
    load_started || true
    if port_open "$port"; then
      log "node $node started by broker.sh (pid $pid) accepts connections: $url"
    else
      log "node $node started by broker.sh (pid $pid) is running but not accepting connections yet"
      exit 1
    fi
  elif port_open "$port"; then
    log "a broker not started by broker.sh accepts connections: $url"
  else
    log "nothing accepts connections on 127.0.0.1:$port"
    exit 1
  fi
}

cmd_ctl() {
  local bin_dir
  started_pid >/dev/null || die "no broker started by broker.sh is running (state: $base)"
  load_started || die "$base/node.env is missing"
  node_env
  bin_dir=$(find_bin_dir) || die "rabbitmqctl not found"
  exec "$bin_dir/rabbitmqctl" -n "$node" "$@"
}

case ${1:-start} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  ctl)
    shift
    cmd_ctl "$@"
    ;;
  -h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" ;;
  *) die "unknown command '$1' (start, stop, status, ctl; --help)" ;;
esac
