#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for trying Relay on a cluster (quorum queues replicated on
# three nodes, shard leaders spread, a node killed and restarted) on one machine.
#
# Usage: deploy/local/cluster.sh COMMAND
#   up            Start the three nodes (installing RabbitMQ with apt when missing), join nodes
#                 2 and 3 to node 1 (`rabbitmqctl join_cluster`, first time only), apply Relay's
#                 policies (deploy/rabbitmq/policies.sh) and print the AMQP URLs, one a line,
#                 on stdout (messages go to stderr). Idempotent: running nodes are left alone.
#   down          Stop every node (`rabbitmqctl stop`); data stays in $RELAY_HOME/cluster.
#   purge         down, then delete $RELAY_HOME/cluster (queues, messages, membership).
#   status        Each node's state, the cluster membership and the leader of each queue.
#   urls          Print the AMQP URLs, comma-separated (the form RELAY__AMQP__URLS takes).
#   kill NODE     SIGKILL node NODE's Erlang VM (1, 2 or 3): a crash, no clean shutdown.
#   start NODE    Start node NODE again (after kill or stop); it rejoins with its data.
#   stop NODE     Stop node NODE cleanly.
#   ctl NODE ARGS...  rabbitmqctl against node NODE, e.g. `ctl 1 list_queues name leader`.
#
# Every node uses Relay's broker configuration from deploy/rabbitmq: advanced.config as is,
# and the cluster settings of rabbitmq.conf (leader placement, heartbeat, consumer timeout).
# The nodes share one Erlang cookie and listen on loopback only.
#
# Environment:
#   RELAY_HOME                state directory (default: $PWD/.relay); nodes in $RELAY_HOME/cluster
#   RELAY_CLUSTER_PORT        AMQP port of node 1 (default 5681); node i listens on PORT + i - 1
#                             and on PORT + 20000 + i - 1 for Erlang distribution
#   RELAY_CLUSTER_ADVANCED_CONFIG  advanced.config to use instead of deploy/rabbitmq/advanced.config
#                             (e.g. /dev/null-like `[].` to see the broker's defaults)
#   RELAY_BROKER_TIMEOUT      seconds to wait for a node to accept connections (default: 90)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
relay_home=${RELAY_HOME:-$PWD/.relay}
[[ $relay_home == /* ]] || relay_home=$PWD/$relay_home
base_port=${RELAY_CLUSTER_PORT:-5681}
advanced=${RELAY_CLUSTER_ADVANCED_CONFIG:-$root/deploy/rabbitmq/advanced.config}
wait_secs=${RELAY_BROKER_TIMEOUT:-90}
state=$relay_home/cluster
nodes=(1 2 3)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

[[ $base_port =~ ^[0-9]+$ ]] && ((base_port >= 1024 && base_port + 20002 <= 65535)) ||
  die "RELAY_CLUSTER_PORT must be a port between 1024 and 45533"
[[ -f $advanced ]] || die "advanced.config not found: $advanced"

port_of() { printf '%s\n' "$((base_port + $1 - 1))"; }
dist_port_of() { printf '%s\n' "$((base_port + 20000 + $1 - 1))"; }
name_of() { printf 'relay%s-%s@localhost\n' "$1" "$base_port"; }
dir_of() { printf '%s/node%s\n' "$state" "$1"; }
url_of() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$(port_of "$1")"; }

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null
}

# The Erlang VM's pid of node $1, if it is running.
vm_pid() {
  local pid file
  file=$(dir_of "$1")/rabbitmq.pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  alive "$pid" && printf '%s\n' "$pid"
}

# The pid of the launcher script of node $1, if it is running.
launcher_pid() {
  local pid file
  file=$(dir_of "$1")/launcher.pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  alive "$pid" && printf '%s\n' "$pid"
}

valid_node() {
  [[ ${1:-} =~ ^[123]$ ]] || die "NODE must be 1, 2 or 3 (got '${1:-}')"
}

# Same lookup as broker.sh: Debian's /usr/sbin wrappers switch to the rabbitmq user when run
# as root (and then use that user's cookie), so the scripts behind them are used directly.
find_bin_dir() {
  if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    printf '%s\n' /usr/lib/rabbitmq/bin
  elif command -v rabbitmq-server >/dev/null 2>&1; then
    dirname "$(command -v rabbitmq-server)"
  else
    return 1
  fi
}

bin_dir() {
  local dir
  if ! dir=$(find_bin_dir); then
    command -v apt-get >/dev/null 2>&1 || die "rabbitmq-server is not installed (RabbitMQ 3.10+)"
    log "installing rabbitmq-server with apt-get"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends rabbitmq-server >&2 || die "apt-get install rabbitmq-server failed"
    dir=$(find_bin_dir) || die "rabbitmq-server still not found after installing it"
  fi
  printf '%s\n' "$dir"
}

# Exports what rabbitmq-server and rabbitmqctl need for node $1.
node_env() {
  local dir
  dir=$(dir_of "$1")
  export HOME=$dir/home
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(name_of "$1")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(port_of "$1")
  export RABBITMQ_DIST_PORT
  RABBITMQ_DIST_PORT=$(dist_port_of "$1")
  export RABBITMQ_MNESIA_BASE=$dir/mnesia
  export RABBITMQ_LOG_BASE=$dir/log
  export RABBITMQ_PID_FILE=$dir/rabbitmq.pid
  export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
  export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
  export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
  export RABBITMQ_CTL_DIST_PORT_MIN=0 RABBITMQ_CTL_DIST_PORT_MAX=0
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_CRASH_DUMP=$dir/log/erl_crash.dump
}

ctl() {
  local node=$1
  shift
  (
    node_env "$node"
    timeout 120 "$(bin_dir)/rabbitmqctl" -n "$(name_of "$node")" "$@"
  )
}

# Writes node $1's files; the cookie is the cluster's, shared by every node.
write_node_files() {
  local node=$1 dir
  dir=$(dir_of "$node")
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  # Relay needs no plugin: its sharded ingress routes with a plain exchange (docs/SCALING.md).
  printf '[].\n' >"$dir/enabled_plugins"
  cp "$advanced" "$dir/advanced.config"
  : >"$dir/rabbitmq-env.conf"
  cat >"$dir/rabbitmq.conf" <<EOF
# Written by deploy/local/cluster.sh for node $node of a local 3-node cluster.
listeners.tcp.default = 127.0.0.1:$(port_of "$node")
loopback_users.guest = true
log.console = false
log.file.level = info
# The cluster settings of deploy/rabbitmq/rabbitmq.conf:
$(sed -n '/^# --- cluster ---/,/^# --- end cluster ---/p' "$root/deploy/rabbitmq/rabbitmq.conf")
EOF
  if [[ ! -s $state/cookie ]]; then
    (
      umask 077
      mkdir -p "$state"
      od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$state/cookie"
    )
  fi
  install -m 0400 "$state/cookie" "$dir/home/.erlang.cookie.new"
  mv -f "$dir/home/.erlang.cookie.new" "$dir/home/.erlang.cookie"
}

log_tail() {
  local dir file
  dir=$(dir_of "$1")
  for file in "$dir/log/$(name_of "$1").log" "$dir/log/stdout.log"; do
    [[ -f $file ]] || continue
    log "--- last lines of $file ---"
    tail -n 30 "$file" >&2
  done
}

# Starts node $1 in the background (no wait).
spawn_node() {
  local node=$1 dir bin
  dir=$(dir_of "$node")
  if launcher_pid "$node" >/dev/null || vm_pid "$node" >/dev/null; then
    return
  fi
  port_open "$(port_of "$node")" &&
    die "port $(port_of "$node") is taken by something else (set RELAY_CLUSTER_PORT)"
  bin=$(bin_dir)
  write_node_files "$node"
  rm -f "$dir/rabbitmq.pid"
  log "starting node $(name_of "$node") on 127.0.0.1:$(port_of "$node")"
  (
    node_env "$node"
    # A session of its own: Ctrl-C in the calling terminal does not reach the node.
    setsid "$bin/rabbitmq-server" >>"$dir/log/stdout.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$dir/launcher.pid"
  )
}

# Waits until node $1 accepts connections and its application runs.
wait_node() {
  local node=$1 deadline=$((SECONDS + wait_secs))
  until port_open "$(port_of "$node")"; do
    if ! launcher_pid "$node" >/dev/null && ! vm_pid "$node" >/dev/null; then
      log "node $node exited while starting"
      log_tail "$node"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "node $node did not accept connections within ${wait_secs}s"
      log_tail "$node"
      exit 1
    fi
    sleep 0.3
  done
}

cmd_up() {
  local node
  # All at once: a node restarted after `down` waits for the peers it last saw running.
  for node in "${nodes[@]}"; do spawn_node "$node"; done
  for node in "${nodes[@]}"; do wait_node "$node"; done
  for node in 2 3; do
    [[ -f $(dir_of "$node")/joined ]] && continue
    log "joining node $node to node 1"
    ctl "$node" stop_app >&2
    ctl "$node" join_cluster "$(name_of 1)" >&2
    ctl "$node" start_app >&2
    : >"$(dir_of "$node")/joined"
  done
  ctl 1 await_online_nodes 3 >&2
  (
    node_env 1
    RABBITMQCTL="$(bin_dir)/rabbitmqctl -n $(name_of 1)" "$root/deploy/rabbitmq/policies.sh" >&2
  )
  log "3 nodes up; Relay settings: RELAY__AMQP__URLS=$(cmd_urls)"
  for node in "${nodes[@]}"; do url_of "$node"; done
}

cmd_urls() {
  local node urls=()
  for node in "${nodes[@]}"; do urls+=("$(url_of "$node")"); done
  (
    IFS=,
    printf '%s\n' "${urls[*]}"
  )
}

# Stops node $1 cleanly, waiting for its processes.
stop_node() {
  local node=$1 vm launcher deadline
  vm=$(vm_pid "$node" || true)
  launcher=$(launcher_pid "$node" || true)
  [[ -n $vm || -n $launcher ]] || return 0
  log "stopping node $node"
  ctl "$node" stop >&2 || kill -TERM $launcher $vm 2>/dev/null || true
  deadline=$((SECONDS + 60))
  while alive "$vm" || alive "$launcher"; do
    if ((SECONDS >= deadline)); then
      log "node $node still running after 60s; killing it"
      kill -KILL $vm $launcher 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$(dir_of "$node")/launcher.pid"
}

cmd_down() {
  local node
  # In reverse, so node 1 (the one others joined) is stopped last and may start first.
  for node in 3 2 1; do stop_node "$node"; done
  log "stopped; data kept in $state"
}

cmd_kill() {
  local node=$1 vm
  valid_node "$node"
  vm=$(vm_pid "$node") || die "node $node is not running"
  log "kill -9 of node $node's Erlang VM (pid $vm)"
  kill -KILL "$vm"
  while alive "$vm"; do sleep 0.05; done
  rm -f "$(dir_of "$node")/launcher.pid"
}

cmd_start() {
  local node=$1
  valid_node "$node"
  [[ -d $(dir_of "$node")/mnesia ]] || die "node $node was never started; run: $0 up"
  spawn_node "$node"
  wait_node "$node"
  log "node $node is up: $(url_of "$node")"
}

cmd_status() {
  local node running=0 vm
  for node in "${nodes[@]}"; do
    if vm=$(vm_pid "$node"); then
      if port_open "$(port_of "$node")"; then
        log "node $node $(name_of "$node") (pid $vm) accepts connections: $(url_of "$node")"
        running=$node
      else
        log "node $node $(name_of "$node") (pid $vm) running, not accepting connections"
      fi
    else
      log "node $node $(name_of "$node") is down"
    fi
  done
  ((running)) || exit 1
  ctl "$running" cluster_status >&2
  ctl "$running" list_queues name type leader members messages >&2
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  purge)
    cmd_down
    rm -rf "$state"
    log "removed $state"
    ;;
  status) cmd_status ;;
  urls) cmd_urls ;;
  kill) cmd_kill "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  stop)
    valid_node "${2:-}"
    stop_node "$2"
    ;;
  ctl)
    valid_node "${2:-}"
    node=$2
    shift 2
    ctl "$node" "$@"
    ;;
  -h | --help | help | '') sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" ;;
  *) die "unknown command '$1' (up, down, purge, status, urls, kill, start, stop, ctl; --help)" ;;
esac
