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
# and the cluster section of rabbitmq.conf (leader placement).
# The nodes share one Erlang cookie and listen on loopback only.
#
# Environment:
#   RELAY_HOME                state directory (default: $PWD/.relay); nodes in $RELAY_HOME/cluster
#   RELAY_CLUSTER_PORT        AMQP port of node 1 (default 5681); node i listens on PORT + i - 1
#                             and on PORT + 20000 + i - 1 for Erlang distribution
#   RELAY_CLUSTER_ADVANCED_CONFIG  advanced.config to use instead of deploy/rabbitmq/advanced.config
#                             (e.g. a file holding `[].` for the broker defaults)
#   RELAY_BROKER_TIMEOUT      seconds to wait for a node to accept connections (default: 90)
# Each node is a deploy/local/broker.sh node with its state in $RELAY_HOME/cluster/nodeN.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
relay_home=${RELAY_HOME:-$PWD/.relay}
[[ $relay_home == /* ]] || relay_home=$PWD/$relay_home
base_port=${RELAY_CLUSTER_PORT:-5681}
advanced=${RELAY_CLUSTER_ADVANCED_CONFIG:-$root/deploy/rabbitmq/advanced.config}
state=$relay_home/cluster
nodes=(1 2 3)
# The cluster settings of deploy/rabbitmq/rabbitmq.conf, added to every node's configuration.
cluster_conf=$(sed -n '/^# --- cluster ---/,/^# --- end cluster ---/p' "$root/deploy/rabbitmq/rabbitmq.conf")

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

[[ $base_port =~ ^[0-9]+$ ]] && ((base_port >= 1024 && base_port + 20002 <= 65535)) ||
  die "RELAY_CLUSTER_PORT must be a port between 1024 and 45533"
[[ -f $advanced ]] || die "advanced.config not found: $advanced"

port_of() { printf '%s\n' "$((base_port + $1 - 1))"; }
dir_of() { printf '%s/node%s\n' "$state" "$1"; }
url_of() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$(port_of "$1")"; }
name_of() { printf 'relay%s-%s@localhost\n' "$1" "$base_port"; }

valid_node() {
  [[ ${1:-} =~ ^[123]$ ]] || die "NODE must be 1, 2 or 3 (got '${1:-}')"
}

# broker.sh for node $1 (its own state directory, ports and name; the cluster's configuration).
broker() {
  local node=$1
  shift
  RELAY_HOME=$(dir_of "$node") \
    RELAY_AMQP_PORT=$(port_of "$node") \
    RELAY_AMQP_DIST_PORT=$((base_port + 20000 + node - 1)) \
    RELAY_RABBITMQ_NODE=$(name_of "$node") \
    RELAY_BROKER_ADVANCED_CONFIG=$advanced \
    RELAY_BROKER_EXTRA_CONF=$cluster_conf \
    "$root/deploy/local/broker.sh" "$@"
}

ctl() {
  local node=$1
  shift
  broker "$node" ctl "$@"
}

# The Erlang VM's pid of node $1, if it is running.
vm_pid() {
  local pid file
  file=$(dir_of "$1")/rabbitmq/rabbitmq.pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

# Gives node $1 the cluster's cookie (broker.sh keeps a cookie it finds).
share_cookie() {
  local home
  home=$(dir_of "$1")/rabbitmq/home
  if [[ ! -s $state/cookie ]]; then
    mkdir -p "$state"
    (
      umask 077
      od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$state/cookie"
    )
  fi
  mkdir -p "$home"
  [[ -s $home/.erlang.cookie ]] || install -m 0400 "$state/cookie" "$home/.erlang.cookie"
}

cmd_up() {
  local node pids=() failed=0
  # All at once: a node restarted after `down` waits for the peers it last saw running.
  for node in "${nodes[@]}"; do
    share_cookie "$node"
    broker "$node" start >/dev/null &
    pids+=("$!")
  done
  for node in "${!pids[@]}"; do wait "${pids[$node]}" || failed=1; done
  ((failed == 0)) || die "a node did not start (logs in $state/node*/rabbitmq/log)"
  for node in 2 3; do
    [[ -f $(dir_of "$node")/joined ]] && continue
    log "joining node $node to node 1"
    ctl "$node" stop_app >&2
    ctl "$node" join_cluster "$(name_of 1)" >&2
    ctl "$node" start_app >&2
    : >"$(dir_of "$node")/joined"
  done
  ctl 1 await_online_nodes 3 >&2
  RABBITMQCTL="env RELAY_HOME=$(dir_of 1) $root/deploy/local/broker.sh ctl" \
    "$root/deploy/rabbitmq/policies.sh" >&2
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

cmd_down() {
  local node
  # In reverse, so node 1 (the one the others joined) stops last and may start first.
  for node in 3 2 1; do broker "$node" stop; done
  log "stopped; data kept in $state"
}

cmd_kill() {
  local node=$1 vm
  valid_node "$node"
  vm=$(vm_pid "$node") || die "node $node is not running"
  log "kill -9 of node $node's Erlang VM (pid $vm)"
  kill -KILL "$vm"
  while kill -0 "$vm" 2>/dev/null; do sleep 0.05; done
}

cmd_start() {
  local node=$1
  valid_node "$node"
  [[ -f $(dir_of "$node")/joined || $node == 1 ]] || die "node $node never joined; run: $0 up"
  broker "$node" start >/dev/null
  log "node $node is up: $(url_of "$node")"
}

cmd_status() {
  local node running=0
  for node in "${nodes[@]}"; do
    if broker "$node" status 2>/dev/null; then
      log "node $node $(name_of "$node") accepts connections: $(url_of "$node")"
      running=$node
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
    broker "$2" stop
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
