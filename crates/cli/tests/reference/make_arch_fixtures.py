"""Writes the tiny public-architecture checkpoints of tests/public_models.rs and their
reference numbers, computed by transformers:

    python crates/cli/tests/reference/make_arch_fixtures.py

For each of gpt2, qwen2 (weights stored as bf16), mistral and phi3: a randomly initialised
model (fixed seed, 2 layers, width 32) saved with save_pretrained into
tests/fixtures/archs/<arch>/ with a byte-level BPE tokenizer.json, and expected.json holding the
token ids of a fixed text, their perplexity in eval-ppl's windows (non-overlapping windows of
16 tokens, every target scored once, cross-entropy summed in float64) and the greedy
continuation of a prompt. Run it again only to change the fixtures."""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "archs"
TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. "
) * 3
PROMPT = "The quick brown"
SEQ = 16
VOCAB = 300


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT], trainer)
    return tok


def configs(vocab):
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0)
    return {
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           n_inner=None, tie_word_embeddings=True),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False,
                             sliding_window=64, max_window_layers=2),
        "mistral": MistralConfig(**common, tie_word_embeddings=False, sliding_window=None),
        "phi3": Phi3Config(**common, tie_word_embeddings=False, pad_token_id=0,
                           original_max_position_embeddings=64),
    }


def perplexity(model, ids):
    windows = (len(ids) - 1) // SEQ
    nll = 0.0
    with torch.no_grad():
        for i in range(windows):
            x = torch.tensor(ids[i * SEQ:(i + 1) * SEQ])
            y = torch.tensor(ids[i * SEQ + 1:(i + 1) * SEQ + 1])
            logits = model(x[None]).logits[0].double()
            nll += F.cross_entropy(logits, y, reduction="sum").item()
    return nll / (windows * SEQ), windows * SEQ


def main():
    tok = tokenizer()
    vocab = tok.get_vocab_size()
    ids = tok.encode(TEXT).ids
    prompt = tok.encode(PROMPT).ids
    for arch, cfg in configs(vocab).items():
        torch.manual_seed(0)
        folder = OUT / arch
        folder.mkdir(parents=True, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg)
        dtype = torch.bfloat16 if arch == "qwen2" else torch.float32
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        tok.save(str(folder / "tokenizer.json"))
        # The reference reads the weights back as stored, widened to float32.
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ce, tokens = perplexity(model, ids)
        with torch.no_grad():
            greedy = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                    pad_token_id=0)[0, len(prompt):].tolist()
        for extra in ["generation_config.json"]:
            (folder / extra).unlink(missing_ok=True)
        expected = {"text": TEXT, "seq_len": SEQ, "ids": ids, "ce": ce, "ppl": math.exp(ce),
                    "tokens": tokens, "prompt": PROMPT, "greedy": greedy,
                    "stored_dtype": str(dtype).replace("torch.", "")}
        (folder / "expected.json").write_text(json.dumps(expected, indent=1))
        print(arch, "ppl", math.exp(ce), "greedy", greedy)


if __name__ == "__main__":
    main()
