/* model.h: a whole language model: parameter layout, forward, backward, generation.
 *
 * Dimensions: B batch, T sequence, N = B*T, C d_model, NH heads, L layers, V vocab, H d_ff,
 * H1 = H or 2H (SwiGLU), E experts, HH the seed head's hidden size.
 *
 * Memory: one allocation per role, sized once from (config, B, T) by model_create:
 *   params, grads            [n_params] each, tensors back to back in the order of model_tensors
 *   acts                     saved activations of every layer for one (B, T) batch
 *   scratch                  activation gradients and per-layer temporaries, shared by all layers
 * The Adam moments live in the optimizer (src/optim). Nothing is allocated inside a step.
 *
 * Models:
 *   lm:   x = wte[tok] + wpe[t]; per block (pre-norm):
 *           x = x + drop(attn(norm1(x)));  x = x + drop(ffn_or_moe(norm2(x)));
 *         logits = norm_f(x) @ wte^T (tied) or @ lm_head^T.
 *   seed: the tutorial's stack, fixed: x = wte[tok] + wpe[t]; per block (post-norm, causal):
 *           x = norm1(x + drop(attn(x)));  x = norm2(x + drop(ffn(x)));
 *         then one MoE layer with a residual (x = x + moe(x)) and the tutorial's head:
 *           logits = relu(drop(x) @ W1^T + b1) @ W2^T + b2.
 */
#ifndef MOELM_MODEL_H
#define MOELM_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "backend/barrier.h"
#include "backend/q8.h"
#include "model/config.h"
#include "moe/moe.h"

typedef struct {
    float *ln1_w, *ln1_b;     /* [C], [C] (b NULL for RMSNorm) */
    float *qkv_w, *qkv_b;     /* [3C, C], [3C] */
    float *out_w, *out_b;     /* [C, C], [C] */
    float *ln2_w, *ln2_b;     /* [C], [C] */
    float *fc1_w, *fc1_b;     /* dense FFN [H1, C], [H1] (NULL in sparse blocks) */
    float *fc2_w, *fc2_b;     /* [C, H], [C] */
    MoEParams moe;            /* sparse blocks only */
    Bf16Weight qkv16, out16, fc1_16, fc2_16;   /* bf16 mode: the matrices packed (model_set_bf16); else NULL */
} LayerParams;

typedef struct {
    float *wte;               /* [V, C] */
    float *wpe;               /* [n_positions, C] */
    LayerParams *layers;      /* [L] */
    float *lnf_w, *lnf_b;     /* lm: [C], [C] */
    float *lm_head;           /* lm, untied: [V, C] */
    float *ad_cluster;        /* lm with an adaptive softmax: the tail clusters' head rows [n, C] */
    MoEParams head_moe;       /* seed */
    float *head_w1, *head_b1; /* seed: [HH, C], [HH] */
    float *head_w2, *head_b2; /* seed: [V, HH], [V] */
    Bf16Weight lm16, head1_16, head2_16;   /* bf16 mode: lm's head (lm_head or the tied wte), the seed head's */
} ModelParams;

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[4];
    size_t offset, size;      /* in floats, into the params/grads arenas */
    /* Expert parallelism shards the experts' tensors on dim 0 (experts): this rank holds rows
     * [shard_first, shard_first + shape[0]) of full_dim0. The full model's arena (a checkpoint's
     * layout) has the tensor at full_offset with full_size floats. Unsharded: shard_first 0,
     * full_dim0 = shape[0], full_size = size. */
    int64_t full_dim0, shard_first;
    size_t full_offset, full_size;
    int decay;                /* AdamW weight decay applies (matrices; not norms, biases, positions) */
    int trainable;            /* 0: a buffer such as the expert selection bias */
    int per_expert;           /* 1: a slab [E, ...] that files hold as one tensor per expert, the name a pattern
                               * whose %d is the expert (HF: "...experts.expert_%d.wi.weight"): model_file_tensor */
} TensorInfo;

/* 1 when this rank holds only a shard of the tensor (expert parallelism). */
static inline int tensor_sharded(const TensorInfo *t) { return t->size != t->full_size; }
/* The index in the whole tensor (row-major, in floats) of the first value held. */
static inline size_t tensor_held_first(const TensorInfo *t) {
    return t->full_dim0 ? t->full_size / (size_t)t->full_dim0 * (size_t)t->shard_first : 0;
}

typedef struct {
    float *x_in;              /* [N, C] block input */
    float *ln1, *ln1_mean, *ln1_rstd;   /* [N, C], [N], [N]: lm: norm1(x_in); seed: norm1(res1) */
    float *qkv;               /* [N, 3C] */
    float *att;               /* [B, NH, T, T] attention probabilities */
    float *atty;              /* [N, C] attention output before the projection */
    float *attproj;           /* [N, C] projection output after dropout */
    uint8_t *drop1;           /* [N, C] */
    float *res1;              /* [N, C] x_in + attproj (lm: the mid residual) */
    float *ln2, *ln2_mean, *ln2_rstd;   /* lm: norm2(res1); seed: norm2(res2) = block output */
    float *fc_pre;            /* [N, H1] */
    float *fc;                /* [N, H] */
    float *ffn;               /* [N, C] FFN/MoE output after dropout */
    uint8_t *drop2;           /* [N, C] */
    float *res2;              /* seed: [N, C] ln1 + ffn */
    MoEActs moe;
} LayerActs;

typedef struct {
    LayerActs *layers;        /* [L] */
    float *x_final;           /* [N, C] output of the last block */
    uint8_t *emb_mask;        /* [N, C] embedding dropout mask */
    float *lnf, *lnf_mean, *lnf_rstd;   /* lm: [N, C], [N], [N] */
    MoEActs head_moe;         /* seed */
    float *hm_out;            /* seed: [N, C] moe output; x_final + it = hm */
    float *hm;                /* seed: [N, C] */
    float *hm_drop;           /* seed: [N, C] after dropout */
    uint8_t *head_mask;       /* seed: [N, C] */
    float *head_pre, *head_h; /* seed: [N, HH], [N, HH] */
    float *logits;            /* [N, V]; overwritten by dlogits in backward. With an adaptive softmax [N, V + n]:
                               * a training or scoring forward holds ad's logits there (adaptive.h), a
                               * forward for the distribution (model_forward_full) every word's log p */
    AdaptiveActs ad;          /* the adaptive softmax's saved values (n_adaptive > 0) */
    float *ad_clog;           /* [N, n] the clusters' logits of a forward for the distribution */
    int ad_full;              /* the last forward computed the distribution (no backward then) */
    float *losses;            /* [N] */
    float *lse;               /* [N] log-sum-exp of each row of logits, for the backward */
    int *inputs, *targets;    /* [N], [N] copies of the batch */
    float *rope_cos, *rope_sin; /* llama / mixtral: [P, hd/2] each, the rotary tables (rope_tables) */
    int *rope_pos;            /* llama / mixtral: [N] each row's position (t of its sequence) */
} ModelActs;

/* Columns of the fused q, k, v rows: 3C, or (NH + 2 NKV) hd for grouped-query attention. */
static inline int model_qkv_width(const ModelConfig *c) {
    int nkv = config_is_llama(c) && c->num_key_value_heads ? c->num_key_value_heads : c->num_heads;
    return (c->num_heads + 2 * nkv) * (c->d_model / c->num_heads);
}

/* The backward's scratch, shared by all stages: dres, dbuf and dbuf2 hold the gradients of the steps'
 * roles (model_backward's StageGrads), the others a step's own. */
typedef struct {
    float *dres;              /* [N, C] */
    float *dbuf;              /* [N, C] */
    float *dbuf2;             /* [N, C] */
    float *dqkv;              /* [N, QKV] attention's q, k, v gradient (model_qkv_width) */
    float *datt;              /* [B, NH, T, T] */
    float *dfc;               /* [N, H1 or HH] */
    float *dfc2;              /* [N, H or HH] */
    float *dlosses;           /* [N] */
} ModelScratch;

/* Inference state for generation with a KV cache (batch 1), one allocation (mem) sized from the
 * config by kv_create. Dimensions as above, P = n_positions, W1 = max(H1, HH), W = max(H, HH). A
 * step runs on at most KV_TEAM_MAX threads. */
#define KV_TEAM_MAX 64
/* n matrices [rows, cols] (nn.Linear's layout) from src in the parameter arena, copied down-major
 * to element off of KVCache.down_w, each (in order) in blocks of KV_DOWN_BLOCK rows: block b, w rows
 * wide, as [cols, w] (its weights a hidden unit at a time) from element b KV_DOWN_BLOCK cols. 1024:
 * a unit's run in the seed head's blocks is 4 KiB, read in four passes of 256 outputs, 1.26x faster
 * than runs of 1 KiB with half the units skipped (bench/ops_bench.c "head down"); an expert's (d_model
 * outputs) is one block. */
#define KV_DOWN_BLOCK 1024
/* kv_load_weights' skip_min and skip_min_long: skipping the zero units' runs pays from about these
 * shares, by the run's length (a unit's weights in a block): runs shorter than KV_LONG_RUN bytes
 * (an expert's 256 outputs: 1 KiB in float, 512 bytes in bf16) from 20% in float (0.9x at none zero,
 * 1.47x at half), from 60% in bf16 (0.76x at half, 1.4-1.7x at three quarters); longer runs (the seed
 * head's 1024 outputs: 4 KiB in float, 2 KiB in bf16) from 20% in both (bf16 head product 1.2-1.4x
 * faster at half zero; bench/RESULTS.md) */
#define KV_SKIP_MIN_FLOAT 0.2f
#define KV_SKIP_MIN_BF16 0.6f
#define KV_SKIP_MIN_LONG 0.2f
#define KV_LONG_RUN 2048
/* The parts of a generation step, as `moelm bench --profile` times them: q, k, v and attention over
 * the cache (and, in a pre-norm block, its norm; the embedding rows); the attention's output projection
 * and the norm after it; the dense FFNs; the MoE layers (routing, experts, the gated sum); the head
 * (the final norm and the logits, or the seed head's FFN) */
typedef enum { KV_PHASE_ATTENTION, KV_PHASE_PROJECTION, KV_PHASE_FFN, KV_PHASE_MOE, KV_PHASE_HEAD, KV_PHASES } KVPhase;
extern const char *const kv_phase_names[KV_PHASES];
typedef struct {
    const float *src;
    size_t n, rows, cols, off;
    KVPhase phase;            /* the part of a step that reads it */
} KVDownCopy;
/* Weight matrices held as Q8_0 blocks instead of floats (a GGUF file's, kept as they are): spans
 * [span[2i], span[2i + 1]) of the parameter arena, in floats (multiples of 32, ascending, disjoint),
 * whose values are blocks[o / 32] for o in the span; the arena's floats there are never read. */
typedef struct {
    BlockQ8_0 *blocks;        /* [n_params / 32]: only the spans' blocks are set */
    size_t *span;             /* [2 cap] */
    int n_span, cap;
} Q8Arena;
/* Appends [first, first + n) (after every span so far; merged with the last when they touch). */
moelm_status q8_arena_add(Q8Arena *a, size_t first, size_t n);
/* 1 when floats [first, first + n) lie inside one span */
int q8_arena_holds(const Q8Arena *a, size_t first, size_t n);
void q8_arena_free(Q8Arena *a);

typedef struct {
    int pos;                  /* tokens already in the cache; the next token goes to position pos */
    int n_positions;          /* P: the cache is full at pos == P */
    float *k, *v;             /* keys and values of positions 0..pos-1, per layer and head: k [L, NH, hs, Pk]
                               * transposed (Pk = P rounded up to 16), v [L, NH, P, hs] */
    float *own;               /* [KV_TEAM_MAX, 3, Cp] each thread's own x (residual stream), xb (its norm) and
                               * o (a layer's output, a sum), Cp = C rounded up to 16 floats */
    float *xb2;               /* [C] the attention projection's or the dense FFN's output, shared by the team */
    TeamBarrier *bar;         /* the team's barrier inside a step */
    float *qkv;               /* [3C] the current position's q, k, v */
    float *atty;              /* [C] attention output before the projection */
    float *att;               /* [NH, P] each head's scores, then probabilities */
    float *fc_pre, *fc;       /* [W1], [W] dense FFN or seed head hidden */
    float *logits;            /* [V] next-token logits after model_step_kv */
    MoEActs moe;              /* one token's MoE activations, reused by every MoE layer (no backward) */
    double *skipped;          /* [KV_TEAM_MAX, 8] bytes of weights each thread skipped since kv_reset (zero rows),
                               * by phase (KVPhase) */
    int *nz_idx;              /* [KV_TEAM_MAX, U] each thread's list of a hidden layer's nonzero units (U: the
                               * widest hidden layer rounded up to 16) */
    void *mem;
    /* kv_load_weights' copies: */
    uint16_t *w16;            /* NULL, or bf16 copies of the whole parameter arena */
    KVDownCopy *down;         /* [n_down] the matrices that read a ReLU's output, and where their copies are */
    int n_down;
    void *down_w;             /* those copies, down-major (float; bf16 with w16) */
    float skip_min;           /* the least share of a product's units at zero for which it reads the copy, */
    float skip_min_long;      /* for runs shorter than KV_LONG_RUN bytes, and for longer ones */
    const Q8Arena *q8;        /* kv_use_q8: the matrices read as Q8_0 (NULL: none) */
    Q8Vec *q8x;               /* [KV_TEAM_MAX] each thread's input vector quantized for them */
    int profile;              /* nonzero: thread 0 times each phase of a step into phase_s */
    double phase_s[KV_PHASES];    /* seconds since kv_reset, thread 0's (its waits at barriers included) */
} KVCache;

struct EncDec;   /* model/encdec.h: switch_transformers' views, activations and scratch */

typedef struct {
    ModelConfig cfg;
    MoEConfig moe_cfg;
    int n_tensors;
    TensorInfo *tensors;      /* [n_tensors] */
    size_t n_params;          /* floats this rank holds (the local arena) */
    size_t n_params_full;     /* floats of the whole model (== n_params unless sharded) */
    float *params, *grads;    /* [n_params] each */
    ModelParams p, g;         /* named views into params and grads */
    int B, T;                 /* the batch shape the activations are sized for */
    void *acts_mem;
    ModelActs a;
    ModelScratch s;
    Rng rng;                  /* the passes' keys: a forward that draws (training: dropout, jitter; a random
                               * router) takes its key from it (saved in checkpoints), and every draw of the
                               * pass is rng_at of a key derived from it (model_pass_begin) */
    uint64_t pass_key;        /* the current forward's key */
    int pass_row0;            /* this rank's first sequence in the global batch of the forward (0: one process) */
    float train_dropout;      /* dropout rate of a training forward (cfg.dropout_rate unless a run's rule changed it) */
    float pdrop;              /* dropout rate of the last forward (0 in eval) */
    float loss;               /* mean cross-entropy of the last forward (targets >= 0) */
    float aux_loss;           /* sum over MoE layers of moe_loss */
    int n_valid;              /* targets >= 0 in the last forward */
    size_t acts_bytes;
    struct EncDec *ed;        /* switch_transformers only (p, g, a and s unused then); NULL otherwise */
    int bf16;                 /* mixed precision (model_set_bf16) */
    AdaptiveShape ad;         /* the adaptive softmax's cutoffs (ad.n == 0: a full softmax) */
    int full_logits;          /* model_forward with targets computes the whole distribution too (adaptive) */
    uint16_t *w16;            /* bf16 mode: the packed copies of every matrix the products read */
    size_t w16_n;             /* elements of w16 */
} Model;

/* Builds the layout and allocates params, grads and activations for batches of B x T. Parameters
 * are initialised from seed. */
moelm_status model_create(Model *m, const ModelConfig *cfg, int B, int T, uint64_t seed);
/* The same, holding only part `part` of `parts` of every MoE layer's experts (expert parallelism:
 * experts [part E/parts, (part+1) E/parts), parts must divide E). Every held value equals the full
 * model's (the initialisation draws the whole stream and keeps the slice); parts = 1 is model_create. */
moelm_status model_create_sharded(Model *m, const ModelConfig *cfg, int B, int T, uint64_t seed, int part, int parts);
/* For a loader that fills the weights: model_create (not switch_transformers) without the
 * initialisation, params and grads left unwritten (fresh pages cost no memory until written, so the
 * matrices a loader keeps elsewhere, a GGUF file's Q8_0 blocks, take none); not for training. */
moelm_status model_create_blank(Model *m, const ModelConfig *cfg, int B, int T);
/* The layout alone: cfg checked, tensors (names, shapes, offsets) and n_params, but no parameters,
 * gradients or activations (to check a file against a config before allocating for it). */
moelm_status model_plan(Model *m, const ModelConfig *cfg);
void model_free(Model *m);

/* Parameter counts of the whole model (sharded or not): total, active per token (one routed path:
 * K experts), per expert. */
void model_param_counts(const Model *m, size_t *total, size_t *active, size_t *per_expert);

/* Forward over a batch (inputs, targets [B*T]; targets may be NULL, or < 0 to ignore a position).
 * Fills logits; returns the mean cross-entropy over valid targets (0 when targets == NULL).
 * training: dropout, jitter and the training capacity factor. */
float model_forward(Model *m, const int *inputs, const int *targets, int training);

/* A forward's random draws are functions of where they are used, never of who draws them: (the
 * pass's key, the layer and site, the global row, the element), so one process and any split of the
 * batch over ranks or threads draw the same values. model_pass_begin, at a forward's start over B
 * sequences (of this rank): a pass that draws (training, or a random router) takes its key from m->rng
 * (the n-th key of the seed's stream for the n-th such pass: step and micro-batch), and in training
 * over several ranks learns its first sequence in the global batch (a collective: the sequences of the
 * ranks before it). model_site_key: the key of a site of a layer (an encoder-decoder counts the
 * decoder's blocks after the encoder's; embeddings are at the first layer of their stack, the seed
 * model's head at layer num_layers). model_dropout: dropout_forward of n elements of the pass's B rows
 * at a site, element i of local row b drawing counter (row0 + b) n/B + i of the site's stream. */
typedef enum { SITE_EMBED, SITE_ATTN, SITE_CROSS, SITE_HIDDEN, SITE_FFN, SITE_MOE, SITE_OUT, SITE_ATTN_PROBS, SITE_CROSS_PROBS,
               SITES } DrawSite;
void model_pass_begin(Model *m, int B, int training);
uint64_t model_site_key(const Model *m, int layer, DrawSite site);
void model_dropout(const Model *m, int layer, DrawSite site, float *out, uint8_t *mask, const float *inp, float p,
                   size_t n, int B);

/* Backward of the last forward: grads += d(loss + aux_loss)/d(params). Needs targets. */
void model_backward(Model *m);

/* Sets the output layer's bias (seed: head.fc2.bias [V]) to the log unigram frequencies of ids[n]
 * (each id in 0..V-1), add-one smoothed so an unseen token's bias is finite. Returns 0 (and changes
 * nothing) when the model has no output bias. */
int model_init_output_bias(Model *m, const int *ids, size_t n);

void model_zero_grad(Model *m);

/* Mixed precision (bf16 mode): every linear layer's products (forward, input and weight gradients;
 * attention's projections, dense FFNs, experts, the head; lm, seed, mixtral and llama models, whose
 * fused q/k/v and gate/up views span their HF tensors) take bf16 operands with float sums
 * (gemm_bf16.h); parameters, gradients, optimizer moments, the residual stream, norms, attention's
 * scores and softmax, the router, the loss stay float. on: allocates the packed bf16 copies of the
 * matrices (w16; ~ half the float parameters' bytes, twice: each matrix in both products' forms),
 * which model_forward refreshes from the float parameters at its start (so a forward always reads
 * the current weights); off: frees them. On a CPU without AVX-512 BF16 the products run the portable
 * kernel (the same results, slower than float: gemm_bf16_fast says which). */
moelm_status model_set_bf16(Model *m, int on);

/* Generation with a KV cache (batch 1). kv_create sizes one allocation from m->cfg (n_positions).
 * model_step_kv feeds token at position kv->pos and writes next-token logits [V] into kv->logits,
 * exactly what model_forward(training = 0) computes for the last position of the sequence so far
 * (up to float reordering), then advances pos. The caller stops at pos == n_positions (CHECKed).
 * The random router draws its expert from a key taken from m->rng on every step, as model_forward does per pass. */
moelm_status kv_create(KVCache *kv, const Model *m);
void kv_free(KVCache *kv);
void kv_reset(KVCache *kv);
/* Copies m's current weights in the form generation streams them fastest; model_step_kv then reads
 * the copies, so call it again after the weights change (without it a step reads m's float weights
 * as they are). The matrices that multiply a ReLU's output in blocks a thread reads whole (the
 * experts' and the shared expert's second products under a ReLU, the seed head's W2; not a dense
 * FFN's, which a team splits by rows) are copied down-major, a hidden unit's weights together, so
 * that a step skips the units that are zero: their bytes are never read (gemv_t_nz; half the units
 * at initialisation, 70-95% after training), when enough of them are (skip_min, skip_min_long).
 * With bf16 every matrix (attention, FFN, experts, head) is read in bfloat16, rounded once: half the
 * bytes per token, logits within ~2% of the float ones' scale (norms, biases, routers and the KV
 * cache stay float). */
moelm_status kv_load_weights(KVCache *kv, const Model *m, int bf16);
/* The matrices (and embedding rows) of m that q holds are read from its Q8_0 blocks from now on, the
 * products by q8_0_gemv on the input quantized to Q8_0 (backend/q8.h; llama.cpp's arithmetic), never
 * a float copy; q must outlive kv. Not with bf16 (CHECKed). */
moelm_status kv_use_q8(KVCache *kv, const Model *m, const Q8Arena *q);
void model_step_kv(Model *m, KVCache *kv, int token);
/* Bytes of weights the steps since kv_reset skipped (kv_load_weights' down-major rows of zero units):
 * in all, and by phase into out. */
double kv_skipped_bytes(const KVCache *kv);
void kv_phase_skipped(const KVCache *kv, double out[KV_PHASES]);
/* Bytes of weights one model_step_kv reads, each once: the layers' matrices, biases and norms, a row
 * of each embedding, the head, and per MoE layer its router and the experts a token reaches (its
 * slots: one, K, or every expert for soft gating and expert choice; at N = 1 none is dropped). With
 * bf16 (kv_load_weights) the matrices count 2 bytes a weight; norms, biases, routers and embedding rows 4.
 * Rows skipped after a ReLU are counted: kv_skipped_bytes tells them. `moelm bench` divides the bytes
 * read (this less those) by the time of a step to compare with the machine's read bandwidth.
 * kv_phase_bytes: the same by phase into out; returns their sum, kv_step_bytes. */
double kv_step_bytes(const Model *m, int bf16);
double kv_phase_bytes(const Model *m, int bf16, double out[KV_PHASES]);
/* kv_phase_bytes (float) with the matrices and embedding rows that q8 holds (kv_use_q8) counted as the
 * Q8_0 blocks a step reads: 34 bytes (an fp16 scale and 32 int8) a 32 values. */
double kv_phase_bytes_q8(const Model *m, const Q8Arena *q8, double out[KV_PHASES]);

/* Samples the next token from logits [V]: temperature temp (<= 0: greedy argmax, the first maximum),
 * then top-k (top_k <= 0: off), then top-p / nucleus over the top-k renormalised (top_p >= 1: off),
 * drawing from rng. scratch [2V] floats. */
int sample_token(const float *logits, int V, float temp, int top_k, float top_p, Rng *rng, float *scratch);

/* ---- tensors as files hold them (model_files.c) ----------------------------------------------------
 * The model's tensors in order, each per-expert slab (TensorInfo.per_expert) split into one tensor per
 * held expert, named by the expert's index in the whole model: Hugging Face's per-expert names
 * ("...experts.expert_3.wi.weight", Mixtral's "...experts.3.w1.weight") map onto slices of moelm's slabs,
 * so an expert-parallel rank reads and writes only its experts, under their global names. */
typedef struct {
    char name[96];
    float *data;              /* into Model.params: count floats */
    int ndim;
    int64_t shape[4];         /* the whole tensor's shape in a file */
    size_t first, count;      /* the part held: elements [first, first + count) of it (a rank's shard of a
                               * slab files hold whole; else 0 and all of it) */
    int tensor;               /* index in Model.tensors */
} FileTensor;

/* Fills out[0 .. min(count, max)) and returns the count (max 0, out NULL: only counts). */
int model_file_tensors(const Model *m, FileTensor *out, int max);

struct WeightSet;   /* io/weights.h */
/* Reads every file tensor of m by name from ws (F32, F16 or BF16; shapes must match). Tensors of ws
 * that m has no place for are an error, except the names HF writes for tied copies (switch_transformers:
 * encoder/decoder.embed_tokens.weight, and lm_head.weight when tied), which may also stand in for
 * shared.weight. Errors name the tensor and the directory. */
moelm_status model_read_weights(Model *m, const struct WeightSet *ws, const char *dir);
/* A view of m's tensors as a kind of file holds them: a moelm_malloc'ed array of its *n file tensors
 * (NULL: no memory). model_read_weights' is model_file_tensors'; the llama family's Hugging Face view
 * splits the fused expert slabs (llama_hf.c). */
typedef FileTensor *ModelFileView(const Model *m, int *n);
/* model_read_weights through a given view. */
moelm_status model_read_view(Model *m, ModelFileView *view, const struct WeightSet *ws, const char *dir);
/* Builds the model a directory holds (config.json and its weight set: a moelm checkpoint or a Hugging Face
 * directory) for batches up to B x Te (and B x Td for an encoder-decoder; Te for others). The config's
 * ignored keys are in m->cfg.note. */
moelm_status model_load_dir(Model *m, const char *dir, int B, int Te, int Td);
/* Writes m's file tensors into dir as a Hugging Face weight set (model.safetensors, or shards of at
 * most max_shard_bytes with model.safetensors.index.json; 0: one file), as dtype (0 F32, 1 F16, 2 BF16). */
moelm_status model_write_weights(const Model *m, const char *dir, int dtype, uint64_t max_shard_bytes);
/* model_write_weights through a given view (every file tensor whole: first 0). */
moelm_status model_write_view(const Model *m, ModelFileView *view, const char *dir, int dtype, uint64_t max_shard_bytes);

/* One MoE layer of a model, wherever the model type keeps it: an lm's sparse block, the seed head. */
typedef struct {
    int block;                /* the block whose FFN it is; -1: the seed model's head */
    int stack;                /* switch_transformers: 0 the encoder's block, 1 the decoder's; 0 otherwise */
    MoEParams *p, *g;         /* its parameters and their gradients (views into m's arenas) */
    MoEActs *a;               /* its activations of the last forward */
    const MoEConfig *cfg;     /* the layer's config: the model's moe_cfg, or (switch_transformers) its stack's */
} MoELayer;

/* Every MoE layer of m in forward order into out[0 .. min(n, max) - 1]; returns n, their count
 * (config_num_moe_layers, at most CONFIG_MAX_MOE_LAYERS). The one way to find a model's MoE layers:
 * training's bias update, evaluation's statistics and the routing dumps all ask here. The pointers
 * are into m (writable: a Model is never a const object, the const only says this call writes nothing). */
int model_moe_layers(const Model *m, MoELayer *out, int max);

#endif
