#!/usr/bin/env bash
# Bits per byte of several models on the same text, each through its own tokenizer (bits per
# byte do not depend on the tokenizer, perplexities do), as one Markdown table:
#
#   scripts/compare-bpb.sh DATA [--split val|test] [--max-tokens N] -- SOURCE...
#
# SOURCE is anything eval-ppl takes: a run directory, a checkpoint folder, hf://OWNER/NAME
# (from the Hugging Face cache; set HF_HUB_OFFLINE=1 to use only what is cached). Needs
# eval-ppl on PATH (cargo install --path crates/cli) and python3.
set -euo pipefail
data=${1:?usage: scripts/compare-bpb.sh DATA [eval-ppl options] -- SOURCE...}
shift
opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "error: no SOURCE given; usage: scripts/compare-bpb.sh DATA [options] -- SOURCE..." >&2; exit 1; }
echo "| model | architecture | tokens scored | bits per byte | perplexity (own tokens) |"
echo "|---|---|---:|---:|---:|"
for src in "$@"; do
  json=$(eval-ppl "$src" --data "$data" "${opts[@]}" --json)
  python3 - "$src" "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
arch = r.get("ffn") or r["model_type"]
print(f"| {sys.argv[1]} | {arch} | {r['tokens']} | {r['bpb']:.3f} | {r['ppl']:.2f} |")
PY
done
