#!/bin/sh
# make demo: trains the `demo` preset (a small Switch LM, 4 experts) on the built-in corpus,
# evaluates it on the test split, samples from it, and writes the HTML report of the run.
# Run directory: runs/demo (replaced).
set -e
BIN=${1:-./moelm}
RUN=runs/demo
rm -rf "$RUN"
echo "== moelm demo: training a Switch Transformer LM on the built-in corpus"
"$BIN" train --config demo --out "$RUN" --eval-interval 100 --log-interval 50 -t 2
echo
echo "== evaluation on the test split"
"$BIN" eval -m "$RUN" -t 2
echo
echo "== samples"
"$BIN" generate -m "$RUN" -p "12 plus 7 equals" -n 12 --temp 0.5 --seed 1
"$BIN" generate -m "$RUN" -p "the old" -n 20 --temp 0.8 --seed 2
"$BIN" generate -m "$RUN" -n 24 --temp 0.8 --seed 3
echo
echo "== report"
"$BIN" report "$RUN" -o "$RUN/report.html"
echo "open $(cd "$RUN" && pwd)/report.html in a browser"
