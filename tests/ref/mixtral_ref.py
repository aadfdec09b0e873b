#!/usr/bin/env python3
"""mixtral_ref.py: an independent PyTorch implementation of Hugging Face's MixtralForCausalLM and
LlamaForCausalLM forward (eager attention, float32), written here from reading HF's modeling_mixtral.py
and modeling_llama.py, with HF's module and tensor names; and the fixtures tests/test_mixtral_ref.c
compares moelm with.

For each case it draws weights (seeded), writes an HF model directory tests/ref/mixtral/<case>/
(config.json and model.safetensors, or shards with model.safetensors.index.json; F32, F16 or BF16
tensors), and <case>.expected.safetensors with the batch (input_ids [B, T] as F32), the logits
[B, T, V], HF's loss with labels = input_ids (the shifted mean cross-entropy), every layer's router
logits [B T, E], the load-balancing loss (HF's load_balancing_loss_func over all layers together,
unweighted) and the gradient of loss + router_aux_loss_coef * aux (when output_router_logits) for
every weight ("grad." + its HF name). The weights of a F16/BF16 directory are used as the file holds
them (rounded), in float32.

And <case>.bf16.safetensors: the same batch through bf16 mixed precision as `moelm train --bf16` defines
it (src/model/model.h): every linear layer's three products (the forward, the input gradient and the
weight gradient of q/k/v/o, the MLP or experts, the head; not the router) take their two operands
rounded to bf16 (to nearest, ties to even) and sum in float (bf16_linear: a torch.autograd.Function
written here); everything else float. It holds logits, loss, and grad.<HF name> for every weight.

Needs only Debian's torch (/usr/bin/python3). Regenerate: /usr/bin/python3 tests/ref/mixtral_ref.py tests/ref
"""
import json
import math
import os
import struct
import sys

import torch

# case: config, batch shape, dtype of the files, shards
CASES = {
    # Mixtral: grouped-query attention 4:2, 4 experts top-2, untied, the balance loss on
    "mixtral_gqa_untied": dict(
        cfg=dict(model_type="mixtral", vocab_size=37, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                 rope_theta=10000.0, tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2,
                 router_aux_loss_coef=0.02, output_router_logits=True),
        B=2, T=7, dtype="F32", shards=1),
    # Mixtral: tied head, plain multi-head attention, 3 experts top-2, HF's default rope_theta; BF16 in 2 shards
    "mixtral_tied_bf16": dict(
        cfg=dict(model_type="mixtral", vocab_size=29, hidden_size=24, intermediate_size=20, num_hidden_layers=2,
                 num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=32, rms_norm_eps=1e-5,
                 rope_theta=1e6, tie_word_embeddings=True, num_local_experts=3, num_experts_per_tok=2,
                 router_aux_loss_coef=0.001, output_router_logits=False),
        B=1, T=9, dtype="BF16", shards=2),
    # Llama (dense): multi-query attention 4:1, untied, F16
    "llama_mqa_f16": dict(
        cfg=dict(model_type="llama", vocab_size=31, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32, rms_norm_eps=1e-6,
                 rope_theta=10000.0, tie_word_embeddings=False),
        B=2, T=6, dtype="F16", shards=1),
}


# ---- the model: python/moelm.py's (the module users load runs with) -----------------------------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from moelm import balance_loss  # noqa: E402
from moelm import llama_forward as forward  # noqa: E402


def bf(t):
    """t rounded to bf16 (nearest, ties to even), as float32"""
    return t.bfloat16().float()


class Bf16Linear(torch.autograd.Function):
    """y = x w^T with x and w rounded to bf16 and the products summed in float; backward: dx = bf(dy) bf(w),
    dw = bf(dy)^T bf(x) (float sums), the gradients themselves float (mixed precision)."""

    @staticmethod
    def forward(ctx, x, w):
        xr, wr = bf(x), bf(w)
        ctx.save_for_backward(xr, wr)
        return xr @ wr.T

    @staticmethod
    def backward(ctx, dy):
        xr, wr = ctx.saved_tensors
        dyr = bf(dy)
        dw = dyr.reshape(-1, dyr.shape[-1]).T @ xr.reshape(-1, xr.shape[-1])
        return dyr @ wr, dw


def bf16_linear(x, w):
    return Bf16Linear.apply(x, w)


# ---- weights --------------------------------------------------------------------------------------

def weight_shapes(c):
    C, V, H, L = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_hidden_layers"]
    NH, NKV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = C // NH
    s = {"model.embed_tokens.weight": (V, C)}
    for l in range(L):
        pre = "model.layers.%d." % l
        s[pre + "input_layernorm.weight"] = (C,)
        s[pre + "self_attn.q_proj.weight"] = (NH * hd, C)
        s[pre + "self_attn.k_proj.weight"] = (NKV * hd, C)
        s[pre + "self_attn.v_proj.weight"] = (NKV * hd, C)
        s[pre + "self_attn.o_proj.weight"] = (C, NH * hd)
        s[pre + "post_attention_layernorm.weight"] = (C,)
        if c["model_type"] == "mixtral":
            s[pre + "block_sparse_moe.gate.weight"] = (c["num_local_experts"], C)
            for e in range(c["num_local_experts"]):
                e_pre = pre + "block_sparse_moe.experts.%d." % e
                s[e_pre + "w1.weight"] = (H, C)
                s[e_pre + "w2.weight"] = (C, H)
                s[e_pre + "w3.weight"] = (H, C)
        else:
            s[pre + "mlp.gate_proj.weight"] = (H, C)
            s[pre + "mlp.up_proj.weight"] = (H, C)
            s[pre + "mlp.down_proj.weight"] = (C, H)
    s["model.norm.weight"] = (C,)
    if not c["tie_word_embeddings"]:
        s["lm_head.weight"] = (V, C)
    return s


def draw_weights(c, gen):
    """Larger than HF's init (std 0.02) so that every term matters: matrices N(0, 1/fan_in), the
    embedding std 1, norm weights 1 + N(0, 0.1), the router std 2/sqrt(C) (routing margins visible)."""
    W = {}
    for name, shape in weight_shapes(c).items():
        if len(shape) == 1:
            W[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("embed_tokens.weight"):
            W[name] = torch.randn(shape, generator=gen)
        elif name.endswith("gate.weight") and "block_sparse_moe" in name:
            W[name] = 2.0 / math.sqrt(shape[1]) * torch.randn(shape, generator=gen)
        else:
            W[name] = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
    return W


# ---- safetensors (written here: the format is a JSON header and raw little-endian data) --------------

def to_bytes(t, dtype):
    t = t.detach().contiguous()
    if dtype == "F32":
        return t.float().numpy().tobytes()
    if dtype == "F16":
        return t.half().view(torch.int16).numpy().tobytes()
    if dtype == "BF16":
        return t.bfloat16().view(torch.int16).numpy().tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtypes, meta=None):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        b = to_bytes(tensors[name], dtypes[name])
        header[name] = {"dtype": dtypes[name], "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rounded(t, dtype):
    return t.half().float() if dtype == "F16" else t.bfloat16().float() if dtype == "BF16" else t.clone()


def write_dir(d, c, W, dtype, shards):
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    arch = "MixtralForCausalLM" if c["model_type"] == "mixtral" else "LlamaForCausalLM"
    cfg = dict(architectures=[arch], hidden_act="silu", initializer_range=0.02, use_cache=True,
               torch_dtype={"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype], attention_dropout=0.0,
               bos_token_id=1, eos_token_id=2, transformers_version="4.46.0", **c)
    if c["model_type"] == "mixtral":
        cfg.update(sliding_window=None, router_jitter_noise=0.0)
    else:
        cfg.update(attention_bias=False, mlp_bias=False, pretraining_tp=1, rope_scaling=None)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    names = list(W)
    dts = {n: dtype for n in names}
    meta = {"format": "pt"}
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), W, dts, meta)
        return
    per = (len(names) + shards - 1) // shards
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        write_safetensors(os.path.join(d, fn), {n: W[n] for n in part}, dts, meta)
        for n in part:
            weight_map[n] = fn
            total += len(to_bytes(W[n], dtype))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def print_margin(name, layer, logits, k):
    """the smallest gap between the k-th and (k+1)-th probability: a flip would need an error this large"""
    p = torch.softmax(logits.detach(), dim=-1).sort(dim=-1, descending=True).values
    print("  %s layer %d: smallest top-%d margin %.3g" % (name, layer, k, (p[:, k - 1] - p[:, k]).min()))


def run_case(name, spec, out):
    c = dict(spec["cfg"])
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    W = draw_weights(c, gen)
    W = {n: rounded(t, spec["dtype"]) for n, t in W.items()}   # the values the files hold
    ids = torch.randint(0, c["vocab_size"], (spec["B"], spec["T"]), generator=gen)
    write_dir(os.path.join(out, "mixtral", name), c, W, spec["dtype"], spec["shards"])
    P = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    logits, loss, router_logits = forward(P, c, ids)
    exp = {"input_ids": ids.float(), "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    total = loss
    if c["model_type"] == "mixtral":
        aux = balance_loss(router_logits, c["num_local_experts"], c["num_experts_per_tok"])
        exp["aux_loss"] = aux.detach().reshape(1)
        for l, lg in enumerate(router_logits):
            exp["router_logits.%d" % l] = lg.detach()
            print_margin(name, l, lg, c["num_experts_per_tok"])
        if c["output_router_logits"]:
            total = loss + c["router_aux_loss_coef"] * aux
    total.backward()
    for n, t in P.items():
        exp["grad." + n] = t.grad.detach()
    write_safetensors(os.path.join(out, "mixtral", name + ".expected.safetensors"), exp,
                      {n: "F32" for n in exp}, {"case": name})
    print("%s: loss %.6f%s" % (name, loss.item(), " aux %.6f" % exp["aux_loss"].item() if "aux_loss" in exp else ""))

    # the same batch in bf16 mixed precision
    P = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    logits16, loss16, router_logits = forward(P, c, ids, mm=bf16_linear)
    total = loss16
    for l, lg in enumerate(router_logits):
        print_margin(name + " bf16", l, lg, c["num_experts_per_tok"])
    if c["model_type"] == "mixtral" and c["output_router_logits"]:
        total = loss16 + c["router_aux_loss_coef"] * balance_loss(router_logits, c["num_local_experts"],
                                                                  c["num_experts_per_tok"])
    total.backward()
    b16 = {"logits": logits16.detach(), "loss": loss16.detach().reshape(1)}
    for n, t in P.items():
        b16["grad." + n] = t.grad.detach()
    write_safetensors(os.path.join(out, "mixtral", name + ".bf16.safetensors"), b16,
                      {n: "F32" for n in b16}, {"case": name, "precision": "bf16 mixed"})
    print("%s bf16: loss %.6f (float %.6f), logits within %.2g of float's largest" %
          (name, loss16.item(), loss.item(), ((logits16 - logits).abs().max() / logits.abs().max()).item()))


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: mixtral_ref.py OUT_DIR [CASE ...]   (OUT_DIR: tests/ref)")
    torch.set_num_threads(1)
    out = sys.argv[1]
    for name in sys.argv[2:] or CASES:
        run_case(name, CASES[name], out)


if __name__ == "__main__":
    main()
