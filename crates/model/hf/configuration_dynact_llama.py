# Written by dynact-lm beside every dynActGLU checkpoint, so that transformers can load it with
# AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).
"""Configuration of a Llama decoder whose MLP activation is dynAct (dynActGLU)."""

from transformers import LlamaConfig


class DynActLlamaConfig(LlamaConfig):
    """LlamaConfig plus dynact-lm's keys.

    dynact: {"base": "silu" | "gelu" | "mish" | "relu",
             "granularity": "per_layer" | "per_channel",
             "alpha_init": float, "beta_init": float}
    """

    model_type = "dynact_llama"

    def __init__(self, dynact=None, ffn="dynactglu", dropout=0.0, **kwargs):
        self.dynact = dict(dynact or {})
        self.ffn = ffn
        self.dropout = dropout
        super().__init__(**kwargs)
