# Written by dynact-lm beside every dynActGLU checkpoint, so that transformers can load it with
# AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).
"""dynActGLU: Llama with dynAct, f(x) = base(x) * (alpha - beta) + beta * x, as the MLP's gate
activation. alpha and beta are the checkpoint's model.layers.{i}.mlp.act_fn.alpha / .beta
(shape [1] per layer, or [intermediate_size] per channel)."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM

from .configuration_dynact_llama import DynActLlamaConfig

_BASE = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact (erf), as dynact-lm computes it
    "mish": F.mish,
    "relu": F.relu,
}


class DynAct(nn.Module):
    """f(x) = base(x) * (alpha - beta) + beta * x with trainable alpha and beta."""

    def __init__(self, channels, base="silu", alpha_init=1.0, beta_init=0.0):
        super().__init__()
        if base not in _BASE:
            raise ValueError(f"dynact base {base!r}: expected one of {sorted(_BASE)}")
        self.base = _BASE[base]
        self.alpha = nn.Parameter(torch.full((channels,), float(alpha_init)))
        self.beta = nn.Parameter(torch.full((channels,), float(beta_init)))

    def forward(self, x):
        alpha = self.alpha.to(x.dtype)
        beta = self.beta.to(x.dtype)
        return self.base(x) * (alpha - beta) + beta * x


class DynActLlamaForCausalLM(LlamaForCausalLM):
    config_class = DynActLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        dyn = config.dynact
        channels = config.intermediate_size if dyn.get("granularity") == "per_channel" else 1
        for layer in self.model.layers:
            layer.mlp.act_fn = DynAct(
                channels,
                dyn.get("base", "silu"),
                dyn.get("alpha_init", 1.0),
                dyn.get("beta_init", 0.0),
            )
