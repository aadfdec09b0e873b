/* moe_dist.c: the MoE layer's routing group and expert exchange across ranks (see moe_dist.h).
 * Every function here is a collective: all ranks of the group call it in the same order. With one
 * rank (or no MPI) moe.c does not call them. No allocation: every buffer is a field of MoEActs. */
#include "moe/moe_dist.h"

#include <string.h>
#include "backend/comm.h"

void moe_dist_positions(MoEActs *a, int N, int E) {
    int KS = a->KS, n = KS * E;
    int *pos = a->kpos, *before = a->kpos + n, *tot = a->kpos + 2 * n;
    CHECK(pos != NULL);
    memset(before, 0, sizeof(int) * (size_t)n);
    for (int t = 0; t < N; t++)
        for (int k = 0; k < KS; k++) {
            int e = a->expert[(size_t)t * KS + k];
            if (e >= 0) before[k * E + e]++;
        }
    memcpy(tot, before, sizeof(int) * (size_t)n);
    comm_allreduce_i32(COMM_WORLD, tot, n);       /* the group's count per (k, e) */
    comm_exscan_i32(COMM_WORLD, before, pos, n);  /* the earlier ranks' count per (k, e) */
    for (int e = 0; e < E; e++) {
        int below = 0;   /* slots k' < k of every rank */
        for (int k = 0; k < KS; k++) {
            pos[k * E + e] += below;
            below += tot[k * E + e];
        }
    }
}

/* Copies rows of `width` bytes, peer-major <-> expert-major, for every (peer q, owned expert j): the
 * peer-major position runs through q then j; the expert-major one is ep_off[e0 + j] plus the rows
 * of expert j from peers before q. to_owner = 1: stage -> owner; 0: owner -> stage. */
static void ep_permute(MoEActs *a, void *stage, void *owner, int E, size_t width, int to_owner) {
    int P = comm_size(COMM_EP), EL = E / P, e0 = comm_rank(COMM_EP) * EL;
    int cur[256];
    for (int j = 0; j < EL; j++) cur[j] = a->ep_off[e0 + j];
    size_t sr = 0;
    for (int q = 0; q < P; q++)
        for (int j = 0; j < EL; j++) {
            size_t n = (size_t)a->ep_recv[q * EL + j];
            char *s = (char *)stage + sr * width, *o = (char *)owner + (size_t)cur[j] * width;
            if (to_owner) memcpy(o, s, n * width);
            else memcpy(s, o, n * width);
            sr += n;
            cur[j] += (int)n;
        }
}

void moe_ep_to_owners(MoEActs *a, const MoEConfig *cfg, const float *rows, float *owner, int plan) {
    int E = cfg->E, C = cfg->C, P = comm_size(COMM_EP), EL = E / P, e0 = comm_rank(COMM_EP) * EL;
    CHECK(E % P == 0 && EL <= 256);
    if (plan) {
        for (int e = 0; e < E; e++) a->ep_send[e] = a->offsets[e + 1] - a->offsets[e];
        /* counts first: peer q gets this rank's rows per expert of q's shard */
        comm_alltoall_i32(COMM_EP, a->ep_send, a->ep_recv, EL);
        int rows = 0;
        for (int q = 0; q < P; q++) {
            int s = 0, r = 0;
            for (int j = 0; j < EL; j++) { s += a->ep_send[q * EL + j]; r += a->ep_recv[q * EL + j]; }
            a->ep_sc[q] = s * C;
            a->ep_sd[q] = a->offsets[q * EL] * C;   /* the rows of q's experts are contiguous */
            a->ep_rc[q] = r * C;
            a->ep_rd[q] = rows * C;
            rows += r;
        }
        CHECK(rows <= a->Rmax);
        /* the owner's slabs: experts e0 .. e0+EL-1 get rows, the others none */
        for (int e = 0; e <= E; e++) a->ep_off[e] = 0;
        for (int j = 0; j < EL; j++) {
            int n = 0;
            for (int q = 0; q < P; q++) n += a->ep_recv[q * EL + j];
            a->ep_off[e0 + j + 1] = a->ep_off[e0 + j] + n;
        }
        for (int e = e0 + EL + 1; e <= E; e++) a->ep_off[e] = a->ep_off[e0 + EL];
    }
    comm_alltoallv_f32(COMM_EP, rows, a->ep_sc, a->ep_sd, a->ep_stage, a->ep_rc, a->ep_rd);
    ep_permute(a, a->ep_stage, owner, E, (size_t)C * sizeof(float), 1);
}

void moe_ep_from_owners(MoEActs *a, const MoEConfig *cfg, const float *owner, float *rows) {
    int E = cfg->E, C = cfg->C;
    ep_permute(a, a->ep_stage, (float *)owner, E, (size_t)C * sizeof(float), 0);
    /* the reverse exchange: what came from q goes back to q, into the rows it was sent from */
    comm_alltoallv_f32(COMM_EP, a->ep_stage, a->ep_rc, a->ep_rd, rows, a->ep_sc, a->ep_sd);
}

void moe_ep_ids_to_owners(MoEActs *a, const MoEConfig *cfg, const int *ids, int *owner) {
    int P = comm_size(COMM_EP), C = cfg->C;
    int *ic = a->ep_ic;
    CHECK(ic != NULL);
    /* the rows' exchange of the forward's plan (moe_ep_to_owners), one int a row instead of C floats */
    for (int q = 0; q < P; q++) {
        ic[q] = a->ep_sc[q] / C;
        ic[P + q] = a->ep_sd[q] / C;
        ic[2 * P + q] = a->ep_rc[q] / C;
        ic[3 * P + q] = a->ep_rd[q] / C;
    }
    comm_alltoallv_i32(COMM_EP, ids, ic, ic + P, a->ep_id_stage, ic + 2 * P, ic + 3 * P);
    ep_permute(a, a->ep_id_stage, owner, cfg->E, sizeof(int), 1);
}
