#!/bin/sh
# Installs what moelm needs to build and test, when missing (Debian 12, as root).
# Core: gcc, make, OpenBLAS (OpenMP build). Tests also use sentencepiece's spm_* tools when present.
set -e
need=""
# Debian's torch is there (found without importing it: the import takes ~2 s of every make test)
have_torch() { /usr/bin/python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' >/dev/null 2>&1; }
command -v gcc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
{ [ -f /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h ] && [ -f /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so ]; } || need="$need libopenblas-openmp-dev"
# make test also wants sentencepiece (spm_train/spm_encode: the tokenizer oracle tests)
[ "${1:-}" = test ] && { command -v spm_encode >/dev/null 2>&1 || need="$need sentencepiece"; }
# tests/test_python.sh: python/moelm.py against moelm forward (Debian's torch)
[ "${1:-}" = test ] && { have_torch || need="$need python3-torch"; }
# .ci/run's memcheck stage (scripts/valgrind.sh --quick)
[ "${1:-}" = test ] && { command -v valgrind >/dev/null 2>&1 || need="$need valgrind"; }
# bench/compare.sh runs the PyTorch peer with jemalloc (LD_PRELOAD) and Debian's torch
[ "${1:-}" = bench ] && { [ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || need="$need libjemalloc2"; }
[ "${1:-}" = bench ] && { have_torch || need="$need python3-torch"; }
if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "moelm: missing packages:$need (run as root, or: sudo apt-get install$need)" >&2
        exit 1
    fi
    echo "moelm: installing$need" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $need >/dev/null
fi
# make test's GGUF oracle: @huggingface/gguf (npm) into tests/js/node_modules (git-ignored), when npm is
# here and it is not installed yet; tests/test_gguf_js.sh skips only when node or npm is absent
if [ "${1:-}" = test ] && command -v npm >/dev/null 2>&1 && [ ! -d tests/js/node_modules/@huggingface/gguf ]; then
    echo "moelm: installing @huggingface/gguf into tests/js (npm)" >&2
    (cd tests/js && npm install --no-audit --no-fund --silent) || echo "moelm: npm install failed; tests/test_gguf_js.sh will fail" >&2
fi
