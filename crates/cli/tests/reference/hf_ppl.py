"""Perplexity of a checkpoint folder through transformers, on the token ids of an llm.c shard,
in eval-ppl's windows (non-overlapping, seq_len tokens scored each, the tail left out).

    python hf_ppl.py FOLDER TOKENS.bin SEQ_LEN

prints one JSON object: {"ppl", "tokens", "transformers", "class"}. Used by
tests/transformers_interop.rs; a dynActGLU folder loads through its remote code."""

import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM


def shard_tokens(path):
    head = np.fromfile(path, dtype="<i4", count=256)
    dtype = "<u2" if head[0] == 20240520 else "<u4"
    return np.fromfile(path, dtype=dtype, offset=1024)[: head[2]].astype(np.int64)


def main(folder, tokens_path, seq_len):
    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.float32
    ).eval()
    ids = torch.from_numpy(shard_tokens(tokens_path))
    windows = (len(ids) - 1) // seq_len
    nll = 0.0
    with torch.no_grad():
        for i in range(windows):
            x = ids[i * seq_len : (i + 1) * seq_len]
            y = ids[i * seq_len + 1 : (i + 1) * seq_len + 1]
            logits = model(x[None]).logits[0].double()
            nll += F.cross_entropy(logits, y, reduction="sum").item()
    print(
        json.dumps(
            {
                "ppl": math.exp(nll / (windows * seq_len)),
                "tokens": windows * seq_len,
                "transformers": transformers.__version__,
                "class": type(model).__name__,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
