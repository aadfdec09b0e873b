#!/usr/bin/python3
"""bench/switch_torch.py: the Switch Transformer encoder-decoder in PyTorch, timed like `moelm bench`.

    /usr/bin/python3 bench/switch_torch.py --config seed-hf-switch [-t THREADS] [--steps N] [--warmup N]
                                           [--gen N] [--vocab V] [--set key=value ...]

The same model as moelm's switch_transformers (Hugging Face's SwitchTransformersForConditionalGeneration,
v4; tests/ref/switch_ref.py is the correctness reference): T5 norm, relative position bias from block 0,
no 1/sqrt(d_kv), sparse blocks as HF places them, top-1 router in fp32 with the capacity per sequence,
HF's router losses, tied head scaled by d_model^-0.5. Written as HF writes it (one boolean gather per
expert), with dropout where moelm applies it (embeddings, sublayer outputs, the dense FFN's hidden
layer, the stacks' outputs) and the router's jitter in training.

What is timed, as moelm bench does for this model: a training step (zero grad, forward over a batch of
span-corrupted shapes: B x Te encoder and B x Td decoder tokens of random ids, cross-entropy + router
losses, backward, global-norm clip, AdamW) and generation (batch 1: the encoder over Te tokens once,
then N greedy decoder tokens with a self-attention KV cache and the cross-attention's keys and values
computed once) under torch.inference_mode(). Tokens a training step: B (Te + Td).
"""
import argparse
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from switch_ref import relative_bucket as bucket  # noqa: E402 (T5's bucket function, as the reference has it)

NEG = torch.finfo(torch.float32).min

# ---- presets: mirror src/model/config_switch.c ---------------------------------------------------------

HF = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, expert_capacity=64, num_layers=12,
          num_sparse_encoder_layers=3, num_decoder_layers=12, num_sparse_decoder_layers=3, num_heads=12,
          num_experts=8, router_jitter_noise=0.01, relative_attention_num_buckets=32,
          relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6, router_z_loss_coef=0.001,
          router_aux_loss_coef=0.001, dense_act_fn="relu", tie_word_embeddings=True, capacity_factor=1.25)


def preset(name):
    c = dict(HF)
    t = dict(batch_size=32, seq_len=64, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0)
    if name == "seed-hf-switch":
        c.update(num_experts=32, d_model=256, num_heads=8, num_layers=6)
        t.update(batch_size=64, seq_len=30, weight_decay=0.0, beta2=0.999)
    elif name in ("switch-t5-ptb", "switch-t5-tiny"):
        c.update(d_model=256, num_heads=8, d_kv=32, d_ff=1024, num_layers=4, num_decoder_layers=4,
                 num_sparse_encoder_layers=2, num_sparse_decoder_layers=2, num_experts=8, expert_capacity=0,
                 router_aux_loss_coef=0.01)
        t.update(batch_size=32, seq_len=64)
        if name == "switch-t5-tiny":
            c.update(d_model=32, num_heads=4, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                     num_sparse_encoder_layers=1, num_sparse_decoder_layers=1, num_experts=4, dropout_rate=0.0)
            t.update(batch_size=4, seq_len=32)
    else:
        raise SystemExit("unknown config %s" % name)
    return c, t


def span_lengths(inputs_length, density=0.15, mean_span=3.0):
    """HF's compute_input_and_target_lengths (src/data/span.c): the raw window and the target length."""
    def lens(L):
        noise = min(max(int(round(L * density)), 1), L - 1)
        spans = min(max(int(round(noise / mean_span)), 1), L - noise)
        return L - noise + spans + 1, noise + spans + 1
    L = 2
    while lens(L + 1)[0] <= inputs_length:
        L += 1
    return lens(L)


# ---- the model ----------------------------------------------------------------------------------------------

class Norm(nn.Module):
    def __init__(self, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.NH, self.dk = c["num_heads"], c["d_kv"]
        I = self.NH * self.dk
        self.q, self.k, self.v = (nn.Linear(c["d_model"], I, bias=False) for _ in range(3))
        self.o = nn.Linear(I, c["d_model"], bias=False)

    def heads(self, x):
        return x.view(x.shape[0], -1, self.NH, self.dk).transpose(1, 2)

    def forward(self, h, k, v, bias):
        y = torch.softmax(self.heads(self.q(h)) @ k.transpose(-1, -2) + bias, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))


class Dense(nn.Module):
    def __init__(self, c, drop):
        super().__init__()
        self.wi = nn.Linear(c["d_model"], c["d_ff"], bias=False)
        self.wo = nn.Linear(c["d_ff"], c["d_model"], bias=False)
        self.drop = drop

    def forward(self, x):
        return self.wo(F.dropout(F.relu(self.wi(x)), self.drop, self.training))


class Sparse(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.E, self.cap, self.jit, self.cf = c["num_experts"], c["expert_capacity"], c["router_jitter_noise"], c["capacity_factor"]
        self.classifier = nn.Linear(c["d_model"], self.E, bias=False)
        self.experts = nn.ModuleList([Dense(c, 0.0) for _ in range(self.E)])

    def forward(self, h):
        B, T, _ = h.shape
        x = h * torch.empty_like(h).uniform_(1 - self.jit, 1 + self.jit) if self.training and self.jit > 0 else h
        logits = self.classifier(x)
        probs = torch.softmax(logits, dim=-1)
        choice = probs.argmax(-1)
        onehot = F.one_hot(choice, self.E)
        cap = self.cap if self.cap > 0 else max(1, min(T, int(math.floor(self.cf * T / self.E + 0.5))))
        kept = (onehot * (onehot.cumsum(1) <= cap)).bool()
        out = torch.zeros_like(h)
        for e in range(self.E):
            sel = kept[:, :, e]
            if sel.any():
                out[sel] = self.experts[e](h[sel])
        return probs.max(-1, keepdim=True).values * out, logits, kept.long().argmax(-1)


class Block(nn.Module):
    def __init__(self, c, dec, sparse):
        super().__init__()
        self.dec, self.sparse, self.drop = dec, sparse, c["dropout_rate"]
        C, eps = c["d_model"], c["layer_norm_epsilon"]
        self.sa, self.ln1 = Attention(c), Norm(C, eps)
        if dec:
            self.ca, self.ln2 = Attention(c), Norm(C, eps)
        self.ff, self.ln3 = (Sparse(c) if sparse else Dense(c, self.drop)), Norm(C, eps)

    def ffn(self, x, routers):
        y = self.ff(self.ln3(x))
        if self.sparse:
            y, lg, idx = y
            routers.append((lg, idx))
        return x + F.dropout(y, self.drop, self.training)

    def forward(self, x, bias, enc_kv, enc_bias, routers):
        h = self.ln1(x)
        x = x + F.dropout(self.sa(h, self.sa.heads(self.sa.k(h)), self.sa.heads(self.sa.v(h)), bias), self.drop, self.training)
        if self.dec:
            x = x + F.dropout(self.ca(self.ln2(x), *enc_kv(self), enc_bias), self.drop, self.training)
        return self.ffn(x, routers)


class Stack(nn.Module):
    def __init__(self, c, dec):
        super().__init__()
        n = c["num_decoder_layers"] if dec else c["num_layers"]
        ns = c["num_sparse_decoder_layers"] if dec else c["num_sparse_encoder_layers"]
        self.step = n // ns if ns > 0 else 0
        self.dec, self.drop = dec, c["dropout_rate"]
        self.nb, self.maxd = c["relative_attention_num_buckets"], c["relative_attention_max_distance"]
        self.block = nn.ModuleList([Block(c, dec, self.step > 0 and (self.step == 1 or i % self.step == 1))
                                    for i in range(n)])
        self.rel = nn.Embedding(self.nb, c["num_heads"])
        self.final = Norm(c["d_model"], c["layer_norm_epsilon"])

    def bias(self, Tq, Tk, q0=0):
        rel = torch.arange(Tk)[None, :] - torch.arange(q0, q0 + Tq)[:, None]
        return self.rel(bucket(rel, not self.dec, self.nb, self.maxd)).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x, mask_bias, enc_kv=None, enc_bias=None):
        T = x.shape[1]
        bias = self.bias(T, T) + mask_bias
        x = F.dropout(x, self.drop, self.training)
        routers = []
        for blk in self.block:
            x = blk(x, bias, enc_kv, enc_bias, routers)
        return F.dropout(self.final(x), self.drop, self.training), routers


def router_losses(routers, step, E):
    if step <= 1 or not routers:
        return 0.0, 0.0
    logits = torch.cat([r[0] for r in routers], 1)
    idx = torch.cat([r[1] for r in routers], 1)
    z = torch.logsumexp(logits, -1).pow(2).mean()
    f = F.one_hot(idx, E).float().mean(1)
    return z, (f * torch.softmax(logits, -1).mean(1)).mean() * E * E


class Switch(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.shared = nn.Embedding(c["vocab_size"], c["d_model"])
        self.encoder, self.decoder = Stack(c, False), Stack(c, True)

    def logits(self, dec_out):
        return (dec_out * self.c["d_model"] ** -0.5) @ self.shared.weight.t()

    def forward(self, ids, dec_ids, labels):
        c = self.c
        enc, er = self.encoder(self.shared(ids), torch.zeros(1, 1, 1, ids.shape[1]))
        Td = dec_ids.shape[1]
        causal = torch.full((Td, Td), NEG).triu(1)[None, None]

        def kv(blk):
            return blk.ca.heads(blk.ca.k(enc)), blk.ca.heads(blk.ca.v(enc))
        dec, dr = self.decoder(self.shared(dec_ids), causal, kv, torch.zeros(1, 1, 1, 1))
        lm = F.cross_entropy(self.logits(dec).reshape(-1, c["vocab_size"]), labels.reshape(-1), ignore_index=-100)
        ez, ea = router_losses(er, self.encoder.step, c["num_experts"])
        dz, da = router_losses(dr, self.decoder.step, c["num_experts"])
        return lm + c["router_z_loss_coef"] * (ez + dz) + c["router_aux_loss_coef"] * (ea + da)

    @torch.inference_mode()
    def generate(self, ids, n):
        """Greedy: the encoder once, then one token a step with caches."""
        enc, _ = self.encoder(self.shared(ids), torch.zeros(1, 1, 1, ids.shape[1]))
        cross = [(b.ca.heads(b.ca.k(enc)), b.ca.heads(b.ca.v(enc))) for b in self.decoder.block]
        ks = [None] * len(self.decoder.block)
        vs = [None] * len(self.decoder.block)
        tok = torch.zeros(1, 1, dtype=torch.long)
        zero = torch.zeros(1, 1, 1, 1)
        for t in range(n):
            x = self.shared(tok)
            bias = self.decoder.bias(1, t + 1, t)
            routers = []
            for i, blk in enumerate(self.decoder.block):
                h = blk.ln1(x)
                k, v = blk.sa.heads(blk.sa.k(h)), blk.sa.heads(blk.sa.v(h))
                ks[i] = k if ks[i] is None else torch.cat([ks[i], k], 2)
                vs[i] = v if vs[i] is None else torch.cat([vs[i], v], 2)
                x = x + blk.sa(h, ks[i], vs[i], bias)
                x = x + blk.ca(blk.ln2(x), *cross[i], zero)
                x = blk.ffn(x, routers)
            tok = self.logits(self.decoder.final(x))[:, -1].argmax(-1, keepdim=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="seed-hf-switch")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gen", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=10100)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    c, t = preset(a.config)
    c["vocab_size"] = a.vocab
    for kv in a.set:
        k, v = kv.split("=", 1)
        tgt = c if k in c else t
        tgt[k] = type(tgt[k])(float(v)) if not isinstance(tgt[k], str) else v
    B, Te = t["batch_size"], t["seq_len"]
    _, Td = span_lengths(Te)
    model = Switch(c)
    nparams = sum(p.numel() for p in model.parameters())
    print("torch %s, %d threads, params %.2fM, config %s, batch %d x (%d + %d)" %
          (torch.__version__, a.threads, nparams / 1e6, a.config, B, Te, Td))
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"],
                            weight_decay=t["weight_decay"])
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, a.vocab, (B, Te), generator=g)
    labels = torch.randint(2, a.vocab, (B, Td), generator=g)
    dec = torch.cat([torch.zeros(B, 1, dtype=torch.long), labels[:, :-1]], 1)
    model.train()
    times = []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(ids, dec, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * sorted(times)[len(times) // 2]
    tok_s = B * (Te + Td) / (ms / 1e3)
    print("train: %.2f ms/step (median of %d), %.0f tok/s, loss %.4f" % (ms, a.steps, tok_s, float(loss)))
    model.eval()
    model.generate(ids[:1], 2)
    t0 = time.perf_counter()
    model.generate(ids[:1], a.gen)
    gen_s = a.gen / (time.perf_counter() - t0)
    print("generate: batch 1, encoder %d tokens, %d new tokens, %.1f tok/s" % (Te, a.gen, gen_s))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("memory: peak RSS %.1f MB" % rss)
    print("RESULT config=%s threads=%d train_tok_s=%.1f train_ms_step=%.3f gen_tok_s=%.2f params=%d" %
          (a.config, a.threads, tok_s, ms, gen_s, nparams))


if __name__ == "__main__":
    main()
