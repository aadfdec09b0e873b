/* cmd_train.c: `moelm train`. */
#include <stdio.h>
#include <string.h>
#include "args.h"
#include "common/util.h"
#include "model/config.h"
#include "train/keys.h"
#include "train/train.h"

static void usage(FILE *f, const char *prog) {
    fprintf(f,
            "usage: moelm train [flags]     (no flags: the demo preset on the built-in corpus, into runs/demo)\n\n"
            "what to train:\n"
            "  --config NAME|FILE     preset: tiny, demo, dense-ptb, switch-ptb, switch-t5-tiny, switch-t5-ptb,\n"
            "                         seed-moe, seed-gating, seed-switch, seed-hf-switch, mixtral-tiny, mixtral-ptb,\n"
            "                         llama-tiny (README: Presets); or an experiment file, a JSON object of keys\n"
            "                         on an optional preset ({\"preset\": \"switch-ptb\", \"num_experts\": 16}); a run's\n"
            "                         config.json works too (default: demo)\n"
            "  --set KEY=VALUE        override a model or training key, repeatable (e.g. --set num_experts=16)\n"
            "  --print-config         list every key with its value (after --config, --set and the flags), and exit\n"
            "  --data PATH            a folder with ptb.{train,valid,test}.txt or {train,valid,test}.txt, one text\n"
            "                         file (split 90/5/5 by lines), or builtin (default); files of at most 2 GiB\n"
            "  --tokenizer SPEC       word, word:N, char, unigram:N, bpe:N, or a tokenizer file (default: the preset's)\n"
            "  --init-from SRC        a new run (fresh optimizer, step 0) from the weights, model config and tokenizer\n"
            "                         of SRC: a run, a checkpoint or a Hugging Face directory (mixtral / llama,\n"
            "                         switch_transformers); --config gives only the training settings\n"
            "how long, how:\n"
            "  --steps N              optimizer steps (default: the preset's)\n"
            "  --stop-at N            stop after step N with a checkpoint, keeping the schedule of --steps\n"
            "  --time-budget MIN      train for MIN minutes of wall-clock, the final evaluation and checkpoint\n"
            "                         included; the LR schedule is laid over the time; --steps N also stops it\n"
            "  -b, --batch-size N     sequences per batch;  --seq-len N  tokens per sequence (defaults: the preset's)\n"
            "  --grad-accum N         accumulate N micro-batches of -b per update (MoE capacity stays per micro-batch)\n"
            "  --stride N             window stride (default: seq-len, non-overlapping; 1 = the tutorial's windows)\n"
            "  --lr X                 peak learning rate (default: the preset's)\n"
            "  --seed N               seed of the initialisation, data order and dropout (default 1)\n"
            "run directory:\n"
            "  --out DIR              where the run goes (default runs/demo)\n"
            "  --resume DIR           continue the run in DIR (or DIR/ckpt-N) bit-identically; a longer --steps or\n"
            "                         --time-budget extends a finished one\n"
            "  --force                resume even if the data or shape differ; or start over in an --out that holds\n"
            "                         a run (its checkpoints are deleted)\n"
            "  --ckpt-interval N      checkpoint every N steps (default 0: at each evaluation and at the end)\n"
            "  --keep N               checkpoints to keep (default 3; 0 = all)\n"
            "what it prints:\n"
            "  --eval-interval N      evaluate every N steps (default 200; 0 = only at the end)\n"
            "  --eval-batches N       batches per periodic evaluation (default 0: the whole validation split;\n"
            "                         the final evaluation always takes the whole split)\n"
            "  --log-interval N       log every N steps (default 10)\n"
            "  --quiet                print nothing but warnings and errors\n"
            "machine:\n"
            "  -t, --threads N        threads (default 2)\n"
            "  --bf16                 mixed precision: matrix products on bf16 operands, float sums and everything\n"
            "                         else float; fast on CPUs with AVX-512 BF16\n"
            "  --skip-nonfinite       skip updates whose loss or gradients are NaN/Inf instead of stopping\n"
            "  --expert-parallel N    under mpirun (make MPI=1): each MoE layer's experts over N ranks\n"
            "\nexamples:\n"
            "  %s train --config tiny --steps 50 -t 1 --out runs/tiny      # a few seconds\n"
            "  %s train --data ../shared/data/ptb --config switch-ptb --out runs/ptb-switch\n"
            "  %s train --resume runs/tiny --steps 100 -t 1               # train on, exactly as one run\n"
            "Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the current step and exits with 130 or 143\n"
            "(--resume continues from it); a second one exits at once.\n", prog, prog, prog);
}

int cmd_train(int argc, char **argv) {
    TrainOptions o;
    train_options_default(&o);
    const char *sets[256];
    long v;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) { usage(stdout, cli_prog); return 0; }
        else if (arg_flag(argv, i, "--force")) o.force = 1;
        else if (arg_flag(argv, i, "--quiet")) o.quiet = 1;
        else if (arg_flag(argv, i, "--print-config")) o.print_config = 1;
        else if (arg_flag(argv, i, "--skip-nonfinite")) o.skip_nonfinite = 1;
        else if (arg_flag(argv, i, "--bf16")) o.bf16 = 1;
        else if (arg_match(argc, argv, &i, "--data", &val)) { if (!val) return cli_error(2); o.data = val; }
        else if (arg_match(argc, argv, &i, "--config", &val)) { if (!val) return cli_error(2); o.config = val; }
        else if (arg_match(argc, argv, &i, "--tokenizer", &val)) { if (!val) return cli_error(2); o.tokenizer = val; }
        else if (arg_match(argc, argv, &i, "--out", &val)) { if (!val) return cli_error(2); o.out = val; }
        else if (arg_match(argc, argv, &i, "--resume", &val)) { if (!val) return cli_error(2); o.resume = val; }
        else if (arg_match(argc, argv, &i, "--init-from", &val)) { if (!val) return cli_error(2); o.init_from = val; }
        else if (arg_match(argc, argv, &i, "--set", &val)) { if (arg_add_set(val, sets, &o.n_sets, 256)) return cli_error(2); }
        else if (arg_match(argc, argv, &i, "--steps", &val)) { if (arg_int("--steps", val, 1, 1000000000L, &v)) return cli_error(2); o.steps = v; }
        else if (arg_match(argc, argv, &i, "--stop-at", &val)) { if (arg_int("--stop-at", val, 1, 1000000000L, &v)) return cli_error(2); o.stop_at = v; }
        else if (arg_match(argc, argv, &i, "--time-budget", &val)) { if (arg_float("--time-budget", val, 0.01, 1e6, &d)) return cli_error(2); o.time_budget_min = d; }
        else if (arg_match(argc, argv, &i, "-b|--batch-size", &val)) { if (arg_int("--batch-size", val, 1, 1 << 16, &v)) return cli_error(2); o.batch_size = (int)v; }
        else if (arg_match(argc, argv, &i, "--seq-len", &val)) { if (arg_int("--seq-len", val, 1, 1 << 16, &v)) return cli_error(2); o.seq_len = (int)v; }
        else if (arg_match(argc, argv, &i, "--stride", &val)) { if (arg_int("--stride", val, 1, 1 << 16, &v)) return cli_error(2); o.stride = (int)v; }
        else if (arg_match(argc, argv, &i, "--lr", &val)) { if (arg_float("--lr", val, 1e-12, 10, &d)) return cli_error(2); o.lr = (float)d; }
        else if (arg_match(argc, argv, &i, "--seed", &val)) { if (arg_int("--seed", val, 0, 0x7fffffffffffffffL, &v)) return cli_error(2); o.seed = (uint64_t)v; }
        else if (arg_match(argc, argv, &i, "-t|--threads", &val)) { if (arg_int("--threads", val, 1, 1024, &v)) return cli_error(2); o.threads = (int)v; }
        else if (arg_match(argc, argv, &i, "--eval-interval", &val)) { if (arg_int("--eval-interval", val, 0, 1000000000L, &v)) return cli_error(2); o.eval_interval = (int)v; }
        else if (arg_match(argc, argv, &i, "--eval-batches", &val)) { if (arg_int("--eval-batches", val, 0, 1000000000L, &v)) return cli_error(2); o.eval_batches = v; }
        else if (arg_match(argc, argv, &i, "--log-interval", &val)) { if (arg_int("--log-interval", val, 1, 1000000000L, &v)) return cli_error(2); o.log_interval = (int)v; }
        else if (arg_match(argc, argv, &i, "--ckpt-interval", &val)) { if (arg_int("--ckpt-interval", val, 0, 1000000000L, &v)) return cli_error(2); o.ckpt_interval = (int)v; }
        else if (arg_match(argc, argv, &i, "--expert-parallel", &val)) { if (arg_int("--expert-parallel", val, 1, 1 << 20, &v)) return cli_error(2); o.expert_parallel = (int)v; }
        else if (arg_match(argc, argv, &i, "--grad-accum", &val)) { if (arg_int("--grad-accum", val, 1, 65536, &v)) return cli_error(2); o.grad_accum = (int)v; }
        else if (arg_match(argc, argv, &i, "--keep", &val)) { if (arg_int("--keep", val, 0, 1000000, &v)) return cli_error(2); o.keep = (int)v; }
        else {
            char key[64];   /* --num-experts 16 for --set num_experts=16 */
            snprintf(key, sizeof key, "%.*s", (int)strcspn(argv[i] + 2, "="), argv[i] + 2);
            for (char *c = key; *c; c++) if (*c == '-') *c = '_';
            if (!strncmp(argv[i], "--", 2) && (key_is_model(key) || key_is_training(key)))
                moelm_fail(MOELM_ERR_ARG, "train: '%s' is not a flag but %s is a key: --set %s=VALUE", argv[i], key, key);
            else
                arg_unknown("train", argv[i]);
            return cli_error(2);
        }
    }
    sets[o.n_sets] = NULL;
    o.sets = sets;
    moelm_status st = train_run(&o);
    if (!st && train_last_signal()) return 128 + train_last_signal();   /* 130 SIGINT, 143 SIGTERM, as a shell says */
    return st ? cli_error(st == MOELM_ERR_ARG ? 2 : 1) : 0;
}
