#!/usr/bin/env bash
# A flame graph of one dispatcher while relay-bench drives scenario (a) over AMQP.
#
# Usage: deploy/local/flamegraph.sh OUT.svg [more relay-bench arguments, e.g. --quick]
#
# Needs perf (Debian: `apt-get install linux-perf`) and inferno's tools
# (`cargo install inferno`). Builds the release binaries, runs
# `relay-bench --scenario a --drivers amqp --no-record` with every dispatcher under
# `perf record` (DWARF call graphs: the release profile keeps line tables), then folds the
# stacks with inferno-collapse-perf and draws them with inferno-flamegraph. The baseline
# run of (a) is not profiled. Run it on a quiet machine: other processes change the shape.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${1:?usage: deploy/local/flamegraph.sh OUT.svg [relay-bench arguments]}
shift
for tool in perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "flamegraph.sh: $tool is not installed (perf: apt-get install linux-perf; inferno: cargo install inferno)" >&2
    exit 1
  }
done
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --bins
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
"$target/release/relay-bench" --scenario a --drivers amqp --no-record \
  --dispatch-wrapper "perf record -F 249 --call-graph dwarf,16384 -o $data/perf.data" "$@"
perf script -i "$data/perf.data" 2>/dev/null | inferno-collapse-perf >"$data/folded"
inferno-flamegraph --title "relay dispatch, relay-bench (a) over AMQP" <"$data/folded" >"$out"
echo "wrote $out" >&2
