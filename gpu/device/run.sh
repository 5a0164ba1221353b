#!/usr/bin/env bash
# On the GPU machine, after ../shared/gpu/stage-libcudf.sh's calls and gpu/device/pack.sh's:
# the GPU tests, the group-by and join benchmarks and the Nexmark comparison. Logs go to
# $OUT (they come back).
set -uo pipefail
R=/tmp/sabot-run
source /tmp/cudf/env.sh
export SABOT_GPU_LIBRARY=$R/libsabot_cudf.so SABOT_BIN=$R/sabot RUST_BACKTRACE=1
OUT=${OUT:-/tmp/sabot-run-out}; mkdir -p "$OUT"
status=0
step() { local name=$1; shift; echo "== $name: $*"; "$@" > "$OUT/$name.log" 2>&1; local rc=$?;
         tail -25 "$OUT/$name.log"; echo "== $name: exit $rc"; [ $rc -eq 0 ] || status=1; }
nvidia-smi -L 2>&1 | tee "$OUT/device.txt"
step shim "$R/test-device" --test-threads 1 --nocapture
step incremental "$R/test-incremental" partial gpu_path --nocapture
step watermarks "$R/test-watermarks" --nocapture
step server "$R/test-gpu" --nocapture
step bench "$R/groupby_bench" 50000000 10000 1000000
step join "$R/join_bench" 2000000 1000000 100000
step join-halves "$R/join_bench" 2000000 1000000 100000 halves
step nexmark "$R/nexmark_gpu" --events 10000000 --queries q3,q4,q5,q12 --queries-dir "$R/queries"
exit $status
