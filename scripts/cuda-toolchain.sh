#!/usr/bin/env bash
# Installs nvcc and the CUDA headers from NVIDIA's Python wheels into .cuda-toolchain/ (no GPU,
# driver or system CUDA needed) and prints the environment a `--features cuda` build needs:
#
#   eval "$(scripts/cuda-toolchain.sh)"
#   cargo clippy --release -p dynact-trainer --features cuda --all-targets -- -D warnings
#
# Checked on a 2-core machine without a GPU: `cargo check --release -p dynact-trainer --features
# cuda` compiles Candle's kernels to PTX with nvcc 13.0.88 in about 5 min; clippy then passes.
# Linking a binary also needs the driver library (libcuda), which only a machine with an NVIDIA
# driver has. CUDA_COMPUTE_CAP picks the GPU generation: 80 (the default) is PTX for the A100,
# which the driver compiles for any newer GPU too (RTX 30/40, H100, H200).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/.cuda-toolchain
if [ ! -x "$dir/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install -q --disable-pip-version-check --target "$dir" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" >&2
fi
root=$dir/nvidia/cu13
echo "export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root"
echo "export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}"
echo "export PATH=$root/bin:\$PATH"
