/* cmd_export.c: `moelm export`: a llama / mixtral model as a Hugging Face directory or a GGUF file. */
#include <stdio.h>
#include <string.h>
#include "args.h"
#include "common/util.h"
#include "io/fileio.h"
#include "train/train.h"

int cmd_export(int argc, char **argv) {
    ExportOptions o = {0};
    const char *format = NULL, *type = NULL;
    long shard = 0;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) {
            printf("usage: moelm export -m CKPT --format hf|gguf -o OUT [--dtype f32|f16|bf16] [--max-shard-size N[K|M|G]] [--ema]\n\n"
                   "  -m, --model CKPT     a checkpoint, a run directory (its latest) or a Hugging Face directory\n"
                   "                       of model_type mixtral or llama\n"
                   "  --format hf          a Hugging Face directory OUT: config.json (MixtralForCausalLM or\n"
                   "                       LlamaForCausalLM), model.safetensors (or shards and an index),\n"
                   "                       tokenizer.model, generation_config.json\n"
                   "  --format gguf        a GGUF file OUT (llama.cpp)\n"
                   "  --dtype, --type T    tensor type: f32 (default), f16, bf16; q8_0 for gguf\n"
                   "  --max-shard-size N   hf: shards of at most N bytes of tensors (suffix K, M, G: KiB, MiB, GiB;\n"
                   "                       default 0: one model.safetensors)\n"
                   "  --ema                the run's weight average (trained with --set ema_decay=...)\n\n"
                   "examples (a mixtral / llama run: %s train --config mixtral-tiny --out runs/mx):\n"
                   "  %s export -m runs/mx --format hf -o mx-hf\n"
                   "  %s export -m runs/mx --format gguf --type q8_0 -o mx-q8.gguf\n", cli_prog, cli_prog, cli_prog);
            return 0;
        }
        else if (arg_match(argc, argv, &i, "-m|--model", &val)) { if (!val) return cli_error(2); o.ckpt = val; }
        else if (arg_match(argc, argv, &i, "-o|--out", &val)) { if (!val) return cli_error(2); o.out = val; }
        else if (arg_match(argc, argv, &i, "--format", &val)) { if (!val) return cli_error(2); format = val; }
        else if (arg_match(argc, argv, &i, "--dtype|--type", &val)) { if (!val) return cli_error(2); type = val; }
        else if (arg_match(argc, argv, &i, "--max-shard-size", &val)) {
            if (!val) return cli_error(2);
            char num[32];
            size_t n = strlen(val);
            int shift = n && strchr("KMG", val[n - 1]) ? (val[n - 1] == 'K' ? 10 : val[n - 1] == 'M' ? 20 : 30) : 0;
            snprintf(num, sizeof num, "%.*s", (int)(shift ? n - 1 : n), val);
            if (arg_int("--max-shard-size", num, 0, 1L << 40, &shard)) return cli_error(2);
            o.max_shard_bytes = (uint64_t)shard << shift;
        }
        else if (arg_flag(argv, i, "--ema")) o.ema = 1;
        else { arg_unknown("export", argv[i]); return cli_error(2); }
    }
    if (!o.ckpt || !o.out || !format) {
        moelm_fail(MOELM_ERR_ARG, "export: -m CKPT, --format hf|gguf and -o OUT are required");
        return cli_error(2);
    }
    if (!strcmp(format, "gguf")) o.gguf = 1;
    else if (strcmp(format, "hf")) { moelm_fail(MOELM_ERR_ARG, "export: --format '%s' is not hf or gguf", format); return cli_error(2); }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o.out);
    char *slash = strrchr(dir, '/');
    if (o.gguf && slash && slash != dir) {   /* a Hugging Face directory is made with its parents */
        *slash = '\0';
        if (!path_is_dir(dir)) {
            moelm_fail(MOELM_ERR_ARG, "export: -o %s: the folder %s does not exist (mkdir -p %s first)", o.out, dir, dir);
            return cli_error(2);
        }
    }
    static const char *const types[] = {"f32", "f16", "bf16", "q8_0"};
    o.dtype = -1;
    for (int t = 0; t < 4; t++) if (!strcmp(type ? type : "f32", types[t])) o.dtype = t;
    if (o.dtype < 0) { moelm_fail(MOELM_ERR_ARG, "export: --dtype '%s' is not f32, f16, bf16 or q8_0", type); return cli_error(2); }
    moelm_status st = export_run(&o);
    if (st) return cli_error(st == MOELM_ERR_ARG ? 2 : 1);
    printf("wrote %s (%s, %s)\n", o.out, o.gguf ? "GGUF" : "Hugging Face directory", types[o.dtype]);
    return 0;
}
