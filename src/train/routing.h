/* routing.h: small routing dumps written at each evaluation, read back by `moelm report`.
 *
 * routing_dump runs the model (inference mode, the eval capacity factor) over the start of the
 * validation stream, at most ROUTING_MAX_TOKENS input tokens (fewer when max_batches > 0 limits the
 * evaluation), and writes RUN_DIR/routing/step-N.json atomically:
 *
 *   {"format": "moelm-routing", "version": 1, "step": N, "router": "switch", "num_experts": E, "k": K,
 *    "word_level": true, "layers": ["block 0", ...], "tokens_counted": n,
 *    "sample": {"pieces": [p0, ...], "experts": [[e0, ...] per layer]},
 *    "expert_tokens": [[count per expert] per layer],
 *    "domains": ["arithmetic", ...], "domain_counts": [[[count per expert] per domain] per layer],
 *    "top_tokens": [[[[piece, count] up to ROUTING_TOP] per expert] per layer]}
 *
 * sample: the first ROUTING_SAMPLE input tokens, each piece as it reads in running text
 * (tokenizer_decode_piece; word-level pieces carry no separator, hence "word_level") and, per sparse
 * layer, the expert the token went to: the kept slot with the largest gate, -1 when every slot was
 * dropped. domains/domain_counts only for the built-in corpus (the valid split's line domains, each
 * line's tokens and its closing <eos> or newline), when the stream's line ends match its lines.
 * top_tokens: the most frequent token ids (tokenizer_piece) per expert, ties by id.
 *
 * The size is bounded by the config, not by the length of training: a few KB for small models.
 * Over MPI every rank must call it (the forward passes are collective); rank 0 counts its own
 * windows of each global batch and writes the file.
 * The model's RNG is restored afterwards, so a dump never changes the training run.
 */
#ifndef MOELM_TRAIN_ROUTING_H
#define MOELM_TRAIN_ROUTING_H

#include <stddef.h>
#include "model/model.h"
#include "tokenizer/tokenizer.h"

#define ROUTING_MAX_TOKENS 16384
#define ROUTING_SAMPLE 200
#define ROUTING_TOP 10

/* ids[n]: the validation stream (as evaluate() reads it); data: the corpus spec of the run ("builtin"
 * enables the domain counts). Does nothing (MOELM_OK) for a model without sparse layers. */
moelm_status routing_dump(const char *run_dir, long step, Model *m, const Tokenizer *tok, const int *ids, size_t n,
                          size_t max_batches, const char *data);

/* The same dump in three parts, for a caller that already runs the forward passes: training's
 * evaluation records the routing of its own batches (evaluate_routed) instead of running them twice.
 * routing_begin sizes and allocates for the first min(ROUTING_MAX_TOKENS / (B T), max_batches)
 * evaluation batches (collective over MPI; rec->L == 0: no sparse layer, nothing to do);
 * routing_take, after model_forward of evaluation batch b (stride T), records its tokens' experts
 * (batches past the first nb are ignored); routing_finish writes the file (rank 0) and frees;
 * routing_free frees without writing. */
typedef struct RoutingRec {
    int L;                    /* sparse layers recorded (0: none) */
    size_t nb, cap, cnt;      /* batches to record, token capacity, tokens recorded */
    int *tokens;              /* [cap] input token ids */
    size_t *pos;              /* [cap] their index in the validation stream */
    short *experts;           /* [L, cap] the expert each token went to per layer */
} RoutingRec;

moelm_status routing_begin(RoutingRec *rec, const Model *m, size_t n, size_t max_batches);
void routing_take(RoutingRec *rec, const Model *m, const int *inp, const int *tgt, size_t b);
moelm_status routing_finish(RoutingRec *rec, const char *run_dir, long step, const Model *m, const Tokenizer *tok,
                            const int *ids, size_t n, const char *data);
void routing_free(RoutingRec *rec);

/* The expert token t went to in a (the kept slot with the largest gate), -1 when none was kept. */
int routing_token_expert(const MoEActs *a, int t);

#endif
