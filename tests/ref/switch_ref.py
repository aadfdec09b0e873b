#!/usr/bin/python3
"""switch_ref.py: an independent PyTorch implementation of the Switch Transformer encoder-decoder as
Hugging Face transformers (v4 line) runs it in SwitchTransformersForConditionalGeneration, the
reference for moelm's switch_transformers model (tests/test_switch_ref.sh, tests/test_encdec.c).

    /usr/bin/python3 tests/ref/switch_ref.py OUT_DIR

writes, for each small model below, a Hugging Face directory OUT_DIR/<model>/ (config.json with
every SwitchTransformersConfig field, weights under HF's tensor names: model.safetensors, or shards
with model.safetensors.index.json), the inputs of `moelm forward` (OUT_DIR/<model>.inputs.safetensors:
int32 [B, T] tensors <case>.input_ids, .attention_mask, .decoder_input_ids, .decoder_attention_mask, .labels) and the outputs
it must give (OUT_DIR/<model>.expected.safetensors: fp32 <case>.logits, .encoder_last_hidden_state,
.decoder_last_hidden_state, .encoder.block.N.router_logits / .decoder.block.N.router_logits per
sparse block N, .encoder_z_loss, .encoder_aux_loss, .decoder_z_loss, .decoder_aux_loss, .lm_loss,
.loss; plus grad.<tensor> of the loss for the first case, and T5's bucket function on a range of
relative positions).

Written here from reading HF's modeling and configuration files (module names and semantics), not
copied. Module names give HF's state_dict names. Everything fp32 on the CPU, eval mode (no dropout,
no jitter). What HF does that is not obvious, and what this file does the same way:
  - T5 norm: x * rsqrt(mean(x^2) + eps) * w: no mean, no bias.
  - no absolute positions, no scaling of the embeddings, scores q k^T without 1/sqrt(d_kv);
    inner width d_kv * num_heads may differ from d_model.
  - relative position bias: a table [num_buckets, NH] in block 0 of each stack (SelfAttention), the
    bias [NH, Tq, Tk] computed there and reused by every block of the stack; bidirectional buckets in
    the encoder, causal in the decoder; none in cross-attention.
  - masks added to the bias as (1 - mask) * finfo(float32).min: key padding in the encoder and in
    cross-attention, causal (min above the diagonal) in the decoder's self-attention, and there also
    decoder_attention_mask's key padding when given (one mask, the product of the two: a key hidden
    by both gets min once, as HF's causal mask times the padding mask, never -inf).
  - sparse block i of a stack: sparse_step = num_layers // num_sparse (0 when none), sparse when
    sparse_step == 1 or i % sparse_step == 1; an explicit encoder_sparse_step / decoder_sparse_step
    in config.json overrides the derived one.
  - router: logits = h @ Wr^T in fp32, probs = softmax, expert = argmax (first maximum); capacity
    counted per sequence in token order (padding counts): the n-th token choosing e is kept when
    n <= expert_capacity; kept token: p_max * expert(h); dropped token: 0 (HF >= 4.52; the residual
    carries it).
  - router losses per stack over its sparse layers, the layers' [B, T, E] tensors concatenated along
    the sequence: z = mean over all (b, t) of logsumexp^2; aux = E^2 * mean_{b,e}(f[b,e] * P[b,e]),
    f the fraction of the row's tokens whose expert index is e, where a dropped token's index is 0
    (argmax of an all-zero row), P the mean probability. Computed only when the stack's sparse_step
    is > 1 (else 0): HF v4's condition.
  - tied head: decoder output * d_model^-0.5 @ shared^T; untied: @ lm_head^T.
  - decoder_input_ids (when absent): labels shifted right, decoder_start_token_id first, -100 -> pad.
  - lm_loss = mean CE over labels != -100; loss = lm_loss + z_coef (z_enc + z_dec) + aux_coef (aux_enc + aux_dec).
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)

NEG = torch.finfo(torch.float32).min


# ---- safetensors, by hand ----------------------------------------------------------------------

DTYPES = {torch.float32: ("F32", "<f4"), torch.int32: ("I32", "<i4"), torch.float16: ("F16", "<f2")}


def tensor_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:   # numpy has no bfloat16: the high halves of the float32 bits
        u = t.to(torch.float32).view(torch.int32).numpy().astype("<i4")
        return ((u.view("<u4") >> 16).astype("<u2")).tobytes(), "BF16"
    code, np_t = DTYPES[t.dtype]
    return t.numpy().astype(np_t).tobytes(), code


def st_write(path, tensors, meta=None):
    """tensors: list of (name, tensor) written in order, packed; header padded with spaces to 8."""
    header = {"__metadata__": meta or {"format": "pt"}}
    blobs, off = [], 0
    for name, t in tensors:
        b, code = tensor_bytes(t)
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)
    return off


# ---- the configuration ---------------------------------------------------------------------------

# SwitchTransformersConfig's defaults (HF v4), and PretrainedConfig's for the tokens it sets.
HF_DEFAULTS = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, expert_capacity=64, num_layers=12,
    num_sparse_encoder_layers=3, num_decoder_layers=12, num_sparse_decoder_layers=3, num_heads=12,
    num_experts=8, router_bias=False, router_jitter_noise=0.01, router_dtype="float32",
    router_ignore_padding_tokens=False, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
    router_z_loss_coef=0.001, router_aux_loss_coef=0.001, initializer_factor=1.0, dense_act_fn="relu",
    is_encoder_decoder=True, add_router_probs=False, use_cache=True, pad_token_id=0, eos_token_id=1,
    bos_token_id=None, tie_word_embeddings=True, decoder_start_token_id=None)


class Config:
    def __init__(self, d):
        c = dict(HF_DEFAULTS)
        c.update(d)
        for k, v in c.items():
            setattr(self, k, v)
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers

        def step(n_layers, n_sparse):
            return n_layers // n_sparse if n_sparse > 0 else 0
        # an explicit *_sparse_step in config.json wins over the derived one (HF sets the remaining
        # keys after __init__)
        self.encoder_sparse_step = d.get("encoder_sparse_step",
                                         step(self.num_layers, self.num_sparse_encoder_layers))
        self.decoder_sparse_step = d.get("decoder_sparse_step",
                                         step(self.num_decoder_layers, self.num_sparse_decoder_layers))


def is_sparse(step, i):
    return step > 0 and (step == 1 or i % step == 1)


# ---- the modules (HF's names) ---------------------------------------------------------------------

class T5Norm(nn.Module):
    def __init__(self, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def relative_bucket(rel, bidirectional, num_buckets, max_distance):
    """T5's bucket of a relative position rel = key - query (a long tensor): half of the buckets hold
    the distances 0 .. max_exact-1 exactly, the rest log-spaced distances up to max_distance (the
    last bucket takes everything beyond); bidirectional: the upper half of the buckets for keys after
    the query; causal: keys after the query count as distance 0. The log in float32, as HF's is."""
    out = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out = out + (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    max_exact = num_buckets // 2
    logpart = torch.log(dist.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = (max_exact + logpart.to(torch.long)).clamp(max=num_buckets - 1)
    return out + torch.where(dist < max_exact, dist, large)


class Attention(nn.Module):
    def __init__(self, cfg, is_decoder, has_bias):
        super().__init__()
        C, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
        self.NH, self.dk = cfg.num_heads, cfg.d_kv
        self.is_decoder = is_decoder
        self.nb, self.maxd = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        self.q = nn.Linear(C, inner, bias=False)
        self.k = nn.Linear(C, inner, bias=False)
        self.v = nn.Linear(C, inner, bias=False)
        self.o = nn.Linear(inner, C, bias=False)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(self.nb, self.NH)

    def position_bias(self, Tq, Tk):
        rel = torch.arange(Tk)[None, :] - torch.arange(Tq)[:, None]
        b = relative_bucket(rel, not self.is_decoder, self.nb, self.maxd)
        return self.relative_attention_bias(b).permute(2, 0, 1).unsqueeze(0)   # [1, NH, Tq, Tk]

    def forward(self, h, kv, bias):
        B, Tq, _ = h.shape
        Tk = kv.shape[1]

        def heads(x, T):
            return x.view(B, T, self.NH, self.dk).transpose(1, 2)
        q, k, v = heads(self.q(h), Tq), heads(self.k(kv), Tk), heads(self.v(kv), Tk)
        scores = q @ k.transpose(-1, -2) + bias
        y = torch.softmax(scores, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, Tq, self.NH * self.dk))


class LayerSelfAttention(nn.Module):
    def __init__(self, cfg, is_decoder, has_bias):
        super().__init__()
        self.SelfAttention = Attention(cfg, is_decoder, has_bias)
        self.layer_norm = T5Norm(cfg.d_model, cfg.layer_norm_epsilon)


class LayerCrossAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.EncDecAttention = Attention(cfg, True, False)
        self.layer_norm = T5Norm(cfg.d_model, cfg.layer_norm_epsilon)


def activation(name, x):
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)                         # erf form
    if name == "gelu_new":
        return F.gelu(x, approximate="tanh")
    if name in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(name)


class DenseActDense(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.act = cfg.dense_act_fn

    def forward(self, x):
        return self.wo(activation(self.act, self.wi(x)))


class Router(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.classifier = nn.Linear(cfg.d_model, cfg.num_experts, bias=cfg.router_bias)


class SparseMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.router = Router(cfg)
        self.experts = nn.ModuleDict({"expert_%d" % e: DenseActDense(cfg) for e in range(cfg.num_experts)})
        self.E, self.cap = cfg.num_experts, cfg.expert_capacity

    def forward(self, h, stats):
        B, T, C = h.shape
        logits = self.router.classifier(h.float())
        probs = torch.softmax(logits, dim=-1)
        choice = probs.argmax(dim=-1)                               # [B, T]
        onehot = F.one_hot(choice, self.E)                          # [B, T, E]
        order = onehot.cumsum(dim=1)                                # n-th token of its expert, per sequence
        kept = (onehot * (order <= self.cap)).bool()                # [B, T, E]
        # the decision's margin: best minus second-best probability
        top2 = probs.detach().topk(2, dim=-1).values
        stats["margin"] = min(stats["margin"], float((top2[..., 0] - top2[..., 1]).min()))
        stats["dropped"].append(int(T * B - kept.sum()))
        out = torch.zeros_like(h)
        for e in range(self.E):
            sel = kept[:, :, e]
            if sel.any():
                out[sel] = self.experts["expert_%d" % e](h[sel])
        gate = probs.max(dim=-1, keepdim=True).values
        index_for_loss = kept.long().argmax(dim=-1)   # a dropped token's all-zero row gives expert 0
        return gate * out, logits, index_for_loss


class LayerFF(nn.Module):
    def __init__(self, cfg, sparse):
        super().__init__()
        self.sparse = sparse
        self.mlp = SparseMLP(cfg) if sparse else DenseActDense(cfg)
        self.layer_norm = T5Norm(cfg.d_model, cfg.layer_norm_epsilon)


class Block(nn.Module):
    def __init__(self, cfg, is_decoder, has_bias, sparse):
        super().__init__()
        self.layer = nn.ModuleList([LayerSelfAttention(cfg, is_decoder, has_bias)])
        if is_decoder:
            self.layer.append(LayerCrossAttention(cfg))
        self.layer.append(LayerFF(cfg, sparse))


class Stack(nn.Module):
    def __init__(self, cfg, is_decoder):
        super().__init__()
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.step = cfg.decoder_sparse_step if is_decoder else cfg.encoder_sparse_step
        self.is_decoder = is_decoder
        self.block = nn.ModuleList([Block(cfg, is_decoder, i == 0, is_sparse(self.step, i)) for i in range(n)])
        self.final_layer_norm = T5Norm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, emb, mask, enc=None, enc_mask=None, stats=None):
        """emb [B, T, C]; mask [B, T] (encoder: key padding); enc [B, Te, C], enc_mask [B, Te]."""
        B, T, _ = emb.shape
        sa = self.block[0].layer[0].SelfAttention
        if self.is_decoder:
            keep = torch.ones(T, T).tril()[None, None]                         # causal
            if mask is not None:
                keep = keep * mask[:, None, None, :].float()                   # and key padding
            add = (1.0 - keep) * NEG
        else:
            add = (1.0 - mask[:, None, None, :].float()) * NEG               # key padding
        self_bias = sa.position_bias(T, T) + add
        cross_bias = None
        if self.is_decoder:
            cross_bias = torch.zeros(1, sa.NH, T, enc.shape[1]) + (1.0 - enc_mask[:, None, None, :].float()) * NEG
        x = emb
        routers = []
        for i, blk in enumerate(self.block):
            ls = blk.layer[0]
            x = x + ls.SelfAttention(ls.layer_norm(x), ls.layer_norm(x), self_bias)
            if self.is_decoder:
                lc = blk.layer[1]
                hn = lc.layer_norm(x)
                x = x + lc.EncDecAttention(hn, enc, cross_bias)
            ff = blk.layer[-1]
            hn = ff.layer_norm(x)
            if ff.sparse:
                y, logits, idx = ff.mlp(hn, stats)
                routers.append((i, logits, idx))
            else:
                y = ff.mlp(hn)
            x = x + y
        return self.final_layer_norm(x), routers


def router_losses(routers, step, E):
    """HF v4's z and aux losses of one stack from its sparse layers' (logits, index) [B, T, E], [B, T]."""
    if step <= 1 or not routers:
        return torch.zeros(()), torch.zeros(())
    logits = torch.cat([r[1] for r in routers], dim=1)   # [B, T * layers, E]
    index = torch.cat([r[2] for r in routers], dim=1)
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    probs = torch.softmax(logits, dim=-1)
    f = F.one_hot(index, E).float().mean(dim=1)           # [B, E]
    P = probs.mean(dim=1)
    return z, (f * P).mean() * E * E


class SwitchForConditionalGeneration(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, False)
        self.decoder = Stack(cfg, True)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def shift_right(self, labels):
        d = torch.full_like(labels, self.cfg.decoder_start_token_id)
        d[:, 1:] = labels[:, :-1]
        return d.masked_fill(d == -100, self.cfg.pad_token_id)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, labels=None, stats=None,
                decoder_attention_mask=None):
        cfg = self.cfg
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        enc, enc_routers = self.encoder(self.shared(input_ids), attention_mask, stats=stats)
        dec, dec_routers = self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, enc, attention_mask,
                                        stats)
        if cfg.tie_word_embeddings:
            logits = (dec * cfg.d_model ** -0.5) @ self.shared.weight.t()
        else:
            logits = self.lm_head(dec)
        out = {"logits": logits, "encoder_last_hidden_state": enc, "decoder_last_hidden_state": dec}
        for name, routers in (("encoder", enc_routers), ("decoder", dec_routers)):
            for i, lg, _ in routers:
                out["%s.block.%d.router_logits" % (name, i)] = lg
        ez, ea = router_losses(enc_routers, self.encoder.step, cfg.num_experts)
        dz, da = router_losses(dec_routers, self.decoder.step, cfg.num_experts)
        out.update(encoder_z_loss=ez, encoder_aux_loss=ea, decoder_z_loss=dz, decoder_aux_loss=da)
        if labels is not None:
            lm = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), labels.reshape(-1), ignore_index=-100)
            out["lm_loss"] = lm
            out["loss"] = lm + cfg.router_z_loss_coef * (ez + dz) + cfg.router_aux_loss_coef * (ea + da)
        return out


# ---- the fixtures ----------------------------------------------------------------------------------

def draw_weights(model, seed):
    """Larger than a training init, so that every term matters: matrices N(0, 1/fan_in), embeddings
    N(0, 1), norm weights 1 + N(0, 0.1), relative bias N(0, 0.5), routers N(0, 3/sqrt(C)) (confident
    decisions: margins well above rounding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name in ("shared.weight",):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "router.classifier" in name:
                p.copy_(3.0 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def write_hf_dir(path, model, config_json, dtype, shards):
    """config.json as given, and the weights (shared.weight, and lm_head.weight when untied, as HF
    saves them) in dtype, in one file or `shards` files with model.safetensors.index.json."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    for fn in os.listdir(path):
        if fn.startswith("model"):
            os.remove(os.path.join(path, fn))
    items = [(n, p.detach().to(dtype)) for n, p in model.state_dict().items()]
    if shards == 1:
        st_write(os.path.join(path, "model.safetensors"), items)
        return
    per = (len(items) + shards - 1) // shards
    weight_map, total = {}, 0
    for s in range(shards):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = items[s * per:(s + 1) * per]
        total += st_write(os.path.join(path, fn), part)
        for n, _ in part:
            weight_map[n] = fn
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")


def case_tensors(V, B, Te, Td, pad, seed, left, with_mask, with_labels, with_dec, with_dec_mask=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, Te), generator=g)
    mask = torch.ones(B, Te, dtype=torch.long)
    if with_mask:
        # row 0 padded on one side by 3, the last row by 1 on the other (or none with B = 1)
        if left:
            mask[0, :3] = 0
            if B > 1:
                mask[B - 1, Te - 1:] = 0
        else:
            mask[0, Te - 3:] = 0
            if B > 1:
                mask[B - 1, :1] = 0
        ids = ids.masked_fill(mask == 0, pad)
    t = {"input_ids": ids}
    if with_mask:
        t["attention_mask"] = mask
    labels = torch.randint(2, V, (B, Td), generator=g)
    labels[0, Td - 2:] = -100
    if with_labels:
        t["labels"] = labels
    if with_dec:
        t["decoder_input_ids"] = torch.randint(0, V, (B, Td), generator=g)
    if with_dec_mask:
        # row 0: its last 2 positions (the ignored labels) padded; the last row padded on the left by 1,
        # so its first query sees no key at all (HF's eager attention: uniform over every key)
        dm = torch.ones(B, Td, dtype=torch.long)
        dm[0, Td - 2:] = 0
        dm[B - 1, :1] = 0
        t["decoder_attention_mask"] = dm
    return t


MODELS = {
    # tied head, d_kv * heads == d_model, several sparse blocks (encoder 1 and 3, decoder 1),
    # buckets 8 / distance 12 (log buckets reached at T = 9), capacity 3 (drops), relu; fp32, one file
    "switch_tied": dict(
        config={"architectures": ["SwitchTransformersForConditionalGeneration"], "model_type": "switch_transformers",
                "vocab_size": 40, "d_model": 12, "d_kv": 6, "num_heads": 2, "d_ff": 16, "num_experts": 4,
                "expert_capacity": 3, "num_layers": 4, "num_sparse_encoder_layers": 2, "num_decoder_layers": 3,
                "num_sparse_decoder_layers": 1, "relative_attention_num_buckets": 8,
                "relative_attention_max_distance": 12, "dropout_rate": 0.0, "router_jitter_noise": 0.0,
                "layer_norm_epsilon": 1e-6, "router_z_loss_coef": 0.01, "router_aux_loss_coef": 0.02,
                "dense_act_fn": "relu", "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1,
                "decoder_start_token_id": 0, "is_encoder_decoder": True, "router_bias": False,
                "router_dtype": "float32", "router_ignore_padding_tokens": False, "use_cache": True,
                "initializer_factor": 1.0, "add_router_probs": False, "torch_dtype": "float32",
                "transformers_version": "4.46.3"},
        dtype=torch.float32, shards=1, seed=11,
        cases=[("right", dict(B=2, Te=9, Td=7, left=False, with_mask=True, with_labels=True, with_dec=False)),
               ("left", dict(B=2, Te=8, Td=6, left=True, with_mask=True, with_labels=True, with_dec=True)),
               ("nomask", dict(B=1, Te=7, Td=5, left=False, with_mask=False, with_labels=False, with_dec=True)),
               ("decmask", dict(B=2, Te=8, Td=7, left=False, with_mask=True, with_labels=True, with_dec=False,
                                with_dec_mask=True))]),
    # untied head, d_kv * heads (15) != d_model (12), encoder all sparse (sparse_step 1: HF computes no
    # encoder router loss), decoder blocks 1 and 3 of 4, capacity 2, gelu_new; HF's defaults for the
    # buckets (32 / 128) and for the absent keys; bf16 weights in two shards; keys HF's config
    # carries that moelm ignores (router_type, is_gated_act) and an alias (hidden_size)
    "switch_untied": dict(
        config={"model_type": "switch_transformers", "vocab_size": 40, "d_model": 12, "hidden_size": 12, "d_kv": 5,
                "num_heads": 3, "d_ff": 20, "num_experts": 3, "expert_capacity": 2, "num_layers": 2,
                "num_sparse_encoder_layers": 2, "num_decoder_layers": 4, "num_sparse_decoder_layers": 2,
                "dropout_rate": 0.0, "router_jitter_noise": 0.0, "router_z_loss_coef": 0.005,
                "router_aux_loss_coef": 0.03, "dense_act_fn": "gelu_new", "tie_word_embeddings": False,
                "decoder_start_token_id": 0, "router_type": "tokens_masked", "is_gated_act": False},
        dtype=torch.bfloat16, shards=2, seed=23,
        cases=[("right", dict(B=2, Te=8, Td=6, left=False, with_mask=True, with_labels=True, with_dec=False)),
               ("left", dict(B=3, Te=7, Td=5, left=True, with_mask=True, with_labels=True, with_dec=False)),
               ("decmask", dict(B=3, Te=7, Td=6, left=True, with_mask=True, with_labels=True, with_dec=True,
                                with_dec_mask=True))]),
}


def bucket_table():
    """T5's bucket function on relative positions -300..300 for a few (buckets, max distance)."""
    rel = torch.arange(-300, 301)
    out = []
    for nb, md in ((32, 128), (8, 12), (6, 20), (33, 40)):
        for bi in (1, 0):
            out.append(("bucket.%d.%d.%d" % (nb, md, bi), relative_bucket(rel, bool(bi), nb, md).to(torch.int32)))
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: switch_ref.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name, spec in MODELS.items():
        cfg = Config(spec["config"])
        model = SwitchForConditionalGeneration(cfg)
        draw_weights(model, spec["seed"])
        round_to(model, spec["dtype"])
        model.eval()
        write_hf_dir(os.path.join(out_dir, name), model, spec["config"], spec["dtype"], spec["shards"])
        inputs, expected = [], []
        for ci, (case, kw) in enumerate(spec["cases"]):
            t = case_tensors(cfg.vocab_size, kw["B"], kw["Te"], kw["Td"], cfg.pad_token_id,
                             spec["seed"] * 100 + ci, kw["left"], kw["with_mask"], kw["with_labels"], kw["with_dec"],
                             kw.get("with_dec_mask", False))
            inputs += [("%s.%s" % (case, k), v.to(torch.int32)) for k, v in t.items()]
            stats = {"margin": float("inf"), "dropped": []}
            model.zero_grad()
            out = model(t["input_ids"], t.get("attention_mask"), t.get("decoder_input_ids"), t.get("labels"), stats,
                        t.get("decoder_attention_mask"))
            expected += [("%s.%s" % (case, k), v.detach().reshape(v.shape)) for k, v in out.items()]
            assert stats["margin"] > 1e-3, "routing margin %g too small: change the seed" % stats["margin"]
            assert sum(stats["dropped"]) > 0, "no token over capacity in %s.%s" % (name, case)
            if ci == 0:
                out["loss"].backward()
                expected += [("grad." + n, p.grad.clone()) for n, p in model.named_parameters()]
            print("%s.%s: loss %s, dropped per sparse layer %s, routing margin %.3g" % (
                name, case, "%.6f" % float(out["loss"]) if "loss" in out else "-", stats["dropped"], stats["margin"]))
        if name == "switch_tied":
            expected += bucket_table()
        meta = {"generator": "tests/ref/switch_ref.py, torch %s" % torch.__version__}
        st_write(os.path.join(out_dir, name + ".inputs.safetensors"), inputs, meta)
        st_write(os.path.join(out_dir, name + ".expected.safetensors"), expected, meta)


if __name__ == "__main__":
    main()
