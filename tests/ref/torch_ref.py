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

The model itself (forward, moe, ...) lives in python/moelm.py, the module that loads a run into
PyTorch; this script adds the batch, autograd's gradients and the AdamW curve. It is
written from the architecture description (src/model/model.h, src/moe/moe.h, the MoE conventions in
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
import sys

import torch
import torch.nn.functional as F

# the model is python/moelm.py's (the module users load runs with): forward, moe, Cfg, safetensors
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from moelm import Cfg, MoEStats, forward, st_read, st_write  # noqa: E402

torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)


def check_supported(d):
    """Features the reference's training curve does not model must be off."""
    assert d["dropout_rate"] == 0, "dropout must be 0"
    assert d["router_jitter_noise"] == 0, "jitter must be 0"
    assert not d["use_expert_bias"] and not d["shared_expert"], "expert bias / shared expert unsupported"
    assert d["router_type"] in ("switch", "topk", "soft"), d["router_type"]
    assert not (d["router_type"] == "topk" and d["topk_softmax_after"]), "only GShard top-k"


def decays(name, t):
    """model.h: AdamW weight decay applies to matrices; not norms, biases, positions."""
    if os.environ.get("TORCH_REF_DECAY") == "ndim2":   # diagnostic only: decay every tensor of ndim >= 2
        return t.dim() >= 2
    return t.dim() >= 2 and not name.endswith(".bias") and name != "pos_emb.weight"


def run_case(export_dir, out_dir, case):
    src = os.path.join(export_dir, case)
    W, meta = st_read(os.path.join(src, "init.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        d = json.load(f)
    check_supported(d)
    cfg = Cfg(d)
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
