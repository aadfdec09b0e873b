/* dist.c: data- and expert-parallel training (see dist.h). Every function that communicates is a
 * collective over the groups of src/backend/comm.h; with one rank they do nothing. */
#include "train/dist.h"
#include "model/encdec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "backend/comm.h"
#include "model/config.h"
#include "train/checkpoint.h"

static double g_reduce_s;   /* wall seconds this rank spent in dist_reduce_grads */
static uint64_t g_eval_start, g_eval_bytes;   /* all-to-all bytes of evaluations */

void dist_eval_begin(void) { g_eval_start = comm_alltoall_bytes(); }
void dist_eval_end(void) { g_eval_bytes += comm_alltoall_bytes() - g_eval_start; }

moelm_status dist_begin(int ep) {
    moelm_status st = comm_init(ep < 1 ? 1 : ep);
    if (st) return st;
    if (comm_rank(COMM_WORLD) != 0 && !freopen("/dev/null", "w", stdout))
        return moelm_fail(MOELM_ERR_IO, "rank %d: cannot silence stdout", comm_rank(COMM_WORLD));
    return MOELM_OK;
}

moelm_status dist_end(moelm_status st) {
    if (st && comm_size(COMM_WORLD) > 1) {
        fprintf(stderr, "moelm: rank %d: %s\n", comm_rank(COMM_WORLD), moelm_last_error());
        fflush(stderr);
        comm_abort(1);
    }
    if (!st && comm_is_mpi()) {
        /* the exchange volume of the whole run (bench/mpi_bench.sh reads this line) */
        /* and each rank's peak resident memory (Linux reports ru_maxrss in KiB) */
        int W = comm_size(COMM_WORLD);
        double *v = moelm_calloc((size_t)W + 3, sizeof(double));
        struct rusage ru;
        if (v) {
            v[0] = (double)(comm_alltoall_bytes() - g_eval_bytes);   /* training steps */
            v[1] = (double)g_eval_bytes;
            v[2] = g_reduce_s / W;   /* the mean over ranks of the time in the gradient all-reduce */
            v[3 + comm_rank(COMM_WORLD)] = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0.0;
            comm_allreduce_f64(COMM_WORLD, v, (size_t)W + 3);
            double lo = v[3], hi = v[3];
            for (int r = 1; r < W; r++) { lo = v[3 + r] < lo ? v[3 + r] : lo; hi = v[3 + r] > hi ? v[3 + r] : hi; }
            printf("comm: %d ranks (data parallel %d x expert parallel %d), all-to-all %.0f bytes in training steps "
                   "(%.0f in evaluations) sent by all ranks, gradient all-reduce %.3f s per rank, peak RSS per rank "
                   "%.1f-%.1f MiB\n", W, comm_size(COMM_DP), comm_size(COMM_EP), v[0], v[1], v[2], lo, hi);
            moelm_free(v);
        }
        fflush(stdout);
    }
    comm_finalize();
    return st;
}

int dist_world(void) { return comm_size(COMM_WORLD); }
int dist_is_root(void) { return comm_rank(COMM_WORLD) == 0; }

moelm_status dist_check(const ModelConfig *cfg, int batch_size) {
    int W = comm_size(COMM_WORLD), P = comm_size(COMM_EP);
    if (W == 1) return MOELM_OK;
    if (batch_size % W)
        return moelm_fail(MOELM_ERR_CONFIG, "batch size %d does not split over %d ranks (use a multiple of %d)",
                          batch_size, W, W);
    if (cfg->num_experts > 0 && !router_info(cfg->router_type)->multi_rank)
        return moelm_fail(MOELM_ERR_CONFIG, "%s routing is not supported over several ranks",
                          router_name(cfg->router_type));
    if (P > 1 && (cfg->num_experts < P || cfg->num_experts % P))
        return moelm_fail(MOELM_ERR_CONFIG, "--expert-parallel %d: the %d experts of a layer must split evenly "
                          "over the %d ranks", P, cfg->num_experts, P);
    return MOELM_OK;
}

void dist_take_rows(int *inputs, int *targets, int B, int T) { dist_take_rows2(inputs, T, targets, T, B); }

void dist_take_rows2(int *a, int Ta, int *b, int Tb, int B) {
    int W = comm_size(COMM_WORLD), r = comm_rank(COMM_WORLD);
    if (W == 1) return;
    size_t na = (size_t)(B / W) * Ta, nb = (size_t)(B / W) * Tb;
    memmove(a, a + (size_t)r * na, na * sizeof(int));
    if (b) memmove(b, b + (size_t)r * nb, nb * sizeof(int));
}

float dist_loss(Model *m) {
    if (comm_size(COMM_WORLD) == 1) return m->loss;
    /* the lm's targets and losses, or the encoder-decoder's labels and losses */
    int N = m->ed ? m->ed->B * m->ed->Td : m->B * m->T;
    const int *tg = m->ed ? m->ed->labels : m->a.targets;
    const float *ls = m->ed ? m->ed->losses : m->a.losses;
    double s[2] = {0.0, 0.0};   /* sum of losses, valid targets */
    for (int i = 0; i < N; i++)
        if (tg[i] >= 0) { s[0] += ls[i]; s[1] += 1.0; }
    comm_allreduce_f64(COMM_WORLD, s, 2);
    m->n_valid = (int)s[1];
    m->loss = s[1] > 0 ? (float)(s[0] / s[1]) : 0.0f;
    return m->loss;
}

void dist_expert_shard(int *part, int *parts) {
    *part = comm_rank(COMM_EP);
    *parts = comm_size(COMM_EP);
}

void dist_reduce_grads(Model *m) {
    if (comm_size(COMM_WORLD) == 1) return;
    double t0 = time_now();
    /* runs of consecutive tensors of one kind (the arena is laid out in tensor order): replicated
     * tensors sum over the world; a held shard of experts sums over its replicas (COMM_DP), the
     * only ranks that computed its gradient. Data parallel only: one all-reduce of the arena. */
    int i = 0;
    while (i < m->n_tensors) {
        int sharded = tensor_sharded(&m->tensors[i]);
        size_t at = m->tensors[i].offset, n = 0;
        while (i < m->n_tensors && tensor_sharded(&m->tensors[i]) == sharded) n += m->tensors[i++].size;
        comm_allreduce_f32(sharded ? COMM_DP : COMM_WORLD, m->grads + at, n);
    }
    g_reduce_s += time_now() - t0;
}

/* A sharded model's checkpoint, streamed (ckpt_save_from): world rank 0 writes the whole model a
 * piece at a time, and each rank p of its expert-parallel group sends its shard of a tensor when rank
 * 0's writer reaches that shard, so no rank holds more than its own arenas and one shard of one tensor.
 * The messages follow one plan that every rank of the group knows: slot k = (a n_tensors + i) P + p
 * (arena a: 0 the parameters, 1 and 2 Adam's m and v, 3 the weights' average when the run keeps one;
 * tensor i, in offset order; shard p of P) for every sharded tensor and p > 0 (rank 0 reads its own
 * shard in place), in increasing k: the order the writer reads in. The other ranks send theirs in
 * that order; rank 0 receives as its writer asks, then the rest (ckpt_drain), so that a write that
 * fails halfway leaves no rank waiting. */
typedef struct {
    const Model *m;
    const float *arena[4];    /* this rank's parameters, Adam m and v, the weights' average (or NULL) [n_params] each */
    int P, rank;              /* the expert-parallel group's size, this rank in it */
    float *buf;               /* rank 0: one shard of one tensor [the largest sharded tensor's size] */
    int held;                 /* the slot buf holds (-1: none) */
    int next;                 /* the first slot not yet sent or received */
} CkptStream;

/* Runs the plan's messages from g->next up to (not including) slot `until`. */
static void ckpt_drain(CkptStream *g, int until) {
    for (; g->next < until; g->next++) {
        int p = g->next % g->P, i = g->next / g->P % g->m->n_tensors, a = g->next / g->P / g->m->n_tensors;
        const TensorInfo *t = &g->m->tensors[i];
        if (p == 0 || !tensor_sharded(t)) continue;
        if (g->rank == 0) {
            comm_recv_f32(COMM_EP, g->buf, t->size, p);
            g->held = g->next;
        } else if (g->rank == p) {
            comm_send_f32(COMM_EP, g->arena[a] + t->offset, t->size, 0);
        }
    }
}

static const float *ckpt_read(void *ctx, int a, size_t off, size_t want, size_t *got) {
    CkptStream *g = ctx;
    const Model *m = g->m;
    int i = 0;
    while (i + 1 < m->n_tensors && m->tensors[i + 1].full_offset <= off) i++;   /* the tensor holding off */
    const TensorInfo *t = &m->tensors[i];
    size_t in = off - t->full_offset;
    CHECK(off >= t->full_offset && in < t->full_size);
    /* a replicated tensor is rank 0's own; a sharded one's shard p is rank p's */
    size_t shard = tensor_sharded(t) ? t->size : t->full_size, p = in / shard, at = in % shard;
    *got = want < shard - at ? want : shard - at;
    if (p == 0) return g->arena[a] + t->offset + at;
    int k = (a * m->n_tensors + i) * g->P + (int)p;
    if (g->held != k) {
        CHECK(k >= g->next);   /* the writer reads in the plan's order */
        ckpt_drain(g, k + 1);  /* (slot k alone: every shard before it was read) */
    }
    return g->buf + at;
}

moelm_status dist_save_checkpoint(const char *run_dir, const Model *m, const Optimizer *o, const TrainState *s,
                                  const Tokenizer *tok, int keep) {
    int root = comm_rank(COMM_WORLD) == 0;
    if (m->n_params == m->n_params_full) return root ? ckpt_save(run_dir, m, o, s, tok, keep) : MOELM_OK;
    /* sharded experts: replica 0's expert-parallel group (world ranks 0 .. P-1) streams the weights,
     * both Adam moments and the average to rank 0, which writes the whole model's checkpoint */
    if (comm_rank(COMM_DP) != 0) return MOELM_OK;
    size_t most = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        CHECK(i == 0 || t->full_offset >= m->tensors[i - 1].full_offset);   /* the arena in tensor order */
        if (tensor_sharded(t) && t->size > most) most = t->size;
    }
    int arenas = o->ema ? 4 : 3;
    CkptStream g = {m, {m->params, o->m, o->v, o->ema}, comm_size(COMM_EP), comm_rank(COMM_EP), NULL, -1, 0};
    g.buf = root ? moelm_malloc((most ? most : 1) * sizeof(float)) : NULL;
    TensorInfo *ft = root ? moelm_malloc(sizeof(TensorInfo) * (size_t)m->n_tensors) : NULL;
    int failed = root && (!g.buf || !ft);
    comm_allreduce_i32(COMM_EP, &failed, 1);   /* the group streams only if rank 0 can take a shard */
    moelm_status st = MOELM_OK;
    if (failed) {
        st = root ? moelm_fail(MOELM_ERR_NOMEM, "cannot gather the experts for a checkpoint (%zu floats)", most)
                  : MOELM_OK;
    } else if (root) {
        /* the whole model as ckpt_save sees it: full shapes and offsets, the data from ckpt_read */
        for (int i = 0; i < m->n_tensors; i++) {
            ft[i] = m->tensors[i];
            if (ft[i].ndim) ft[i].shape[0] = ft[i].full_dim0;
            ft[i].shard_first = 0;
            ft[i].offset = ft[i].full_offset;
            ft[i].size = ft[i].full_size;
        }
        Model fm = *m;
        fm.tensors = ft;
        fm.params = fm.grads = NULL;
        fm.n_params = m->n_params_full;
        Optimizer fo = *o;
        fo.m = fo.v = NULL;   /* fo.ema stays: it says the file holds an average (its data come from ckpt_read) */
        fo.n = m->n_params_full;
        CkptSource src = {ckpt_read, &g};
        st = ckpt_save_from(run_dir, &fm, &fo, s, tok, keep, &src);
    }
    if (!failed) ckpt_drain(&g, arenas * m->n_tensors * g.P);   /* rank 0: what a failed write left; the others: all */
    moelm_free(g.buf);
    moelm_free(ft);
    return st;
}

void dist_reduce_eval(EvalResult *r) {
    if (comm_size(COMM_WORLD) == 1) return;
    double v[2 + CONFIG_MAX_MOE_LAYERS * 262];
    int n = 0;
    v[n++] = r->nll;
    v[n++] = r->tokens;
    for (int l = 0; l < r->n_moe; l++) {
        MoEStats *s = &r->stats[l];
        /* aux_sum, z_sum and batches are already the group's (equal on every rank) */
        v[n++] = s->tokens; v[n++] = s->slots; v[n++] = s->dropped; v[n++] = s->unrouted;
        v[n++] = s->entropy_sum; v[n++] = s->top1_sum;
        for (int e = 0; e < s->E; e++) v[n++] = s->load[e];
    }
    comm_allreduce_f64(COMM_WORLD, v, (size_t)n);
    n = 0;
    r->nll = v[n++];
    r->tokens = v[n++];
    for (int l = 0; l < r->n_moe; l++) {
        MoEStats *s = &r->stats[l];
        s->tokens = v[n++]; s->slots = v[n++]; s->dropped = v[n++]; s->unrouted = v[n++];
        s->entropy_sum = v[n++]; s->top1_sum = v[n++];
        for (int e = 0; e < s->E; e++) s->load[e] = v[n++];
    }
}

double dist_root_value(double v) {
    if (comm_size(COMM_WORLD) > 1) comm_bcast_f64(COMM_WORLD, &v, 1, 0);
    return v;
}

int dist_any_failed(moelm_status st) {
    int f = st != MOELM_OK;
    comm_allreduce_i32(COMM_WORLD, &f, 1);
    return f > 0;
}

void dist_serial_begin(void) {
    if (comm_rank(COMM_WORLD) != 0) comm_barrier(COMM_WORLD);
}

void dist_serial_end(void) {
    if (comm_rank(COMM_WORLD) == 0) comm_barrier(COMM_WORLD);
}
