#!/usr/bin/env bash
# Builds libsabot_cudf.so, the C ABI shim over libcudf (host C++ only: g++ is enough,
# nvcc is not needed).
#
#   CUDF_ROOT  include/ (cudf, rmm, rapids_logger, kvikio; CCCL under include/rapids) and
#              lib/ (libcudf.so, librmm.so, librapids_logger.so): the layout that
#              ../shared/gpu/stage-libcudf.sh assembles in /tmp/cudf on the GPU machine,
#              and gpu/shim/sdk.sh under ~/.cache/sabot-gpu-sdk anywhere else.
#   CUDA_HOME  the CUDA toolkit's include/ and lib64/ (libcudart.so), /usr/local/cuda by
#              default.
#   OUT        where libsabot_cudf.so goes (gpu/shim/build by default).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CUDF_ROOT:?set CUDF_ROOT (see the comment at the top of this file)}"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
OUT=${OUT:-$here/build}
# Any C++20 compiler: g++ where there is one, else c++ or clang++.
CXX=${CXX:-$(command -v g++ || command -v c++ || command -v clang++)}
mkdir -p "$OUT"
cudart_dir=$CUDA_HOME/lib64
[ -d "$cudart_dir" ] || cudart_dir=$CUDA_HOME/lib
# The C++ parts of the CUDA headers (crt/) are in the toolkit; CCCL comes with libcudf's.
"$CXX" -std=c++20 -O2 -fPIC -shared -Wall -Wextra -Wno-unused-parameter \
  -I"$here" -I"$CUDF_ROOT/include" -I"$CUDF_ROOT/include/rapids" -I"$CUDA_HOME/include" \
  "$here/sabot_cudf.cpp" -o "$OUT/libsabot_cudf.so" \
  -L"$CUDF_ROOT/lib" -L"$cudart_dir" -lcudf -lrmm -lrapids_logger -lcudart \
  -Wl,--no-undefined -Wl,--allow-shlib-undefined -Wl,-rpath,'$ORIGIN'
echo "$OUT/libsabot_cudf.so"
