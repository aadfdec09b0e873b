#!/bin/sh
# test_python.sh: python/moelm.py (a run directory as a PyTorch nn.Module) against `moelm forward`:
# for a small trained run of each supported kind (lm: switch, top-2 with Mixtral gates, soft,
# hash, shared expert + selection bias, an adaptive softmax (logits: every word's log p), rotary positions; seed: switch, soft, random; mixtral; llama), the module's logits on a batch
# equal moelm's within 1e-5 of the largest logit (both float32; measured differences are ~1e-6 of
# it: a different summation order, no routing flip), the routing it exposes is consistent (kept
# slots within capacity), and the tokenizer helper round-trips through `moelm tokenizer`.
# Skipped, with a message, when PyTorch is absent (Debian's python3-torch). Ends with
# "python: N passed, N failed"; non-zero exit on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/python
PY=${MOELM_PYTHON:-/usr/bin/python3}
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"

# torch found without importing it (an import is ~1.7 s of CPU; the comparison below imports it once)
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
    echo "skipped: no PyTorch for $PY (apt-get install python3-torch)"
    finish python; exit $?
fi

# on PTB's first lines with a 1,000-word vocabulary (the built-in corpus's tokenizing and whole-split
# evaluation were ~0.25 s of each run's ~0.4 s; the comparison needs weights, not learning)
ptb_lines "$TMP/data"
T="-t 1 --quiet --eval-interval 0 --eval-batches 1 --data $TMP/data --tokenizer word:1000"
SMALL="--set d_model=32 --set num_heads=2 --set num_layers=2 --set d_ff=48"
train() {   # name, flags...
    n=$1; shift
    $BIN train --steps 25 -b 8 --seq-len 32 --out "$TMP/$n" $T "$@" >"$TMP/$n.log" 2>&1
    check "trained $n" test -f "$TMP/$n/latest/model.safetensors"
}
train lm_switch --config tiny
train lm_top2 --config tiny --set router_type=topk --set num_experts_per_tok=2 --set topk_softmax_after=1 \
    --set norm_type=rmsnorm --set hidden_act=swiglu --set tie_word_embeddings=0 --set sparse_step=1
train lm_soft --config tiny --set router_type=soft
train lm_hash --config tiny --set router_type=hash --set sparse_step=1
train lm_shared --config tiny --set shared_expert=1 --set use_expert_bias=1 --set routed_scaling_factor=2 \
    --set capacity_factor=0.5 --set eval_capacity_factor=0.5
train lm_adaptive --config tiny --set adaptive_softmax_cutoffs=60,300 --set sparse_step=1
train lm_rope --config tiny --set position_embedding=rope --set rope_theta=100 --set sparse_step=1 --set hidden_act=swiglu
train seed_switch --config seed-switch $SMALL --set num_experts=8 --set head_hidden=40 --set dropout_rate=0
train seed_gating --config seed-gating $SMALL --set num_experts=4 --set head_hidden=40 --set dropout_rate=0
train seed_moe --config seed-moe $SMALL --set num_experts=4 --set head_hidden=40 --set dropout_rate=0
train mixtral --config mixtral-tiny --set d_model=32 --set d_ff=48
train llama --config llama-tiny --set d_model=32 --set d_ff=48

# the batch: 3 sequences of 40 ids of each run's vocabulary (drawn, fixed seed), and moelm's logits;
# the inputs of every run written by one Python process without torch (its import costs ~2 s of CPU:
# only the comparison below pays it)
RUNS="lm_switch lm_top2 lm_soft lm_hash lm_shared lm_adaptive lm_rope seed_switch seed_gating seed_moe mixtral llama"
"$PY" - "$TMP" "$RUNS" <<'PYEOF' >"$TMP/inputs.txt" 2>&1
import json, random, struct, sys
for n in sys.argv[2].split():
    d = sys.argv[1] + "/" + n
    try:
        V = json.load(open(d + "/latest/config.json"))["vocab_size"]
    except OSError as e:
        print(n, e)
        continue
    g = random.Random(7)
    ids = [g.randrange(V) for _ in range(3 * 40)]
    h = json.dumps({"case.input_ids": {"dtype": "I32", "shape": [3, 40], "data_offsets": [0, 480]}}).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    open(d + ".in.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + struct.pack("<120i", *ids))
PYEOF
for n in $RUNS; do
    [ -f "$TMP/$n.in.safetensors" ] || { cat "$TMP/inputs.txt"; bad "$n: inputs written"; }
    $BIN forward -m "$TMP/$n/latest" --inputs "$TMP/$n.in.safetensors" -o "$TMP/$n.out.safetensors" -t 1 \
        >"$TMP/$n.fwd" 2>&1
    check "$n: moelm forward" test -f "$TMP/$n.out.safetensors"
done

# the comparison, in one Python process: prints "ok NAME" / "FAIL NAME" lines
"$PY" - "$TMP" "$RUNS" >"$TMP/compare.txt" 2>&1 <<'PYEOF'
import os, struct, sys, torch
sys.path.insert(0, "python")
import moelm
tmp = sys.argv[1]

def report(ok, name):
    print(("ok " if ok else "FAIL ") + name)

for n in sys.argv[2].split():
    model = moelm.load(os.path.join(tmp, n))       # the run directory: its latest checkpoint
    raw = open(os.path.join(tmp, n + ".in.safetensors"), "rb").read()
    (hn,) = struct.unpack("<Q", raw[:8])
    ids = torch.frombuffer(bytearray(raw[8 + hn:]), dtype=torch.int32).view(3, 40).long()
    ref = moelm.st_read(os.path.join(tmp, n + ".out.safetensors"))[0]["case.logits"]
    with torch.no_grad():
        if not model.llama and model.cfg.router == "random":
            # one expert takes the whole call: moelm's draw is one of E; exactly that one must match
            errs = [float((model(ids, random_expert=e) - ref).abs().max()) for e in range(model.cfg.E)]
            tol = 1e-5 * float(ref.abs().max())
            report(sum(e <= tol for e in errs) == 1,
                   "%s: logits equal moelm's for exactly one random expert (errors %s, tol %.2g)"
                   % (n, " ".join("%.2g" % e for e in errs), tol))
            continue
        logits = model(ids)
    err, scale = float((logits - ref).abs().max()), float(ref.abs().max())
    report(logits.shape == ref.shape and err <= 1e-5 * scale,
           "%s: logits equal moelm forward's (max diff %.3g, 1e-5 of the largest %.3g)" % (n, err, scale))
    if model.llama:
        E, L = model.config.get("num_local_experts", 0), model.config["num_hidden_layers"]
        want = L if model.config["model_type"] == "mixtral" else 0
    else:
        E, want = model.cfg.E, 1 if model.cfg.type == "seed" else sum(model.cfg.sparse(l) for l in range(model.cfg.L))
    ok = len(model.routing) == want
    for r in model.routing:
        load = torch.bincount(r.expert[r.kept], minlength=E)
        ok = ok and int(load.max()) <= r.capacity and r.expert.shape[0] == 120 and r.probs.shape == (120, E)
    report(ok, "%s: routing of %d MoE layer(s), kept slots within capacity (dropped %s)"
           % (n, len(model.routing), " ".join("%.3f" % r.dropped() for r in model.routing)))

# a 1-D call is one sequence; lm_shared's capacity factor 0.5 drops slots
m = moelm.load(os.path.join(tmp, "lm_shared"))
with torch.no_grad():
    one = m(torch.arange(32) % m.cfg.V)
    report(one.shape == (1, 32, m.cfg.V) and m.routing[0].dropped() > 0,
           "lm_shared: a 1-D call gives [1, T, V]; capacity factor 0.5 drops slots (%.3f)" % m.routing[0].dropped())

# the tokenizer helper through the moelm binary
tok = moelm.Tokenizer(os.path.join(tmp, "lm_switch"), moelm=os.environ.get("MOELM_BIN", "./moelm"))
ids = tok.encode("the company said xylophone")   # the last word is not among the 1,000
report(len(ids) == 4 and tok.decode(ids) == "the company said <unk>" and tok.pieces("the company") == ["the", "company"],
       "tokenizer: encode/decode/pieces through moelm tokenizer (%s -> %r)" % (ids, tok.decode(ids)))
# errors are clear
try:
    moelm.load(tmp)
    report(False, "load of a directory without a run refused")
except FileNotFoundError as e:
    report("not a moelm run directory" in str(e), "load of a directory without a run refused: %s" % e)
PYEOF
rc=$?
check "the comparison script ran to its end (rc $rc; $TMP/compare.txt)" test "$rc" = 0
while read -r word rest; do   # (a redirected loop runs in this shell: ok and bad count)
    case $word in ok) ok "$rest" ;; FAIL) bad "$rest" ;; *) echo "     $word $rest" ;; esac
done <"$TMP/compare.txt"
finish python
