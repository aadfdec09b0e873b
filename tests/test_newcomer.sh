#!/bin/sh
# test_newcomer.sh: what a new user meets first. The help screens' examples run as printed; the
# mistakes a newcomer makes (a misspelt flag, preset or command, a flag of another command, a
# missing value, a value out of range, the wrong kind of path, a model of another type) each end in
# one line on stderr that says what is wrong and what to do, a non-zero exit, and nothing lost (the
# run they point at is byte for byte the same afterwards). SIGINT's checkpoint is tests/test_run.sh's.
# Ends with "newcomer: N passed, N failed" and exits non-zero on failure.
BIN=${MOELM_BIN:-./moelm}
case $BIN in /*) ;; *) BIN=$(pwd)/$BIN ;; esac   # the examples run from a scratch folder
TMP=build/tmp/newcomer
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"
ROOT=$(pwd)

# a tiny word-level run and a tiny Mixtral run (its GGUF file) to make mistakes with, on PTB's first
# lines (on the built-in corpus, the Mixtral run's tokenizer training and final evaluation took 1.6 s)
R=$TMP/r
ptb_lines "$ROOT/$TMP/ptb"
$BIN train --config tiny --data "$ROOT/$TMP/ptb" --steps 2 --eval-interval 0 --out "$R" -t 1 --quiet >/dev/null 2>&1
$BIN train --config mixtral-tiny --data "$ROOT/$TMP/ptb" --steps 1 --eval-interval 0 --out "$TMP/mx" -t 1 --quiet >/dev/null 2>&1
$BIN export -m "$TMP/mx" --format gguf -o "$TMP/mx.gguf" >/dev/null 2>&1
check "set-up: a tiny run and a GGUF file" test -f "$R/latest/model.safetensors" -a -f "$TMP/mx.gguf"
sum_before=$(cat "$R"/latest/* | cksum)

# 1. help: every command in moelm --help, each command's help a screen (at most 60 lines) with examples
$BIN --help >"$TMP/help" 2>&1
for c in train eval generate info report tokenizer export forward bench; do
    grep -qE "^  $c " "$TMP/help" || bad "moelm --help lists $c"
done
ok "moelm --help lists the nine commands"
for c in train eval generate info export report forward bench; do
    $BIN $c --help >"$TMP/h-$c" 2>&1; rc=$?
    check "$c --help: exit 0, examples, $(wc -l <"$TMP/h-$c") lines <= 60" \
        sh -c "[ $rc = 0 ] && grep -q '^examples' '$TMP/h-$c' && [ \$(wc -l <'$TMP/h-$c') -le 60 ]"
done

# 2. the examples run as printed (from a folder with runs/ and README.md, as the repository root
#    has): the lines after "examples" that start with the program's name, comments cut. moelm
#    --help's first example trains the demo preset for a minute: it is checked by --print-config, and
#    runs/demo is the tiny run the train --help examples make.
E=$TMP/ex
mkdir -p "$E/runs" && cp README.md "$E/"
examples() { sed -n '/^examples/,$p' "$1" | grep "^  $BIN " | sed 's/ *#.*//'; }
n=0
for c in train info eval generate export report forward bench; do
    examples "$TMP/h-$c" >>"$E/list"
done
sed -i '/bench --config seed-switch/d' "$E/list"   # half a minute of benchmark: the tiny one runs
mkdir -p "$E/tests/ref/switch" && cp -r tests/ref/switch/switch_tied tests/ref/switch/switch_tied.inputs.safetensors "$E/tests/ref/switch/"
examples "$TMP/help" | sed 's/--out runs\/demo$/--out runs\/demo --print-config/' >>"$E/list"
sed -i '/ptb/s/$/ --print-config/' "$E/list"   # PTB may be absent here: its example is parsed, not run
ln -s tiny "$E/runs/demo"                    # made by train --help's first example
cp -r "$TMP/mx" "$E/runs/mx"                 # export --help's examples read a Mixtral run
# moelm --help's examples work on the demo run (runs/demo: here the tiny one): those that are
# train --help's own, on runs/tiny, are not run twice; its resume goes to step 120, not 800, at -t 1
# as the tiny run did (CPU time: 700 steps and their evaluations cost 1.8 s; -t 2 on this shared
# machine spins tens of CPU seconds away on a model this small).
sed -i 's/--resume runs\/demo --steps 800$/--resume runs\/demo --steps 120 -t 1/' "$E/list"
: >"$E/seen"
while read -r line; do
    same=$(echo "$line" | sed 's/runs\/demo/runs\/tiny/')
    grep -qxF -- "$same" "$E/seen" && continue
    echo "$same" >>"$E/seen"
    n=$((n + 1))
    (cd "$E" && eval "$line") >"$E/out" 2>&1; rc=$?
    check "example runs: ${line#$BIN } (exit $rc)" [ $rc = 0 ]
done <"$E/list"
check "the examples were found ($n)" [ "$n" -ge 16 ]

# 3. mistakes: one line, a non-zero exit (2 for bad usage), and a pointer to the fix
EXPECT_RC=2
expect_error "a misspelt flag: did you mean" "unknown flag '--stpes' \(did you mean --steps\?" $BIN train --stpes 2
expect_error "a misspelt flag written with _ for -: did you mean" "did you mean --batch-size\?" $BIN train --batch_sise 2
expect_error "a flag of another command is named as such" "'--temp' is a flag of moelm generate, not of moelm train" \
    $BIN train --temp 0.5
expect_error "generate given train's --steps" "'--steps' is a flag of moelm train" $BIN generate -m "$R" --steps 3
expect_error "a key written as a flag: --set" "'--num-experts' is not a flag but num_experts is a key: --set num_experts=VALUE" \
    $BIN train --num-experts 16
expect_error "a misspelt tokenizer subcommand: did you mean" "unknown subcommand 'encdoe' \(did you mean encode\?" \
    $BIN tokenizer encdoe
expect_error "a word where a flag belongs" "unexpected argument 'runs/x' \(flags start with -" $BIN train runs/x
expect_error "a missing value at the end" "^moelm: --steps needs a value$" $BIN train --steps
expect_error "a missing value before the next flag" "--out needs a value before the next flag --steps" \
    $BIN train --config tiny --out --steps 2
expect_error "--steps -5" "--steps: -5 is out of range" $BIN train --steps -5
expect_error "-t 0" "--threads: 0 is out of range" $BIN train -t 0
expect_error "a misspelt command: did you mean" "unknown command 'trian' \(did you mean train\?" $BIN trian
expect_error "export --format misspelt" "--format 'ggfu' is not hf or gguf" $BIN export -m "$TMP/mx" --format ggfu -o "$TMP/x"
expect_error "export into a folder that does not exist" "the folder $TMP/no/such does not exist \(mkdir -p" \
    $BIN export -m "$TMP/mx" --format gguf -o "$TMP/no/such/x.gguf"
expect_error "bench -m of a run directory" "bench -m takes a GGUF file and $R is a folder" $BIN bench -m "$R"
EXPECT_RC=1
expect_error "a misspelt preset: did you mean" "unknown preset 'swich-ptb' \(did you mean 'switch-ptb'\?" \
    $BIN train --config swich-ptb --out "$TMP/n1"
expect_error "a preset in capitals: did you mean" "did you mean 'switch-ptb'\?" $BIN train --config Switch-PTB --out "$TMP/n1"
expect_error "--config of a missing JSON file" "--config nosuch.json: no such file" $BIN train --config nosuch.json --out "$TMP/n1"
expect_error "--config of a run directory" "--config $R is a folder: .* --resume $R continues the run" \
    $BIN train --config "$R" --out "$TMP/n1"
mkdir -p "$TMP/empty" "$TMP/notrain"; echo "a b c" >"$TMP/notrain/valid.txt"
expect_error "--data of an empty folder" "empty: no corpus files: looked for .*train.txt.*or give --data one text file" \
    $BIN train --config tiny --data "$TMP/empty" --steps 1 --out "$TMP/n1" -t 1
expect_error "--data of a folder without train.txt" "notrain: no corpus files" \
    $BIN train --config tiny --data "$TMP/notrain" --steps 1 --out "$TMP/n1" -t 1
echo "just a few words" >"$TMP/short.txt"
expect_error "--data of a file too short to train on" "too few for one window" \
    $BIN train --config tiny --data "$TMP/short.txt" --steps 1 --out "$TMP/n1" -t 1
expect_error "--init-from a model of another type" "model_type lm, the requested config model_type mixtral" \
    $BIN train --init-from "$R" --config mixtral-tiny --steps 1 --out "$TMP/n1" -t 1
expect_error "--resume of a GGUF file" "is a GGUF file, not a run or checkpoint directory .*--format hf -o DIR" \
    $BIN train --resume "$TMP/mx.gguf"
expect_error "-m of a text file" "short.txt is a file, not a run or checkpoint directory" $BIN generate -m "$TMP/short.txt"
check "no mistake made a run directory" [ ! -e "$TMP/n1" ]

# a prompt of characters the word model never saw: generated all the same, with a warning
$BIN generate -m "$R" -p "☃☃ zqxj" -n 3 -t 1 >"$TMP/out" 2>"$TMP/err"; rc=$?
check "a prompt of unknown characters generates (exit $rc) and warns" \
    sh -c "[ $rc = 0 ] && grep -q 'not in the model.s vocabulary and read as <unk>' '$TMP/err'"
# resuming at another thread count says how to resume exactly (the run is complete: no step taken)
$BIN train --resume "$R" -t 2 >/dev/null 2>"$TMP/err"
check "a resume at another -t says which -t resumes exactly" grep -q "(-t 1 resumes exactly)" "$TMP/err"

check "nothing lost: the run the mistakes pointed at is unchanged" [ "$(cat "$R"/latest/* | cksum)" = "$sum_before" ]
finish newcomer
