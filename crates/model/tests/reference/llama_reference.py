"""Reference logits for tests/parity.rs: a line-by-line numpy port of Hugging Face transformers'
LlamaForCausalLM forward pass (modeling_llama.py: LlamaRMSNorm, LlamaRotaryEmbedding with
rotate_half, repeat_kv, eager attention with a causal mask, LlamaMLP), in float64, plus the
dynActGLU gate f(x) = silu(x) * (alpha - beta) + beta * x.

Weights come from a formula both sides compute (see `weight` below and in parity.rs), so the
test needs no file. Run: python3 crates/model/tests/reference/llama_reference.py
"""
import numpy as np

V, C, F, L, H, G = 16, 16, 24, 2, 4, 2  # vocab, hidden, intermediate, layers, heads, kv heads
D = C // H
EPS, THETA = 1e-5, 10000.0
IDS = [3, 14, 1, 5, 9, 2, 6, 11]
DYNACT = [(1.2, 0.3), (0.8, -0.1)]  # (alpha, beta) per layer


def weight(name, shape):
    """0.3 * sin(0.37 * i + 0.11 * len(name)) with i the flat index; norms get 1 + 0.1 * that."""
    n = int(np.prod(shape))
    w = 0.3 * np.sin(0.37 * np.arange(n) + 0.11 * len(name))
    if name.endswith("norm.weight"):
        w = 1.0 + 0.1 * w
    return w.reshape(shape)


def rms_norm(x, w):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + EPS))


def rotate_half(x):
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return np.concatenate([-x2, x1], axis=-1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(dynact):
    T = len(IDS)
    x = weight("model.embed_tokens.weight", (V, C))[IDS]  # (T, C)
    inv_freq = 1.0 / THETA ** (np.arange(0, D, 2) / D)
    freqs = np.outer(np.arange(T), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)  # (T, D)
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms_norm(x, weight(p + "input_layernorm.weight", (C,)))
        q = (h @ weight(p + "self_attn.q_proj.weight", (H * D, C)).T).reshape(T, H, D).transpose(1, 0, 2)
        k = (h @ weight(p + "self_attn.k_proj.weight", (G * D, C)).T).reshape(T, G, D).transpose(1, 0, 2)
        v = (h @ weight(p + "self_attn.v_proj.weight", (G * D, C)).T).reshape(T, G, D).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, H // G, axis=0), np.repeat(v, H // G, axis=0)  # repeat_kv
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v  # (H, T, D)
        a = a.transpose(1, 0, 2).reshape(T, H * D)
        x = x + a @ weight(p + "self_attn.o_proj.weight", (C, H * D)).T
        h = rms_norm(x, weight(p + "post_attention_layernorm.weight", (C,)))
        gate = h @ weight(p + "mlp.gate_proj.weight", (F, C)).T
        if dynact:
            alpha, beta = DYNACT[i]
            gate = silu(gate) * (alpha - beta) + beta * gate
        else:
            gate = silu(gate)
        up = h @ weight(p + "mlp.up_proj.weight", (F, C)).T
        x = x + (gate * up) @ weight(p + "mlp.down_proj.weight", (C, F)).T
    x = rms_norm(x, weight("model.norm.weight", (C,)))
    return x @ weight("lm_head.weight", (V, C)).T  # (T, V)


for dynact in (False, True):
    logits = forward(dynact)
    name = "DYNACTGLU" if dynact else "SWIGLU"
    flat = ", ".join(f"{v:.6f}" for v in logits.ravel())
    print(f"const {name}: [f64; {logits.size}] = [{flat}];")
