#!/usr/bin/env bash
# Runs the whole test suite against a private RabbitMQ node (the tests on a private 3-node
# cluster, tests/tests/it/cluster.rs, last: they start their own nodes).
#
# Usage: deploy/local/test.sh [extra arguments for cargo nextest run (or cargo test)]
#   e.g. deploy/local/test.sh -p tests        deploy/local/test.sh -E 'test(retry)'
#
# Starts a throwaway RabbitMQ node on a free loopback port (never 5672) with its data in a
# temporary directory, exports RELAY_TEST_AMQP_URL for the tests, starts a throwaway
# PostgreSQL cluster likewise (deploy/local/postgres.sh) and exports RELAY_TEST_POSTGRES_URL,
# installs the OpenAPI validator (PyPI openapi-spec-validator) and the independent ed25519
# verifier (PyPI cryptography) when missing, builds the binaries the
# end-to-end tests start, runs `cargo nextest run --workspace --no-fail-fast` (`cargo test`
# when cargo-nextest is not installed) and, for the whole suite, fuzzes consumer-api through
# its OpenAPI document (deploy/local/schemathesis.sh, about a minute), then stops the node and
# removes its directory.
# Exits with the tests' status.
#
# Environment: RELAY_TEST_KEEP_BROKER=1 keeps the node's directory (logs) after the run.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

log() { printf '\n==> %s\n' "$*" >&2; }

command -v cargo >/dev/null 2>&1 || {
  echo "test.sh: cargo is not installed (https://rustup.rs)" >&2
  exit 1
}
runner=(cargo nextest run --workspace --no-fail-fast)
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: cargo-nextest is not installed (cargo install --locked cargo-nextest);" \
    "falling back to cargo test" >&2
  runner=(cargo test --workspace --no-fail-fast)
fi

# A port nothing listens on, below the kernel's ephemeral range so outgoing connections do not
# take it meanwhile, and away from RabbitMQ's usual ports.
pick_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 10000))
    case $port in 25672 | 25671 | 20000) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
  done
  printf '%s\n' "$port"
}

broker_home=$(mktemp -d "${TMPDIR:-/tmp}/relay-test-broker.XXXXXX")
pg_home=$(mktemp -d "${TMPDIR:-/tmp}/relay-test-postgres.XXXXXX")
export RELAY_HOME=$broker_home
export RELAY_RABBITMQ_NODE="relaytest-sh-$$@localhost"

# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  log "stopping the test broker"
  "$root/deploy/local/broker.sh" stop || true
  RELAY_PG_HOME=$pg_home "$root/deploy/local/postgres.sh" stop || true
  rm -rf "$pg_home"
  if [[ ${RELAY_TEST_KEEP_BROKER:-} == 1 ]]; then
    echo "test.sh: broker files kept in $broker_home" >&2
  else
    rm -rf "$broker_home"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting a private RabbitMQ node for the tests"
started=$SECONDS
url=
for attempt in 1 2 3; do
  RELAY_AMQP_PORT=$(pick_port)
  RELAY_AMQP_DIST_PORT=$(pick_port)
  [[ $RELAY_AMQP_DIST_PORT != "$RELAY_AMQP_PORT" ]] || continue
  export RELAY_AMQP_PORT RELAY_AMQP_DIST_PORT
  if url=$("$root/deploy/local/broker.sh" start); then
    break
  fi
  echo "test.sh: broker start attempt $attempt failed" >&2
  url=
  rm -rf "${broker_home:?}/rabbitmq"
done
[[ -n $url ]] || {
  echo "test.sh: could not start a RabbitMQ node for the tests" >&2
  exit 1
}
export RELAY_TEST_AMQP_URL=$url
echo "test.sh: RELAY_TEST_AMQP_URL=$url (up in $((SECONDS - started))s)" >&2

log "starting a private PostgreSQL cluster for the tests"
RELAY_TEST_POSTGRES_URL=$(RELAY_PG_HOME=$pg_home RELAY_PG_PORT=$(pick_port) \
  "$root/deploy/local/postgres.sh" start) || {
  echo "test.sh: could not start PostgreSQL (apt-get install -y postgresql)" >&2
  exit 1
}
export RELAY_TEST_POSTGRES_URL
echo "test.sh: RELAY_TEST_POSTGRES_URL=$RELAY_TEST_POSTGRES_URL" >&2

python3 -c 'import openapi_spec_validator' 2>/dev/null ||
  python3 -m pip install -q openapi-spec-validator >&2 ||
  python3 -m pip install -q --break-system-packages openapi-spec-validator >&2 ||
  echo "test.sh: could not install openapi-spec-validator; the OpenAPI test will fail" >&2

# The v1a signature tests verify with an independent ed25519 implementation (PyPI cryptography).
python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' 2>/dev/null ||
  python3 -m pip install -q cryptography >&2 ||
  python3 -m pip install -q --break-system-packages cryptography >&2 ||
  echo "test.sh: could not install cryptography; the v1a signature tests will fail" >&2

# The observability tests start a real Prometheus server (they fail without one).
command -v prometheus >/dev/null 2>&1 || {
  log "installing prometheus (apt-get) for the observability tests"
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    prometheus >&2 || echo "test.sh: could not install prometheus; the observability test will fail" >&2
}

log "building the binaries the end-to-end tests start"
cargo build --workspace --bins

status=0
if (($# == 0)) && [[ ${runner[1]} == nextest ]]; then
  # The whole suite: the 3-node cluster tests (nextest group `cluster`) after the rest, so
  # their three Erlang VMs per test and their node kills do not slow the other tests' brokers.
  log "running: ${runner[*]} -E 'not (binary(it) and test(/^cluster::/))'"
  "${runner[@]}" -E 'not (binary(it) and test(/^cluster::/))' || status=$?
  log "running the cluster tests: ${runner[*]} -p tests -E 'binary(it) and test(/^cluster::/)'"
  "${runner[@]}" -p tests -E 'binary(it) and test(/^cluster::/)' || status=$?
  # consumer-api fuzzed through its OpenAPI document (about a minute), on this broker.
  log "fuzzing consumer-api: deploy/local/schemathesis.sh"
  "$root/deploy/local/schemathesis.sh" || status=$?
else
  log "running: ${runner[*]} $*"
  "${runner[@]}" "$@" || status=$?
fi
exit "$status"
