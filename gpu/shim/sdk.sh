#!/usr/bin/env bash
# Lays out libcudf 26.10 and the CUDA 13 runtime from PyPI's wheels, so that the shim
# compiles and links on a machine without a GPU or a CUDA toolkit:
#
#   gpu/shim/sdk.sh            # prints the directory, ~/.cache/sabot-gpu-sdk
#   CUDF_ROOT=~/.cache/sabot-gpu-sdk CUDA_HOME=~/.cache/sabot-gpu-sdk/cuda gpu/shim/build.sh
#
# It also fetches what libcudf.so needs to load (nvCOMP, NVRTC, nvJitLink, kvikIO), so the
# built shim loads here too; without a GPU every call then fails with "no CUDA device"
# (what gpu/tests/device.rs checks when SABOT_GPU_EXPECT_NO_DEVICE=1).
set -euo pipefail
# pip from $SABOT_PYTHON when set (CI's venv has one), else the system's python3.
SDK=${SDK:-$HOME/.cache/sabot-gpu-sdk}
if [ -f "$SDK/done" ]; then echo "$SDK"; exit 0; fi
rm -rf "$SDK"; mkdir -p "$SDK/whl" "$SDK/x" "$SDK/include" "$SDK/lib" "$SDK/cuda/include" "$SDK/cuda/lib64"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for p in "libcudf-cu13==26.10.2" "librmm-cu13==26.10.0" "libkvikio-cu13==26.10.0" "rapids-logger==0.3.*" \
         "nvidia-libnvcomp-cu13==5.3.0.16" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
         "nvidia-cuda-nvrtc==13.0.*" "nvidia-nvjitlink==13.0.*"; do
  "${SABOT_PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d "$SDK/whl" "$p" >&2
done
for w in "$SDK"/whl/*.whl; do python3 -m zipfile -e "$w" "$SDK/x"; done
x=$SDK/x
for d in libcudf librmm libkvikio rapids_logger; do cp -rn "$x/$d/include/." "$SDK/include/"; done
cp "$x"/libcudf/lib64/*.so "$x"/librmm/lib64/*.so "$x"/libkvikio/lib64/*.so "$x"/rapids_logger/lib64/*.so "$SDK/lib/"
cp "$x"/libkvikio_cu13.libs/*.so* "$x"/nvidia/libnvcomp/lib64/*.so* "$SDK/lib/" 2>/dev/null || true
cp -r "$x"/nvidia/cu13/include/. "$SDK/cuda/include/"
cp -a "$x"/nvidia/cu13/lib/*.so* "$SDK/cuda/lib64/"
ln -sf libcudart.so.13 "$SDK/cuda/lib64/libcudart.so"
rm -rf "$SDK/x" "$SDK/whl"
touch "$SDK/done"
echo "$SDK"
