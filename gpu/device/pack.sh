#!/usr/bin/env bash
# Packs a device run: the GPU tests and the benchmark, built here (the GPU machine has no
# Rust), with the shim and a run script, into .gpu-stage/run1 .. runN, carried one per
# device call right after ../shared/gpu/stage-libcudf.sh's calls (which it must follow:
# that script empties .gpu-stage). gpu/README.md has the whole sequence.
#
#   ../shared/gpu/stage-libcudf.sh && gpu/device/pack.sh
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
T=${CARGO_TARGET_DIR:-$top/target}
PART_MB=${PART_MB:-40}
stage=$top/.gpu-stage
[ -d "$stage" ] || { echo "run ../shared/gpu/stage-libcudf.sh first" >&2; exit 1; }
rm -rf "$stage"/run*

sdk=$(gpu/shim/sdk.sh)
CUDF_ROOT=$sdk CUDA_HOME=$sdk/cuda OUT=$T/gpu-shim gpu/shim/build.sh >/dev/null

tests=$(cargo test -p sabot-gpu --test device -p sabot-dataflow --test incremental --test watermarks \
          -p sabot-server --test gpu --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["kind"] == ["test"]:
        print(j["target"]["name"], j["executable"])')
# PACK_PROFILE=debug: a quicker pack to try the mechanics (its figures mean nothing).
profile=${PACK_PROFILE:-release}
if [ "$profile" = release ]; then rel=--release; bench=(bench --no-run); else rel=; bench=(build --benches); fi
cargo build -q $rel --bin sabot
cargo build -q $rel -p sabot-dataflow --example groupby_bench --example join_bench
nexmark=$(cargo "${bench[@]}" -p sabot-server --bench nexmark_gpu --message-format=json 2>/dev/null |
          python3 -c 'import sys, json
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["name"] == "nexmark_gpu":
        print(j["executable"])')

pack=$T/gpu-run-pack
rm -rf "$pack"; mkdir -p "$pack/run"
while read -r name exe; do cp "$exe" "$pack/run/test-$name"; done <<< "$tests"
cp "$T/$profile/sabot" "$pack/run/sabot"
cp "$T/$profile/examples/groupby_bench" "$T/$profile/examples/join_bench" "$pack/run/"
cp "$nexmark" "$pack/run/nexmark_gpu"
cp -r benches/nexmark/queries "$pack/run/queries"
cp "$T/gpu-shim/libsabot_cudf.so" "$pack/run/"
cp gpu/device/run.sh "$pack/run/"
strip --strip-debug "$pack"/run/test-* "$pack/run/sabot" "$pack/run/groupby_bench" "$pack/run/join_bench" \
  "$pack/run/nexmark_gpu"
(cd "$pack" && tar cf - run) | zstd -q -19 -T0 -o "$pack/run.tar.zst"
(cd "$pack" && split -b "${PART_MB}M" -d run.tar.zst part.)
parts=("$pack"/part.*)
n=${#parts[@]}
k=0
for p in "${parts[@]}"; do
  k=$((k + 1)); d=$stage/run$k; mkdir -p "$d"; cp "$p" "$d/"
  echo 'set -e; mkdir -p /tmp/sabot-run-parts; cp "$(dirname "$0")"/part.* /tmp/sabot-run-parts/' > "$d/step.sh"
done
# The last call unpacks (with a zstd carried along: the GPU machine has none) and runs.
d=$stage/run$n; mkdir -p "$d/bin"
cp /usr/bin/zstd "$d/bin/"
for l in $(ldd /usr/bin/zstd | awk '/=>/ {print $3}' | grep -v -E 'libc\.so|libpthread|libm\.so'); do cp "$l" "$d/bin/"; done
cat >> "$d/step.sh" <<'STEP'
here=$(cd "$(dirname "$0")" && pwd)
rm -rf /tmp/sabot-run && cd /tmp
cat /tmp/sabot-run-parts/part.* | LD_LIBRARY_PATH=$here/bin "$here/bin/zstd" -dq | tar xf - && mv /tmp/run /tmp/sabot-run
bash /tmp/sabot-run/run.sh
STEP
echo "packed $n device calls: .gpu-stage/run1 .. run$n"
du -sh "$stage"/run* | sed "s|$top/||"
