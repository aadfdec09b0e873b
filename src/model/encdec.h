/* encdec.h: the Switch Transformer encoder-decoder (model_type switch_transformers), as Hugging Face's
 * SwitchTransformersForConditionalGeneration (v4) computes it, inside moelm's Model.
 *
 * Dimensions: B batch, Te encoder and Td decoder tokens per sequence, Ne = B Te, Nd = B Td, N either,
 * C d_model, NH heads, dk = d_kv, I = NH dk (may differ from C), H d_ff, E experts, V vocab, NB buckets.
 *
 * The model (per stack: the encoder, or the decoder with cross-attention):
 *   x = drop(shared[ids])                                   (no positions, no scaling)
 *   bias[NH, T, T] = table[bucket(j - i)]                   (block 0's table, every block uses it)
 *   per block: x += drop(o(attn(q, k, v of norm(x)) + bias + mask))       T5 norm: x rsqrt(mean x^2 + eps) w
 *              decoder: x += drop(o(attn(q(norm(x)), k, v of the encoder output; key padding)))
 *              x += drop(ffn(norm(x)))  ffn: wo(drop(act(wi h))), or the Switch layer (capacity per sequence)
 *   out = drop(final_norm(x))
 *   logits = (dec_out * C^-0.5) @ shared^T (tied) or dec_out @ lm_head^T
 *   attention: drop(softmax(q k^T + bias + mask)) v, no 1/sqrt(dk); the masks as HF adds them (attn.h);
 *   drop: dropout_rate in training, as HF's (the probabilities, each sublayer's output, the dense FF's and
 *   every expert's hidden activations, the embeddings and the final norm's output).
 * Losses as HF: lm = mean CE over labels != -100; per stack over its sparse blocks z = mean lse^2 and
 * aux = E^2 mean_{b,e} f[b,e] P[b,e] (each sequence's tokens of all its sparse layers together);
 * loss = lm + z_coef (z_enc + z_dec) + aux_coef (aux_enc + aux_dec). docs/MOE.md says where HF's
 * behaviour was a choice (SwitchConfig.hf_router_losses, dropped_scaled_input).
 *
 * Memory: the parameters are Model's arena under HF's names (layout in encdec.c; the experts of a
 * layer one slab [E, H, C] / [E, C, H], files name them per expert); activations and backward scratch
 * one block sized from (B, Te, Td) by model_create_encdec; a forward may use any smaller shape. Nothing
 * is allocated inside a step.
 */
#ifndef MOELM_ENCDEC_H
#define MOELM_ENCDEC_H

#include <stdint.h>
#include "model/model.h"

typedef struct {
    float *sa_ln;               /* [C] layer.0.layer_norm */
    float *q, *k, *v, *o;       /* [I, C], [I, C], [I, C], [C, I] SelfAttention */
    float *ca_ln;               /* decoder: [C] layer.1.layer_norm */
    float *cq, *ck, *cv, *co;   /* decoder: EncDecAttention, as q..o */
    float *ff_ln;               /* [C] the FF layer's layer_norm */
    float *wi, *wo;             /* dense: [H, C], [C, H] (NULL in a sparse block) */
    MoEParams moe;              /* sparse: router [E, C], w1 [E, H, C], w2 [E, C, H], no biases */
} T5BlockParams;

typedef struct {
    T5BlockParams *blocks;      /* [L] of this stack */
    float *rel_bias;            /* [NB, NH] block 0's relative_attention_bias */
    float *final_ln;            /* [C] */
} T5StackParams;

typedef struct {
    float *shared;              /* [V, C] */
    T5StackParams enc, dec;
    float *lm_head;             /* [V, C] untied only */
} EncDecParams;

typedef struct {
    float *x_in;                /* [N, C] the block's input (the residual stream) */
    float *ln1, *rstd1;         /* [N, C], [N] */
    float *q, *k, *v;           /* [N, I] */
    float *att;                 /* [B, NH, T, T] probabilities */
    uint8_t *att_drop;          /* [B, NH, T, T] their dropout (training) */
    float *atty;                /* [N, I] attention output before o */
    uint8_t *drop1;             /* [N, C] */
    float *res1;                /* [N, C] x_in + drop(o(atty)) */
    float *ln2, *rstd2;         /* decoder: [Nd, C], [Nd] */
    float *cq;                  /* decoder: [Nd, I] */
    float *ck, *cv;             /* decoder: [Ne, I] keys and values of the encoder output */
    float *catt;                /* decoder: [B, NH, Td, Te] */
    uint8_t *catt_drop;         /* decoder: [B, NH, Td, Te] their dropout (training) */
    float *catty;               /* decoder: [Nd, I] */
    uint8_t *drop2;             /* decoder: [Nd, C] */
    float *res2;                /* decoder: [Nd, C] res1 + drop(co(catty)) */
    float *ln3, *rstd3;         /* [N, C], [N] the FF layer's norm */
    float *fc_pre, *fc;         /* dense: [N, H] wi output, act then dropout */
    uint8_t *fc_drop;           /* dense: [N, H] */
    float *ffn;                 /* [N, C] the FF output after dropout (the block's output is res + ffn) */
    uint8_t *drop3;             /* [N, C] */
    MoEActs moe;                /* sparse */
} T5BlockActs;

typedef struct {
    T5BlockActs *blocks;        /* [L] */
    MoEConfig moe_cfg;          /* this stack's MoE layers: groups of one sequence, its share of the z loss */
    uint8_t *emb_drop;          /* [N, C] */
    int *bkt;                   /* [2 Tmax - 1] buckets of the relative positions */
    float *bias;                /* [NH, T, T] position bias of this pass */
    float *x_final;             /* [N, C] the last block's output */
    float *out, *rstd_f;        /* [N, C] drop(final_norm(x_final)), [N] */
    uint8_t *out_drop;          /* [N, C] */
    float *aux_dprobs;          /* [B, E] d loss / d router probs of every sparse block (HF's aux loss) */
    float z_loss, aux_loss;     /* HF's unweighted router losses of the last forward (0 when HF has none) */
    int n_sparse;               /* sparse blocks */
    int losses_on;              /* the stack's router losses count (HF: sparse_step > 1; see SwitchConfig) */
} T5StackActs;

/* One batch: B sequences of Te encoder and Td decoder tokens, row-major [B, T]. */
typedef struct {
    int B, Te, Td;
    const int *input_ids;          /* [B, Te] */
    const int *attention_mask;     /* [B, Te] 1 keep, 0 padding; NULL: all 1 */
    const int *decoder_input_ids;  /* [B, Td]; NULL: labels shifted right from decoder_start_token_id */
    const int *labels;             /* [B, Td] targets, -100 ignored; NULL: no loss */
    const int *decoder_attention_mask;   /* [B, Td] 1 keep, 0 padding (keys of the decoder's self-attention,
                                          * with the causal mask); NULL: all 1 */
} Seq2SeqBatch;

typedef struct EncDec {
    EncDecParams p, g;          /* views into Model.params and Model.grads */
    T5StackActs enc, dec;
    int Bmax, Temax, Tdmax;     /* the shape the activations are sized for */
    int B, Te, Td;              /* the last forward's */
    int I, NB;
    void *mem;                  /* activations and scratch */
    uint8_t *enc_mask;          /* [B, Te] key mask of the encoder and of cross-attention */
    uint8_t *dec_mask;          /* [B, Td] key mask of the decoder's self-attention (the batch's
                                 * decoder_attention_mask), used when has_dec_mask */
    int has_dec_mask;
    int *enc_ids, *dec_ids, *labels;   /* [B, Te], [B, Td], [B, Td] copies of the batch (labels -1 = ignored) */
    float *dec_scaled;          /* [Nd, C] tied: dec.out * C^-0.5, the head's input */
    float *logits;              /* [Nd, V]; overwritten by dlogits in the backward */
    float *losses, *lse;        /* [Nd] */
    float lm_loss;              /* mean CE over labels != -100 (0 without labels) */
    float loss;                 /* lm_loss + the weighted router losses */
    int has_labels;
    /* backward scratch */
    float *dres, *dbuf, *dbuf2, *denc;   /* [N, C] each (denc: [Ne, C], the gradient of the encoder output) */
    float *dq, *dk, *dv;        /* [N, I] each */
    float *dattn;               /* [N, I] the gradient of an attention's output before o */
    float *datt;                /* [B, NH, Tmax, Tmax] */
    float *att_d;               /* [B, NH, Tmax, Tmax] probabilities after dropout (forward and backward scratch) */
    float *dbias;               /* [NH, Tmax, Tmax] summed over a stack's blocks */
    float *dfc, *dfc2;          /* [N, H] */
    float *dlosses;             /* [Nd] */
} EncDec;

/* The layout alone, as model_plan (model.h) gives it for a switch_transformers config. */
moelm_status encdec_plan(Model *m, const ModelConfig *cfg, int part, int parts);
/* Builds a switch_transformers Model for batches up to B x Te (encoder) and B x Td (decoder); the
 * parameters drawn as HF's _init_weights does (initializer_factor), from seed. part / parts: the
 * experts held (expert parallelism), as model_create_sharded. */
moelm_status model_create_encdec(Model *m, const ModelConfig *cfg, int B, int Te, int Td, uint64_t seed, int part,
                                 int parts);
void encdec_free(Model *m);

/* Checks a batch against the model: shapes within the bound, ids in [0, V), masks' values 0/1, labels
 * in [0, V) or -100, a decoder_start_token_id when decoder inputs come from the labels. MOELM_ERR_DATA. */
moelm_status encdec_check_batch(const Model *m, const Seq2SeqBatch *b);
/* Forward; returns the loss (lm + router losses; 0 without labels). training: dropout and jitter. */
float encdec_forward(Model *m, const Seq2SeqBatch *b, int training);
/* grads += d loss / d params of the last forward (which had labels). */
void encdec_backward(Model *m);

/* The encoder alone, eval mode: ed->enc.out [B Te, C] (generation encodes the prompt once). */
void encdec_encode(Model *m, const int *ids, const int *mask, int B, int Te);

/* ---- generation (generate_encdec.c) ---------------------------------------------------------------
 * The encoder runs once; the decoder takes one token per row (R rows: beams, or one) and step, with a
 * self-attention cache of keys and values per block and row, and the cross-attention's keys and values
 * of the encoder output computed once. A step equals the full decoder forward's last position (the
 * router sees one token per sequence, as HF's cached decoding does: nothing is dropped, so with
 * drops in the full forward's decoder the two differ exactly where HF's do). */
typedef struct {
    int R, P, Te;               /* rows, decoder positions held, encoder tokens */
    int pos;                    /* decoder tokens in the cache (the next one goes to pos) */
    int Te_used;                /* the encoded input's tokens */
    float *ck, *cv;             /* [Ld, Te, I] cross-attention keys and values of the encoder output */
    float *k, *v;               /* [Ld, R, P, I] self-attention keys and values */
    float *tmp;                 /* [R, P, I] reordering scratch */
    uint8_t *enc_mask;          /* [Te] */
    float *x, *xn, *proj, *ffn; /* [R, C] residual stream, its norm, a sublayer's output, the FF output */
    float *q, *kk, *vv, *y;     /* [R, I] */
    float *att;                 /* [NH, max(P, R Te)] probabilities */
    float *bias;                /* [NH, P] the position bias of this step's query */
    int *bkt;                   /* [P] */
    float *fc_pre, *fc;         /* [R, H] */
    float *rstd;                /* [R] */
    float *logits;              /* [R, V] after encdec_step */
    float *sample;              /* [2V] the sampler's scratch */
    MoEConfig moe_cfg;          /* the decoder's, one group a row */
    MoEActs moe;
    void *mem;
} EncDecCache;

/* One allocation for R rows of up to P decoder tokens after an encoder input of up to Te. */
moelm_status encdec_cache_create(EncDecCache *kv, const Model *m, int R, int P, int Te);
void encdec_cache_free(EncDecCache *kv);
/* Encodes ids[Te] (mask[Te] or NULL: all kept) and keeps the cross-attention's keys and values; the
 * decoder cache starts empty. m must hold a batch of 1 x Te. */
void encdec_cache_encode(Model *m, EncDecCache *kv, const int *ids, const int *mask, int Te);
/* Feeds tokens[R] at position kv->pos, writes kv->logits [R, V], advances pos (CHECK pos < P). */
void encdec_step(Model *m, EncDecCache *kv, const int *tokens);
/* Row r takes the cache of row from[r] (beam search's reordering). */
void encdec_cache_reorder(EncDecCache *kv, const Model *m, const int *from);

typedef struct {
    int max_new;                /* tokens to generate at most (HF's max_new_tokens) */
    int beams;                  /* 1: greedy or sampling; > 1: beam search */
    float length_penalty;       /* beam search: a hypothesis scores sum log p / len^length_penalty (HF) */
    float temp;                 /* beams 1: 0 greedy, else sampling with top_k, top_p */
    int top_k;
    float top_p;
    uint64_t seed;
    int start, eos;             /* decoder_start_token_id; eos (-1: none) */
} EncDecGenOptions;

/* Decodes from kv's encoded input; out[max_new] gets the generated ids without the final eos;
 * returns their count. kv must have R >= beams rows and P > max_new positions; beam search takes at
 * most ENCDEC_MAX_BEAMS beams and ENCDEC_MAX_NEW tokens. */
#define ENCDEC_MAX_BEAMS 64
#define ENCDEC_MAX_NEW 511
int encdec_generate(Model *m, EncDecCache *kv, const EncDecGenOptions *o, int *out);


/* The sparse blocks, encoder's then decoder's (model_moe_layers' answer for this model). */
int encdec_moe_layers(const Model *m, MoELayer *out, int max);

#endif
