#!/usr/bin/env bash
# The project's test command: unit and property tests, the crash-recovery test, the
# .slt files over pgwire against freshly started servers, and the docker/ files' check.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --workspace --bins
cargo test --workspace --no-fail-fast
# The GPU shim compiles and links against libcudf 26.10's real headers and libraries
# (PyPI's wheels, cached in ~/.cache/sabot-gpu-sdk), and loads here, where there is no
# GPU, failing with the CUDA runtime's reason instead of crashing (gpu/README.md). Where
# the wheels cannot be fetched (no network) the check says so and is skipped.
if sdk=$(gpu/shim/sdk.sh); then
  CUDF_ROOT="$sdk" CUDA_HOME="$sdk/cuda" OUT="$CARGO_TARGET_DIR/gpu-shim" gpu/shim/build.sh
  SABOT_GPU_EXPECT_NO_DEVICE=1 SABOT_GPU_LIBRARY="$CARGO_TARGET_DIR/gpu-shim/libsabot_cudf.so" \
    LD_LIBRARY_PATH="$sdk/lib:$sdk/cuda/lib64" cargo test -p sabot-gpu --test device
else
  echo "GPU shim check skipped: libcudf's wheels could not be fetched" >&2
fi
"$CARGO_TARGET_DIR/debug/sabot-slt" --sabot "$CARGO_TARGET_DIR/debug/sabot" --workers 2 sqllogictest/slt
# The docker/ files parse and agree with each other and with `sabot serve` (PyYAML).
"${SABOT_PYTHON:-python3}" docker/check.py --sabot "$CARGO_TARGET_DIR/debug/sabot"
# The Nexmark benchmark's smoke run: a few thousand events through every query, each
# view finished, q0/q1 holding exactly the generated bids (correctness, not speed).
"${SABOT_PYTHON:-python3}" benches/nexmark/bench.py --sabot "$CARGO_TARGET_DIR/debug/sabot" \
  --events 20000 --workers 2 --check
# The same queries as CREATE SINK ... AS into a blackhole: each one runs to its end.
"${SABOT_PYTHON:-python3}" benches/nexmark/bench.py --sabot "$CARGO_TARGET_DIR/debug/sabot" \
  --events 20000 --workers 2 --check --sink
