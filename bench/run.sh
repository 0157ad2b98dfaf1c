#!/usr/bin/env bash
# Sluice next to real Envoy (V8) and nginx, in the same interleaved rounds, with the shared harness
# (../shared/bench/bench.sh: nginx upstream on 127.0.0.1:18080, proxies on 127.0.0.1:18001, wrk).
# Builds sluice in release mode, then runs the harness with bench/candidates.tsv.
#   bash bench/run.sh                   # 3 rounds of 10 s
#   ROUNDS=5 DUR=10 bash bench/run.sh   # knobs as in ../shared/bench/README.md
# The table lands in ${WORK:-/tmp/sluice-envoy-bench}/results/table.md. Quote ratios from one run:
# the machine is shared and noisy.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$repo/../shared/bench}
[ -f "$shared/bench.sh" ] || {
  echo "no benchmark harness at $shared: set SHARED_BENCH to the directory holding bench.sh (see README.md, Benchmarks)" >&2
  exit 1
}
(cd "$repo" && cargo build --release -p sluice-cli)
export SLUICE="$repo/target/release/sluice"
# The harness substitutes $WASM_* when it runs a candidate; expand $SLUICE and $BENCH here.
candidates=$(mktemp)
sed -e "s#\$SLUICE#$SLUICE#g" -e "s#\$BENCH#$repo/bench#g" "$repo/bench/candidates.tsv" > "$candidates"
CANDIDATES_FILE=$candidates bash "$shared/bench.sh"
