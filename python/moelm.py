"""moelm.py: a moelm run directory as a PyTorch nn.Module, for studying a trained model (and its
routing) in Python or a notebook. Needs only PyTorch (Debian's python3-torch: /usr/bin/python3).

    import sys; sys.path.insert(0, "python")        # from the repository root
    import moelm
    model = moelm.load("runs/demo")                 # the run's latest checkpoint (or a ckpt-N directory)
    tok = moelm.Tokenizer("runs/demo")              # the run's tokenizer, through the moelm binary
    ids = torch.tensor([tok.encode("the meaning of life")])
    logits = model(ids)                             # [B, T, V], moelm's logits (moelm forward's)
    for r in model.routing:                         # one Routing per MoE layer of the last call
        print(r.layer, r.expert[0, :, 0].tolist(), r.kept[0, :, 0].tolist())

Model types: "lm" (pre-norm decoder: tiny, demo, dense-ptb, switch-ptb) and "seed" (the tutorial's
post-norm stack with an MoE before its ReLU head: seed-moe, seed-gating, seed-switch), with the
routers switch, topk (GShard, or Mixtral's softmax over the chosen K), soft, hash and random, the
DeepSeek selection bias, the shared expert and routed_scaling_factor, and the adaptive softmax (the
logits are then every word's log-probability, as moelm's are); "mixtral" and "llama"
(mixtral-tiny, mixtral-ptb, llama-tiny: Hugging Face's names and keys, dropless routing as HF's).
Refused with a message: switch_transformers (an encoder-decoder in HF's layout: use transformers)
and expert-choice routing.

What a call computes: moelm's eval-mode forward (`moelm forward`, `moelm eval`): no dropout, no
router jitter; the B*T tokens of the call are one routing group, and the capacity per expert is
Cap = max(min_capacity, floor(cf * B*T * K / E + 0.5)) clamped to [1, B*T] (expert_capacity > 0:
that instead), with cf = eval_capacity_factor (capacity_factor in train() mode, which changes
nothing else: dropout and jitter are never applied). Slots over capacity are dropped first-come,
all first choices in token order, then all second choices, ...; a dropped slot adds 0 (the
residual carries the token). The random router sends the whole call to one expert: pass
random_expert=e to choose it (default: drawn from torch's generator). Gradients flow (autograd).

The functions below (forward, moe, ...) are also tests/ref/torch_ref.py's reference model, written
from the architecture description (src/model/model.h, src/moe/moe.h), not from the C code paths.
Shapes: B batch, T sequence, N = B*T tokens, C d_model, V vocab, E experts, K experts per token.
"""
import json
import math
import os
import struct
import subprocess

import torch
import torch.nn.functional as F

__all__ = ["load", "MoeLM", "Routing", "Tokenizer", "Cfg", "forward", "st_read", "st_write"]


# ---- safetensors, by hand -------------------------------------------------------------------------

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def st_read(path):
    """path -> ({name: float32 tensor}, metadata dict). F32, F16 and BF16 tensors."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError("%s: tensor %s has dtype %s (F32, F16 or BF16 expected)" % (path, name, info["dtype"]))
        b, e = info["data_offsets"]
        dt = _DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=dt) if e > b else torch.zeros(0, dtype=dt)
        tensors[name] = t.reshape(info["shape"]).to(torch.float32).clone()
    return tensors, meta


def st_write(path, tensors, meta):
    """tensors: list of (name, float32 tensor); packed in order, header padded with spaces to 8."""
    header = {"__metadata__": meta}
    blobs, off = [], 0
    for name, t in tensors:
        b = t.detach().contiguous().to(torch.float32).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---- the model ------------------------------------------------------------------------------------

def _f32(x):
    """x rounded to float32, as moelm holds its config floats."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


class Cfg:
    """The keys of a moelm config.json the forward reads (moelm's names, src/model/config.h)."""

    def __init__(self, d):
        self.type = d.get("model_type", "lm")
        if self.type not in ("lm", "seed"):
            raise ValueError("model_type %r: this module runs moelm's lm, seed, mixtral and llama models (a "
                             "switch_transformers directory is Hugging Face's: use transformers)" % self.type)
        self.V, self.C, self.NH, self.L = d["vocab_size"], d["d_model"], d["num_heads"], d["num_layers"]
        self.H = d["d_ff"]
        self.eps = d["layer_norm_epsilon"]
        self.norm = d["norm_type"]
        self.act = d["hidden_act"]
        self.tied = d["tie_word_embeddings"]
        self.HH = d["head_hidden"]
        self.E = d["num_experts"]
        self.sparse_step = d["sparse_step"]
        self.router = d["router_type"]
        if self.router not in ("switch", "topk", "soft", "hash", "random"):
            raise ValueError("router_type %r is not supported here (switch, topk, soft, hash, random)" % self.router)
        self.K = d["num_experts_per_tok"] if self.router == "topk" else 1
        self.mixtral_gates = bool(d.get("topk_softmax_after", False)) and self.router == "topk"
        self.cf, self.eval_cf = _f32(d["capacity_factor"]), _f32(d.get("eval_capacity_factor", d["capacity_factor"]))
        self.min_cap = d["min_capacity"]
        self.expert_capacity = d["expert_capacity"]
        self.EH = d["expert_d_ff"] if d["expert_d_ff"] > 0 else d["d_ff"]
        self.aux_coef, self.z_coef = d["router_aux_loss_coef"], d["router_z_loss_coef"]
        self.route_scale = d.get("routed_scaling_factor", 1.0)   # routed sum times this (DeepSeek)
        self.expert_bias = bool(d.get("use_expert_bias", False))
        self.shared = bool(d.get("shared_expert", False))
        self.dropout = d.get("dropout_rate", 0.0)
        self.jitter = d.get("router_jitter_noise", 0.0)
        # the adaptive softmax's cutoffs ("2000,6000"; absent: a full softmax)
        self.cutoffs = [int(c) for c in str(d.get("adaptive_softmax_cutoffs", "")).split(",") if c not in ("", "0")]
        # rotary positions on q and k instead of a learned pos_emb (absent: learned)
        self.rope = d.get("position_embedding", "learned") == "rope"
        self.theta = d.get("rope_theta", 10000.0)
        self.positions = d["n_positions"]

    def sparse(self, l):
        """Block l has an MoE layer (the lm's; the seed model's one MoE layer is its head's)."""
        return self.type == "lm" and self.E > 1 and self.sparse_step > 0 and (
            self.sparse_step == 1 or l % self.sparse_step == 1)


def norm(cfg, x, w, b):
    if cfg.norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, b, cfg.eps)
    assert cfg.norm == "rmsnorm", cfg.norm
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.eps) * w


def act(cfg, h, H):
    if cfg.act == "relu":
        return F.relu(h)
    if cfg.act == "gelu":
        return F.gelu(h)  # exact (erf)
    assert cfg.act == "swiglu", cfg.act
    return F.silu(h[..., :H]) * h[..., H:]


def ffn(cfg, x, w1, b1, w2, b2, H):
    return F.linear(act(cfg, F.linear(x, w1, b1), H), w2, b2)


def attention(cfg, x, P, pre):
    """x [B, T, C] -> [B, T, C]: causal multi-head attention, q | k | v side by side in one projection."""
    B, T, C = x.shape
    NH, hs = cfg.NH, C // cfg.NH
    qkv = F.linear(x, P[pre + "attn.qkv.weight"], P[pre + "attn.qkv.bias"])
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in (q, k, v))
    if cfg.rope:
        cos, sin = rope_cos_sin(T, hs, cfg.theta)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
    s = q @ k.transpose(-2, -1) / (hs ** 0.5)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    y = torch.softmax(s, dim=-1) @ v
    y = y.transpose(1, 2).reshape(B, T, C)
    return F.linear(y, P[pre + "attn.out.weight"], P[pre + "attn.out.bias"])


class Routing:
    """One MoE layer's decisions in a forward call (tensors detached; N = B*T tokens, token-major):
    layer     block index of the layer (the seed model's head MoE: "head")
    logits    [N, E] router logits (zeros for hash and random, which have no router)
    probs     [N, E] softmax of the logits (hash, random: the one-hot of the choice)
    expert    [N, K] chosen experts, best first (soft: K = E, expert e in column e)
    gate      [N, K] combine weights
    kept      [N, K] bool: the slot fitted the expert's capacity (False: dropped)
    capacity  slots per expert (N when uncapped)
    """

    def __init__(self, layer, logits, probs, expert, gate, kept, capacity):
        self.layer, self.logits, self.probs = layer, logits, probs
        self.expert, self.gate, self.kept, self.capacity = expert, gate, kept, capacity

    def load(self):
        """[E] share of the kept slots each expert took."""
        E = self.probs.shape[1]
        c = torch.bincount(self.expert[self.kept], minlength=E).to(torch.float32)
        return c / max(1.0, float(c.sum()))

    def dropped(self):
        """Share of the token-slots dropped by capacity."""
        return float((~self.kept).sum()) / max(1, self.kept.numel())


class MoEStats:
    def __init__(self):
        self.min_margin = float("inf")   # smallest gap between a chosen prob and the best unchosen one
        self.dropped = []                # slots dropped by capacity, per MoE layer call
        self.routing = []                # a Routing per MoE layer call


def capacity(cfg, N, training=True):
    if cfg.router in ("soft", "random"):
        return N
    if cfg.expert_capacity > 0:
        cap = cfg.expert_capacity
    else:
        cf = cfg.cf if training else cfg.eval_cf
        if cf <= 0:
            return N
        cap = int(math.floor(cf * N * cfg.K / cfg.E + 0.5))
        cap = max(cap, cfg.min_cap)
    return min(max(cap, 1), N)


def hash_expert(token, E):
    """The hash router's expert of a token id: splitmix64's finaliser of the id, mod E."""
    m = (1 << 64) - 1
    z = (token + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return z % E


def moe(cfg, x, P, pre, stats, tokens=None, training=True, random_expert=None, layer=None):
    """x [N, C] -> (out [N, C], weighted aux loss). tokens [N] (the hash router's input)."""
    N, C = x.shape
    E, K, H = cfg.E, cfg.K, cfg.EH
    W1, B1 = P[pre + "experts.fc1.weight"], P[pre + "experts.fc1.bias"]
    W2, B2 = P[pre + "experts.fc2.weight"], P[pre + "experts.fc2.bias"]
    out = torch.zeros(N, C)
    aux = torch.zeros(())
    if cfg.router in ("hash", "random"):
        if cfg.router == "random":
            e = int(torch.randint(E, ())) if random_expert is None else int(random_expert)
            choice = torch.full((N, 1), e, dtype=torch.long)
        else:
            choice = torch.tensor([[hash_expert(int(t), E)] for t in tokens], dtype=torch.long)
        logits = torch.zeros(N, E)
        probs = F.one_hot(choice[:, 0], E).to(torch.float32)
        gates = torch.ones(N, 1)
    else:
        logits = x @ P[pre + "router.weight"].t()
        probs = torch.softmax(logits, dim=-1)
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        aux = cfg.z_coef * z
    if cfg.router == "soft":
        for e in range(E):
            out = out + probs[:, e:e + 1] * ffn(cfg, x, W1[e], B1[e], W2[e], B2[e], H)
        stats.routing.append(Routing(layer, logits.detach(), probs.detach(), torch.arange(E).expand(N, E).clone(),
                                     probs.detach().clone(), torch.ones(N, E, dtype=torch.bool), N))
        return _shared(cfg, x, P, pre, out), aux

    if cfg.router in ("switch", "topk"):
        # selection on the (detached) probabilities (+ the selection bias): K rounds of argmax over the
        # experts not yet taken
        p = probs.detach().clone()
        if cfg.expert_bias:
            p = p + P[pre + "expert_bias"].detach()
        choice = torch.zeros(N, K, dtype=torch.long)
        for k in range(K):
            choice[:, k] = torch.argmax(p, dim=-1)   # first maximal index: ties to the lower expert
            p.scatter_(1, choice[:, k:k + 1], float("-inf"))
        # the margin of the decision: gaps between consecutive chosen probs (their order sets the drop
        # priority) and between the last chosen and the best unchosen one
        ranked = torch.cat([probs.detach().gather(1, choice), p.max(dim=-1, keepdim=True).values], dim=1)
        if p.shape[1] > K:
            stats.min_margin = min(stats.min_margin, float((ranked[:, :-1] - ranked[:, 1:]).min()))
        if cfg.mixtral_gates:
            gates = torch.softmax(logits.gather(1, choice), dim=-1)   # softmax over the chosen K logits
        else:
            gates = probs.gather(1, choice)          # raw probabilities (GShard / Switch)
        # load balancing: f_e from the pre-capacity choices (constants), P_e the mean probability
        f = torch.bincount(choice.flatten(), minlength=E).to(torch.float32) / (N * K)
        aux = aux + cfg.aux_coef * E * (f * probs.mean(dim=0)).sum()
    Kc = choice.shape[1]
    # capacity: first choices in token order, then second choices, ...
    Cap = capacity(cfg, N, training)
    fill = [0] * E
    keep = torch.zeros(N, Kc, dtype=torch.bool)
    for k in range(Kc):
        for t in range(N):
            e = int(choice[t, k])
            if fill[e] < Cap:
                fill[e] += 1
                keep[t, k] = True
    stats.dropped.append(int((~keep).sum()))
    stats.routing.append(Routing(layer, logits.detach(), probs.detach(), choice, gates.detach().clone(), keep, Cap))
    for e in range(E):
        for k in range(Kc):
            idx = torch.nonzero(keep[:, k] & (choice[:, k] == e)).flatten()
            if idx.numel() == 0:
                continue
            y = ffn(cfg, x[idx], W1[e], B1[e], W2[e], B2[e], H)
            out = out.index_add(0, idx, cfg.route_scale * gates[idx, k:k + 1] * y)
    return _shared(cfg, x, P, pre, out), aux


def _shared(cfg, x, P, pre, out):
    """out plus the shared expert's FFN of x (every token; not scaled), when the layer has one."""
    if not cfg.shared:
        return out
    return out + ffn(cfg, x, P[pre + "shared.fc1.weight"], P[pre + "shared.fc1.bias"], P[pre + "shared.fc2.weight"],
                     P[pre + "shared.fc2.bias"], cfg.EH)


def adaptive_log_probs(z, cl, cuts):
    """The adaptive softmax (Grave et al. 2017): z [N, V] every word's logit, cl [N, n] the tail clusters'
    -> [N, V] log p: the head is a softmax over the words below cuts[0] and the n clusters; a word of
    cluster k (ids cuts[k] .. cuts[k + 1] - 1, the last up to V) adds its softmax within the cluster."""
    c0, bounds = cuts[0], cuts + [z.shape[1]]
    head = torch.log_softmax(torch.cat([z[:, :c0], cl], dim=1), dim=1)
    parts = [head[:, :c0]]
    for k in range(len(cuts)):
        parts.append(head[:, c0 + k:c0 + k + 1] + torch.log_softmax(z[:, bounds[k]:bounds[k + 1]], dim=1))
    return torch.cat(parts, dim=1)


def forward(cfg, P, inputs, stats, training=True, random_expert=None):
    """inputs [B, T] long -> (logits [B*T, V], aux). P: moelm's tensor names -> tensors."""
    B, T = inputs.shape
    x = P["tok_emb.weight"][inputs]
    if not cfg.rope:
        x = x + P["pos_emb.weight"][:T].unsqueeze(0)
    aux = torch.zeros(())
    tokens = inputs.reshape(-1)
    for l in range(cfg.L):
        pre = "blocks.%d." % l
        ln1 = (P[pre + "ln1.weight"], P.get(pre + "ln1.bias"))
        ln2 = (P[pre + "ln2.weight"], P.get(pre + "ln2.bias"))
        if cfg.type == "lm":
            x = x + attention(cfg, norm(cfg, x, *ln1), P, pre)
            h = norm(cfg, x, *ln2)
        else:
            x = norm(cfg, x + attention(cfg, x, P, pre), *ln1)
            h = x
        if cfg.sparse(l):
            y, a = moe(cfg, h.reshape(B * T, -1), P, pre + "moe.", stats, tokens, training, random_expert, l)
            y = y.view(B, T, -1)
            aux = aux + a
        else:
            y = ffn(cfg, h, P[pre + "ffn.fc1.weight"], P[pre + "ffn.fc1.bias"], P[pre + "ffn.fc2.weight"],
                    P[pre + "ffn.fc2.bias"], cfg.H)
        x = x + y if cfg.type == "lm" else norm(cfg, x + y, *ln2)
    x = x.reshape(B * T, -1)
    if cfg.type == "lm":
        x = norm(cfg, x, P["ln_f.weight"], P.get("ln_f.bias"))
        logits = x @ (P["tok_emb.weight"] if cfg.tied else P["lm_head.weight"]).t()
        if cfg.cutoffs:
            logits = adaptive_log_probs(logits, x @ P["adaptive.cluster.weight"].t(), cfg.cutoffs)
    else:
        y, a = moe(cfg, x, P, "moe.", stats, tokens, training, random_expert, "head")
        aux = aux + a
        x = x + y
        h = F.relu(F.linear(x, P["head.fc1.weight"], P["head.fc1.bias"]))
        logits = F.linear(h, P["head.fc2.weight"], P["head.fc2.bias"])
    return logits, aux


# ---- Llama / Mixtral: Hugging Face's names and config keys (also tests/ref/mixtral_ref.py's model) ----

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


def linear(x, w):
    """x @ w.T: a linear layer's product (the llama functions take another as mm, e.g. a bf16 one)."""
    return x @ w.T


def llama_attention(W, pre, h, c, cos, sin, mm=linear):
    B, T, C = h.shape
    NH, NKV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = C // NH
    q = mm(h, W[pre + "self_attn.q_proj.weight"]).view(B, T, NH, hd).transpose(1, 2)
    k = mm(h, W[pre + "self_attn.k_proj.weight"]).view(B, T, NKV, hd).transpose(1, 2)
    v = mm(h, W[pre + "self_attn.v_proj.weight"]).view(B, T, NKV, hd).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    rep = NH // NKV   # repeat_kv: query head j reads kv head j // rep
    k = k[:, :, None].expand(B, NKV, rep, T, hd).reshape(B, NH, T, hd)
    v = v[:, :, None].expand(B, NKV, rep, T, hd).reshape(B, NH, T, hd)
    s = q @ k.transpose(2, 3) / math.sqrt(hd)
    mask = torch.triu(torch.full((T, T), torch.finfo(torch.float32).min), diagonal=1)
    a = torch.softmax(s + mask, dim=-1, dtype=torch.float32)
    o = (a @ v).transpose(1, 2).reshape(B, T, NH * hd)
    return mm(o, W[pre + "self_attn.o_proj.weight"])


def swiglu(x, gate, up, down, mm=linear):
    return mm(torch.nn.functional.silu(mm(x, gate)) * mm(x, up), down)


def sparse_moe(W, pre, h, c, record=None, layer=None, mm=linear):
    """MixtralSparseMoeBlock: softmax over all experts, top-k, the k weights renormalised, experts summed."""
    B, T, C = h.shape
    x = h.reshape(B * T, C)
    logits = x @ W[pre + "block_sparse_moe.gate.weight"].T            # [BT, E]
    probs = torch.softmax(logits, dim=1, dtype=torch.float32)
    w, sel = torch.topk(probs, c["num_experts_per_tok"], dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    if record is not None:   # dropless: every slot kept
        record.append(Routing(layer, logits.detach(), probs.detach(), sel.clone(), w.detach().clone(),
                              torch.ones_like(sel, dtype=torch.bool), x.shape[0]))
    out = torch.zeros_like(x)
    for e in range(c["num_local_experts"]):
        e_pre = pre + "block_sparse_moe.experts.%d." % e
        rows, slot = torch.where(sel == e)
        if rows.numel() == 0:
            continue
        y = swiglu(x[rows], W[e_pre + "w1.weight"], W[e_pre + "w3.weight"], W[e_pre + "w2.weight"], mm)
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


def llama_forward(W, c, ids, record=None, mm=linear):
    """ids [B, T] -> (logits [B, T, V], HF's loss with labels = ids, router logits [B*T, E] per MoE layer).
    record: None, or a list that gets a Routing per MoE layer. mm(x, w): the linear layers' products
    (attention's projections, the MLP or experts, the head; not the router)."""
    B, T = ids.shape
    C, NH = c["hidden_size"], c["num_attention_heads"]
    cos, sin = rope_cos_sin(T, C // NH, c["rope_theta"])
    h = W["model.embed_tokens.weight"][ids]
    router_logits = []
    for l in range(c["num_hidden_layers"]):
        pre = "model.layers.%d." % l
        h = h + llama_attention(W, pre, rms_norm(h, W[pre + "input_layernorm.weight"], c["rms_norm_eps"]), c, cos, sin, mm)
        x = rms_norm(h, W[pre + "post_attention_layernorm.weight"], c["rms_norm_eps"])
        if c["model_type"] == "mixtral":
            y, lg = sparse_moe(W, pre, x, c, record, l, mm)
            router_logits.append(lg)
        else:
            y = swiglu(x, W[pre + "mlp.gate_proj.weight"], W[pre + "mlp.up_proj.weight"], W[pre + "mlp.down_proj.weight"], mm)
        h = h + y
    h = rms_norm(h, W["model.norm.weight"], c["rms_norm_eps"])
    head = W["model.embed_tokens.weight"] if c["tie_word_embeddings"] else W["lm_head.weight"]
    logits = mm(h, head)
    # labels = input_ids: position t predicts token t + 1 (HF shifts inside the loss)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return logits, loss, router_logits


def llama_split_experts(tensors):
    """A moelm mixtral checkpoint keeps each layer's experts as slabs, "...experts.w1_w3.weight" [E, 2H, C]
    (expert e's w1 (gate) rows, then its w3 (up) rows) and "...experts.w2.weight" [E, C, H]: split into
    Hugging Face's per-expert tensors "...experts.<e>.w1.weight" [H, C], w3 [H, C], w2 [C, H]. A tensor
    dict in HF's names already is returned as it is."""
    out = {}
    for name, t in tensors.items():
        if name.endswith("experts.w1_w3.weight"):
            stem, H = name[:-len("w1_w3.weight")], t.shape[1] // 2
            for e in range(t.shape[0]):
                out["%s%d.w1.weight" % (stem, e)] = t[e, :H].clone()
                out["%s%d.w3.weight" % (stem, e)] = t[e, H:].clone()
        elif name.endswith("experts.w2.weight") and t.dim() == 3:
            stem = name[:-len("w2.weight")]
            for e in range(t.shape[0]):
                out["%s%d.w2.weight" % (stem, e)] = t[e].clone()
        else:
            out[name] = t
    return out


def llama_check(d):
    """The moelm settings of a llama / mixtral config this forward follows (HF's: dropless top-k, the
    chosen K probabilities renormalised); anything else is refused with a message."""
    hd = d.get("head_dim")
    if hd is not None and hd * d["num_attention_heads"] != d["hidden_size"]:
        raise ValueError("head_dim %d x %d heads != hidden_size %d: not supported" % (hd, d["num_attention_heads"],
                                                                                      d["hidden_size"]))
    if d["model_type"] == "mixtral":
        if d.get("router_type", "topk") != "topk" or not d.get("topk_softmax_after", True):
            raise ValueError("mixtral with router %r / topk_softmax_after %r: only HF's routing is supported"
                             % (d.get("router_type"), d.get("topk_softmax_after")))
        if d.get("capacity_factor", 0) > 0 or d.get("eval_capacity_factor", 0) > 0 or d.get("expert_capacity", 0) > 0:
            raise ValueError("mixtral with a capacity: only dropless routing (HF's) is supported")
        if d.get("shared_expert") or d.get("use_expert_bias") or d.get("routed_scaling_factor", 1) != 1:
            raise ValueError("mixtral with a shared expert, selection bias or routed scaling is not supported")


# ---- the nn.Module --------------------------------------------------------------------------------

def checkpoint_dir(path):
    """A run directory's latest checkpoint (path/latest), or path itself when it holds config.json."""
    if os.path.isfile(os.path.join(path, "latest", "config.json")):
        return os.path.join(path, "latest")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise FileNotFoundError("%s: not a moelm run directory (no latest/config.json) nor a checkpoint "
                            "(no config.json)" % path)


class MoeLM(torch.nn.Module):
    """A moelm model. Its parameters carry the checkpoint's tensor names (state_dict() keys are the names
    in model.safetensors; mixtral: Hugging Face's per-expert names, llama_split_experts). forward(input_ids [B, T]) -> logits [B, T, V]; after each call,
    .routing holds a Routing per MoE layer and .aux_loss the weighted router losses."""

    def __init__(self, config, tensors):
        super().__init__()
        self.config = dict(config)
        self.llama = config.get("model_type") in ("mixtral", "llama")
        if self.llama:
            llama_check(self.config)
            self.V, self.positions = config["vocab_size"], config.get("max_position_embeddings", 1 << 30)
        else:
            self.cfg = Cfg(config)
            self.V, self.positions = self.cfg.V, self.cfg.positions
        for name, t in tensors.items():
            owner = self
            parts = name.split(".")
            for p in parts[:-1]:
                if p not in owner._modules:
                    owner.add_module(p, torch.nn.Module())
                owner = owner._modules[p]
            owner.register_parameter(parts[-1], torch.nn.Parameter(t))
        self.routing = []
        self.aux_loss = None

    @classmethod
    def from_dir(cls, path):
        d = checkpoint_dir(path)
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
        tensors, _ = st_read(os.path.join(d, "model.safetensors"))
        if config.get("model_type") == "mixtral":
            tensors = llama_split_experts(tensors)
        return cls(config, tensors).eval()

    def forward(self, input_ids, random_expert=None):
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        B, T = ids.shape
        if T > self.positions:
            raise ValueError("sequence of %d tokens: the model has %d positions" % (T, self.positions))
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.V):
            raise ValueError("token ids must be in [0, %d)" % self.V)
        if self.llama:
            record = []
            logits, _, router_logits = llama_forward(dict(self.named_parameters()), self.config, ids, record)
            self.routing = record
            self.aux_loss = None
            if router_logits and self.config.get("output_router_logits"):
                self.aux_loss = self.config["router_aux_loss_coef"] * balance_loss(
                    router_logits, self.config["num_local_experts"], self.config["num_experts_per_tok"])
            return logits
        stats = MoEStats()
        logits, aux = forward(self.cfg, dict(self.named_parameters()), ids, stats, self.training, random_expert)
        self.routing = stats.routing
        self.aux_loss = aux
        return logits.view(B, T, -1)


def load(path):
    """A run directory (its latest checkpoint) or a checkpoint directory -> MoeLM in eval mode."""
    return MoeLM.from_dir(path)


# ---- the tokenizer --------------------------------------------------------------------------------

class Tokenizer:
    """The run's tokenizer (tokenizer.model of its checkpoint), encoding and decoding through
    `moelm tokenizer encode|decode` (binary: the moelm argument, $MOELM_BIN, or ./moelm, or moelm on PATH)."""

    def __init__(self, path, moelm=None):
        d = checkpoint_dir(path) if os.path.isdir(path) else None
        self.model = os.path.join(d, "tokenizer.model") if d else path
        if not os.path.isfile(self.model):
            raise FileNotFoundError("%s: no tokenizer file" % self.model)
        self.bin = moelm or os.environ.get("MOELM_BIN") or ("./moelm" if os.path.isfile("./moelm") else "moelm")

    def _run(self, verb, fmt, lines):
        text = "".join(l.replace("\n", " ") + "\n" for l in lines)
        flag = "--output_format" if verb == "encode" else "--input_format"
        r = subprocess.run([self.bin, "tokenizer", verb, "--model", self.model, flag, fmt], input=text.encode("utf-8"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise RuntimeError("moelm tokenizer %s: %s" % (verb, r.stderr.decode("utf-8", "replace").strip()))
        return r.stdout.decode("utf-8").split("\n")[:len(lines)]

    def encode(self, text):
        """A line of text -> list of ids."""
        return [int(i) for i in self._run("encode", "id", [text])[0].split()]

    def pieces(self, text):
        """A line of text -> list of pieces (words for a word vocabulary)."""
        return self._run("encode", "piece", [text])[0].split()

    def decode(self, ids):
        """A list of ids -> text."""
        return self._run("decode", "id", [" ".join(str(int(i)) for i in ids)])[0]
