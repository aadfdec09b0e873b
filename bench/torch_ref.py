#!/usr/bin/python3
"""bench/torch_ref.py: PyTorch versions of the models moelm trains, timed like `moelm bench`.

    /usr/bin/python3 bench/torch_ref.py --config PRESET [-t THREADS] [--steps N] [--warmup N]
                                        [--gen N] [--set key=value ...] [--bf16]

--bf16 also times the training steps under torch.autocast("cpu", dtype=torch.bfloat16) (train_bf16_tok_s).
Run it at its best (bench/compare.sh does): jemalloc through LD_PRELOAD (this VM pays ~11 us a first-touched
page; torch's allocator frees and re-faults big buffers every step without it), OMP_NUM_THREADS = -t.

Same sizes and structure as moelm (src/model/model.h; tests/ref/torch_ref.py is the independent
correctness reference this borrows from): the seed stack (post-norm, causal, ReLU FFN, then
x + moe(x) and the head relu(drop(x) W1^T + b1) W2^T + b2) and the lm (pre-norm, GELU, tied head).
Routers: random (one expert for the whole pass, gate 1), switch (top-1, capacity, first-come drop
order, load-balancing and z losses), topk (GShard, K rounds of argmax), soft (every expert, gates =
softmax). Dropout as moelm applies it (embeddings, attention and FFN outputs, the seed head input).

What is timed, as moelm bench does: a training step (zero grad, forward, cross-entropy + aux,
backward, global-norm clip, Adam / AdamW) on random tokens of the preset's batch, and generation
(batch 1, one prompt token, then N greedy tokens) through a preallocated KV cache under
torch.inference_mode(). It prints tok/s, GFLOP/s from the same analytic FLOP count as moelm
(src/train/bench.c), the BLAS torch calls, and the peak RSS (before the timing's end).

Written as a competent PyTorch user would write it: batched GEMMs for the soft router's experts
(all experts see every token), one GEMM pair per expert over its gathered rows for switch / topk.
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- presets: mirror src/model/config.c ------------------------------------------------------------

BASE = dict(model_type="lm", vocab_size=0, d_model=256, num_heads=4, num_layers=4, d_ff=1024, n_positions=256,
            dropout_rate=0.1, hidden_act="gelu", tie_word_embeddings=True, head_hidden=512, num_experts=0,
            sparse_step=2, router_type="switch", num_experts_per_tok=1, capacity_factor=1.25,
            eval_capacity_factor=2.0, min_capacity=4, expert_d_ff=0, router_aux_loss_coef=0.01,
            router_z_loss_coef=0.001, layer_norm_epsilon=1e-5)
TRAIN = dict(batch_size=32, seq_len=64, lr=1e-3, adamw=True, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
             grad_clip=1.0)


def preset(name):
    c, t = dict(BASE), dict(TRAIN)
    if name.startswith("seed-"):
        c.update(model_type="seed", d_model=256, num_heads=8, num_layers=6, d_ff=512, expert_d_ff=512,
                 head_hidden=512, n_positions=64, hidden_act="relu", tie_word_embeddings=False, num_experts=32,
                 dropout_rate=0.1, router_type={"seed-moe": "random", "seed-gating": "soft",
                                                "seed-switch": "switch"}[name])
        t.update(batch_size=64, seq_len=30, lr=1e-3, adamw=False, weight_decay=0.0, beta2=0.999, grad_clip=1.0)
    elif name == "tiny":
        c.update(d_model=32, num_heads=2, num_layers=2, d_ff=64, n_positions=64, num_experts=4, dropout_rate=0.0)
        t.update(batch_size=4, seq_len=16, lr=3e-3)
    elif name == "demo":
        c.update(d_model=128, num_heads=4, num_layers=2, d_ff=256, n_positions=64, num_experts=4, sparse_step=1,
                 dropout_rate=0.0)
        t.update(batch_size=16, seq_len=32, lr=2e-3, weight_decay=0.0)
    elif name == "dense-ptb":
        c.update(dropout_rate=0.3)
    elif name == "switch-ptb":
        c.update(dropout_rate=0.3, num_experts=8, sparse_step=2)
    else:
        raise SystemExit("unknown preset %s" % name)
    return c, t


def apply_set(c, t, kv):
    k, v = kv.split("=", 1)
    d = c if k in c else t if k in t else None
    if d is None:
        raise SystemExit("unknown key %s" % k)
    old = d[k]
    d[k] = (v in ("1", "true")) if isinstance(old, bool) else type(old)(v) if old is not None else v


# ---- the model ------------------------------------------------------------------------------------------

class Experts(nn.Module):
    """E FFNs as slabs [E, H, C], [E, H], [E, C, H], [E, C] (moelm's layout)."""

    def __init__(self, E, C, H):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(E, H, C) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(E, H))
        self.w2 = nn.Parameter(torch.randn(E, C, H) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(E, C))

    def one(self, e, x):
        return F.linear(F.relu(F.linear(x, self.w1[e], self.b1[e])), self.w2[e], self.b2[e])

    def all(self, x):
        """every expert on every row: [E, N, C] by batched GEMMs"""
        h = F.relu(torch.baddbmm(self.b1.unsqueeze(1), x.unsqueeze(0).expand(self.w1.shape[0], -1, -1),
                                 self.w1.transpose(1, 2)))
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2.transpose(1, 2))


class MoE(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.E, self.router = c["num_experts"], c["router_type"]
        self.K = c["num_experts_per_tok"] if self.router == "topk" else 1
        C, H = c["d_model"], c["expert_d_ff"] or c["d_ff"]
        self.c = c
        self.act = act
        if self.router not in ("random", "hash"):
            self.wr = nn.Parameter(torch.randn(self.E, C) * math.sqrt(0.1 / C))
        self.experts = Experts(self.E, C, H)
        self.kept = 0

    def capacity(self, N, training):
        if self.router in ("soft", "random"):
            return N
        cf = self.c["capacity_factor"] if training else self.c["eval_capacity_factor"]
        if cf <= 0:
            return N
        cap = max(int(math.floor(cf * N * self.K / self.E + 0.5)), self.c["min_capacity"])
        return min(max(cap, 1), N)

    def forward(self, x):
        """x [N, C] -> (out [N, C], aux)"""
        N = x.shape[0]
        if self.router == "random":
            e = int(torch.randint(self.E, ()))
            self.kept = N
            return self.experts.one(e, x), x.new_zeros(())
        with torch.autocast("cpu", enabled=False):   # the router in float under autocast (Switch's selective precision)
            logits = x.float() @ self.wr.t()
        probs = torch.softmax(logits, dim=-1)
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        if self.router == "soft":
            self.kept = N * self.E
            y = self.experts.all(x)                                    # [E, N, C]
            out = torch.einsum("ne,enc->nc", probs, y)
            return out, self.c["router_z_loss_coef"] * z
        with torch.no_grad():
            gv, choice = probs.topk(self.K, dim=-1)                    # [N, K]
            # first-come capacity: all first choices in token order, then second choices, ...
            onehot = F.one_hot(choice.t().reshape(-1), self.E)         # [K*N, E] choice-major
            pos = (onehot.cumsum(0) - 1).mul_(onehot).sum(-1).view(self.K, N).t()
            keep = pos < self.capacity(N, self.training)
            f = onehot.sum(0).float() / (N * self.K)
        gates = probs.gather(1, choice)
        out = torch.zeros_like(x)
        kept = 0
        for e in range(self.E):
            sel = (choice == e) & keep
            tok, slot = sel.nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            kept += tok.numel()
            y = self.experts.one(e, x[tok])
            out.index_add_(0, tok, (gates[tok, slot].unsqueeze(1) * y).to(out.dtype))
        self.kept = kept
        balance = self.E * (f * probs.mean(0)).sum()
        return out, self.c["router_aux_loss_coef"] * balance + self.c["router_z_loss_coef"] * z


class Block(nn.Module):
    def __init__(self, c, sparse):
        super().__init__()
        C, H = c["d_model"], c["d_ff"]
        self.NH = c["num_heads"]
        self.ln1 = nn.LayerNorm(C, eps=c["layer_norm_epsilon"])
        self.ln2 = nn.LayerNorm(C, eps=c["layer_norm_epsilon"])
        self.qkv = nn.Linear(C, 3 * C)
        self.out = nn.Linear(C, C)
        self.act = F.relu if c["hidden_act"] == "relu" else F.gelu
        self.moe = MoE(c, self.act) if sparse else None
        if not sparse:
            self.fc1, self.fc2 = nn.Linear(C, H), nn.Linear(H, C)
        self.drop = nn.Dropout(c["dropout_rate"])

    def attn(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.NH, hs).transpose(1, 2) for t in (q, k, v))
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        y = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, C))

    def ffn(self, h):
        if self.moe is None:
            return self.fc2(self.act(self.fc1(h))), h.new_zeros(())
        B, T, C = h.shape
        y, aux = self.moe(h.reshape(B * T, C))
        return y.view(B, T, C), aux

    def forward(self, x, seed):
        if seed:   # post-norm
            x = self.ln1(x + self.drop(self.attn(x)))
            y, aux = self.ffn(x)
            return self.ln2(x + self.drop(y)), aux
        x = x + self.drop(self.attn(self.ln1(x)))
        y, aux = self.ffn(self.ln2(x))
        return x + self.drop(y), aux

    # one position against the cache: kc, vc [P, C]; x [1, C]
    def step(self, x, kc, vc, t, seed):
        C = x.shape[-1]
        hs = C // self.NH
        a_in = x if seed else self.ln1(x)
        q, k, v = self.qkv(a_in).split(C, dim=-1)
        kc[t] = k[0]
        vc[t] = v[0]
        qh = q.view(self.NH, 1, hs)
        kh = kc[:t + 1].view(t + 1, self.NH, hs).transpose(0, 1)
        vh = vc[:t + 1].view(t + 1, self.NH, hs).transpose(0, 1)
        att = torch.softmax((qh @ kh.transpose(1, 2)) * (1.0 / math.sqrt(hs)), dim=-1)
        y = self.out((att @ vh).reshape(1, C))
        if seed:
            x = self.ln1(x + y)
            f, _ = self.ffn(x.unsqueeze(0))
            return self.ln2(x + f[0])
        x = x + y
        f, _ = self.ffn(self.ln2(x).unsqueeze(0))
        return x + f[0]


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        V, C, L = c["vocab_size"], c["d_model"], c["num_layers"]
        self.seed = c["model_type"] == "seed"
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(c["n_positions"], C)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        E, step = c["num_experts"], c["sparse_step"]

        def sparse(l):
            return not self.seed and E > 1 and step > 0 and (step == 1 or l % step == 1)
        self.blocks = nn.ModuleList([Block(c, sparse(l)) for l in range(L)])
        self.drop = nn.Dropout(c["dropout_rate"])
        if self.seed:
            self.head_moe = MoE(c, F.relu)
            self.head1 = nn.Linear(C, c["head_hidden"])
            self.head2 = nn.Linear(c["head_hidden"], V)
        else:
            self.lnf = nn.LayerNorm(C, eps=c["layer_norm_epsilon"])
            self.lm_head = None if c["tie_word_embeddings"] else nn.Linear(C, V, bias=False)

    def head(self, x):
        if self.seed:
            y, aux = self.head_moe(x)
            return self.head2(F.relu(self.head1(self.drop(x + y)))), aux
        x = self.lnf(x)
        return (x @ self.wte.weight.t() if self.lm_head is None else self.lm_head(x)), x.new_zeros(())

    def forward(self, idx):
        B, T = idx.shape
        x = self.drop(self.wte(idx) + self.wpe.weight[:T])
        aux = x.new_zeros(())
        for blk in self.blocks:
            x, a = blk(x, self.seed)
            aux = aux + a
        logits, a = self.head(x.reshape(B * T, -1))
        return logits, aux + a

    def moe_layers(self):
        ms = [b.moe for b in self.blocks if b.moe is not None]
        return ms + ([self.head_moe] if self.seed else [])

    @torch.inference_mode()
    def generate(self, first, n, cache):
        t, tok, out = 0, first, []
        for i in range(n):
            x = (self.wte.weight[tok] + self.wpe.weight[t]).unsqueeze(0)
            for blk, (kc, vc) in zip(self.blocks, cache):
                x = blk.step(x, kc, vc, t, self.seed)
            logits, _ = self.head(x)
            tok = int(torch.argmax(logits[0]))
            out.append(tok)
            t += 1
        return out


def forward_flops(c, B, T, model):
    """the analytic count of src/train/bench.c: matmuls, causal attention, experts over kept slots"""
    N, C, V, H, HH = B * T, c["d_model"], c["vocab_size"], c["d_ff"], c["head_hidden"]
    EH = c["expert_d_ff"] or H
    f = 0.0
    for blk in model.blocks:
        f += 2 * N * C * 3 * C + 2 * N * C * C + 2 * B * T * (T + 1) * C
        f += moe_flops(c, blk.moe, N, C, EH) if blk.moe is not None else N * 4 * C * H
    if model.seed:
        f += moe_flops(c, model.head_moe, N, C, EH) + 2 * N * C * HH + 2 * N * HH * V
    else:
        f += 2 * N * C * V
    return f


def moe_flops(c, m, N, C, EH):
    return m.kept * 4 * C * EH + (0 if m.router in ("random", "hash") else 2 * N * C * m.E)


GEN_PASSES = 5


def timed_generation(model, first, n, cache):
    """tokens/s: a warm-up pass, then the median of GEN_PASSES timed passes (as `moelm bench` times it)"""
    tps = []
    for rep in range(GEN_PASSES + 1):
        t0 = time.perf_counter()
        model.generate(first, n, cache)
        if rep:
            tps.append(n / (time.perf_counter() - t0))
    return sorted(tps)[GEN_PASSES // 2]


def openblas_core():
    """the kernel of the OpenBLAS torch loaded (Debian: libblas.so.3 -> OpenBLAS), or why unknown"""
    import ctypes
    for name in ("libopenblas.so.0", "libblas.so.3"):
        try:
            f = ctypes.CDLL(name).openblas_get_corename   # the already-loaded library: the same state
            f.restype = ctypes.c_char_p
            return f().decode()
        except (OSError, AttributeError):
            continue
    return "unknown (not OpenBLAS)"


def timed_training(model, opt, batches, c, t, B, T, warmup, steps, bf16):
    """warmup + steps training steps (float, or forward and loss under bf16 autocast); returns tok/s,
    GFLOP/s, ms a step over the timed steps, and the last loss"""
    t_total, flops, loss = 0.0, 0.0, torch.zeros(())
    for s in range(warmup + steps):
        inp, tgt = batches[s % 4]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, aux = model(inp)
            loss = F.cross_entropy(logits, tgt)
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        dt = time.perf_counter() - t0
        if s >= warmup:
            t_total += dt
            flops += 3 * forward_flops(c, B, T, model)
    if not steps:
        return 0.0, 0.0, 0.0, 0.0
    return B * T * steps / t_total, flops / t_total / 1e9, 1e3 * t_total / steps, float(loss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="seed-switch")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gen", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--bf16", action="store_true", help="also time training under torch.autocast(bfloat16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    c, t = preset(a.config)
    for kv in a.set:
        apply_set(c, t, kv)
    if c["vocab_size"] == 0:
        c["vocab_size"] = a.vocab
    c["n_positions"] = max(c["n_positions"], t["seq_len"], a.gen + 1)
    B, T, V = t["batch_size"], t["seq_len"], c["vocab_size"]
    model = Model(c)
    n_params = sum(p.numel() for p in model.parameters())
    Opt = torch.optim.AdamW if t["adamw"] else torch.optim.Adam
    opt = Opt(model.parameters(), lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"],
              weight_decay=t["weight_decay"])
    blas = [l.strip() for l in torch.__config__.show().splitlines() if "BLAS_INFO" in l]
    print("openblas kernel: %s" % openblas_core())
    print("torch %s, %d threads, %s params %.2fM, config %s, batch %d x %d" %
          (torch.__version__, torch.get_num_threads(), "BLAS_INFO=" + (blas[0].split("BLAS_INFO=")[1].split(",")[0]
                                                                      if blas else "?"), n_params / 1e6, a.config, B, T))
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(V, (B, T), generator=g), torch.randint(V, (B * T,), generator=g)) for _ in range(4)]

    model.train()
    tps, gfl, ms, loss = timed_training(model, opt, batches, c, t, B, T, a.warmup, a.steps, False)
    if a.steps:
        print("train: %.2f ms/step, %.0f tok/s, %.1f GFLOP/s, loss %.4f" % (ms, tps, gfl, loss))
    tps16, gfl16, ms16 = 0.0, 0.0, 0.0
    if a.bf16 and a.steps:
        # the same steps under torch.autocast (bf16 matmuls through oneDNN, float master weights,
        # loss and softmax in float): PyTorch's mixed precision on CPU, the peer of `moelm train --bf16`
        tps16, gfl16, ms16, loss16 = timed_training(model, opt, batches, c, t, B, T, a.warmup, a.steps, True)
        print("train bf16 autocast: %.2f ms/step, %.0f tok/s, %.1f GFLOP/s, loss %.4f" % (ms16, tps16, gfl16, loss16))

    gen_tps = 0.0
    if a.gen > 0:
        model.eval()
        C, P = c["d_model"], c["n_positions"]
        cache = [(torch.zeros(P, C), torch.zeros(P, C)) for _ in model.blocks]
        gen_tps = timed_generation(model, int(batches[0][0][0, 0]), a.gen, cache)
        print("generate: batch 1, %d new tokens, %.1f tok/s" % (a.gen, gen_tps))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("memory: peak RSS %.1f MB" % rss)
    # the same generation with the model (weights, activations, cache) in bfloat16: torch's own
    # reduced-precision inference, the peer of `moelm generate --bf16` (which keeps activations float)
    gen16_tps = 0.0
    if a.gen > 0:
        model.to(torch.bfloat16)
        cache = [(torch.zeros(P, C, dtype=torch.bfloat16), torch.zeros(P, C, dtype=torch.bfloat16)) for _ in model.blocks]
        gen16_tps = timed_generation(model, int(batches[0][0][0, 0]), a.gen, cache)
        print("generate bf16: %.1f tok/s" % gen16_tps)
    print("RESULT config=%s threads=%d train_tok_s=%.1f train_ms_step=%.3f train_gflops=%.2f train_bf16_tok_s=%.1f "
          "train_bf16_ms_step=%.3f gen_tok_s=%.2f gen_bf16_tok_s=%.2f rss_mb=%.1f kernel=%s" %
          (a.config, a.threads, tps, ms, gfl, tps16, ms16, gen_tps, gen16_tps, rss, openblas_core()))


if __name__ == "__main__":
    main()
