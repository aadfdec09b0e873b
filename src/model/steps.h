/* steps.h: the structure of the decoder models (lm, seed, llama, mixtral) as data, and what it costs.
 *
 * model_steps lists the steps of one stage of a forward in order: stage 0 .. L-1 the blocks (stage 0
 * opening with the embeddings), stage L the head. It is the one description of each model type's
 * structure, read by four walkers:
 *   model_forward   (model.c)     over B x T positions, saving what the backward reads;
 *   model_backward  (model.c)     the same steps in reverse (stage L down to 0, each stage's last
 *                                 step first), each step's backward reading what its forward saved;
 *   model_step_kv   (generate.c)  one position through the KV cache, in a team of threads;
 *   model_cost      (steps.c)     the FLOPs of a forward and the bytes of weights a token reads.
 * A walker says how each kind of step runs on its buffers (a StepVec is a role, which the generation
 * step maps several of onto one vector: res1 is x, updated in place; the backward holds each role's
 * gradient in one of three [N, C] buffers, adding when a role feeds two steps), and one without dropout
 * skips STEP_DROP. The order of norms, attention, residual adds and FFN or MoE layers is written nowhere
 * else: a new order or model type is an edit of model_steps (and, for a new kind of step, one case in
 * each walker).
 *
 * Not here: the switch_transformers encoder-decoder (encdec.c, generate_encdec.c): two stacks with
 * cross-attention and T5's relative position bias, its own activations, no shared buffers with these
 * models.
 *
 * Dimensions: B batch, T sequence, N = B*T, C d_model, NH heads, hd = C/NH, L layers, V vocab,
 * H d_ff, H1 = H or 2H (SwiGLU), HH the seed head's hidden size, E experts.
 */
#ifndef MOELM_STEPS_H
#define MOELM_STEPS_H

#include "model/model.h"

typedef enum {
    STEP_EMBED,     /* out = wte[token] + wpe[t] (no wpe in the llama family) */
    STEP_NORM,      /* out = norm(in) with the weights ModelStep.norm names */
    STEP_ATTN,      /* out [., NH hd] = causal self-attention of in (its q, k, v product; rotary for llama) */
    STEP_PROJ,      /* out [., C] = attention's output projection of in */
    STEP_DROP,      /* out = dropout(in) at ModelStep.site (training forwards only; in place in blocks) */
    STEP_ADD,       /* out = in + in2 (a residual) */
    STEP_FFN,       /* out = the block's dense FFN of in: fc2(act(fc1(in))) */
    STEP_MOE,       /* out = the MoE layer of in: a sparse block's, or at stage L the seed head's */
    STEP_LOGITS,    /* out [., V] = in lm_head^T (wte^T when tied): the lm's and llama's head */
    STEP_HEAD_FFN   /* out [., V] = relu(in W1^T + b1) W2^T + b2: the seed model's head */
} StepOp;

/* The vectors of a stage, by role (model.h's LayerActs and ModelActs name them the same): x the
 * stage's input (block input, or the last block's output at the head), out its output (the next
 * block's input). */
typedef enum {
    SV_X, SV_LN1, SV_ATTY, SV_ATTPROJ, SV_RES1, SV_LN2, SV_FFN, SV_RES2, SV_OUT,   /* a block's */
    SV_LNF, SV_HM_OUT, SV_HM, SV_HM_DROP, SV_LOGITS                                 /* the head's */
} StepVec;
#define STEP_VECS (SV_LOGITS + 1)   /* the number of roles */

typedef enum { NORM_OF_LN1, NORM_OF_LN2, NORM_OF_LNF } NormOf;

typedef struct {
    StepOp op;
    StepVec out, in, in2;     /* in2: STEP_ADD's second operand */
    NormOf norm;              /* STEP_NORM: a block's ln1 or ln2, or the final norm (weights and saved stats) */
    DrawSite site;            /* STEP_DROP: the dropout's site (model_site_key) */
    KVPhase part;             /* the part of a generation step it counts in (bench --profile, kv_phase_bytes) */
} ModelStep;

#define MODEL_STEPS_MAX 12

/* Fills out[] with stage s of a forward of a model of config c (s in 0..L; L the head); returns the
 * number of steps. */
int model_steps(const ModelConfig *c, int s, ModelStep out[MODEL_STEPS_MAX]);

/* What a forward costs, counted over model_steps */
typedef struct {
    double flops;                  /* the last model_forward over m's B x T batch: 2 per multiply-add of the
                                    * products, attention's scores and weighted sums (causal: T (T+1) / 2
                                    * pairs a sequence and head), the experts over the slots that forward kept */
    double mat[KV_PHASES];         /* floats of weight matrices one generation step reads, by part (read in
                                    * bf16 with kv_load_weights' copies) */
    double vec[KV_PHASES];         /* floats of vectors it reads: norms, biases, routers, embedding rows */
    double q8_bytes[KV_PHASES];    /* bytes of the Q8_0 blocks it reads instead (34 a 32 values) */
} ModelCost;

/* The cost of m (not switch_transformers). A generation step's MoE layers read the router and the
 * experts a token reaches (its slots: one, K, or every expert; at N = 1 none is dropped). The matrices
 * and embedding rows that q8 holds (kv_use_q8) count as Q8_0 blocks; q8 NULL: none. */
void model_cost(const Model *m, const Q8Arena *q8, ModelCost *out);

#endif
