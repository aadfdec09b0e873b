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
# The key is a BLAKE2b hash (b2sum -l 256) of: the bytes of the tool's executable and of the shared
# libraries ldd names for it, every argument (verbatim, length-prefixed), the bytes of every -i file
# and of stdin (-s), and the names of the -o files. Any changed byte of these misses. The answer is the tool's stdout, stderr,
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
set -f   # no globbing of the file names below; the lists of files are one name a line
nl='
'
inputs=""; outputs=""; use_stdin=0; ask=0
while [ $# -gt 0 ]; do
    case $1 in
        -i) inputs="$inputs$2$nl"; shift 2 ;;
        -o) outputs="$outputs$2$nl"; shift 2 ;;
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
IFS=$nl
for f in $inputs; do [ -r "$f" ] || { echo "oracle.sh: input '$f' cannot be read" >&2; exit 2; }; done
stdin=/dev/null
if [ $use_stdin = 1 ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/oracle.XXXXXX") || exit 2
    trap 'rm -rf "$work"' EXIT
    stdin="$work/stdin"
    cat >"$stdin" || exit 2
fi

# The hash of the tool's bytes and of its shared libraries' (as ldd names them), kept in $cache/.tools
# for the next call while the tool and those libraries have the device, inode, size, modification and
# change times they had (and LD_LIBRARY_PATH is the same): ldd and the hash of ~7 MB were ~20 ms of
# every call. A rewritten file has a new change time, whatever its size and modification time.
fingerprint() {
    memo="$cache/.tools/$(printf '%s' "$tool" | b2sum -l 64 | cut -d' ' -f1)"
    if [ "$cache" != off ] && [ -f "$memo/hash" ] && [ "$(cat "$memo/ldpath")" = "${LD_LIBRARY_PATH:-}" ] &&
       [ "$(stat -L -c '%n %d %i %s %.9Y %.9Z' -- "$tool" $(cat "$memo/libs") 2>&1)" = "$(cat "$memo/stat")" ]; then
        cat "$memo/hash"
        return
    fi
    libs=$(ldd "$tool" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p')
    st=$(stat -L -c '%n %d %i %s %.9Y %.9Z' -- "$tool" $libs 2>&1)
    h=$(b2sum -l 256 -- "$tool" $libs | b2sum -l 256 | cut -d' ' -f1)
    echo "$h"
    [ "$cache" != off ] && mkdir -p "$cache/.tools" 2>/dev/null || return 0
    m=$(mktemp -d "$cache/.tools/.new.XXXXXX") || return 0
    printf '%s\n' "$h" >"$m/hash"; printf '%s\n' "${LD_LIBRARY_PATH:-}" >"$m/ldpath"
    printf '%s\n' "$libs" >"$m/libs"; printf '%s\n' "$st" >"$m/stat"
    rm -rf "$memo"; mv -T "$m" "$memo" 2>/dev/null || rm -rf "$m"
}

# the question's bytes, hashed (one b2sum for the files: each line "HASH  NAME", stdin's name "-"; b2sum,
# not sha256sum: a third of the CPU on the ~7 MB of a tool and its libraries, asked at every call)
key=$({
    echo "moelm oracle cache 1"
    printf 'tool %s\nstdin %d\n' "$1" $use_stdin
    shift
    for a in "$@"; do printf 'arg %d:%s\n' "${#a}" "$a"; done
    for f in $outputs; do printf 'out %s\n' "$f"; done
    echo "tool bytes $(fingerprint)"
    b2sum -l 256 -- $inputs - <"$stdin"
} | b2sum -l 256)
entry="$cache/${key%% *}"

log() { [ -z "${MOELM_ORACLE_LOG:-}" ] || echo "$1 ${tool##*/}" >>"$MOELM_ORACLE_LOG"; }
# an entry is whole when it has its status and every output
whole() {
    [ -f "$entry/rc" ] || return 1
    n=0
    for f in $outputs; do n=$((n + 1)); [ -f "$entry/o$n" ] || return 1; done
}
if [ "$cache" != off ] && whole; then
    [ $ask = 1 ] && exit 0
    n=0
    for f in $outputs; do n=$((n + 1)); cp "$entry/o$n" "$f" || exit 2; done
    log hit
    cat "$entry/stdout"; cat "$entry/stderr" >&2
    read -r rc <"$entry/rc"
    exit "$rc"
fi
[ $ask = 1 ] && exit 1

for f in $outputs; do rm -f "$f"; done
# the answer is written in a new folder inside the cache (renamed into place below), or in TMPDIR
dir=${TMPDIR:-/tmp}
[ "$cache" != off ] && mkdir -p "$cache" 2>/dev/null && dir=$cache
new=$(mktemp -d "$dir/.new.XXXXXX") || exit 2
"$@" <"$stdin" >"$new/stdout" 2>"$new/stderr"
rc=$?
log run
cat "$new/stdout"; cat "$new/stderr" >&2
keep=$([ "$cache" != off ] && [ $rc = 0 ] && echo 1 || echo 0)
n=0
for f in $outputs; do n=$((n + 1)); [ $keep = 1 ] && { cp "$f" "$new/o$n" 2>/dev/null || keep=0; }; done
if [ $keep = 1 ] && echo $rc >"$new/rc"; then
    # a whole entry another test stored meanwhile stays (a reader may be copying it); a damaged one goes
    if whole; then rm -rf "$new"; else rm -rf "$entry"; mv -T "$new" "$entry" 2>/dev/null || rm -rf "$new"; fi
else
    rm -rf "$new"
fi
exit $rc
