/* cmd_eval.c: `moelm eval` and `moelm info`. */
#include <stdio.h>
#include <string.h>
#include "args.h"
#include "common/util.h"
#include "train/dyneval.h"
#include "train/train.h"

int cmd_eval(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL;
    long b = 16, T = 0, t = 2, S = 0;
    int ema = 0;
    EvalDynamic dyn = {0, -1.0f, DYN_DECAY, 0};
    double x;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) {
            printf("usage: moelm eval -m CKPT [--data FILE|DIR] [-b N] [--seq-len N] [--stride N] [-t N] [--ema]\n"
                   "                  [--dynamic [--dyn-lr X] [--dyn-decay X] [--dyn-rms]]\n\n"
                   "  -m, --model CKPT    checkpoint directory, or a run directory (its latest), a Hugging Face\n"
                   "                      directory, or a GGUF file of architecture llama\n"
                   "  --data FILE|DIR     text to evaluate; a folder means its test split (default: the run's test split)\n"
                   "  -b, --batch-size N  sequences per batch (default 16)\n"
                   "  --seq-len N         context length (default: the run's)\n"
                   "  --stride N          windows N tokens apart, scoring only their last N tokens: every token\n"
                   "                      sees at least seq-len - N of context (default: seq-len, no overlap)\n"
                   "  -t, --threads N     threads (default 2)\n"
                   "  --ema               evaluate the run's weight average (trained with --set ema_decay=...)\n"
                   "  --dynamic           also dynamic evaluation (Krause et al. 2018; decoder-only models): the text\n"
                   "                      in order in segments of seq-len tokens, each scored and then one update on\n"
                   "                      it, so the weights adapt to the text as it is read: NOT comparable with\n"
                   "                      static perplexity. The static numbers are then taken one window at a time\n"
                   "                      (-b 1); -b and --stride do not apply\n"
                   "  --dyn-lr X          its step size (default %g with SGD, %g with --dyn-rms)\n"
                   "  --dyn-decay X       its pull toward the trained weights per update, in [0, 1] (default %g)\n"
                   "  --dyn-rms           steps divided per weight by its RMS training gradient (Krause et al.'s rule,\n"
                   "                      from the checkpoint's Adam second moment; default: plain SGD, which did\n"
                   "                      better on PTB's validation split)\n"
                   "Prints token-level and word-level perplexity (exp of the total NLL over the words, <eos> included)\n"
                   "and per-layer expert load, dropped fraction, router entropy and confidence, dead experts.\n\n"
                   "examples:\n"
                   "  %s eval -m runs/tiny                          # the run's test split\n"
                   "  %s eval -m runs/tiny --data README.md -t 1    # any text file, read with the run's tokenizer\n",
                   (double)DYN_LR_SGD, (double)DYN_LR_RMS, (double)DYN_DECAY, cli_prog, cli_prog);
            return 0;
        }
        else if (arg_match(argc, argv, &i, "-m|--model", &val)) { if (!val) return cli_error(2); ckpt = val; }
        else if (arg_match(argc, argv, &i, "--data", &val)) { if (!val) return cli_error(2); data = val; }
        else if (arg_match(argc, argv, &i, "-b|--batch-size", &val)) { if (arg_int("--batch-size", val, 1, 1 << 16, &b)) return cli_error(2); }
        else if (arg_match(argc, argv, &i, "--seq-len", &val)) { if (arg_int("--seq-len", val, 1, 1 << 16, &T)) return cli_error(2); }
        else if (arg_match(argc, argv, &i, "--stride", &val)) { if (arg_int("--stride", val, 1, 1 << 16, &S)) return cli_error(2); }
        else if (arg_match(argc, argv, &i, "-t|--threads", &val)) { if (arg_int("--threads", val, 1, 1024, &t)) return cli_error(2); }
        else if (arg_flag(argv, i, "--ema")) ema = 1;
        else if (arg_flag(argv, i, "--dynamic")) dyn.on = 1;
        else if (arg_flag(argv, i, "--dyn-rms")) dyn.rms = 1;
        else if (arg_match(argc, argv, &i, "--dyn-lr", &val)) { if (arg_float("--dyn-lr", val, 0, 1e3, &x)) return cli_error(2); dyn.lr = (float)x; }
        else if (arg_match(argc, argv, &i, "--dyn-decay", &val)) { if (arg_float("--dyn-decay", val, 0, 1, &x)) return cli_error(2); dyn.decay = (float)x; }
        else { arg_unknown("eval", argv[i]); return cli_error(2); }
    }
    if (!ckpt) { moelm_fail(MOELM_ERR_ARG, "eval: -m CKPT is required"); return cli_error(2); }
    if (!dyn.on && (dyn.lr >= 0 || dyn.decay != DYN_DECAY || dyn.rms)) {
        moelm_fail(MOELM_ERR_ARG, "eval: --dyn-lr, --dyn-decay and --dyn-rms go with --dynamic");
        return cli_error(2);
    }
    moelm_status st = eval_run(ckpt, data, (int)b, (int)T, (int)S, (int)t, ema, &dyn);
    return st ? cli_error(st == MOELM_ERR_ARG ? 2 : 1) : 0;
}

int cmd_info(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') {
        if (argc == 2 && arg_flag(argv, 1, "-h|--help")) {
            printf("usage: moelm info CKPT     a checkpoint's config, parameter counts and step\n\n"
                   "  CKPT   a run directory (its latest), a checkpoint, a Hugging Face directory or a GGUF file\n\n"
                   "examples:\n  %s info runs/tiny\n", cli_prog);
            return 0;
        }
        moelm_fail(MOELM_ERR_ARG, "usage: moelm info CKPT (a run directory, a checkpoint, a Hugging Face directory or a GGUF file)");
        return cli_error(2);
    }
    return info_run(argv[1]) ? cli_error(1) : 0;
}
