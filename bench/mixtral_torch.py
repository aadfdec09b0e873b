#!/usr/bin/python3
"""bench/mixtral_torch.py: PyTorch's training step on a Mixtral / Llama model, timed as `moelm bench` times
moelm's, the peer of `moelm bench --config mixtral-ptb --bf16`.

    /usr/bin/python3 bench/mixtral_torch.py CONFIG.json [-t THREADS] [-b B] [--seq-len T] [--steps N]
                                            [--warmup N] [--bf16]

CONFIG.json: a Hugging Face Mixtral / Llama config (a moelm mixtral run's latest/config.json: mixtral-ptb
is vocabulary 8000, d_model 256, 4 layers, 8 heads over 4 kv heads, 8 experts of d_ff 512, top-2). The
model is python/moelm.py's llama_forward (HF's MixtralForCausalLM written in torch: eager attention,
the experts one after another over their gathered rows as HF's MixtralSparseMoeBlock runs them, HF's
load-balancing loss), its weights nn.Parameters at HF's init (N(0, 0.02), norms 1). A step: zero grad,
forward, loss (+ router_aux_loss_coef * balance when output_router_logits), backward, global-norm clip
1.0, AdamW (lr 1e-3, betas 0.9/0.95, weight decay 0.1: the mixtral-ptb preset's), on random tokens of
B x T (default 16 x 64). --bf16 also times the same steps under torch.autocast("cpu", dtype=torch.bfloat16)
(PyTorch's CPU mixed precision: bf16 matmuls through oneDNN, float master weights). Run it at its best:
jemalloc through LD_PRELOAD, OMP_NUM_THREADS = -t (bench/RESULTS.md, issue 26).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from moelm import balance_loss, llama_forward  # noqa: E402


def weights(c):
    C, V, H, L = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_hidden_layers"]
    NH, NKV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = C // NH
    s = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not c.get("tie_word_embeddings"):
        s["lm_head.weight"] = (V, C)
    for l in range(L):
        pre = "model.layers.%d." % l
        s.update({pre + "input_layernorm.weight": (C,), pre + "post_attention_layernorm.weight": (C,),
                  pre + "self_attn.q_proj.weight": (NH * hd, C), pre + "self_attn.k_proj.weight": (NKV * hd, C),
                  pre + "self_attn.v_proj.weight": (NKV * hd, C), pre + "self_attn.o_proj.weight": (C, NH * hd)})
        if c["model_type"] == "mixtral":
            s[pre + "block_sparse_moe.gate.weight"] = (c["num_local_experts"], C)
            for e in range(c["num_local_experts"]):
                ep = pre + "block_sparse_moe.experts.%d." % e
                s.update({ep + "w1.weight": (H, C), ep + "w2.weight": (C, H), ep + "w3.weight": (H, C)})
        else:
            s.update({pre + "mlp.gate_proj.weight": (H, C), pre + "mlp.up_proj.weight": (H, C),
                      pre + "mlp.down_proj.weight": (C, H)})
    return {n: torch.nn.Parameter(torch.ones(sh) if len(sh) == 1 else 0.02 * torch.randn(sh)) for n, sh in s.items()}


def timed(W, c, opt, batches, warmup, steps, bf16):
    """warmup + steps steps; returns tok/s and ms a step over the timed ones (wall clock), the process's
    CPU ms a step over them (a figure a busy shared machine moves less), and the last loss"""
    total, cpu, loss = 0.0, 0.0, torch.zeros(())
    for s in range(warmup + steps):
        ids = batches[s % len(batches)]
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss, router_logits = llama_forward(W, c, ids)
            if c["model_type"] == "mixtral" and c.get("output_router_logits"):
                loss = loss + c["router_aux_loss_coef"] * balance_loss(router_logits, c["num_local_experts"],
                                                                       c["num_experts_per_tok"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(W.values(), 1.0)
        opt.step()
        if s >= warmup:
            total += time.perf_counter() - t0
            cpu += time.process_time() - c0
    B, T = batches[0].shape
    if not steps:
        return 0.0, 0.0, 0.0, float(loss)
    return B * T * steps / total, 1e3 * total / steps, 1e3 * cpu / steps, float(loss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-b", "--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    with open(a.config) as f:
        c = json.load(f)
    W = weights(c)
    opt = torch.optim.AdamW(W.values(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(c["vocab_size"], (a.batch_size, a.seq_len), generator=g) for _ in range(4)]
    print("torch %s, %d threads, %.2fM params, batch %d x %d, LD_PRELOAD=%s" % (
        torch.__version__, torch.get_num_threads(), sum(p.numel() for p in W.values()) / 1e6, a.batch_size, a.seq_len,
        os.environ.get("LD_PRELOAD", "")))
    tps, ms, cpu, loss = timed(W, c, opt, batches, a.warmup, a.steps, False)
    print("train: %.2f ms/step (%.2f CPU ms), %.0f tok/s, loss %.4f" % (ms, cpu, tps, loss))
    tps16, ms16, cpu16 = 0.0, 0.0, 0.0
    if a.bf16:
        tps16, ms16, cpu16, loss16 = timed(W, c, opt, batches, a.warmup, a.steps, True)
        print("train bf16 autocast: %.2f ms/step (%.2f CPU ms), %.0f tok/s, loss %.4f" % (ms16, cpu16, tps16, loss16))
    print("RESULT threads=%d train_tok_s=%.1f train_ms_step=%.3f train_cpu_ms_step=%.3f train_bf16_tok_s=%.1f "
          "train_bf16_ms_step=%.3f train_bf16_cpu_ms_step=%.3f" % (a.threads, tps, ms, cpu, tps16, ms16, cpu16))


if __name__ == "__main__":
    main()
