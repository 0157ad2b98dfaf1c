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
# The example plugins the body and callout candidates run, in sluice and in Envoy alike.
(cd "$repo/plugins" && cargo build --release --target wasm32-wasip1 -p body_rewrite -p http_callout)
export BODY_REWRITE_CONFIG='{"response": [{"from": "fox", "to": "cat"}]}'
export CALLOUT_CONFIG='{"cluster": "authz", "path": "/", "timeoutMs": 1000}'
export WORK=${WORK:-${TMPDIR:-/tmp}/sluice-envoy-bench}
# The 64 KiB origin of the body candidates (bench/origin-64k.conf), on the client's core as the
# harness's own origin is, daemonized so that no candidate counts its CPU.
origin=$WORK/origin-64k
mkdir -p "$origin"
python3 -c 'import sys; line = b"the quick brown fox jumps over the lazy dog, line %05d\n"
sys.stdout.buffer.write(b"".join(line % i for i in range(2000))[:65536])' > "$origin/index.txt"
stop_origin() { [ -f "$origin/nginx.pid" ] && kill "$(cat "$origin/nginx.pid")" 2>/dev/null || true; }
stop_origin
taskset -c 0 nginx -p "$origin/" -c "$repo/bench/origin-64k.conf" -e "$origin/error.log"
trap stop_origin EXIT
# The harness substitutes $WASM_* when it runs a candidate; expand $SLUICE and $BENCH here.
candidates=$(mktemp)
sed -e "s#\$SLUICE#$SLUICE#g" -e "s#\$BENCH#$repo/bench#g" "$repo/bench/candidates.tsv" > "$candidates"
CANDIDATES_FILE=$candidates bash "$shared/bench.sh"
