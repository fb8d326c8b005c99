#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: prints its URL on stdout (messages on stderr).
#
# Usage: deploy/local/postgres.sh start|stop
#   start  initdb into $RELAY_PG_HOME/data (as the `postgres` OS user when run as root: the
#          server refuses to run as root), listen on 127.0.0.1:$RELAY_PG_PORT with the unix
#          socket in $RELAY_PG_HOME, trust authentication (loopback only), fsync off.
#   stop   stop that cluster (its files stay in $RELAY_PG_HOME).
#
# Environment: RELAY_PG_HOME (required), RELAY_PG_PORT (required for start).
# Needs Debian's `postgresql` package (apt-get install -y postgresql).
set -euo pipefail

home=${RELAY_PG_HOME:?RELAY_PG_HOME must name a directory}
log() { printf 'postgres: %s\n' "$*" >&2; }

bin=
for candidate in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" /usr/lib/postgresql/*/bin; do
  if [[ -x $candidate/initdb && -x $candidate/pg_ctl ]]; then
    bin=$candidate
    break
  fi
done
[[ -n $bin ]] || {
  log "error: PostgreSQL is not installed (apt-get install -y postgresql)"
  exit 1
}

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case ${1:-start} in
start)
  port=${RELAY_PG_PORT:?RELAY_PG_PORT must be a free port}
  mkdir -p "$home"
  [[ $(id -u) -ne 0 ]] || chown postgres: "$home"
  if [[ ! -f $home/data/PG_VERSION ]]; then
    as_owner "$bin/initdb" -D "$home/data" -U postgres -A trust --no-sync -E UTF8 >"$home/initdb.log" 2>&1 || {
      cat "$home/initdb.log" >&2
      exit 1
    }
  fi
  as_owner "$bin/pg_ctl" -D "$home/data" -l "$home/server.log" -w -t 60 \
    -o "-p $port -k $home -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >&2 || {
    cat "$home/server.log" >&2
    exit 1
  }
  log "up on 127.0.0.1:$port"
  printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$port"
  ;;
stop)
  [[ -f $home/data/postmaster.pid ]] || exit 0
  as_owner "$bin/pg_ctl" -D "$home/data" -m fast -w stop >&2 || true
  ;;
*)
  log "usage: postgres.sh start|stop"
  exit 2
  ;;
esac
