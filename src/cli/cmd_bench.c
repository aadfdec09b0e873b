/* cmd_bench.c: `moelm bench`, the front end of bench_run (src/train/bench.h). */
#include <stdio.h>
#include <string.h>
#include "args.h"
#include "common/util.h"
#include "io/fileio.h"
#include "train/bench.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moelm bench [flags]\n\n"
            "Training and generation speed on synthetic tokens: tok/s, GFLOP/s (forward + backward, counted\n"
            "analytically), and the share of this machine's sgemm peak measured by the same run; generation's\n"
            "bytes of weights per second and their share of the machine's read bandwidth, measured alike.\n\n"
            "  --config NAME|FILE     preset (tiny, demo, dense-ptb, switch-ptb, seed-moe, seed-gating, seed-switch,\n"
            "                         mixtral-tiny, mixtral-ptb, llama-tiny)\n"
            "                         or a config.json (default: seed-switch)\n"
            "  -m, --model FILE.gguf  time generation from a GGUF file's weights instead (llama / mixtral; Q8_0\n"
            "                         matrices from their int8 blocks): tok/s, bytes a token reads, their share\n"
            "                         of the read bandwidth; no training\n"
            "  --set KEY=VALUE        override a config or training key, repeatable (e.g. --set num_experts=128)\n"
            "  -t, --threads N        threads for OpenMP and BLAS (default 2)\n"
            "  --steps N              timed training steps (default 10; 0 = no training)\n"
            "  --warmup N             untimed training steps first (default 2)\n"
            "  -b, --batch-size N     sequences per batch (default: the preset's)\n"
            "  --seq-len N            tokens per sequence (default: the preset's)\n"
            "  --vocab N              vocabulary size when the config leaves it open (default 10000)\n"
            "  -n, --gen N            generated tokens, batch 1, KV cache (default 100; 0 = no generation)\n"
            "  --bf16                 also time training in bf16 mixed precision (train --bf16), after the float\n"
            "                         steps, and the bf16 product's peak beside sgemm's\n"
            "  --no-peak              skip the sgemm peak and read bandwidth measurements\n"
            "  --peak-size N          time the peaks on N x N x N products (default 2048; smaller is quicker\n"
            "                         and further below the machine's peak)\n"
            "  --profile              print forward / backward / optimizer time per step, and a generated\n"
            "                         token's phases (attention, projection, ffn, moe, head): time and GB/s\n"
            "  --seed N               seed of the weights and tokens (default 1)\n\n"
            "examples:\n"
            "  %s bench --config tiny -t 1 --steps 3 -n 20 --no-peak   # a second: what the lines mean\n"
            "  %s bench --config seed-switch -t 2                      # the tutorial's Switch model\n", cli_prog, cli_prog);
}

int cmd_bench(int argc, char **argv) {
    BenchOptions o;
    bench_options_default(&o);
    const char *sets[256];
    long v;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) { usage(stdout); return 0; }
        else if (arg_flag(argv, i, "--no-peak")) o.peak = 0;
        else if (arg_flag(argv, i, "--profile")) o.profile = 1;
        else if (arg_flag(argv, i, "--bf16")) o.bf16 = 1;
        else if (arg_match(argc, argv, &i, "--config", &val)) { if (!val) return cli_error(2); o.config = val; }
        else if (arg_match(argc, argv, &i, "-m|--model", &val)) { if (!val) return cli_error(2); o.model = val; }
        else if (arg_match(argc, argv, &i, "--set", &val)) { if (arg_add_set(val, sets, &o.n_sets, 256)) return cli_error(2); }
        else if (arg_match(argc, argv, &i, "-t|--threads", &val)) { if (arg_int("--threads", val, 1, 1024, &v)) return cli_error(2); o.threads = (int)v; }
        else if (arg_match(argc, argv, &i, "--steps", &val)) { if (arg_int("--steps", val, 0, 1000000, &v)) return cli_error(2); o.steps = (int)v; }
        else if (arg_match(argc, argv, &i, "--warmup", &val)) { if (arg_int("--warmup", val, 0, 1000000, &v)) return cli_error(2); o.warmup = (int)v; }
        else if (arg_match(argc, argv, &i, "-b|--batch-size", &val)) { if (arg_int("--batch-size", val, 1, 1 << 16, &v)) return cli_error(2); o.batch_size = (int)v; }
        else if (arg_match(argc, argv, &i, "--seq-len", &val)) { if (arg_int("--seq-len", val, 1, 1 << 16, &v)) return cli_error(2); o.seq_len = (int)v; }
        else if (arg_match(argc, argv, &i, "--vocab", &val)) { if (arg_int("--vocab", val, 2, 10000000, &v)) return cli_error(2); o.vocab_size = (int)v; }
        else if (arg_match(argc, argv, &i, "-n|--gen", &val)) { if (arg_int("--gen", val, 0, 65535, &v)) return cli_error(2); o.n_gen = (int)v; }
        else if (arg_match(argc, argv, &i, "--peak-size", &val)) { if (arg_int("--peak-size", val, 16, 16384, &v)) return cli_error(2); o.peak_n = (int)v; }
        else if (arg_match(argc, argv, &i, "--seed", &val)) { if (arg_int("--seed", val, 0, 0x7fffffffffffffffL, &v)) return cli_error(2); o.seed = (uint64_t)v; }
        else {
            arg_unknown("bench", argv[i]);
            return cli_error(2);
        }
    }
    if (o.model && o.bf16) {
        moelm_fail(MOELM_ERR_ARG, "bench -m: --bf16 times training, which a GGUF file's weights are not for "
                   "(generate --bf16 -m FILE runs its bf16 generation)");
        return cli_error(2);
    }
    if (o.model && path_is_dir(o.model)) {
        moelm_fail(MOELM_ERR_ARG, "bench -m takes a GGUF file and %s is a folder (moelm export -m %s --format gguf -o "
                   "FILE.gguf makes one of a mixtral / llama run; --config NAME times a preset)", o.model, o.model);
        return cli_error(2);
    }
    sets[o.n_sets] = NULL;
    o.sets = sets;
    moelm_status st = bench_run(&o);
    return st ? cli_error(st == MOELM_ERR_ARG ? 2 : 1) : 0;
}
