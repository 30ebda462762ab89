#!/usr/bin/env bash
# The GPU check of issue "GPU training that is right and fast": on a machine with an NVIDIA GPU,
# Python with torch (CUDA 13 build) and no Rust toolchain, beside a checkout of this repository
# and the folder scripts/gpu-bundle.sh built (default gpu-bundle/):
#
#   scripts/gpu-check.sh [BUNDLE]
#
# 1. runs the GPU tests: every op with a CUDA kernel against the CPU, values and gradients, a
#    whole model's loss and gradients in f32 and bf16, and AdamW's update;
# 2. trains configs/paper.toml for 300 steps with each FFN (train-lm prints s/step, tokens/s
#    and MFU against the GPU's datasheet peak);
# 3. times the PyTorch reference of the same model and batch, eager and torch.compile;
# 4. trains 30 steps as one NCCL rank (a torchrun-style launch) and as one process: the same
#    losses (the data-parallel path on a GPU).
# Every step is bounded (about 8 minutes in all); a failing step is reported and the rest run.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-gpu-bundle}
work=$(mktemp -d)
status=0
step() { echo; echo "== $*"; }

for f in "$bundle"/*.xz; do
  xz -dc "$f" >"$work/$(basename "${f%.xz}")" && chmod +x "$work/$(basename "${f%.xz}")"
done
# The CUDA libraries the binaries link to (cuBLAS, cuRAND, the runtime): torch's own.
nvidia_libs=$(python - <<'PY'
import glob, os, site
dirs = set()
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for so in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ldd "$work/train-lm" | grep "not found"; then
  echo "error: the libraries above are missing; install torch built for CUDA 13 (pip install torch)"
  exit 1
fi

step "1. GPU kernel tests (crates/model/tests/gpu_kernels.rs, and AdamW's in the trainer)"
timeout 120 "$work/gpu_kernels" --test-threads=1 || status=1
timeout 60 "$work/trainer_unit" cuda_ --test-threads=1 || status=1

step "2. configs/paper.toml, 300 steps, bf16, each FFN"
for ffn in swiglu dynactglu; do
  echo "-- $ffn"
  timeout 150 "$work/train-lm" --config configs/paper.toml --ffn "$ffn" --steps 300 \
    --eval-at 300 --set eval.max_tokens=65536 --set train.log_every=100 \
    --run-dir "$work/paper-$ffn" 2>&1 | grep -E "speed:|step +[0-9]+/|s/step|val|error" || status=1
done

step "3. PyTorch reference, same model and batch (bf16 autocast)"
timeout 90 python scripts/pytorch_reference.py --device cuda --dtype bf16 --configs paper --steps 50 || status=1
timeout 150 python scripts/pytorch_reference.py --device cuda --dtype bf16 --configs paper --steps 50 --compile || status=1

step "4. one NCCL rank (RANK=0 WORLD_SIZE=1) against one process, 30 steps of paper.toml"
for mode in process nccl; do
  if [ $mode = nccl ]; then launch="env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0"; else launch=env; fi
  timeout 90 $launch "$work/train-lm" --config configs/paper.toml --steps 30 --eval-at 30 \
    --set eval.max_tokens=16384 --set train.log_every=10 --run-dir "$work/dp-$mode" >/dev/null 2>&1 || status=1
  echo "$mode: $(grep -o '"loss":[^,]*' "$work/dp-$mode/metrics.jsonl" | tr '\n' ' ')"
done

rm -rf "$work"
exit $status
