#!/usr/bin/env bash
# Builds, on a machine without a GPU, the CUDA binaries scripts/gpu-check.sh runs on one, into
# gpu-bundle/ (git-ignored; carry it to the GPU machine beside a checkout):
#   train-lm      the trainer (--features nccl: CUDA, and NCCL for data parallel)
#   gpu_kernels   the GPU tests (crates/model/tests/gpu_kernels.rs)
#   trainer_unit  the trainer's unit tests, whose `cuda_` tests need a GPU (AdamW's kernels)
# stripped and xz-compressed (gpu-check.sh unpacks them). With --link-only, it stops once the
# binaries are linked in target/release (what scripts/gpu-sim.sh runs on the simulator).
#
# Linking needs the libraries the CUDA build names (-lcuda, -lcublas, -lcublasLt, -lcurand,
# -lnvrtc, -lnccl, -lcudart). Only libcudart comes with scripts/cuda-toolchain.sh; for the others this
# script writes stub libraries into the toolchain folder: each exports the symbols the build
# leaves undefined and carries the real library's soname, so the binaries load the GPU
# machine's driver (libcuda.so.1) and CUDA 13 libraries (torch's, found by gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-toolchain.sh)"
lib=$CUDA_ROOT/lib
out=gpu-bundle
build() {
  cargo build --release -p dynact-cli --features nccl --bin train-lm
  cargo test --release -p dynact-model --features cuda --test gpu_kernels --no-run
  cargo test --release -p dynact-trainer --features nccl --lib --no-run
}
stubs() {
  # The symbols the CUDA crates leave undefined, by the library that defines them.
  local undefined
  undefined=$(for f in target/release/deps/libcudarc-*.rlib target/release/deps/libcandle_core-*.rlib \
    target/release/build/candle-kernels-*/out/*.a; do nm -u "$f" 2>/dev/null; done | awk '{print $2}' | sort -u)
  local name soname pattern
  while read -r name soname pattern; do
    {
      echo "// Link-time stub of $soname: the real library is loaded at run time."
      grep -E "$pattern" <<<"$undefined" | sed 's/.*/void &(void) {}/'
    } >"$lib/stub-$name.c"
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$lib/lib$name.so" "$lib/stub-$name.c"
  done <<'LIBS'
cuda libcuda.so.1 ^cu[A-Z]
cublas libcublas.so.13 ^cublas[^L]
cublasLt libcublasLt.so.13 ^cublasLt
curand libcurand.so.10 ^curand
nvrtc libnvrtc.so.13 ^nvrtc
nccl libnccl.so.2 ^nccl
LIBS
  ln -sf libcudart.so.13 "$lib/libcudart.so"
}
if [ ! -e "$lib/libnccl.so" ]; then
  build >/dev/null 2>&1 || true   # compiles everything; the first link fails without stubs
  stubs
fi
build
[ "${1:-}" = "--link-only" ] && exit 0
rm -rf "$out" && mkdir -p "$out"
cp target/release/train-lm "$out/"
newest() { find target/release/deps -maxdepth 1 -type f -executable -name "$1-*" -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2; }
cp "$(newest gpu_kernels)" "$out/gpu_kernels"
cp "$(newest dynact_trainer)" "$out/trainer_unit"
strip "$out"/*
xz -T0 -6 "$out"/*
du -ch "$out"/* | tail -1
