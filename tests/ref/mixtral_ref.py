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


# ---- the model ------------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    """LlamaRMSNorm / MixtralRMSNorm: x * rsqrt(mean(x^2) + eps) * w, in float32."""
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rope_cos_sin(T, hd, theta):
    """The rotary tables of positions 0..T-1 as HF's rotary embedding builds them (float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    pos = torch.arange(T, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]          # [T, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)            # [T, hd]
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def attention(W, pre, h, c, cos, sin):
    B, T, C = h.shape
    NH, NKV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = C // NH
    q = (h @ W[pre + "self_attn.q_proj.weight"].T).view(B, T, NH, hd).transpose(1, 2)
    k = (h @ W[pre + "self_attn.k_proj.weight"].T).view(B, T, NKV, hd).transpose(1, 2)
    v = (h @ W[pre + "self_attn.v_proj.weight"].T).view(B, T, NKV, hd).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    rep = NH // NKV   # repeat_kv: query head j reads kv head j // rep
    k = k[:, :, None].expand(B, NKV, rep, T, hd).reshape(B, NH, T, hd)
    v = v[:, :, None].expand(B, NKV, rep, T, hd).reshape(B, NH, T, hd)
    s = q @ k.transpose(2, 3) / math.sqrt(hd)
    mask = torch.triu(torch.full((T, T), torch.finfo(torch.float32).min), diagonal=1)
    a = torch.softmax(s + mask, dim=-1, dtype=torch.float32)
    o = (a @ v).transpose(1, 2).reshape(B, T, NH * hd)
    return o @ W[pre + "self_attn.o_proj.weight"].T


def swiglu(x, gate, up, down):
    return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def sparse_moe(W, pre, h, c):
    """MixtralSparseMoeBlock: softmax over all experts, top-k, the k weights renormalised, experts summed."""
    B, T, C = h.shape
    x = h.reshape(B * T, C)
    logits = x @ W[pre + "block_sparse_moe.gate.weight"].T            # [BT, E]
    probs = torch.softmax(logits, dim=1, dtype=torch.float32)
    w, sel = torch.topk(probs, c["num_experts_per_tok"], dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(c["num_local_experts"]):
        e_pre = pre + "block_sparse_moe.experts.%d." % e
        rows, slot = torch.where(sel == e)
        if rows.numel() == 0:
            continue
        y = swiglu(x[rows], W[e_pre + "w1.weight"], W[e_pre + "w3.weight"], W[e_pre + "w2.weight"])
        out = out.index_add(0, rows, y * w[rows, slot, None])
    return out.view(B, T, C), logits


def balance_loss(router_logits, E, K):
    """HF's load_balancing_loss_func without an attention mask: every layer's logits as one batch."""
    lg = torch.cat(router_logits, dim=0)
    p = torch.softmax(lg, dim=-1)
    _, sel = torch.topk(p, K, dim=-1)
    mask = torch.nn.functional.one_hot(sel, E).float()          # [LN, K, E]
    tokens_per_expert = mask.mean(dim=0)                          # [K, E]
    prob_per_expert = p.mean(dim=0)                               # [E]
    return (tokens_per_expert * prob_per_expert[None, :]).sum() * E


def forward(W, c, ids):
    B, T = ids.shape
    C, NH = c["hidden_size"], c["num_attention_heads"]
    cos, sin = rope_cos_sin(T, C // NH, c["rope_theta"])
    h = W["model.embed_tokens.weight"][ids]
    router_logits = []
    for l in range(c["num_hidden_layers"]):
        pre = "model.layers.%d." % l
        h = h + attention(W, pre, rms_norm(h, W[pre + "input_layernorm.weight"], c["rms_norm_eps"]), c, cos, sin)
        x = rms_norm(h, W[pre + "post_attention_layernorm.weight"], c["rms_norm_eps"])
        if c["model_type"] == "mixtral":
            y, lg = sparse_moe(W, pre, x, c)
            router_logits.append(lg)
        else:
            y = swiglu(x, W[pre + "mlp.gate_proj.weight"], W[pre + "mlp.up_proj.weight"], W[pre + "mlp.down_proj.weight"])
        h = h + y
    h = rms_norm(h, W["model.norm.weight"], c["rms_norm_eps"])
    head = W["model.embed_tokens.weight"] if c["tie_word_embeddings"] else W["lm_head.weight"]
    logits = h @ head.T
    # labels = input_ids: position t predicts token t + 1 (HF shifts inside the loss)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return logits, loss, router_logits


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
            # the smallest gap between the k-th and (k+1)-th probability: a flip would need an error this large
            p = torch.softmax(lg.detach(), dim=-1).sort(dim=-1, descending=True).values
            k = c["num_experts_per_tok"]
            print("  %s layer %d: smallest top-%d margin %.3g" % (name, l, k, (p[:, k - 1] - p[:, k]).min()))
        if c["output_router_logits"]:
            total = loss + c["router_aux_loss_coef"] * aux
    total.backward()
    for n, t in P.items():
        exp["grad." + n] = t.grad.detach()
    write_safetensors(os.path.join(out, "mixtral", name + ".expected.safetensors"), exp,
                      {n: "F32" for n in exp}, {"case": name})
    print("%s: loss %.6f%s" % (name, loss.item(), " aux %.6f" % exp["aux_loss"].item() if "aux_loss" in exp else ""))


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: mixtral_ref.py OUT_DIR [CASE ...]   (OUT_DIR: tests/ref)")
    torch.set_num_threads(1)
    out = sys.argv[1]
    for name in sys.argv[2:] or CASES:
        run_case(name, CASES[name], out)


if __name__ == "__main__":
    main()
