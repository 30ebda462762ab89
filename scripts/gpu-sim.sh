#!/usr/bin/env bash
# Runs the CUDA path without a GPU: the CUDA binaries scripts/gpu-bundle.sh links (train-lm,
# the GPU tests) load stand-ins for libcuda.so.1, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13 and libnccl.so.2 (crates/cuda-sim-libs) instead of NVIDIA's,
# and every kernel runs on the PTX simulator (crates/cuda-sim). Ends with "N passed, N failed".
#
#   scripts/gpu-sim.sh             the checks (CI runs them)
#   scripts/gpu-sim.sh --exports   rewrites crates/cuda-sim-libs/exports.txt from the binaries
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-toolchain.sh)"
scripts/gpu-bundle.sh --link-only >/dev/null

bins=(target/release/train-lm)
newest() { find target/release/deps -maxdepth 1 -type f -executable -name "$1-*" -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2; }
gpu_kernels=$(newest gpu_kernels)
trainer_unit=$(newest dynact_trainer)
bins+=("$gpu_kernels" "$trainer_unit")
imports() { nm -D --undefined-only "$@" | awk '{print $2}' | grep -E '^(cu[A-Z]|cublas|curand|nccl|nvrtc)' | sed 's/@.*//' | sort -u; }
if [ "${1:-}" = "--exports" ]; then
  { echo "# What the CUDA binaries import from the libraries the stand-ins replace (scripts/gpu-sim.sh --exports)."; imports "${bins[@]}"; } \
    >crates/cuda-sim-libs/exports.txt
  echo "exports.txt: $(grep -vc '^#' crates/cuda-sim-libs/exports.txt) symbols"
  exit 0
fi

cargo build --release -p dynact-cuda-sim-libs
libs=target/cuda-sim-libs
mkdir -p "$libs"
for soname in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnccl.so.2; do
  ln -sf ../release/libdynact_cuda_stand_ins.so "$libs/$soname"
done
missing=$(comm -23 <(imports "${bins[@]}") <(nm -D --defined-only target/release/libdynact_cuda_stand_ins.so | awk '{print $3}' | sort -u))
if [ -n "$missing" ]; then
  echo "the stand-ins lack $(wc -w <<<"$missing") symbols the binaries import ($(head -c 200 <<<"$missing" | tr '\n' ' ')...):" \
    "run scripts/gpu-sim.sh --exports and commit crates/cuda-sim-libs/exports.txt" >&2
  exit 1
fi
# The stand-ins first; libcudart.so.13 (linked, never called) from the toolchain.
export LD_LIBRARY_PATH="$PWD/$libs:$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

passed=0
failed=0
check() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "-- $name: passed"
  else
    failed=$((failed + 1))
    echo "-- $name: FAILED"
  fi
}
check "gpu_kernels (each CUDA op and a whole model against the CPU)" "$gpu_kernels" --test-threads 1
check "the trainer's cuda_ tests (AdamW's kernels)" "$trainer_unit" cuda_ --test-threads 1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
