/* config.h: a model's configuration, its presets, and its JSON form.
 *
 * Keys use Hugging Face's names where one exists (vocab_size, d_model, num_heads, num_layers, d_ff,
 * dropout_rate, layer_norm_epsilon, num_experts, expert_capacity, router_aux_loss_coef,
 * router_z_loss_coef, router_jitter_noise, tie_word_embeddings, n_positions, num_experts_per_tok,
 * sparse_step, hidden_act). Validation returns MOELM_ERR_CONFIG with a message naming the key.
 */
#ifndef MOELM_CONFIG_H
#define MOELM_CONFIG_H

#include "common/util.h"
#include "moe/moe.h"
#include "ops/adaptive.h"
#include "ops/ops.h"

struct Json;   /* io/json.h */

/* MODEL_MIXTRAL and MODEL_LLAMA: Hugging Face's decoder family (pre-RMSNorm, rotary positions, grouped-query
 * attention, SwiGLU, no biases; Mixtral's every block an MoE), configured by HF's keys (config_llama.c) */
typedef enum { MODEL_LM = 0, MODEL_SEED = 1, MODEL_SWITCH = 2, MODEL_MIXTRAL = 3, MODEL_LLAMA = 4 } ModelType;
typedef enum { NORM_LAYER = 0, NORM_RMS = 1 } NormType;

/* switch_transformers (Hugging Face's SwitchTransformersConfig): the fields the lm's do not hold.
 * The encoder uses ModelConfig's num_layers, both stacks its d_model, num_heads, d_ff, hidden_act
 * (HF's dense_act_fn), num_experts, expert_capacity, dropout_rate, layer_norm_epsilon, the router's
 * coefficients and tie_word_embeddings. config_switch.c reads and writes them under HF's keys. */
typedef struct {
    int d_kv;                   /* per-head width of q, k, v; inner width I = d_kv * num_heads (may differ from C) */
    int num_decoder_layers;     /* Ld (HF: num_layers when null) */
    int num_sparse_encoder_layers, num_sparse_decoder_layers;
    int encoder_sparse_step, decoder_sparse_step;   /* -1: derived, num_layers // num_sparse (0 when none);
                                                      * block i is sparse when step == 1 or i % step == 1 */
    int relative_attention_num_buckets, relative_attention_max_distance;
    int pad_token_id, eos_token_id, bos_token_id, decoder_start_token_id;   /* -1: none (JSON null) */
    float initializer_factor;
    int router_ignore_padding_tokens, use_cache, add_router_probs;   /* read and written back; no effect (nor in HF v4) */
    char router_dtype[12];      /* "float32" | "float16" | "bfloat16": moelm routes in float32 whatever it says */
    int hf_router_losses;       /* 1 (HF v4, default): a stack's router losses only when its sparse_step > 1, a
                                 * dropped token counted as expert 0 in the load; 0: every stack with sparse
                                 * layers, the load from each token's choice before capacity (docs/MOE.md) */
    int dropped_scaled_input;   /* 0 (HF >= 4.52, default): a token over capacity gets 0 from the layer (the
                                 * residual carries it); 1: p_max * its input, as HF 4.25-4.51 did */
} SwitchConfig;

typedef struct {
    ModelType model_type;       /* "lm" (pre-norm decoder), "seed" (the tutorial's post-norm stack + MoE head)
                                 * or "switch_transformers" (HF's encoder-decoder; sw holds its own fields) */
    int vocab_size;             /* V */
    int d_model;                /* C */
    int num_heads;              /* NH */
    int num_layers;             /* L */
    int d_ff;                   /* H of the dense FFN */
    int n_positions;            /* max sequence length T of the learned position table */
    float dropout_rate;
    float layer_norm_epsilon;
    NormType norm_type;         /* "layernorm" | "rmsnorm" */
    Activation hidden_act;      /* "relu" | "gelu" | "swiglu" (dense FFN and experts) */
    int tie_word_embeddings;    /* lm: LM head shares the token embedding */
    int head_hidden;            /* seed: hidden size of the tutorial's head (dropout, linear, ReLU, linear) */
    /* lm: the adaptive softmax's cutoffs (ops/adaptive.h), ascending in (0, V); n_adaptive 0: a full softmax.
     * Key adaptive_softmax_cutoffs, a comma-separated list ("2000,6000"; "" or "0": none) */
    int n_adaptive;
    int adaptive_cutoffs[ADAPTIVE_MAX];
    /* lm: rotary position embeddings (the rotate-half RoPE of llama, base rope_theta) on q and k in place of
     * the learned pos_emb added to the input. Key position_embedding, "learned" (0) or "rope" (1) */
    int rope;
    /* MoE (num_experts <= 1: dense model) */
    int num_experts;            /* E */
    int sparse_step;            /* lm: block i is sparse when sparse_step == 1 or i % sparse_step == 1 (HF) */
    RouterType router_type;
    int num_experts_per_tok;    /* K */
    int topk_softmax_after;     /* 0: softmax then top-K (GShard); 1: softmax over the top-K (Mixtral) */
    float capacity_factor, eval_capacity_factor;   /* <= 0: dropless */
    int min_capacity;
    int expert_capacity;        /* > 0: fixed capacity per expert (HF) */
    int expert_d_ff;            /* H of each expert (0: d_ff) */
    float router_aux_loss_coef, router_z_loss_coef, router_jitter_noise;
    float routed_scaling_factor;   /* the routed experts' combined output times this (DeepSeek's key; 1 = plain) */
    int use_expert_bias;        /* DeepSeek-V3 selection bias */
    float expert_bias_rate;
    int shared_expert;
    SwitchConfig sw;            /* switch_transformers only */
    char note[256];             /* config_load: keys it ignored ("" when none), for the caller to print */
    /* llama / mixtral (HF's keys in config_llama.c) */
    int num_key_value_heads;    /* NKV: grouped-query attention, NH % NKV == 0 */
    float rope_theta;           /* the rotary base */
    int output_router_logits;   /* mixtral: HF's load-balancing loss over all layers joins the loss (x coef) */
    int bos_token_id, eos_token_id, pad_token_id;   /* -1: none */
} ModelConfig;

/* 1 for the Llama / Mixtral family (model_type llama or mixtral). */
static inline int config_is_llama(const ModelConfig *c) {
    return c->model_type == MODEL_MIXTRAL || c->model_type == MODEL_LLAMA;
}
/* 1 where attention rotates q and k (RoPE) and the input has no position embedding: the llama family,
 * and an lm with position_embedding rope. */
static inline int config_uses_rope(const ModelConfig *c) { return config_is_llama(c) || c->rope; }
/* The model_type of config.json: lm, seed, switch_transformers, mixtral, llama. */
const char *config_model_type_name(ModelType t);

/* The names of the presets, NULL-terminated. */
extern const char *const config_preset_names[];

/* Fills cfg with the preset's model config. MOELM_ERR_CONFIG for an unknown name. */
moelm_status config_preset(ModelConfig *cfg, const char *name);

/* Applies "key=value" (a config.json key) to cfg; MOELM_ERR_CONFIG for unknown keys or bad values. */
moelm_status config_set(ModelConfig *cfg, const char *key, const char *value);

/* Reads config.json: starts from "model_type"'s defaults, then every key present. */
moelm_status config_load(ModelConfig *cfg, const char *path);
/* config_load, leaving out the keys skip(key) accepts (an experiment file's training keys). */
moelm_status config_load_skipping(ModelConfig *cfg, const char *path, int (*skip)(const char *key));

/* The config as a JSON object (moelm_malloc'ed string). */
char *config_to_json(const ModelConfig *cfg);

/* Validates; the message names the key and the problem (heads not dividing d_model, ...). */
moelm_status config_check(const ModelConfig *cfg);
#define CONFIG_MAX_VOCAB 10000000
/* config_check of a config whose vocab_size 0 (or absent) is the tokenizer's, known later: as the largest */
moelm_status config_check_open_vocab(const ModelConfig *cfg);
/* A vocabulary taken from the tokenizer (vocab_size was 0): vocab_size = V, and the adaptive softmax's
 * cutoffs at or past V (a preset's, made for PTB's 10,000 words) left out, listed in dropped[cap]
 * ("2500, 4000"; "" when none) */
void config_take_vocab(ModelConfig *c, int V, char *dropped, size_t cap);

/* What kind of layer block i's FFN is: 1 an MoE layer (the lm's every sparse_step-th block when it
 * has experts), 0 a dense FFN (every block of the seed model: its MoE layer is the head's). The one
 * answer to the question; model_moe_layers lists a model's MoE layers from it. */
int config_block_is_sparse(const ModelConfig *cfg, int i);

/* The number of MoE layers: the lm's sparse blocks, or the seed model's one (its head's). At most
 * CONFIG_MAX_MOE_LAYERS (config_check). */
enum { CONFIG_MAX_MOE_LAYERS = 64 };
int config_num_moe_layers(const ModelConfig *cfg);

/* A value of key (for the message): an int, a finite float, true/false/1/0. MOELM_ERR_CONFIG naming the key. */
moelm_status config_parse_int(const char *key, const char *v, int *out);
moelm_status config_parse_float(const char *key, const char *v, float *out);
moelm_status config_parse_bool(const char *key, const char *v, int *out);

/* ---- switch_transformers (config_switch.c) ------------------------------------------------------ */

/* Blocks of a stack (decoder 0: the encoder) and whether block i of it is sparse, as HF decides. */
int config_switch_layers(const ModelConfig *cfg, int decoder);
int config_switch_sparse_step(const ModelConfig *cfg, int decoder);
int config_switch_block_is_sparse(const ModelConfig *cfg, int decoder, int i);
/* The parts config.c hands to it for model_type switch_transformers. */
void config_switch_defaults(ModelConfig *cfg);           /* SwitchTransformersConfig's defaults */
int config_switch_preset(ModelConfig *cfg, const char *name);   /* 1 when name is a switch preset */
moelm_status config_switch_set(ModelConfig *cfg, const char *key, const char *value);
moelm_status config_switch_load(ModelConfig *cfg, const struct Json *j, const char *path);
char *config_switch_to_json(const ModelConfig *cfg);
moelm_status config_switch_check(const ModelConfig *cfg);

/* The MoE layer config derived from the model config. */
MoEConfig config_moe(const ModelConfig *cfg);

/* config_llama.c: HF's MixtralConfig / LlamaConfig defaults (mixtral: 1, llama: 0), and the keys only that
 * family has (config_set passes them on). config_llama_set returns 1 when it took the key (st set), 0 when
 * the key is not one of its own. */
void config_llama_defaults(ModelConfig *cfg, int mixtral);
int config_llama_set(ModelConfig *cfg, const char *key, const char *value, moelm_status *st);
/* Keys of an HF config.json that moelm reads past (architectures, torch_dtype, ...): 1 if key is one. */
int config_llama_ignored_key(const char *key);
/* config_to_json and config_check of the family: HF's config.json (MixtralForCausalLM / LlamaForCausalLM,
 * HF's keys, moelm's own extra keys after them) and its validation. */
char *config_llama_to_json(const ModelConfig *cfg);
moelm_status config_llama_check(const ModelConfig *cfg);

/* ---- training settings (presets carry them too) ------------------------------------------------ */

typedef enum { SCHED_CONSTANT = 0, SCHED_COSINE = 1, SCHED_LINEAR = 2 } LrSchedule;

typedef struct {
    int batch_size, seq_len, stride;      /* stride 0: = seq_len (non-overlapping windows) */
    int shift_windows;                    /* 1: each epoch's window starts move by a shift in [0, stride) drawn
                                           * from (seed, epoch), so every epoch cuts the text elsewhere */
    float lr, min_lr_ratio;               /* decay ends at lr * min_lr_ratio */
    int warmup_steps;
    LrSchedule schedule;
    int adamw;                            /* 1: AdamW (decoupled decay), 0: Adam (L2 folded into the gradient),
                                           * 2: AdamW with each tensor's step times its RMS (optim.h) */
    float weight_decay, beta1, beta2, eps, grad_clip;   /* grad_clip <= 0: off */
    long steps;
    /* dropout that grows with the epochs a run is given: past dropout_epochs epochs the rate is
     * dropout_rate + dropout_growth * log2(epochs / dropout_epochs), at most dropout_max; the epochs
     * are projected once, at the end of the warm-up (from the steps, or from the time budget and the
     * measured speed) and the rate is then fixed for the rest of the run (state.json keeps it).
     * dropout_start_epochs > 0 also lowers it for short runs: 0 up to that many epochs, then
     * dropout_growth per doubling until it reaches dropout_rate (0: dropout_rate up to dropout_epochs).
     * dropout_growth 0: off, dropout_rate throughout */
    float dropout_growth, dropout_epochs, dropout_max, dropout_start_epochs;
    int grad_accum;                       /* micro-batches of batch_size per update (0 or 1: none) */
    float time_budget_s;                  /* > 0: the run's length in wall-clock seconds (--time-budget) */
    float warmup_share;                   /* with a time budget: the share of it the warm-up takes */
    char tokenizer[256];                  /* "word", "word:N", "char", or a tokenizer file */
    float ema_decay;                      /* > 0: an exponential moving average of the weights with this
                                           * decay is kept, evaluated and checkpointed beside them (0: off) */
    /* 1: a new run starts the output layer's bias (models that have one: seed) at the log unigram
     * frequencies of the training tokens; 0: at zero. With zero, a post-norm stack fits the unigram
     * distribution by making every token's hidden state the same (docs/MOE.md, "the seed Switch's
     * collapse"), which leaves a router nothing to route on. */
    int unigram_output_bias;
} TrainConfig;

/* Fills tc with the preset's training defaults. */
moelm_status config_preset_train(TrainConfig *tc, const char *name);
moelm_status train_config_set(TrainConfig *tc, const char *key, const char *value);

/* The dropout rate of a run of `epochs` epochs under tc's rule, from the model's base rate. */
float train_dropout_for_epochs(const TrainConfig *tc, float base, double epochs);

#endif
