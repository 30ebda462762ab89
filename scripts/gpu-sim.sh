#!/usr/bin/env bash
# Runs the CUDA path without a GPU: the CUDA binaries scripts/gpu-bundle.sh links (train-lm,
# the GPU tests) load stand-ins for libcuda.so.1, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13 and libnccl.so.2 (crates/cuda-sim-libs) instead of NVIDIA's,
# and every kernel runs on the PTX simulator (crates/cuda-sim). Ends with "N passed, N failed".
#
#   scripts/gpu-sim.sh                          the checks (CI runs them)
#   scripts/gpu-sim.sh --profile CONFIG [ARGS]  one training step of CONFIG, counted per kernel
#   scripts/gpu-sim.sh --exports                rewrites crates/cuda-sim-libs/exports.txt
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-toolchain.sh)"
scripts/gpu-bundle.sh --link-only >/dev/null

bins=(target/release/train-lm)
# The newest test binary of that name built with CUDA: `cargo test --workspace` builds one
# without it (no cu* imports), which may be newer.
newest() {
  local b
  mapfile -t found < <(find target/release/deps -maxdepth 1 -type f -executable -name "$1-*" -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2)
  for b in "${found[@]}"; do
    # grep reads all of nm's output: with -q, nm could die of SIGPIPE and fail the pipeline.
    if nm -D --undefined-only "$b" 2>/dev/null | grep ' cuInit' >/dev/null; then
      echo "$b"
      return
    fi
  done
}
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

if [ "${1:-}" = "--profile" ]; then
  # One step = a 2-step run minus a 1-step run (the same set-up, evaluation and checkpoint),
  # so module loads and first-step allocations drop out. Each launch runs a sample of
  # DYNACT_CUDA_SIM_SAMPLE_BLOCKS blocks (default 16, one from each sixteenth of the grid) and
  # its counts are scaled to its grid;
  # GEMMs are counted by shape, not computed. The outputs are therefore not the model's.
  config=$2
  shift 2
  # The raw per-launch lines stay in target/cuda-sim-profile/ (1.jsonl, 2.jsonl) for a closer look.
  work=target/cuda-sim-profile
  rm -rf "$work" && mkdir -p "$work"
  export DYNACT_CUDA_SIM_SAMPLE_BLOCKS=${DYNACT_CUDA_SIM_SAMPLE_BLOCKS:-16}
  for steps in 1 2; do
    DYNACT_CUDA_SIM_PROFILE="$work/$steps.jsonl" target/release/train-lm --config "$config" --device cuda:0 \
      --steps "$steps" --set eval.max_tokens=256 --set eval.batch_size=1 --run-dir "$work/run$steps" "$@" \
      >"$work/log$steps" 2>&1 || { cat "$work/log$steps"; exit 1; }
  done
  python3 scripts/sim_profile.py "$work/1.jsonl" "$work/2.jsonl"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
# A test binary passes when its tests pass and there are some (a filter that matches nothing,
# or a binary built without CUDA, must not count as a pass).
tests() {
  "$@" 2>&1 | tee "$work/tests"
  [ "${PIPESTATUS[0]}" -eq 0 ] && grep -qE '^test result: ok\. [1-9]' "$work/tests"
}
check "gpu_kernels (CUDA ops, Candle's and ours, and a whole model against the CPU)" tests "$gpu_kernels" --test-threads 1
check "the trainer's cuda_ tests (AdamW's kernels)" tests "$trainer_unit" cuda_ --test-threads 1

# train-lm: a model small enough to interpret (2 layers, d 32, 16 tokens, batch 2), dropout on.
tiny=(--steps 8 --seq-len 16 --batch-size 2 --set model.hidden_size=32 --set model.intermediate_size=64
  --set model.num_hidden_layers=2 --set model.num_attention_heads=2 --set model.num_key_value_heads=2
  --set model.dropout=0.1 --set train.log_every=1 --set eval.eval_at=[3,8] --set eval.max_tokens=256
  --set eval.batch_size=2)
train() { target/release/train-lm "${tiny[@]}" "$@" >"$work/log" 2>&1 || { cat "$work/log"; return 1; }; }
# Compares two runs' metrics.jsonl and eval.jsonl: loss, gradient norm, alpha, beta and val_ce,
# to a relative tolerance (0: the same bits). Timing fields differ and are left out.
same_run() {
  python3 - "$@" <<'PY'
import json, sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
def rows(run, name, keys):
    return {r["step"]: [r[k] for k in keys if k in r] for r in map(json.loads, open(f"{run}/{name}"))}
def flat(v):
    return [x for e in v for x in (e if isinstance(e, list) else [e])]
for name, keys in [("metrics.jsonl", ["loss", "grad_norm", "alpha", "beta"]), ("eval.jsonl", ["val_ce"])]:
    ra, rb = rows(a, name, keys), rows(b, name, keys)
    assert ra.keys() == rb.keys(), f"{name}: steps {sorted(ra)} and {sorted(rb)}"
    for step in ra:
        for x, y in zip(flat(ra[step]), flat(rb[step])):
            bad = x != y if tol == 0 else abs(x - y) > tol * max(abs(y), 1e-3)
            assert not bad, f"{name} step {step}: {x} vs {y} (tolerance {tol})"
print(f"{a} and {b} agree (tolerance {tol})")
PY
}
# Every logged step on the GPU has the device's memory in use (this model's weights, gradients
# and AdamW moments take about 0.6 MB, its weights alone 0.15 MB), and
# none on the CPU.
memory_logged() {
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'PY'
import json, sys
gpu = [json.loads(l) for l in open(sys.argv[1])]
cpu = [json.loads(l) for l in open(sys.argv[2])]
assert all(r.get("device_memory_mb", 0) > 0.3 for r in gpu), [r.get("device_memory_mb") for r in gpu]
assert not any("device_memory_mb" in r for r in cpu)
print(f"device memory in use logged: {gpu[-1]['device_memory_mb']:.1f} MB")
PY
}
cuda_matches_cpu() {
  train --device cpu --run-dir "$work/cpu" && train --device cuda:0 --run-dir "$work/cuda" &&
    train --device cuda:0 --dtype bf16 --run-dir "$work/bf16" &&
    same_run "$work/cuda" "$work/cpu" 1e-5 && same_run "$work/bf16" "$work/cpu" 2e-2 &&
    memory_logged "$work/cuda" "$work/cpu"
}
check "8 training steps on cuda (f32 and bf16) against the CPU, device memory logged" cuda_matches_cpu
# bf16 on a GPU older than Ampere (the stand-in driver reports 7.5): one error line (after the
# tiny config's notices), no run directory.
older_gpu_refuses_bf16() {
  if DYNACT_CUDA_SIM_COMPUTE_CAPABILITY=7.5 target/release/train-lm "${tiny[@]}" --device cuda:0 \
    --dtype bf16 --run-dir "$work/old" >"$work/log" 2>&1; then
    echo "a bf16 run started on a GPU of compute capability 7.5"
    return 1
  fi
  cat "$work/log"
  [ "$(grep -c '^error' "$work/log")" -eq 1 ] && tail -1 "$work/log" | grep -q "compute capability 8.0 or newer" &&
    [ ! -e "$work/old" ]
}
check "bf16 on a GPU of compute capability 7.5 is refused in one line" older_gpu_refuses_bf16
# Logged every 4 steps, so the GPU's steps are read in batches (steps 1-2 at the step-3
# evaluation, then 4, then 5-7 at 8): the same records as the CPU's, decided step by step.
read_in_batches() {
  train --device cpu --set train.log_every=4 --run-dir "$work/cpu4" &&
    train --device cuda:0 --set train.log_every=4 --run-dir "$work/cuda4" &&
    same_run "$work/cuda4" "$work/cpu4" 1e-5
}
check "steps read from the GPU only at logging, evaluation and the end" read_in_batches
killed_and_resumed() {
  target/release/train-lm "${tiny[@]}" --device cuda:0 --run-dir "$work/killed" >/dev/null 2>&1 &
  local pid=$!
  while [ ! -e "$work/killed/latest" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "the run ended before its step-3 checkpoint"; return 1; }
    sleep 0.05
  done
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  [ "$(cat "$work/killed/latest")" = step-000003 ] || { echo "killed after $(cat "$work/killed/latest")"; return 1; }
  target/release/train-lm --resume "$work/killed" >"$work/log" 2>&1 || { cat "$work/log"; return 1; }
  same_run "$work/killed" "$work/cuda" 0 &&
    cmp "$work/killed/step-000008/model.safetensors" "$work/cuda/step-000008/model.safetensors"
}
check "SIGKILL after the step-3 checkpoint and --resume on cuda: the same bits" killed_and_resumed
nccl_rank() {
  DYNACT_CUDA_SIM_PROFILE="$work/nccl.jsonl" RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 \
    DYNACT_NCCL_ID_FILE="$work/nccl-id" train --device cuda:0 --run-dir "$work/nccl" &&
    grep -q '"kernel":"ncclAllReduce"' "$work/nccl.jsonl" && same_run "$work/nccl" "$work/cuda" 1e-6
}
check "one NCCL rank (torchrun-style launch) against one process" nccl_rank
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
