#!/bin/sh
# test_report_browser.sh: `moelm report` end to end, checked in a real browser.
#
# Trains two tiny runs on the built-in corpus (switch: one sparse layer of 4 experts; dense: no
# experts), then checks:
#   - every eval wrote a routing dump, small (< 16 KB), with the sample, domains and top tokens;
#     the dense run wrote none;
#   - progress: without a terminal no progress line (no \r or escape on stderr) and the per-step
#     lines on stdout; on a terminal (script(1) gives one) a progress line with an ETA on stderr only;
#   - `moelm report A B -o FILE` prints the path and writes one self-contained file (no src=, no
#     network URL); a missing run directory is a one-line error and a non-zero exit;
#   - in headless Chromium: the page's own check passes (every <svg class="plot"> has data marks with
#     a non-empty bounding box, the token spans are there, no script error), the DOM holds as many
#     plots as the file, and a screenshot of the whole page is saved to build/tmp/report.png.
# Without Chromium (and not root, or apt-get failing; or MOELM_CHROMIUM=none) the browser part prints
# SKIP and counts as neither passed nor failed. Ends with "report_browser: N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/report_browser
rm -rf "$TMP"; mkdir -p "$TMP"
passed=0; failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
check() { name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
finish() { echo "report_browser: $passed passed, $failed failed"; [ "$failed" = 0 ]; exit $?; }

ARGS="--config tiny --steps 40 --eval-interval 20 --eval-batches 4 --log-interval 5 -t 1"
if ! $BIN train $ARGS --out "$TMP/switch" >"$TMP/switch.out" 2>"$TMP/switch.err" ||
   ! $BIN train $ARGS --set num_experts=0 --out "$TMP/dense" --quiet >"$TMP/dense.out" 2>"$TMP/dense.err"; then
    cat "$TMP/switch.err" "$TMP/dense.err"; bad "training the two runs"; finish
fi
ok "training the two runs"

# routing dumps
r="$TMP/switch/routing"
check "routing dumps at each eval" test -f "$r/step-20.json" -a -f "$r/step-40.json"
size=$(wc -c <"$r/step-40.json" 2>/dev/null || echo 999999)
check "routing dump is small ($size bytes < 16 KB)" test "$size" -lt 16384
check "routing dump has sample, domains, top tokens" \
    sh -c "grep -q '\"sample\": {\"pieces\": \[' $r/step-40.json && grep -q '\"domain_counts\"' $r/step-40.json && grep -q '\"top_tokens\"' $r/step-40.json"
check "no routing dump for a dense run" test ! -d "$TMP/dense/routing"

# progress: plain lines without a terminal, a redrawn line with an ETA on a terminal, never on stdout
esc=$(printf '\033'); cr=$(printf '\r')
check "no terminal: no progress line on stderr" sh -c "! grep -q \"[$esc$cr]\" $TMP/switch.err"
check "no terminal: step lines on stdout" grep -q '^step     40 |' "$TMP/switch.out"
check "--quiet: nothing on stdout" test ! -s "$TMP/dense.out"
# script(1) runs the command on a pseudo-terminal and records what reached it in tty.log; stdout goes to a file
script -qec "$BIN train --config tiny --steps 30 --eval-interval 0 --eval-batches 2 -t 1 --out $TMP/tty >$TMP/tty.out" \
    "$TMP/tty.log" >/dev/null 2>&1 </dev/null
check "terminal: progress line with ETA on stderr" grep -q 'train \[#*\.*\] [0-9]*/30 .*ETA' "$TMP/tty.log"
check "terminal: no progress on stdout" sh -c "! grep -q 'ETA' $TMP/tty.out && grep -q '^step     30 |' $TMP/tty.out"

# the report
HTML="$TMP/report.html"
out=$($BIN report "$TMP/switch" "$TMP/dense" -o "$HTML" 2>&1); rc=$?
check "report: writes the file and prints its path" sh -c "[ $rc = 0 ] && [ -s $HTML ] && echo '$out' | grep -q '$HTML'"
check "report: self-contained (no src=, no URL but the SVG namespace)" \
    sh -c "! grep -q 'src=' $HTML && [ \$(grep -o 'https\?://[^\"]*' $HTML | grep -vc 'www.w3.org/2000/svg') = 0 ]"
$BIN report "$TMP/no-such-run" -o "$TMP/x.html" >"$TMP/bad.out" 2>"$TMP/bad.err"; rc=$?
check "report: missing run is a one-line error" sh -c "[ $rc != 0 ] && [ \$(wc -l <$TMP/bad.err) = 1 ] && grep -q 'no-such-run' $TMP/bad.err"
$BIN report "$TMP/switch" >/dev/null 2>&1
check "report: default output RUN_DIR/report.html" test -s "$TMP/switch/report.html"

# the browser
# MOELM_CHROMIUM: a browser binary to use, or "none" to take the skip path (without installing)
CHROME=${MOELM_CHROMIUM:-}
if [ -z "$CHROME" ]; then
    for c in chromium chromium-browser google-chrome; do command -v "$c" >/dev/null 2>&1 && { CHROME=$c; break; }; done
fi
if [ "$CHROME" = none ]; then CHROME=""
elif [ -z "$CHROME" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (apt-get) for the browser checks"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >"$TMP/apt.log" 2>&1
    command -v chromium >/dev/null 2>&1 && CHROME=chromium
fi
if [ -z "$CHROME" ]; then
    echo "SKIP report_browser: chromium is not installed (apt-get install chromium, as root)"
    finish
fi
PROFILE=$(mktemp -d)
FLAGS="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
--disable-component-update --disable-sync --disable-dev-shm-usage --hide-scrollbars --user-data-dir=$PROFILE"
URL="file://$(cd "$(dirname "$HTML")" && pwd)/$(basename "$HTML")"
# shellcheck disable=SC2086
timeout 120 "$CHROME" $FLAGS --window-size=1400,900 --virtual-time-budget=2000 --dump-dom "$URL" >"$TMP/dom.html" 2>"$TMP/chrome.err"
line=$(grep -o 'selfcheck [a-zA-Z]* plots=[^<]*' "$TMP/dom.html" | head -n 1)
echo "  $line"
check "browser: the page's check passed (plots with data, no script errors)" sh -c "echo '$line' | grep -q '^selfcheck ok .*errors=\[\]'"
want=$(grep -o '<svg [^>]*class="plot' "$HTML" | wc -l)
got=$(echo "$line" | sed -n 's/.* plots=\([0-9]*\).*/\1/p')
check "browser: all $want plots in the DOM (got ${got:-none})" test "${got:-0}" = "$want" -a "$want" -ge 15
toks=$(echo "$line" | sed -n 's/.* tokens=\([0-9]*\).*/\1/p')
check "browser: coloured tokens rendered (${toks:-0})" test "${toks:-0}" -ge 100
h=$(echo "$line" | sed -n 's/.* height=\([0-9]*\).*/\1/p')
[ -n "$h" ] && [ "$h" -gt 600 ] && [ "$h" -lt 20000 ] || h=6000
rm -f build/tmp/report.png
# shellcheck disable=SC2086
timeout 120 "$CHROME" $FLAGS --window-size=1400,"$h" --screenshot="$(pwd)/build/tmp/report.png" "$URL" >/dev/null 2>>"$TMP/chrome.err"
psize=$(wc -c <build/tmp/report.png 2>/dev/null || echo 0)
check "browser: screenshot build/tmp/report.png (1400x$h, $psize bytes)" test "$psize" -gt 20000
rm -rf "$PROFILE"
finish
