/* cmd_forward.c: `moelm forward`, a model's outputs for the cases of an inputs file
 * (src/model/forward_file.h), to compare moelm with another implementation tensor by tensor. */
#include <stdio.h>
#include "args.h"
#include "backend/runtime.h"
#include "common/util.h"
#include "model/forward_file.h"

int cmd_forward(int argc, char **argv) {
    const char *model = NULL, *in = NULL, *out = NULL;
    long t = 2;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) {
            printf("usage: moelm forward -m DIR --inputs IN.safetensors -o OUT.safetensors [-t N]\n\n"
                   "  -m, --model DIR       a model directory: a moelm checkpoint, or a Hugging Face directory\n"
                   "                        (config.json and model.safetensors, or shards with their index;\n"
                   "                        fp32, fp16 or bf16), or a GGUF file of architecture llama\n"
                   "  --inputs FILE         safetensors with, per case P, int32 [batch, length] tensors\n"
                   "                        P.input_ids and optionally P.attention_mask, P.decoder_input_ids, P.labels,\n"
                   "                        P.decoder_attention_mask\n"
                   "  -o, --output FILE     safetensors to write (fp32): switch_transformers: P.logits,\n"
                   "                        P.encoder_last_hidden_state, P.decoder_last_hidden_state,\n"
                   "                        P.encoder|decoder.block.N.router_logits, P.encoder|decoder_z_loss,\n"
                   "                        P.encoder|decoder_aux_loss, P.lm_loss and P.loss (with labels);\n"
                   "                        decoder-only models: P.logits and P.loss (next-token; with an\n"
                   "                        adaptive softmax the logits are every word's log-probability)\n"
                   "  -t, --threads N       threads (default 2)\n"
                   "Eval mode: no dropout, no router jitter. No tokenizer is needed.\n\n"
                   "examples (a small Hugging Face switch_transformers directory in the repository):\n"
                   "  %s forward -m tests/ref/switch/switch_tied --inputs tests/ref/switch/switch_tied.inputs.safetensors -o out.safetensors -t 1\n",
                   cli_prog);
            return 0;
        }
        else if (arg_match(argc, argv, &i, "-m|--model", &val)) { if (!val) return cli_error(2); model = val; }
        else if (arg_match(argc, argv, &i, "--inputs", &val)) { if (!val) return cli_error(2); in = val; }
        else if (arg_match(argc, argv, &i, "-o|--output", &val)) { if (!val) return cli_error(2); out = val; }
        else if (arg_match(argc, argv, &i, "-t|--threads", &val)) { if (arg_int("--threads", val, 1, 1024, &t)) return cli_error(2); }
        else { arg_unknown("forward", argv[i]); return cli_error(2); }
    }
    if (!model || !in || !out) {
        moelm_fail(MOELM_ERR_ARG, "forward: -m DIR, --inputs FILE and -o FILE are required");
        return cli_error(2);
    }
    backend_set_threads((int)t);
    char note[256];
    moelm_status st = forward_file_run(model, in, out, note, sizeof note);
    if (st) return cli_error(1);
    if (note[0]) fprintf(stderr, "note: %s/config.json: %s\n", model, note);
    return 0;
}
