/* keys.c: the keys of an experiment (see keys.h): their meanings, the nearest one to a misspelt
 * key, and `moelm train --print-config`. */
#include "train/keys.h"

#include <stdlib.h>
#include <string.h>
#include "io/json.h"

typedef struct {
    const char *key;
    const char *meaning;
} KeyInfo;

static const KeyInfo model_keys[] = {
    {"moelm_version", "the moelm version that wrote the config (informational)"},
    {"model_type", "lm (GPT-style stack), seed (the tutorial's stack with an MoE head) or switch_transformers"},
    {"vocab_size", "vocabulary size (0: the tokenizer's)"},
    {"d_model", "width of the residual stream"},
    {"num_heads", "attention heads (must divide d_model)"},
    {"num_layers", "transformer blocks"},
    {"d_ff", "hidden width of a dense feed-forward layer"},
    {"n_positions", "longest context (at least seq_len)"},
    {"dropout_rate", "dropout probability while training"},
    {"layer_norm_epsilon", "epsilon of the normalisation layers"},
    {"norm_type", "layernorm or rmsnorm"},
    {"hidden_act", "relu, gelu or swiglu"},
    {"tie_word_embeddings", "the output head shares the embedding matrix (lm)"},
    {"head_hidden", "seed: hidden width of the tutorial's head"},
    {"adaptive_softmax_cutoffs", "lm: an adaptive softmax's cutoffs over frequency-ordered ids (\"2000,6000\"; \"\": full)"},
    {"position_embedding", "lm: learned (a trained vector per position, added to the input) or rope (q and k rotated)"},
    {"rope_theta", "the rotary base (position_embedding rope; llama, mixtral)"},
    {"num_experts", "experts per MoE layer (0: a dense model)"},
    {"sparse_step", "lm: block i is sparse when sparse_step is 1 or i % sparse_step == 1"},
    {"router_type", "random, hash, soft, switch, topk or expert-choice"},
    {"num_experts_per_tok", "experts each token is sent to (k of top-k)"},
    {"topk_softmax_after", "false: softmax then top-k (GShard); true: softmax over the top-k (Mixtral)"},
    {"capacity_factor", "expert capacity while training, as a multiple of an even share of tokens"},
    {"eval_capacity_factor", "expert capacity at evaluation"},
    {"min_capacity", "the least capacity of an expert"},
    {"expert_capacity", "> 0: a fixed capacity per expert instead of the factors"},
    {"expert_d_ff", "hidden width of an expert"},
    {"router_aux_loss_coef", "weight of the load-balancing loss"},
    {"router_z_loss_coef", "weight of the router z-loss"},
    {"router_jitter_noise", "multiplicative noise on the router's input while training"},
    {"routed_scaling_factor", "the routed experts' output times this (1: plain)"},
    {"use_expert_bias", "a selection bias per expert nudged toward even load (aux-loss-free balancing)"},
    {"expert_bias_rate", "step size of that bias"},
    {"shared_expert", "an always-on expert next to the routed ones"},
};

static const KeyInfo train_keys[] = {
    {"batch_size", "sequences per micro-batch (-b)"},
    {"seq_len", "tokens per sequence (--seq-len)"},
    {"stride", "window stride over the training text (0: seq_len, non-overlapping)"},
    {"shift_windows", "1: each epoch's windows start at another random shift in [0, stride) (the text cut elsewhere)"},
    {"lr", "peak learning rate (--lr)"},
    {"min_lr_ratio", "the schedule decays to lr times this"},
    {"warmup_steps", "linear warm-up steps (with a time budget: their share of steps is the warm-up's of the time)"},
    {"lr_schedule", "constant, cosine or linear"},
    {"optimizer", "adam, adamw, or adamw-scale (each tensor's step times its RMS: T5's init)"},
    {"weight_decay", "weight decay (decoupled with adamw)"},
    {"beta1", "Adam's first-moment decay"},
    {"beta2", "Adam's second-moment decay"},
    {"eps", "Adam's epsilon"},
    {"grad_clip", "clip the global gradient norm to this (0: off)"},
    {"unigram_output_bias", "1: a new run starts the output bias (seed models) at the training tokens' log unigram frequencies"},
    {"steps", "optimizer steps: the run's length (--steps)"},
    {"dropout_growth", "dropout added per doubling of epochs past dropout_epochs (0: off)"},
    {"dropout_epochs", "epochs from which dropout grows"},
    {"dropout_max", "the most dropout can grow to"},
    {"dropout_start_epochs", "> 0: no dropout up to this many epochs, then it grows to dropout_rate (0: off)"},
    {"tokenizer", "word, word:N, char, unigram:N, bpe:N or a tokenizer file (--tokenizer)"},
    {"grad_accum", "micro-batches accumulated per update (--grad-accum)"},
    {"time_budget_s", "> 0: the run's length in seconds of wall-clock (--time-budget, in minutes)"},
    {"warmup_share", "with a time budget: the share of it the warm-up takes"},
    {"ema_decay", "> 0: also evaluate and checkpoint a moving average of the weights (e.g. 0.999; 0: off)"},
};

#define N_MODEL_KEYS (sizeof model_keys / sizeof model_keys[0])
#define N_TRAIN_KEYS (sizeof train_keys / sizeof train_keys[0])

int key_is_training(const char *key) {
    for (size_t i = 0; i < N_TRAIN_KEYS; i++)
        if (!strcmp(train_keys[i].key, key)) return 1;
    return 0;
}

int key_is_model(const char *key) {
    for (size_t i = 0; i < N_MODEL_KEYS; i++)
        if (!strcmp(model_keys[i].key, key)) return 1;
    return 0;
}

static const char *key_meaning(const char *key) {
    for (size_t i = 0; i < N_MODEL_KEYS; i++)
        if (!strcmp(model_keys[i].key, key)) return model_keys[i].meaning;
    for (size_t i = 0; i < N_TRAIN_KEYS; i++)
        if (!strcmp(train_keys[i].key, key)) return train_keys[i].meaning;
    return NULL;
}

const char *key_nearest(const char *key) {
    const char *best = NULL;
    int bd = 1 << 30;
    for (size_t i = 0; i < N_MODEL_KEYS + N_TRAIN_KEYS; i++) {
        const char *k = i < N_MODEL_KEYS ? model_keys[i].key : train_keys[i - N_MODEL_KEYS].key;
        str_nearer(key, k, &best, &bd);
    }
    return str_near_miss(key, bd) ? best : NULL;
}

moelm_status key_unknown(const char *where, const char *key) {
    const char *near = key_nearest(key);
    if (near)
        return moelm_fail(MOELM_ERR_CONFIG, "%sunknown key '%s' (did you mean '%s'? moelm train --print-config lists them)",
                          where, key, near);
    return moelm_fail(MOELM_ERR_CONFIG, "%sunknown key '%s' (moelm train --print-config lists every key)", where, key);
}

/* One "key = value  meaning" line per key of the JSON object js. */
static moelm_status print_object(const char *js, const char *title, FILE *f) {
    Json *j = NULL;
    moelm_status st = json_parse(&j, js, strlen(js), title);
    if (st) return st;
    fprintf(f, "# %s\n", title);
    for (size_t i = 0; i < json_len(j); i++) {
        const char *k = json_key_at(j, i), *m = key_meaning(k);
        const Json *x = json_at(j, i);
        StrBuf v = {0};
        double d = json_type(x) == JSON_NUMBER ? json_number(x) : 0;
        if (json_type(x) == JSON_NUMBER && d != (double)(long long)d) {   /* a float key: its shortest digits */
            char buf[32];
            for (int p = 6; p <= 9; p++) {
                snprintf(buf, sizeof buf, "%.*g", p, d);
                if ((float)strtod(buf, NULL) == (float)d) break;
            }
            sb_printf(&v, "%s", buf);
        } else {
            json_write(&v, x);
        }
        fprintf(f, "%-22s = %-14s %s\n", k, v.buf ? v.buf : "", m ? m : "(Hugging Face's key; docs/MOE.md)");
        sb_free(&v);
    }
    json_free(j);
    return MOELM_OK;
}

moelm_status keys_print(const char *model_json, const char *train_json, FILE *f) {
    moelm_status st = print_object(model_json, "model keys (--set KEY=VALUE, or in an experiment file: --config FILE.json)", f);
    if (!st) st = print_object(train_json, "training keys (--set KEY=VALUE, or in the same experiment file)", f);
    return st;
}
