/* layout.h: the machinery every model's layout shares (model.c, encdec.c).
 *
 * A model's layout function runs twice: pass 0 records the tensor table (Model.tensors) and counts
 * floats; pass 1, after the arenas exist, hands out pointers into params and grads. Both passes walk
 * the same sequence, so offsets agree by construction. Activations use a bump allocator run the same
 * way: with base NULL it only counts. Internal to src/model/.
 */
#ifndef MOELM_LAYOUT_H
#define MOELM_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include "model/model.h"

typedef struct {
    Model *m;
    int pass;
    size_t off, full_off;     /* floats laid out so far: held, whole model */
    int n;
    int part, parts;          /* the experts' shard held (expert parallelism), 0 of 1 otherwise */
} Layout;

/* A tensor of shape [d0, d1, d2][:ndim] of which rows [first, first + rows) of dim 0 are held; returns
 * its parameters (NULL in pass 0) and sets *grad (may be NULL) to its gradients. A name holding "%d"
 * is a per-expert slab (TensorInfo.per_expert). */
float *layout_tensor_rows(Layout *L, float **grad, const char *name, int trainable, int ndim, int64_t d0,
                          int64_t d1, int64_t d2, int64_t first, int64_t rows);
/* The whole tensor held. */
float *layout_tensor(Layout *L, float **grad, const char *name, int trainable, int ndim, int64_t d0,
                     int64_t d1, int64_t d2);

/* x = the held part of tensor t drawn N(0, std) from r: the whole tensor's draws are made (the stream
 * after it is the same whatever part is held), the held ones kept. */
void layout_init_normal(float *x, const TensorInfo *t, float std, Rng *r);

/* Runs the layout fn's pass 0 over m (experts' shard part of parts) and records its totals: m's
 * tensor table, n_tensors, n_params and n_params_full. */
void layout_plan(Model *m, void (*fn)(Layout *), int part, int parts);

typedef struct {
    char *base;               /* NULL: count only */
    size_t off;
} Bump;

/* The next 64-byte aligned piece of `bytes` (NULL while counting). */
void *layout_bump(Bump *b, size_t bytes);

/* Runs fn(ctx, b) once to count, allocates one zeroed block of that size, runs it again to hand out
 * pointers into it; returns the block (NULL when the allocation failed) and its size in *bytes. */
void *layout_alloc(void (*fn)(void *ctx, Bump *b), void *ctx, size_t *bytes);

#endif
