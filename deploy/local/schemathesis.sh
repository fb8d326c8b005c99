#!/usr/bin/env bash
# Fuzzes consumer-api through its own OpenAPI document with Schemathesis: every check, positive
# and negative data, bounded in time, once with the admin key and once with a consumer key,
# against a real consumer-api (the debug binary) on a fresh SQLite store and a real broker.
# Fails on any failure Schemathesis reports (a 5xx, an answer the document does not describe,
# a valid request refused as malformed, an invalid one accepted, …).
#
# Usage: deploy/local/schemathesis.sh [seconds per key, default 30]
# Needs: `cargo build --bins` done (CARGO_TARGET_DIR honoured), a broker in
# RELAY_TEST_AMQP_URL (deploy/local/test.sh starts one and calls this script), python3.
# Schemathesis (PyPI, pinned below) is installed once into a virtualenv under
# ${RELAY_CACHE_DIR:-~/.cache/relay}, so reruns start at once.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
seconds=${1:-30}
version=4.32.5
cache=${RELAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/relay}
venv=$cache/schemathesis-$version
binary=${CARGO_TARGET_DIR:-$root/target}/debug/consumer-api
: "${RELAY_TEST_AMQP_URL:?a broker is needed: run through deploy/local/test.sh, or set it}"
[[ -x $binary ]] || {
  echo "schemathesis.sh: $binary is not built (cargo build --bins)" >&2
  exit 1
}

# Marked complete only at the end: an interrupted install is redone, never half used. (A
# virtualenv cannot be moved into place: its scripts name their own path.)
if [[ ! -f $venv/.installed ]]; then
  echo "schemathesis.sh: installing schemathesis $version into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
  touch "$venv/.installed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/relay-schemathesis.XXXXXX")
api_pid=
# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
  [[ -n $api_pid ]] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
admin=ak_schemathesis_admin_$RANDOM$RANDOM$RANDOM
RELAY__API__LISTEN=127.0.0.1:$port \
  RELAY__API__ADMIN_KEY=$admin \
  RELAY__API__DATABASE_URL="sqlite://$work/api.db" \
  RELAY__AMQP__URL=$RELAY_TEST_AMQP_URL \
  RELAY__AMQP__PREFIX="st$$." \
  RELAY__SECURITY__ALLOWED_NETWORKS=127.0.0.0/8 \
  RELAY__SECURITY__ALLOW_HTTP=true \
  RELAY__LOG__LEVEL=error \
  "$binary" 2>"$work/consumer-api.log" &
api_pid=$!
# call KEY METHOD PATH [JSON]: prints the answer's body; fails unless it is a 2xx.
call() {
  python3 - "$base$3" "$1" "$2" "${4:-}" <<'PY'
import sys, urllib.request
url, key, method, body = sys.argv[1:5]
request = urllib.request.Request(url, method=method, data=body.encode() or None,
                                 headers={"authorization": f"Bearer {key}",
                                          "content-type": "application/json"})
print(urllib.request.urlopen(request, timeout=10).read().decode())
PY
}
for _ in $(seq 600); do
  call "$admin" GET /readyz >/dev/null 2>&1 && break
  kill -0 "$api_pid" 2>/dev/null || {
    echo "schemathesis.sh: consumer-api exited:" >&2
    cat "$work/consumer-api.log" >&2
    exit 1
  }
  sleep 0.1
done
call "$admin" GET /readyz >/dev/null || {
  echo "schemathesis.sh: consumer-api not ready in 60 s" >&2
  exit 1
}

# new_consumer: creates a consumer with a key (in $key) and a subscription, so that the key has
# something to reach. Made for the consumer's run, after the admin's: the admin run
# deletes consumers it finds (with their keys), which left the consumer run nothing but 401s.
new_consumer() {
  local id=schemathesis-$RANDOM$RANDOM
  call "$admin" POST /v1/consumers "{\"id\": \"$id\"}" >/dev/null
  key=$(call "$admin" POST "/v1/consumers/$id/keys" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
  call "$key" POST /v1/subscriptions \
    "{\"url\": \"$base/nowhere\", \"event_types\": [\"order.*\"]}" >/dev/null
}

status=0
for who in admin consumer; do
  bearer=$admin
  if [[ $who == consumer ]]; then
    new_consumer
    bearer=$key
  fi
  echo "==> schemathesis $version, $seconds s with the $who key" >&2
  (cd "$work" &&
    "$venv/bin/schemathesis" --config-file "$root/deploy/local/schemathesis.toml" \
      run "$base/openapi.json" --header "Authorization: Bearer $bearer" \
      --checks all --mode all --max-time "$seconds" --seed "${RELAY_SCHEMATHESIS_SEED:-20261130}" \
      --generation-database none --no-color) || status=$?
done
if ((status != 0)); then
  echo "schemathesis.sh: failures above; consumer-api's log:" >&2
  tail -n 50 "$work/consumer-api.log" >&2
fi
exit "$status"
