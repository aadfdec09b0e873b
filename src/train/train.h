/* train.h: the training run, evaluation and text generation that the CLI drives.
 *
 * train_run owns a whole run: it resolves the config (preset or config.json, then overrides),
 * loads the corpus, builds or loads the tokenizer, caches the token ids in the run directory,
 * trains with periodic logging, evaluation and checkpoints, and resumes exactly from `latest`.
 */
#ifndef MOELM_TRAIN_H
#define MOELM_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "model/model.h"
#include "data/span.h"
#include "moe/moe.h"
#include "tokenizer/tokenizer.h"

typedef struct {
    const char *data;           /* NULL or "builtin", a directory, or a text file */
    const char *config;         /* a preset name or a config.json path (NULL: "demo"; on resume NULL means the
                                 * checkpoint's, and a config given must match it unless force) */
    const char *out;            /* run directory (created); NULL: runs/demo, on resume the checkpoint's run
                                 * (and for a checkpoint outside its run directory, the new one it goes on in) */
    const char *resume;         /* run directory to continue from its latest checkpoint, or NULL */
    const char *init_from;      /* a new run from this model's weights, config and tokenizer (init_from.h), or NULL */
    const char *const *sets;    /* "key=value" overrides of model or training keys; NULL-terminated */
    int n_sets;
    const char *tokenizer;      /* overrides the preset's tokenizer: word[:N], char, unigram:N, bpe:N, or a file */
    long steps;                 /* > 0: overrides the preset (and sets the length of the LR schedule) */
    long stop_at;               /* > 0: stop after this step with a checkpoint; the schedule is unchanged */
    int batch_size, seq_len, stride;   /* > 0: override */
    int grad_accum;             /* > 0: micro-batches per update (overrides; on resume must match) */
    float lr;                   /* > 0: overrides */
    uint64_t seed;
    int threads;
    int eval_interval, log_interval, ckpt_interval, keep;
    long eval_batches;          /* batches per periodic eval (0: the whole validation split) */
    double time_budget_min;     /* > 0: the LR schedule is laid over this wall-clock budget and training stops at it */
    int skip_nonfinite;         /* skip (and count) updates whose loss or gradients are not finite */
    int force;                  /* resume even if the config or data changed */
    int quiet;
    int print_config;           /* print every model and training key with its value and meaning, train nothing */
    int expert_parallel;        /* under mpirun: ranks that share one copy of the experts (0 or 1: data parallel only) */
    int bf16;                   /* bf16 mixed precision (model_set_bf16); a resume may take either mode */
} TrainOptions;

void train_options_default(TrainOptions *o);
moelm_status train_run(const TrainOptions *o);
/* The SIGINT or SIGTERM that stopped the last train_run after a checkpoint (0: none); the first one
 * during the steps stops the run after the current step, a second one ends the process at once. */
int train_last_signal(void);

/* The model and training config of a preset name or a config.json path (its training settings:
 * the demo preset's), then the "key=value" overrides sets[n_sets], model keys first, else training
 * keys (what `moelm train` does for a new run; `moelm bench` does the same). */
moelm_status train_resolve_config(const char *name, const char *const *sets, int n_sets, ModelConfig *cfg,
                                  TrainConfig *tc);

/* Evaluation over a token stream: every token after the first is predicted once (the stream
 * should start with <eos> so that the first word is predicted too). max_batches 0: all. */
typedef struct {
    double nll;                 /* total negative log-likelihood (nats) */
    double tokens;              /* predicted tokens */
    int n_moe;
    RouterType router;          /* the MoE layers' router (print_moe_stats reads "dead" by it) */
    MoEStats stats[CONFIG_MAX_MOE_LAYERS];   /* per MoE layer */
    int block[CONFIG_MAX_MOE_LAYERS];        /* its block */
    int stack[CONFIG_MAX_MOE_LAYERS];        /* switch_transformers: 0 encoder, 1 decoder; -1 for other models */
} EvalResult;

/* Whether a learned router has collapsed: most of the tokens dropped, or most experts dead (given
 * no tokens) while the router is not balanced by design. Training and eval print a warning then. */
int moe_stats_collapsed(const MoEStats *s, RouterType router);

/* Evaluates ids[n] in windows of the model's T tokens, stride apart (0: stride T, non-overlapping;
 * less than T: sliding-window evaluation, every target scored once with at least T - stride tokens
 * of context after the first window); at most max_batches batches (0: all). */
moelm_status evaluate(Model *m, const int *ids, size_t n, size_t max_batches, int stride, EvalResult *r);
/* evaluate, also recording each batch's routing into rec (train/routing.h; NULL: none) */
struct RoutingRec;
moelm_status evaluate_routed(Model *m, const int *ids, size_t n, size_t max_batches, int stride, EvalResult *r,
                             struct RoutingRec *rec);

/* Evaluation of an encoder-decoder on a token stream: every window of span_lengths' raw length once,
 * span-corrupted with fixed noise (T5's density 0.15, mean span 3), in batches of the model's B rows
 * (a short last batch scores only its windows): the mean cross-entropy of the labels (nll / tokens) is
 * the span-corruption loss, its exp the target perplexity. max_batches 0: all. */
moelm_status evaluate_span(Model *m, const int *ids, size_t n, SpanLengths len, size_t max_batches, EvalResult *r);
/* The same over input<TAB>target pairs, every pair once in order: the labels' mean cross-entropy. */
moelm_status evaluate_pairs(Model *m, const Seq2SeqData *d, size_t max_batches, EvalResult *r);

/* Prints per-layer expert statistics (load, dropped, entropy, confidence, dead) on one line each. */
void print_moe_stats(const EvalResult *r, FILE *f);

/* moelm eval --dynamic (src/train/dyneval.h) */
typedef struct {
    int on;               /* 0: the static evaluation alone */
    float lr;             /* < 0: the rule's default */
    float decay;          /* lambda, in [0, 1] */
    int rms;              /* 1: the RMS rule (MS from the checkpoint's Adam second moment), 0: SGD */
} EvalDynamic;

/* moelm eval: loads a checkpoint, evaluates a text file (or the test split of a folder); dyn NULL or
 * dyn->on 0: static only, else the static evaluation at batch 1, then the dynamic one. */
moelm_status eval_run(const char *ckpt, const char *data, int batch_size, int seq_len, int stride, int threads, int ema,
                      const EvalDynamic *dyn);

/* moelm generate */
typedef struct {
    const char *ckpt, *prompt;
    int n;
    float temp, top_p;
    int top_k;
    uint64_t seed;
    int threads;          /* 0: generate_auto_threads */
    int bf16;             /* weight matrices read as bfloat16 (kv_load_weights) */
    int interactive;      /* 1: prompts read from stdin, one a line, the KV cache kept between them */
    int beams;            /* switch_transformers: beam search with this many beams (1: greedy or sampling) */
    float length_penalty; /* beam search: Hugging Face's (1: the mean log-probability per token) */
    int stop_eos;         /* stop after generating the end-of-text token (as llama.cpp does) */
    int ema;              /* the run's weight average (ema_decay) instead of its weights */
} GenerateOptions;
moelm_status generate_run(const GenerateOptions *o);

/* generate's thread count when -t is not given, from the bytes of weights a token reads and how crowded
 * the machine is (load: its 1-minute load average, NaN unknown; cpus: the processors we may use): 1 when
 * a token's work is small (under GEN_SMALL_BYTES: a token is a few short products, each ending at a
 * barrier, and a second thread only adds waits) or the machine is busy (load >= cpus: a thread that
 * reaches a barrier waits for a sibling that has no core), else 2 (at most cpus). Measured on the
 * shared 2-core machine (bench/RESULTS.md): -t 2 was 2.5-106x slower than -t 1, tiny to switch-ptb;
 * every preset reads under 32 MB a token at float (the largest, mixtral-ptb, 26 MB). */
#define GEN_SMALL_BYTES (32.0 * 1024 * 1024)
int generate_auto_threads(double bytes_per_token, double load, int cpus);

/* moelm export: a llama / mixtral checkpoint (or HF directory) as a Hugging Face directory (config.json,
 * model.safetensors or shards, tokenizer.model, generation_config.json) or a GGUF file. */
typedef struct {
    const char *ckpt;
    const char *out;
    int gguf;                 /* 0: Hugging Face directory, 1: GGUF file */
    int dtype;                /* hf: 0 f32, 1 f16, 2 bf16; gguf: 0 f32, 1 f16, 2 bf16, 3 q8_0 */
    uint64_t max_shard_bytes; /* hf: shards of at most this much tensor data (0: one model.safetensors) */
    int ema;                  /* the run's weight average (ema_decay) instead of its weights */
} ExportOptions;
moelm_status export_run(const ExportOptions *o);

/* moelm info */
moelm_status info_run(const char *ckpt);

/* Prints the resolved config and the parameter counts. */
void print_model_summary(const Model *m, FILE *f);

#endif
