"""PyTorch reference for dynact-lm's benchmarks: the same decoder (pre-RMSNorm Llama with
rotate-half RoPE, SwiGLU or dynActGLU), the same AdamW with decoupled weight decay on matrices,
global-norm clipping, the same configs and batch shapes, timed the same way.

    python scripts/pytorch_reference.py [--threads N] [--steps N] [--configs cpu-repro,micro,small]
    python scripts/pytorch_reference.py --device cuda --dtype bf16 --configs paper [--compile]

On the CPU it prints the table `cargo bench -p dynact-trainer --bench cpu_train` prints (median
seconds per training step, tokens/s, GFLOP/s and share of the measured f32 matmul peak,
evaluation tokens/s and its model FLOPs' share of that peak, peak RSS), so the two can be read
side by side. On a GPU (what
scripts/gpu-check.sh runs) the peak is a measured bf16 (or f32) matmul, memory is the CUDA peak
allocation, and `paper` is configs/paper.toml's model (dropout 0.2, bf16 autocast as train-lm's
bf16: matmul inputs only). Needs torch (pip install torch); never needed by the tests or CI."""

import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# name: (vocab, d_model, layers, heads, ffn hidden, seq, batch)
CONFIGS = {
    "cpu-repro": (256, 128, 4, 4, 352, 64, 12),
    "micro": (512, 128, 4, 4, 352, 128, 16),
    "small": (4096, 256, 6, 8, 704, 256, 16),
    "paper": (257, 384, 6, 6, 1024, 256, 64),
}
DROPOUT = {"paper": 0.2}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DynAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.silu(x) * (self.alpha - self.beta) + self.beta * x


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, hidden, ffn, dropout=0.0):
        super().__init__()
        self.heads = heads
        self.drop = nn.Dropout(dropout)
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.act = DynAct() if ffn == "dynactglu" else nn.SiLU()

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        att = self.drop(att.float().masked_fill(mask, float("-inf")).softmax(-1))
        y = (att.to(v.dtype) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.o(y))
        h = self.norm2(x)
        return x + self.drop(self.down(self.act(self.gate(h)) * self.up(h)))


class Model(nn.Module):
    def __init__(self, vocab, d, layers, heads, hidden, seq, ffn, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, hidden, ffn, dropout) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(seq).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask)
        return self.head(self.norm(x))


def flops_per_token(vocab, d, layers, heads, hidden, seq):
    matmul = layers * (4 * d * d + 3 * d * hidden) + vocab * d
    return 6 * matmul + 12 * layers * seq * d


def matmul_peak(device, dtype):
    n = 512 if device == "cpu" else 8192
    a = torch.ones(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench(name, ffn, steps, peak, args):
    vocab, d, layers, heads, hidden, seq, batch = CONFIGS[name]
    device = args.device
    torch.manual_seed(0)
    model = Model(vocab, d, layers, heads, hidden, seq, ffn, DROPOUT.get(name, 0.0)).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99), foreach=True)
    step_model = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    y = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    times = []
    warmup = 2 if device == "cpu" else 10
    for i in range(steps + warmup):
        sync(device)
        t = time.perf_counter()
        with autocast:
            logits = step_model(x)
        loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tokens = batch * seq
    with torch.no_grad(), autocast:
        model.eval()
        model(x)
        sync(device)
        eval_s = float("inf")
        for _ in range(10):  # the best of 10, as the Rust bench takes
            t = time.perf_counter()
            model(x).float().log_softmax(-1)
            sync(device)
            eval_s = min(eval_s, time.perf_counter() - t)
        model.train()
    flops = flops_per_token(vocab, d, layers, heads, hidden, seq)
    gflops = tokens * flops / step / 1e9
    # A forward pass: a third of a training step's FLOPs per token.
    eval_gflops = tokens * flops / 3 / eval_s / 1e9
    if device == "cuda":
        mem_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {name} | {ffn} | {step:.4f} | {tokens / step:.0f} | {gflops:.1f} | "
          f"{100 * gflops * 1e9 / peak:.0f}% | {tokens / eval_s:.0f} | "
          f"{100 * eval_gflops * 1e9 / peak:.0f}% | {mem_mb:.0f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--configs", default="cpu-repro,micro,small")
    ap.add_argument("--ffns", default="swiglu,dynactglu")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak = matmul_peak(args.device, peak_dtype)
    where = (f"{args.threads} threads" if args.device == "cpu"
             else torch.cuda.get_device_name(0))
    mode = "torch.compile" if args.compile else "eager"
    print(f"PyTorch {torch.__version__} ({mode}, {args.dtype}), {where}, "
          f"{args.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s (measured, best of 5)")
    memory = "peak RSS MB" if args.device == "cpu" else "peak CUDA MB"
    print(f"| config | ffn | step s (median) | tokens/s | GFLOP/s | of peak | eval tokens/s | "
          f"eval of peak | {memory} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.configs.split(","):
        for ffn in args.ffns.split(","):
            bench(name, ffn, args.steps, peak, args)


if __name__ == "__main__":
    main()
