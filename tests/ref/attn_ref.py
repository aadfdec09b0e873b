#!/usr/bin/python3
"""attn_ref.py: PyTorch's side of tests/test_attn.c's test_attn_torch (STYLE.md, "Tests are oracles").

    /usr/bin/python3 tests/ref/attn_ref.py tests/ref/attn_ref.safetensors

writes one safetensors file (float32 tensors; integers stored as floats, exact below 2^24) with:
  bucket.<b>_<nb>_<md>   [4001]   torch's T5 bucket of every relative position -2000..2000 under the
                                  settings bidirectional b, num_buckets nb, max_distance md
  rope.<hd>_<theta>.inv  [hd/2]   HF's inv_freq; .cos/.sin [len(rope.pos), hd/2] at rope.pos;
                                  .x / .y [len(rope.pos), hd]: a row rotated at each position
  <case>.*                        an attention problem computed as HF's eager attention does it, and
                                  autograd's gradients of loss = sum(out * r)

Written from Hugging Face transformers' semantics (modeling_t5 / modeling_switch_transformers
_relative_position_bucket and compute_bias, modeling_llama's rotary embedding, rotate_half,
repeat_kv and eager attention), not from the C code: torch ops, float32, CPU, deterministic:
  - the mask is HF's: (1 - keep) * finfo(float32).min added to the scores, the causal mask too;
  - T5: scores = q k^T + position_bias (+ mask), no scale; position_bias[h, i, j] = table[bucket(j - i), h];
  - Llama: inv_freq = 1 / theta ** (arange(0, hd, 2).float() / hd), angle = inv_freq @ positions in
    float32, q' = q cos + rotate_half(q) sin, the same for k; kv heads repeated (repeat_kv);
    scores = q k^T * hd^-0.5 (+ mask);
  - softmax over the keys in float32; out = p v.
Regenerate after changing a case here or in tests/test_attn.c (their shapes must agree: the test
reads every tensor with the shape it expects).
"""
import json
import math
import struct
import sys

import torch

torch.manual_seed(1234)
FMIN = torch.finfo(torch.float32).min

BUCKET_SETTINGS = [(1, 32, 128), (0, 32, 128), (1, 64, 256), (0, 8, 20), (1, 16, 32), (1, 33, 100),
                   (0, 10, 12), (1, 4, 8), (0, 128, 1000), (0, 48, 81), (1, 200, 162)]
ROPE_SETTINGS = [(64, 10000.0), (128, 1000000.0), (96, 500000.0), (16, 10000.0)]
ROPE_POS = list(range(0, 16)) + [100, 511, 1000, 2047, 2048, 3000, 4000, 4095]


def bucket(rel, bidirectional, num_buckets, max_distance):
    """HF's _relative_position_bucket, step by step (rel: an int64 tensor of key - query positions)."""
    out = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return out + torch.where(small, rel, large)


def inv_freq(hd, theta):
    return 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))


def rope_cos_sin(pos, hd, theta):
    """cos, sin [N, hd] (halves repeated) of positions pos [N], as HF's rotary embedding computes them"""
    inv = inv_freq(hd, theta)
    freqs = (inv[None, :, None] @ pos.float()[None, None, :]).transpose(1, 2)[0]   # [N, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def eager_attention(q, k, v, scale, bias, keep, causal):
    """q [B, NH, Tq, hd], k, v [B, NKV, Tk, hd]; bias [NH, Tq, Tk] or None; keep [B, Tk] (1/0) or None"""
    B, NH, Tq, hd = q.shape
    NKV, Tk = k.shape[1], k.shape[2]
    rep = NH // NKV
    k = k[:, :, None].expand(B, NKV, rep, Tk, hd).reshape(B, NH, Tk, hd)   # repeat_kv
    v = v[:, :, None].expand(B, NKV, rep, Tk, hd).reshape(B, NH, Tk, hd)
    scores = torch.matmul(q, k.transpose(2, 3))
    if scale != 1.0:
        scores = scores * scale
    allowed = torch.ones(B, 1, Tq, Tk, dtype=torch.bool)
    if causal:
        i = torch.arange(Tq)[:, None]
        j = torch.arange(Tk)[None, :]
        allowed = allowed & (j <= i + Tk - Tq)[None, None]
    if keep is not None:
        allowed = allowed & keep.bool()[:, None, None, :]
    mask = (~allowed).float() * FMIN                  # HF's additive mask: 0 or finfo.min
    add = mask if bias is None else bias[None] + mask
    scores = scores + add
    p = torch.softmax(scores.float(), dim=-1)
    return torch.matmul(p, v), p


def keep_mask(B, T, left, right):
    m = torch.ones(B, T)
    for b in range(B):
        m[b, :left[b]] = 0
        if right[b]:
            m[b, T - right[b]:] = 0
    return m


def attention_case(name, out, B, Tq, Tk, NH, NKV, hd, causal, left, right, t5=None, rope=None):
    """t5 = (bidirectional, num_buckets, max_distance): a bias from a table; rope = (theta, pos [B, Tk])"""
    q = torch.randn(B, Tq, NH * hd)
    k = torch.randn(B, Tk, NKV * hd)
    v = torch.randn(B, Tk, NKV * hd)
    r = torch.randn(B, Tq, NH * hd)
    keep = keep_mask(B, Tk, left, right) if left or right else None
    tensors = {"q": q, "k": k, "v": v, "r": r}
    if keep is not None:
        tensors["mask"] = keep
    leaves = [q, k, v]
    table = None
    if t5 is not None:
        table = torch.randn(t5[1], NH)
        tensors["table"] = table
        leaves.append(table)
    for x in leaves:
        x.requires_grad_(True)
    qh = q.view(B, Tq, NH, hd).transpose(1, 2)
    kh = k.view(B, Tk, NKV, hd).transpose(1, 2)
    vh = v.view(B, Tk, NKV, hd).transpose(1, 2)
    bias = None
    if t5 is not None:
        rel = torch.arange(Tk)[None, :] - torch.arange(Tq)[:, None]
        bias = table[bucket(rel, *t5)].permute(2, 0, 1)   # nn.Embedding lookup, then [NH, Tq, Tk]
    if rope is not None:
        theta, pos = rope   # pos [B, Tk]: the keys' positions; the queries are the last Tq of them
        tensors["pos"] = pos.float()
        cos, sin = zip(*[rope_cos_sin(pos[b], hd, theta) for b in range(B)])
        cos, sin = torch.stack(cos)[:, None], torch.stack(sin)[:, None]   # [B, 1, Tk, hd]
        qh = qh * cos[:, :, Tk - Tq:] + rotate_half(qh) * sin[:, :, Tk - Tq:]
        kh = kh * cos + rotate_half(kh) * sin
    scale = hd ** -0.5 if rope is not None else 1.0
    o, p = eager_attention(qh, kh, vh, scale, bias, keep, causal)
    o = o.transpose(1, 2).reshape(B, Tq, NH * hd)
    (o * r).sum().backward()
    tensors.update({"out": o.detach(), "att": p.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad})
    if table is not None:
        tensors["dtable"] = table.grad
    for key, val in tensors.items():
        out[name + "." + key] = val.detach()


def write_safetensors(path, tensors, meta):
    header = {"__metadata__": meta}
    blobs, off = [], 0
    for name, t in tensors.items():
        b = t.detach().contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out = {}
    rel = torch.arange(-2000, 2001)
    for s in BUCKET_SETTINGS:
        out["bucket.%d_%d_%d" % s] = bucket(rel, *s).float()
    pos = torch.tensor(ROPE_POS)
    out["rope.pos"] = pos.float()
    for hd, theta in ROPE_SETTINGS:
        key = "rope.%d_%d" % (hd, int(theta))
        cos, sin = rope_cos_sin(pos, hd, theta)
        x = torch.randn(len(ROPE_POS), hd)
        out[key + ".inv"] = inv_freq(hd, theta)
        out[key + ".cos"] = cos[:, : hd // 2]
        out[key + ".sin"] = sin[:, : hd // 2]
        out[key + ".x"] = x
        out[key + ".y"] = x * cos + rotate_half(x) * sin
    # the cases: their shapes are repeated in tests/test_attn.c (torch_cases)
    attention_case("t5enc", out, 2, 7, 7, 3, 3, 5, False, [0, 1], [2, 0], t5=(1, 8, 12))
    attention_case("t5dec", out, 2, 6, 6, 2, 2, 4, True, [0, 2], [1, 0], t5=(0, 8, 12))
    attention_case("t5cross", out, 2, 4, 7, 2, 2, 6, False, [0, 7], [3, 0])
    llama_pos = torch.stack([torch.arange(7), torch.arange(7) + 2000])
    attention_case("llama", out, 2, 7, 7, 4, 2, 8, True, [0, 2], [0, 0], rope=(10000.0, llama_pos))
    attention_case("llama_cached", out, 1, 3, 9, 4, 1, 16, True, [1], [0],
                   rope=(1000000.0, torch.arange(9)[None].expand(1, 9)))
    write_safetensors(sys.argv[1], out, {"torch": torch.__version__, "script": "tests/ref/attn_ref.py"})
    print("wrote %d tensors to %s" % (len(out), sys.argv[1]))


if __name__ == "__main__":
    main()
