#!/bin/sh
# oracle.sh: runs an external oracle (llama.cpp's llama-simple, sentencepiece's spm_train and
# spm_encode) through a content-addressed cache of its answers, so that a built tree's later
# `make test` runs do not pay again for the same question asked of the same program.
#
#   tests/oracle.sh [-i FILE]... [-o FILE]... [-s] [-n] -- TOOL ARG...
#
#   -i FILE  a file the tool reads (its bytes are part of the question)
#   -o FILE  a file the tool writes (part of the answer: restored byte for byte on a hit)
#   -s       the tool reads stdin (its bytes are part of the question); else its stdin is /dev/null
#   -n       only ask: exit 0 when the answer is cached, 1 when not (the tool does not run)
#
# The key is the sha256 of: the tool's executable and the shared libraries ldd names for it (bytes),
# every argument (verbatim, length-prefixed), the bytes of every -i file and of stdin (-s), and the
# names of the -o files. Any changed byte of these misses. The answer is the tool's stdout, stderr,
# exit status and -o files; only a run that exits 0 and writes every -o file is kept. A miss runs the
# tool and replays the same streams and status, so a test reads the same either way: the assertion
# stays "moelm's answer equals the tool's answer for these exact bytes".
#
# The cache is $MOELM_ORACLE_CACHE (default build/oracle-cache under the current folder, which the
# tests run from: the repository root; `make clean` removes it); MOELM_ORACLE_CACHE=off always runs
# the tool. With MOELM_ORACLE_LOG=FILE each call appends "hit TOOL" or "run TOOL" to FILE, which the
# tests count to say how many answers came from the cache. Entries are written in a new folder and
# renamed into place, so two tests sharing the cache never read half an answer.
LC_ALL=C; export LC_ALL
inputs=""; outputs=""; use_stdin=0; ask=0
while [ $# -gt 0 ]; do
    case $1 in
        -i) inputs="$inputs$2
"; shift 2 ;;
        -o) outputs="$outputs$2
"; shift 2 ;;
        -s) use_stdin=1; shift ;;
        -n) ask=1; shift ;;
        --) shift; break ;;
        *) echo "oracle.sh: unknown option '$1' (usage: oracle.sh [-i FILE]... [-o FILE]... [-s] [-n] -- TOOL ARG...)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "oracle.sh: no tool given after --" >&2; exit 2; }
tool=$(command -v "$1") || { echo "oracle.sh: tool '$1' not found" >&2; exit 127; }
cache=${MOELM_ORACLE_CACHE:-build/oracle-cache}
[ "$cache" = off ] && [ $ask = 1 ] && exit 1

work=$(mktemp -d "${TMPDIR:-/tmp}/oracle.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
if [ $use_stdin = 1 ]; then cat >"$work/stdin" || exit 2; else : >"$work/stdin"; fi

# the question's bytes, hashed
for f in $(printf '%s' "$inputs" | tr '\n' ' '); do
    [ -r "$f" ] || { echo "oracle.sh: input '$f' cannot be read" >&2; exit 2; }
done
key=$({
    echo "moelm oracle cache 1"
    printf 'tool %s\n' "$1"
    sha256sum <"$tool"
    for lib in $(ldd "$tool" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p'); do
        printf 'lib %s ' "$lib"; sha256sum <"$lib"
    done
    shift
    for a in "$@"; do printf 'arg %d:%s\n' "${#a}" "$a"; done
    printf '%s' "$inputs" | while IFS= read -r f; do printf 'in %s ' "$f"; sha256sum <"$f"; done
    printf 'stdin %d ' $use_stdin; sha256sum <"$work/stdin"
    printf '%s' "$outputs" | while IFS= read -r f; do printf 'out %s\n' "$f"; done
} | sha256sum | cut -c1-64)
entry="$cache/$key"

log() { [ -n "${MOELM_ORACLE_LOG:-}" ] && echo "$1 $(basename "$tool")" >>"$MOELM_ORACLE_LOG"; return 0; }
# an entry is whole when it has its status and every output
whole() {
    [ -f "$entry/rc" ] || return 1
    n=0
    for f in $(printf '%s' "$outputs" | tr '\n' ' '); do n=$((n + 1)); [ -f "$entry/o$n" ] || return 1; done
    return 0
}
if [ "$cache" != off ] && whole; then
    [ $ask = 1 ] && exit 0
    n=0
    for f in $(printf '%s' "$outputs" | tr '\n' ' '); do n=$((n + 1)); cp "$entry/o$n" "$f" || exit 2; done
    log hit
    cat "$entry/stdout"; cat "$entry/stderr" >&2
    exit "$(cat "$entry/rc")"
fi
[ $ask = 1 ] && exit 1

for f in $(printf '%s' "$outputs" | tr '\n' ' '); do rm -f "$f"; done
"$@" <"$work/stdin" >"$work/stdout" 2>"$work/stderr"
rc=$?
log run
cat "$work/stdout"; cat "$work/stderr" >&2
if [ "$cache" != off ] && [ $rc = 0 ] && mkdir -p "$cache" && new=$(mktemp -d "$cache/.new.XXXXXX"); then
    keep=1; n=0
    for f in $(printf '%s' "$outputs" | tr '\n' ' '); do
        n=$((n + 1)); cp "$f" "$new/o$n" 2>/dev/null || keep=0
    done
    cp "$work/stdout" "$work/stderr" "$new/" && echo $rc >"$new/rc" || keep=0
    if [ $keep = 1 ]; then rm -rf "$entry" && mv -T "$new" "$entry" 2>/dev/null || rm -rf "$new"; else rm -rf "$new"; fi
fi
exit $rc
