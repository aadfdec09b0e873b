/* dist.c: data- and expert-parallel training (see dist.h). Every function that communicates is a
 * collective over the groups of src/backend/comm.h; with one rank they do nothing. */
#include "train/dist.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/comm.h"
#include "model/config.h"

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
    if (!st && comm_size(COMM_WORLD) > 1) {
        /* the exchange volume of the whole run (bench/mpi_bench.sh reads this line) */
        double b = (double)comm_alltoall_bytes();
        comm_allreduce_f64(COMM_WORLD, &b, 1);
        printf("comm: %d ranks (data parallel %d x expert parallel %d), all-to-all %.0f bytes sent by all ranks\n",
               comm_size(COMM_WORLD), comm_size(COMM_DP), comm_size(COMM_EP), b);
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
    if (cfg->num_experts > 0 && cfg->router_type == ROUTER_EXPERT_CHOICE)
        return moelm_fail(MOELM_ERR_CONFIG, "expert-choice routing is not supported over several ranks");
    if (P > 1 && (cfg->num_experts < P || cfg->num_experts % P))
        return moelm_fail(MOELM_ERR_CONFIG, "--expert-parallel %d: the %d experts of a layer must split evenly "
                          "over the %d ranks", P, cfg->num_experts, P);
    return MOELM_OK;
}

void dist_take_rows(int *inputs, int *targets, int B, int T) {
    int W = comm_size(COMM_WORLD), r = comm_rank(COMM_WORLD);
    if (W == 1) return;
    size_t n = (size_t)(B / W) * T, off = (size_t)r * n;
    memmove(inputs, inputs + off, n * sizeof(int));
    memmove(targets, targets + off, n * sizeof(int));
}

float dist_loss(Model *m) {
    if (comm_size(COMM_WORLD) == 1) return m->loss;
    int N = m->B * m->T;
    double s[2] = {0.0, 0.0};   /* sum of losses, valid targets */
    for (int i = 0; i < N; i++)
        if (m->a.targets[i] >= 0) { s[0] += m->a.losses[i]; s[1] += 1.0; }
    comm_allreduce_f64(COMM_WORLD, s, 2);
    m->n_valid = (int)s[1];
    m->loss = s[1] > 0 ? (float)(s[0] / s[1]) : 0.0f;
    return m->loss;
}

/* The expert tensors (w1, b1, w2, b2 of each MoE layer) as offsets into the arena, in order. */
static int expert_tensors(const Model *m, size_t *off, size_t *size, int max) {
    const MoEActs *acts[64];
    int n_moe = model_moe_layers(m, acts, 64), n = 0;
    if (n_moe == 0) return 0;
    for (int i = 0; i < m->n_tensors && n < max; i++) {
        const TensorInfo *t = &m->tensors[i];
        const float *g = m->grads + t->offset;
        int is_expert = 0;
        for (int l = 0; l < m->cfg.num_layers + 1 && !is_expert; l++) {
            const MoEParams *mp = l < m->cfg.num_layers ? &m->g.layers[l].moe : &m->g.head_moe;
            is_expert = g == mp->w1 || g == mp->b1 || g == mp->w2 || g == mp->b2;
        }
        if (is_expert && t->size) { off[n] = t->offset; size[n] = t->size; n++; }
    }
    return n;
}

void dist_reduce_grads(Model *m) {
    int W = comm_size(COMM_WORLD), P = comm_size(COMM_EP);
    if (W == 1) return;
    if (P == 1) {   /* data parallel only: one all-reduce of the whole arena */
        comm_allreduce_f32(COMM_WORLD, m->grads, m->n_params);
        return;
    }
    size_t off[1024], size[1024];
    int n = expert_tensors(m, off, size, 1024), p = comm_rank(COMM_EP);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        /* the non-expert tensors before this one: every rank holds a part of their gradient */
        if (off[i] > at) comm_allreduce_f32(COMM_WORLD, m->grads + at, off[i] - at);
        /* [E, ...] with E split evenly over COMM_EP: this rank's shard is block p of P */
        size_t blk = size[i] / (size_t)P;
        comm_allreduce_f32(COMM_DP, m->grads + off[i] + (size_t)p * blk, blk);
        comm_allgather_f32(COMM_EP, m->grads + off[i], blk);
        at = off[i] + size[i];
    }
    if (m->n_params > at) comm_allreduce_f32(COMM_WORLD, m->grads + at, m->n_params - at);
}

void dist_reduce_eval(EvalResult *r) {
    if (comm_size(COMM_WORLD) == 1) return;
    double v[2 + 64 * 262];
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

/* Test hook (tests/test_mpi.sh): MOELM_KILL_RANK_AT_STEP=R:S kills rank R with SIGKILL in the middle
 * of step S (after the forward's collectives, before the backward's), as a crashed node would. The
 * last checkpoint must stay intact. Unset (the normal case): never fires. */
void dist_fault_point(long step) {
    static int parsed, rank = -1;
    static long at;
    if (!parsed) {
        const char *e = getenv("MOELM_KILL_RANK_AT_STEP");
        if (e && sscanf(e, "%d:%ld", &rank, &at) != 2) rank = -1;
        parsed = 1;
    }
    if (rank == comm_rank(COMM_WORLD) && step == at) {
        fflush(NULL);
        raise(SIGKILL);
    }
}
