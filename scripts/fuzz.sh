#!/usr/bin/env bash
# Fuzzes every reader of untrusted bytes (targets in fuzz/, see docs/fuzzing.md) for SECONDS
# each (default 600), seeded from the repository's own configs, checkpoints and text, and
# prints one summary line per target. Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# JOBS=2 runs two targets at a time; TARGETS="a b" picks targets.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-600}
jobs=${JOBS:-1}
targets=${TARGETS:-"token_shard text_source run_config hub_config tokenizer_json model_folder resume_state"}
fix=$root/crates/cli/tests/fixtures
ckpt=$fix/run-v0/step-000003

# One file made of parts joined with 0xFF bytes, the way multi-file targets cut their input.
join_ff() {
  local out=$1
  shift
  python3 - "$out" "$@" <<'PY'
import sys
out, parts = sys.argv[1], sys.argv[2:]
open(out, "wb").write(b"\xff".join(open(p, "rb").read() for p in parts))
PY
}

seed() {
  local c=fuzz/corpus
  mkdir -p $c/{token_shard,text_source,run_config,hub_config,tokenizer_json,model_folder,resume_state}
  python3 - $c/token_shard <<'PY'
import struct, sys
d = sys.argv[1]
for name, magic, version, width, toks in [("u16", 20240520, 1, "H", [1, 2, 65535]), ("u32", 20240801, 7, "I", [70000, 3])]:
    head = struct.pack("<3i", magic, version, len(toks)) + b"\0" * (1024 - 12)
    open(f"{d}/{name}.bin", "wb").write(head + struct.pack(f"<{len(toks)}{width}", *toks))
PY
  head -c 3000 data/tinyshakespeare/input.txt > $c/text_source/shakespeare.txt
  printf '{"text":"one"}\n\n{"text":"two é"}\r\n{"text":""}\n' > $c/text_source/records.jsonl
  for f in configs/*.toml; do cp "$f" $c/run_config/; done
  printf 'model.ffn = "swiglu"\n\xfftrain.steps=10\nmodel.dynact.granularity=per_channel\n' > $c/run_config/with-set
  cp $ckpt/config.json $c/hub_config/dynact.json
  for a in gpt2 mistral phi3 qwen2; do
    cp $fix/archs/$a/config.json $c/hub_config/$a.json
    cp $fix/archs/$a/tokenizer.json $c/tokenizer_json/$a.json
  done
  cp $ckpt/tokenizer.json $c/tokenizer_json/bytes.json
  join_ff $c/model_folder/dynact $ckpt/config.json $ckpt/model.safetensors $ckpt/tokenizer.json
  join_ff $c/model_folder/qwen2 $fix/archs/qwen2/config.json $fix/archs/qwen2/model.safetensors $fix/archs/qwen2/tokenizer.json
  join_ff $c/resume_state/run-v0 $ckpt/trainer_state.json $ckpt/optimizer.safetensors
}

seed
cargo +nightly fuzz build -O
mkdir -p fuzz/logs
run_one() {
  local t=$1
  # libFuzzer: stop after $secs s; an input over 10 s is a hang, over 2 GB of memory a failure.
  (cd fuzz && cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len=262144 -print_final_stats=1) \
    > "fuzz/logs/$t.log" 2>&1
  local rc=$?
  local runs cov ran crashes
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "fuzz/logs/$t.log" | tail -1 | grep -o '[0-9]*' || echo "?")
  # libFuzzer's last line of a run that reached the time limit: "Done N runs in S second(s)".
  ran=$(grep -o 'Done [0-9]* runs in [0-9]* second' "fuzz/logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "")
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: exit $rc, $runs executions in ${ran:-?} s (asked $secs), coverage $cov edges, $crashes crash/slow/timeout files in fuzz/artifacts/$t (log: fuzz/logs/$t.log)"
}
export -f run_one
export secs
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}'
