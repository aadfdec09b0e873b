#!/bin/sh
# test_report_cli.sh: the report of a trained run says the wall-clock `moelm info` says; and
# `moelm report --csv RUN`, metrics.jsonl as CSV, read back by an independent reader
# (Python's csv and json modules, no moelm code): the header is every flattened key in first-seen order,
# each record is one row whose fields equal the JSON values (numbers equal as floats, null and missing keys
# empty, strings with commas and quotes intact), malformed lines are skipped with a warning; and a real
# run's CSV has a row per metrics line. Ends with "report_cli: N passed, N failed"; non-zero exit on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/report_cli
PY=/usr/bin/python3
rm -rf "$TMP"; mkdir -p "$TMP/hand"
. "$(dirname "$0")/lib.sh"

# a hand-written metrics.jsonl: training, evaluation and mixed records, a null, a nested array of objects,
# a string needing quotes, a boolean, a torn last line
cat >"$TMP/hand/metrics.jsonl" <<'JSONL'
{"step": 1, "loss": 6.85, "lr": 0.003, "tokens": 64}
{"step": 10, "loss": null, "lr": 2.5e-05, "tokens": 12345678901, "note": "a, \"quoted\" note"}
{"step": 15, "val_loss": 6.2, "moe": [{"layer": 0, "dead": 2, "load": [0.25, 0.75]}, {"layer": 1, "load": [1, 0]}], "final": true}
not json
{"step": 20, "loss": 5.9, "extra": {"a": 1}}
{"step": 30, "lo
JSONL
$BIN report --csv "$TMP/hand" >"$TMP/hand.out" 2>"$TMP/hand.err"
check "report --csv writes RUN/metrics.csv" grep -q "wrote $TMP/hand/metrics.csv" "$TMP/hand.out"
check "report --csv warns about the 2 malformed lines" grep -q "2 malformed line(s) skipped" "$TMP/hand.err"
check "the header, flattened in first-seen order" test "$(head -n 1 "$TMP/hand/metrics.csv")" = \
    "step,loss,lr,tokens,note,val_loss,moe.0.layer,moe.0.dead,moe.0.load.0,moe.0.load.1,moe.1.layer,moe.1.load.0,moe.1.load.1,final,extra.a"

cmp_csv() {   # run dir, csv file: every record equals its row (an independent flattening of the JSON)
    $PY - "$1/metrics.jsonl" "$2" <<'PYEOF'
import csv, json, sys
recs = []
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if isinstance(r, dict):
        recs.append(r)
def flat(v, pre, out):
    if isinstance(v, dict):
        for k, x in v.items():
            flat(x, pre + "." + k if pre else k, out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            flat(x, pre + "." + str(i) if pre else str(i), out)
    else:
        out[pre] = v
rows = list(csv.reader(open(sys.argv[2], newline="")))
head, rows = rows[0], rows[1:]
assert len(rows) == len(recs), (len(rows), len(recs))
cols = []
for r in recs:
    f = {}
    flat(r, "", f)
    for k in f:
        if k not in cols:
            cols.append(k)
assert head == cols, (head, cols)
for r, row in zip(recs, rows):
    f = {}
    flat(r, "", f)
    assert len(row) == len(head), row
    for k, cell in zip(head, row):
        v = f.get(k)
        if v is None:
            assert cell == "", (k, cell)
        elif isinstance(v, bool):
            assert cell == ("true" if v else "false"), (k, cell)
        elif isinstance(v, (int, float)):   # "%.9g" holds a double to 1e-9 relative
            assert float(cell) == float(v) if isinstance(v, int) else abs(float(cell) - v) <= 1e-9 * abs(v), (k, cell, v)
        else:
            assert cell == v, (k, cell, v)
print("%d rows, %d columns equal" % (len(rows), len(head)))
PYEOF
}
check "every hand-written record equals its row (Python's csv reader)" cmp_csv "$TMP/hand" "$TMP/hand/metrics.csv"

# a real run: -o FILE and -o - (stdout) give the same table, a row per metrics line
$BIN train --config tiny --steps 30 --eval-interval 10 --eval-batches 1 --log-interval 5 --out "$TMP/run" -t 1 --quiet \
    >/dev/null 2>&1
$BIN report --csv "$TMP/run" -o "$TMP/run.csv" >/dev/null 2>&1
$BIN report --csv "$TMP/run" -o - >"$TMP/run.stdout" 2>/dev/null
check "a trained run: -o - equals -o FILE" cmp -s "$TMP/run.csv" "$TMP/run.stdout"
check "a trained run: a row per metrics line ($(wc -l <"$TMP/run/metrics.jsonl") lines)" \
    test "$(($(wc -l <"$TMP/run.csv") - 1))" = "$(wc -l <"$TMP/run/metrics.jsonl")"
check "a trained run: every record equals its row" cmp_csv "$TMP/run" "$TMP/run.csv"
check "a trained run: evaluation columns (val_loss, moe.0.load.3)" sh -c "head -n 1 $TMP/run.csv | grep -q 'val_loss.*moe.0.load.3'"

# the report's wall-clock is moelm info's (the checkpoint's: the final evaluation and checkpoint included)
$BIN report "$TMP/run" -o "$TMP/run.html" >/dev/null 2>&1
info_s=$($BIN info "$TMP/run" 2>/dev/null | sed -n 's/.* tokens seen, \([0-9.]*\) s of training.*/\1/p')
check "report's wall-clock equals moelm info's ($info_s s)" grep -q "<td class=\"n\">$info_s s</td>" "$TMP/run.html"

# hostile records: deep nesting (a 2000-character key path is left out, not overflowed), a key of 3000
# characters, empty objects and arrays, control characters: a CSV and exit 0 (the sanitizer build checks
# the memory)
mkdir -p "$TMP/hostile"
$PY - "$TMP/hostile/metrics.jsonl" <<'PYEOF'
import json, sys
deep = 1
for i in range(60):
    deep = {"k%030d" % i: deep}
recs = [{"step": 1, "deep": deep}, {"x" * 3000: 1, "e": {}, "a": [], "s": "tab\there\nnew \u0001"}, {"step": 2}]
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in recs))
PYEOF
$BIN report --csv "$TMP/hostile" -o "$TMP/hostile.csv" >/dev/null 2>"$TMP/hostile.err"; rc=$?
check "hostile metrics: exit 0 and a header plus 3 rows" sh -c "[ $rc = 0 ] && $PY -c \"import csv,sys; r=list(csv.reader(open('$TMP/hostile.csv', newline=''))); sys.exit(not (len(r) == 4 and r[0][0] == 'step' and r[3][0] == '2'))\""

# errors: one line, non-zero
expect_error "report --csv of a directory without metrics.jsonl" "no metrics.jsonl" $BIN report --csv "$TMP"
expect_error "report --csv of two runs" "give one run directory" $BIN report --csv "$TMP/run" "$TMP/hand"
finish report_cli
