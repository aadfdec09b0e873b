/* cmd_generate.c: `moelm generate`, with llama.cpp's sampling flags. */
#include <stdio.h>
#include <string.h>
#include "args.h"
#include "common/util.h"
#include "train/train.h"

int cmd_generate(int argc, char **argv) {
    GenerateOptions o = {.ckpt = NULL, .prompt = "", .n = 40, .temp = 0.8f, .top_p = 1.0f, .top_k = 40, .seed = 1, .threads = 0,
                         .beams = 1, .length_penalty = 1.0f};
    long v;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) {
            printf("usage: moelm generate -m CKPT [-p PROMPT] [-n N] [--temp X] [--top-k K] [--top-p P] [--seed N] [-t N] [--bf16] [-i]\n"
                   "                      [--beams N] [--length-penalty X] [--stop-eos] [--ema]\n\n"
                   "  -m, --model CKPT   checkpoint directory, or a run directory (its latest), or a Hugging Face\n"
                   "                     directory (switch_transformers: config.json, weights, spiece.model;\n"
                   "                     mixtral / llama: config.json, weights, tokenizer.model), or a GGUF\n"
                   "                     file of architecture llama (f32, f16, bf16, q8_0: q8_0 runs on int8)\n"
                   "  -p, --prompt TEXT  prompt (default: empty, i.e. start of a line)\n"
                   "  -n N               tokens to generate (default 40); past the model's positions the\n"
                   "                     context slides (the cache restarts from its newest half)\n"
                   "  -i, --interactive  read prompts from stdin, one a line, keeping the KV cache between them;\n"
                   "                     the model finishes each line (up to -n tokens); Ctrl-D ends\n"
                   "  --temp X           temperature; 0 = greedy (default 0.8)\n"
                   "  --top-k K          sample from the K most likely tokens; 0 = off (default 40)\n"
                   "  --top-p P          nucleus sampling; 1 = off (default 1)\n"
                   "  --seed N           sampling seed (default 1)\n"
                   "  -t, --threads N    threads (default: 1 for a model under 32 MB of weights a token, or on a\n"
                   "                     busy machine (load average >= CPUs), else 2). A token's step is short\n"
                   "                     and each layer waits for its slowest thread: there -t 2 was 2.5-106x\n"
                   "                     slower than -t 1 (bench/RESULTS.md); time both with `moelm bench`\n"
                   "  --bf16             read the weight matrices as bfloat16: half the bytes to read, faster where\n"
                   "                     reading them bounds a token (bench/RESULTS.md); logits within ~2%% of the\n"
                   "                     float ones (a sample can differ)\n"
                   "  --beams N          encoder-decoder: beam search with N beams (default 1: greedy, or sampling\n"
                   "                     with --temp > 0); the prompt is the encoder's input, the output the target\n"
                   "  --length-penalty X beam search: a hypothesis scores sum log p / length^X (Hugging Face's; default 1)\n"
                   "  --stop-eos         stop after the end-of-text token (a line end), as llama.cpp stops at EOS\n"
                   "  --ema              the run's weight average (trained with --set ema_decay=...) as the model\n\n"
                   "examples:\n"
                   "  %s generate -m runs/tiny -p \"the old\" -n 20 --seed 2\n"
                   "  %s generate -m runs/tiny -p \"the old\" --temp 0       # greedy: the same text every time\n",
                   cli_prog, cli_prog);
            return 0;
        }
        else if (arg_match(argc, argv, &i, "-m|--model", &val)) { if (!val) return cli_error(2); o.ckpt = val; }
        else if (arg_match(argc, argv, &i, "-p|--prompt", &val)) { if (!val) return cli_error(2); o.prompt = val; }
        else if (arg_match(argc, argv, &i, "-n|--n-predict", &val)) { if (arg_int("-n", val, 0, 1 << 20, &v)) return cli_error(2); o.n = (int)v; }
        else if (arg_match(argc, argv, &i, "--temp", &val)) { if (arg_float("--temp", val, 0, 100, &d)) return cli_error(2); o.temp = (float)d; }
        else if (arg_match(argc, argv, &i, "--top-k", &val)) { if (arg_int("--top-k", val, 0, 1 << 24, &v)) return cli_error(2); o.top_k = (int)v; }
        else if (arg_match(argc, argv, &i, "--top-p", &val)) { if (arg_float("--top-p", val, 0, 1, &d)) return cli_error(2); o.top_p = (float)d; }
        else if (arg_match(argc, argv, &i, "--seed", &val)) { if (arg_int("--seed", val, 0, 0x7fffffffffffffffL, &v)) return cli_error(2); o.seed = (uint64_t)v; }
        else if (arg_flag(argv, i, "--bf16")) o.bf16 = 1;
        else if (arg_flag(argv, i, "-i|--interactive")) o.interactive = 1;
        else if (arg_match(argc, argv, &i, "--beams", &val)) { if (arg_int("--beams", val, 1, 64, &v)) return cli_error(2); o.beams = (int)v; }
        else if (arg_match(argc, argv, &i, "--length-penalty", &val)) { if (arg_float("--length-penalty", val, -10, 10, &d)) return cli_error(2); o.length_penalty = (float)d; }
        else if (arg_flag(argv, i, "--stop-eos")) o.stop_eos = 1;
        else if (arg_flag(argv, i, "--ema")) o.ema = 1;
        else if (arg_match(argc, argv, &i, "-t|--threads", &val)) { if (arg_int("--threads", val, 1, 1024, &v)) return cli_error(2); o.threads = (int)v; }
        else { arg_unknown("generate", argv[i]); return cli_error(2); }
    }
    if (!o.ckpt) { moelm_fail(MOELM_ERR_ARG, "generate: -m CKPT is required"); return cli_error(2); }
    moelm_status st = generate_run(&o);
    return st ? cli_error(st == MOELM_ERR_ARG ? 2 : 1) : 0;
}
