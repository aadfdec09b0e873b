#!/usr/bin/python3
"""torch_ref.py: an independent PyTorch implementation of moelm's models, the reference for
tests/test_torch_ref.c (STYLE.md, "Tests are oracles", tier 3).

    /usr/bin/python3 tests/ref/torch_ref.py EXPORT_DIR OUT_DIR [CASE ...]

reads EXPORT_DIR/<case>/init.safetensors (initial weights under moelm's tensor names, the batch
"batch.inputs"/"batch.targets" [B, T] as floats, metadata config/train/B/T/steps) and
EXPORT_DIR/<case>/config.json, and writes OUT_DIR/<case>.safetensors with the weights and batch
plus: logits [B*T, V], loss [1] (mean CE over targets >= 0), aux [1] (sum over MoE layers of
aux_coef * load-balancing + z_coef * z-loss), grad.<name> for every parameter (d(loss + aux)),
curve/curve_aux [steps] (CE and aux before each of `steps` AdamW steps) and min_routing_margin [1].

Written from the architecture description (src/model/model.h, src/moe/moe.h, the MoE conventions in
src/moe/moe.c), not from the C code paths: standard torch ops, autograd for every gradient,
torch.optim.AdamW for the updates. Everything in float32, on the CPU, deterministic.

The architecture:
  lm:   x = wte[tok] + wpe[t]; per block (pre-norm): x = x + attn(norm1(x)); x = x + ffn_or_moe(norm2(x));
        logits = norm_f(x) @ wte^T (tied) or @ lm_head^T.
  seed: x = wte[tok] + wpe[t]; per block (post-norm, causal): x = norm1(x + attn(x)); x = norm2(x + ffn(x));
        then x = x + moe(x) and the head: logits = relu(x @ W1^T + b1) @ W2^T + b2 (dropout 0).
  attention: qkv = x @ Wqkv^T + b, q | k | v of C columns each, heads of C/NH side by side;
        softmax(q k^T / sqrt(hs) + causal mask) v; then the output projection.
  ffn: fc2(act(fc1(x))); SwiGLU: fc1 has 2H rows, silu(first H) * (last H). GELU is the erf form.
  RMSNorm: x / sqrt(mean(x^2) + eps) * w.  LayerNorm: F.layer_norm.
  MoE (one routing group: the N = B*T tokens in batch-major order):
    logits = x @ Wr^T (no bias), probs = softmax(logits); z = mean_t logsumexp(logits_t)^2.
    switch: expert = argmax probs, gate = its prob. topk (GShard): the K largest probs (ties to the
    lower index), gates the raw probs, not renormalised. soft: every expert, gate = prob.
    capacity (switch/topk): Cap = max(min_capacity, floor(cf * N * K / E + 0.5)) clamped to [1, N]
    (expert_capacity > 0 overrides); slots are kept first-come in the order: all first choices in
    token order, then all second choices, ...; a dropped slot contributes 0 (the residual carries
    the token). Soft: no capacity.
    load balancing (switch/topk only): E * sum_e f_e P_e, f_e = (slots choosing e before capacity)
    / (N K) (a count: no gradient), P_e = mean_t probs[t, e].
    out[t] = sum over kept slots of gate * expert_e(x_t); expert_e = ffn with its own weights.
  loss = mean CE over valid targets + sum over MoE layers (aux_coef * balance + z_coef * z).
  AdamW: decoupled weight decay on matrices only: not norms, biases, positions (model.h, TensorInfo.decay).
  Gradient clipping: global L2 norm over all gradients, scaled to grad_clip when above it.
"""
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)


# ---- safetensors, by hand ----------------------------------------------------------------------

def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32) if e > b else torch.zeros(0)
        tensors[name] = t.reshape(info["shape"]).clone()
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

class Cfg:
    def __init__(self, d):
        self.type = d["model_type"]
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
        self.K = d["num_experts_per_tok"] if self.router == "topk" else 1
        self.cf = d["capacity_factor"]
        self.min_cap = d["min_capacity"]
        self.expert_capacity = d["expert_capacity"]
        self.EH = d["expert_d_ff"] if d["expert_d_ff"] > 0 else d["d_ff"]
        self.aux_coef, self.z_coef = d["router_aux_loss_coef"], d["router_z_loss_coef"]
        self.route_scale = d.get("routed_scaling_factor", 1.0)   # routed sum times this (DeepSeek)
        # features this reference does not implement must be off
        assert d["dropout_rate"] == 0, "dropout must be 0"
        assert d["router_jitter_noise"] == 0, "jitter must be 0"
        assert not d["use_expert_bias"] and not d["shared_expert"], "expert bias / shared expert unsupported"
        assert self.router in ("switch", "topk", "soft"), self.router
        assert not (self.router == "topk" and d["topk_softmax_after"]), "only GShard top-k"

    def sparse(self, l):
        return self.type == "lm" and self.E > 1 and self.sparse_step > 0 and (
            self.sparse_step == 1 or l % self.sparse_step == 1)


def norm(cfg, x, w, b):
    if cfg.norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, b, cfg.eps)
    assert cfg.norm == "rmsnorm"
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.eps) * w


def act(cfg, h, H):
    if cfg.act == "relu":
        return F.relu(h)
    if cfg.act == "gelu":
        return F.gelu(h)  # exact (erf)
    assert cfg.act == "swiglu"
    return F.silu(h[..., :H]) * h[..., H:]


def ffn(cfg, x, w1, b1, w2, b2, H):
    return F.linear(act(cfg, F.linear(x, w1, b1), H), w2, b2)


def attention(cfg, x, P, pre):
    B, T, C = x.shape
    NH, hs = cfg.NH, C // cfg.NH
    qkv = F.linear(x, P[pre + "attn.qkv.weight"], P[pre + "attn.qkv.bias"])
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-2, -1) / (hs ** 0.5)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    y = torch.softmax(s, dim=-1) @ v
    y = y.transpose(1, 2).reshape(B, T, C)
    return F.linear(y, P[pre + "attn.out.weight"], P[pre + "attn.out.bias"])


class MoEStats:
    def __init__(self):
        self.min_margin = float("inf")   # smallest gap between a chosen prob and the best unchosen one
        self.dropped = []                # slots dropped by capacity, per MoE layer call


def capacity(cfg, N):
    if cfg.router == "soft":
        return N
    if cfg.expert_capacity > 0:
        cap = cfg.expert_capacity
    else:
        if cfg.cf <= 0:
            return N
        import math
        cap = int(math.floor(cfg.cf * N * cfg.K / cfg.E + 0.5))
        cap = max(cap, cfg.min_cap)
    return min(max(cap, 1), N)


def moe(cfg, x, P, pre, stats):
    """x [N, C] -> (out [N, C], weighted aux loss)."""
    N, C = x.shape
    E, K, H = cfg.E, cfg.K, cfg.EH
    logits = x @ P[pre + "router.weight"].t()
    probs = torch.softmax(logits, dim=-1)
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    W1, B1 = P[pre + "experts.fc1.weight"], P[pre + "experts.fc1.bias"]
    W2, B2 = P[pre + "experts.fc2.weight"], P[pre + "experts.fc2.bias"]
    out = torch.zeros(N, C)
    if cfg.router == "soft":
        for e in range(E):
            out = out + probs[:, e:e + 1] * ffn(cfg, x, W1[e], B1[e], W2[e], B2[e], H)
        return out, cfg.z_coef * z

    # selection on the (detached) probabilities: K rounds of argmax over the experts not yet taken
    p = probs.detach().clone()
    choice = torch.zeros(N, K, dtype=torch.long)
    for k in range(K):
        choice[:, k] = torch.argmax(p, dim=-1)   # first maximal index: ties to the lower expert
        p.scatter_(1, choice[:, k:k + 1], float("-inf"))
    # the margin of the decision: gaps between consecutive chosen probs (their order sets the drop
    # priority) and between the last chosen and the best unchosen one
    ranked = torch.cat([probs.detach().gather(1, choice), p.max(dim=-1, keepdim=True).values], dim=1)
    stats.min_margin = min(stats.min_margin, float((ranked[:, :-1] - ranked[:, 1:]).min()))
    # capacity: first choices in token order, then second choices, ...
    Cap = capacity(cfg, N)
    fill = [0] * E
    keep = torch.zeros(N, K, dtype=torch.bool)
    for k in range(K):
        for t in range(N):
            e = int(choice[t, k])
            if fill[e] < Cap:
                fill[e] += 1
                keep[t, k] = True
    stats.dropped.append(int((~keep).sum()))
    gates = probs.gather(1, choice)              # raw probabilities (GShard / Switch)
    for e in range(E):
        for k in range(K):
            idx = torch.nonzero(keep[:, k] & (choice[:, k] == e)).flatten()
            if idx.numel() == 0:
                continue
            y = ffn(cfg, x[idx], W1[e], B1[e], W2[e], B2[e], H)
            out = out.index_add(0, idx, cfg.route_scale * gates[idx, k:k + 1] * y)
    # load balancing: f_e from the pre-capacity choices (constants), P_e the mean probability
    f = torch.bincount(choice.flatten(), minlength=E).to(torch.float32) / (N * K)
    balance = E * (f * probs.mean(dim=0)).sum()
    return out, cfg.aux_coef * balance + cfg.z_coef * z


def forward(cfg, P, inputs, stats):
    """inputs [B, T] long -> (logits [B*T, V], aux)."""
    B, T = inputs.shape
    x = P["tok_emb.weight"][inputs] + P["pos_emb.weight"][:T].unsqueeze(0)
    aux = torch.zeros(())
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
            y, a = moe(cfg, h.reshape(B * T, -1), P, pre + "moe.", stats)
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
    else:
        y, a = moe(cfg, x, P, "moe.", stats)
        aux = aux + a
        x = x + y
        h = F.relu(F.linear(x, P["head.fc1.weight"], P["head.fc1.bias"]))
        logits = F.linear(h, P["head.fc2.weight"], P["head.fc2.bias"])
    return logits, aux


def decays(name, t):
    """model.h: AdamW weight decay applies to matrices; not norms, biases, positions."""
    if os.environ.get("TORCH_REF_DECAY") == "ndim2":   # diagnostic only: decay every tensor of ndim >= 2
        return t.dim() >= 2
    return t.dim() >= 2 and not name.endswith(".bias") and name != "pos_emb.weight"


def run_case(export_dir, out_dir, case):
    src = os.path.join(export_dir, case)
    W, meta = st_read(os.path.join(src, "init.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        cfg = Cfg(json.load(f))
    tr = json.loads(meta["train"])
    assert tr["optimizer"] == "adamw" and tr["lr_schedule"] == "constant" and tr["warmup_steps"] == 0
    steps = int(meta["steps"])
    inputs = W.pop("batch.inputs").long()
    targets = W.pop("batch.targets").long()
    names = list(W.keys())   # the tensor-table order of the export
    P = {n: W[n].clone().requires_grad_(True) for n in names}

    stats = MoEStats()
    logits, aux = forward(cfg, P, inputs, stats)
    dropped0 = list(stats.dropped)
    loss = F.cross_entropy(logits, targets.flatten(), ignore_index=-1)
    (loss + aux).backward()
    grads = [("grad." + n, P[n].grad.clone()) for n in names]
    out_logits = logits.detach().clone()

    # the training curve from the same initial weights
    P = {n: W[n].clone().requires_grad_(True) for n in names}
    groups = [{"params": [P[n] for n in names if decays(n, P[n])], "weight_decay": tr["weight_decay"]},
              {"params": [P[n] for n in names if not decays(n, P[n])], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["eps"])
    curve, curve_aux = [], []
    for s in range(steps):
        opt.zero_grad(set_to_none=False)
        lg, a = forward(cfg, P, inputs, stats)
        l = F.cross_entropy(lg, targets.flatten(), ignore_index=-1)
        (l + a).backward()
        # global-norm clipping (double accumulation, scale only when above the limit)
        norm2 = sum(float((P[n].grad.double() ** 2).sum()) for n in names) ** 0.5
        if tr["grad_clip"] > 0 and norm2 > tr["grad_clip"]:
            for n in names:
                P[n].grad.mul_(tr["grad_clip"] / norm2)
        opt.step()
        curve.append(float(l))
        curve_aux.append(float(a))

    margin = stats.min_margin if stats.min_margin != float("inf") else 1.0
    out = [(n, W[n]) for n in names]
    out += [("batch.inputs", inputs.float()), ("batch.targets", targets.float()),
            ("logits", out_logits), ("loss", loss.detach().reshape(1)), ("aux", aux.detach().reshape(1))]
    out += grads
    out += [("curve", torch.tensor(curve)), ("curve_aux", torch.tensor(curve_aux)),
            ("min_routing_margin", torch.tensor([margin]))]
    meta_out = {k: meta[k] for k in ("config", "train", "B", "T", "steps", "case")}
    meta_out["generator"] = "tests/ref/torch_ref.py, torch %s" % torch.__version__
    path = os.path.join(out_dir, case + ".safetensors")
    st_write(path, out, meta_out)
    print("%s: loss %.6f aux %.6g curve %.6f -> %.6f, dropped slots per MoE layer %s (all steps: %d), "
          "min routing margin %.3g -> %s" % (case, float(loss), float(aux), curve[0], curve[-1], dropped0,
                                             sum(stats.dropped), margin, path))


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: torch_ref.py EXPORT_DIR OUT_DIR [CASE ...]")
    export_dir, out_dir = sys.argv[1], sys.argv[2]
    cases = sys.argv[3:] or sorted(d for d in os.listdir(export_dir)
                                   if os.path.isfile(os.path.join(export_dir, d, "init.safetensors")))
    os.makedirs(out_dir, exist_ok=True)
    for c in cases:
        run_case(export_dir, out_dir, c)


if __name__ == "__main__":
    main()
