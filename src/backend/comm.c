/* comm.c: collectives over MPI (-DMOELM_MPI) or over a world of one rank (see comm.h).
 *
 * This is the one file of moelm that includes mpi.h. It uses only the MPI-3 standard (no OpenMPI or
 * MPICH extensions), so either library builds it. Counts above INT_MAX are sent in pieces.
 */
#include "backend/comm.h"

#include <stdlib.h>
#include <string.h>
#include "common/util.h"

static uint64_t g_a2a_bytes;

uint64_t comm_alltoall_bytes(void) { return g_a2a_bytes; }

#ifdef MOELM_MPI

#include <mpi.h>

static MPI_Comm g_comm[COMM__COUNT];
static int g_rank[COMM__COUNT], g_size[COMM__COUNT] = {1, 1, 1};
static int g_ready, g_started;

/* Pieces of at most this many elements per MPI call (MPI counts are int). */
#define COMM_PIECE ((size_t)1 << 28)

moelm_status comm_init(int ep) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        /* funneled: OpenMP threads compute, only the main thread calls MPI */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return moelm_fail(MOELM_ERR_IO, "MPI_Init failed (is this run under mpirun?)");
        g_started = 1;
    }
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (ep < 1 || size % ep)
        return moelm_fail(MOELM_ERR_CONFIG, "--expert-parallel %d must divide the number of ranks (%d)", ep, size);
    if (g_ready) {
        MPI_Comm_free(&g_comm[COMM_EP]);
        MPI_Comm_free(&g_comm[COMM_DP]);
    }
    g_comm[COMM_WORLD] = MPI_COMM_WORLD;
    MPI_Comm_split(MPI_COMM_WORLD, rank / ep, rank, &g_comm[COMM_EP]);   /* consecutive ranks */
    MPI_Comm_split(MPI_COMM_WORLD, rank % ep, rank, &g_comm[COMM_DP]);   /* same expert shard */
    for (int g = 0; g < COMM__COUNT; g++) {
        MPI_Comm_rank(g_comm[g], &g_rank[g]);
        MPI_Comm_size(g_comm[g], &g_size[g]);
    }
    g_ready = 1;
    return MOELM_OK;
}

void comm_finalize(void) {
    if (g_ready) {
        MPI_Comm_free(&g_comm[COMM_EP]);
        MPI_Comm_free(&g_comm[COMM_DP]);
        g_ready = 0;
        for (int g = 0; g < COMM__COUNT; g++) { g_rank[g] = 0; g_size[g] = 1; }
    }
    if (g_started) {
        MPI_Finalize();
        g_started = 0;
    }
}

void comm_abort(int code) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized && g_size[COMM_WORLD] > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

int comm_rank(CommGroup g) { return g_rank[g]; }
int comm_size(CommGroup g) { return g_size[g]; }
int comm_is_mpi(void) { return 1; }

void comm_allreduce_f32(CommGroup g, float *buf, size_t n) {
    if (g_size[g] == 1) return;
    for (size_t i = 0; i < n; i += COMM_PIECE) {
        size_t k = n - i < COMM_PIECE ? n - i : COMM_PIECE;
        MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)k, MPI_FLOAT, MPI_SUM, g_comm[g]);
    }
}

void comm_allreduce_f64(CommGroup g, double *buf, size_t n) {
    if (g_size[g] == 1) return;
    for (size_t i = 0; i < n; i += COMM_PIECE) {
        size_t k = n - i < COMM_PIECE ? n - i : COMM_PIECE;
        MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)k, MPI_DOUBLE, MPI_SUM, g_comm[g]);
    }
}

void comm_allreduce_i32(CommGroup g, int *buf, int n) {
    if (g_size[g] == 1) return;
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_INT, MPI_SUM, g_comm[g]);
}

void comm_exscan_i32(CommGroup g, const int *in, int *out, int n) {
    if (g_size[g] == 1 || n == 0) { memset(out, 0, sizeof(int) * (size_t)n); return; }
    MPI_Exscan(in, out, n, MPI_INT, MPI_SUM, g_comm[g]);
    if (g_rank[g] == 0) memset(out, 0, sizeof(int) * (size_t)n);   /* MPI leaves rank 0's undefined */
}

void comm_send_f32(CommGroup g, const float *buf, size_t n, int to) {
    CHECK(g_size[g] > 1 && to != g_rank[g] && n <= (size_t)0x7fffffff);
    MPI_Send(buf, (int)n, MPI_FLOAT, to, 0, g_comm[g]);
}

void comm_recv_f32(CommGroup g, float *buf, size_t n, int from) {
    CHECK(g_size[g] > 1 && from != g_rank[g] && n <= (size_t)0x7fffffff);
    MPI_Recv(buf, (int)n, MPI_FLOAT, from, 0, g_comm[g], MPI_STATUS_IGNORE);
}

void comm_alltoall_i32(CommGroup g, const int *send, int *recv, int n) {
    if (g_size[g] == 1) { memcpy(recv, send, sizeof(int) * (size_t)n); return; }
    MPI_Alltoall(send, n, MPI_INT, recv, n, MPI_INT, g_comm[g]);
    g_a2a_bytes += (uint64_t)(g_size[g] - 1) * (uint64_t)n * sizeof(int);
}

/* MPI_Alltoallv of elements of type t (size bytes each); counts and displacements in elements */
static void alltoallv(CommGroup g, const void *send, const int *scount, const int *sdispl, void *recv,
                      const int *rcount, const int *rdispl, MPI_Datatype t, size_t size) {
    if (g_size[g] == 1) {
        memcpy((char *)recv + (size_t)rdispl[0] * size, (const char *)send + (size_t)sdispl[0] * size,
               size * (size_t)scount[0]);
        return;
    }
    MPI_Alltoallv(send, scount, sdispl, t, recv, rcount, rdispl, t, g_comm[g]);
    for (int q = 0; q < g_size[g]; q++)
        if (q != g_rank[g]) g_a2a_bytes += (uint64_t)scount[q] * size;
}

void comm_alltoallv_f32(CommGroup g, const float *send, const int *scount, const int *sdispl,
                        float *recv, const int *rcount, const int *rdispl) {
    alltoallv(g, send, scount, sdispl, recv, rcount, rdispl, MPI_FLOAT, sizeof(float));
}

void comm_alltoallv_i32(CommGroup g, const int *send, const int *scount, const int *sdispl,
                        int *recv, const int *rcount, const int *rdispl) {
    alltoallv(g, send, scount, sdispl, recv, rcount, rdispl, MPI_INT, sizeof(int));
}

void comm_bcast_f64(CommGroup g, double *buf, int n, int root) {
    if (g_size[g] == 1) return;
    MPI_Bcast(buf, n, MPI_DOUBLE, root, g_comm[g]);
}

void comm_barrier(CommGroup g) {
    if (g_size[g] == 1) return;
    MPI_Barrier(g_comm[g]);
}

#else   /* one process: every group is this rank alone */

moelm_status comm_init(int ep) {
    if (ep != 1) return moelm_fail(MOELM_ERR_CONFIG, "--expert-parallel %d needs an MPI build (make MPI=1) and mpirun", ep);
    return MOELM_OK;
}
void comm_finalize(void) {}
void comm_abort(int code) { (void)code; }
int comm_rank(CommGroup g) { (void)g; return 0; }
int comm_size(CommGroup g) { (void)g; return 1; }
int comm_is_mpi(void) { return 0; }
void comm_allreduce_f32(CommGroup g, float *buf, size_t n) { (void)g; (void)buf; (void)n; }
void comm_allreduce_f64(CommGroup g, double *buf, size_t n) { (void)g; (void)buf; (void)n; }
void comm_allreduce_i32(CommGroup g, int *buf, int n) { (void)g; (void)buf; (void)n; }
void comm_exscan_i32(CommGroup g, const int *in, int *out, int n) {
    (void)g; (void)in;
    memset(out, 0, sizeof(int) * (size_t)n);
}
void comm_send_f32(CommGroup g, const float *buf, size_t n, int to) {
    (void)g; (void)buf; (void)n; (void)to;
    CHECK(!"comm_send_f32 over one rank");
}
void comm_recv_f32(CommGroup g, float *buf, size_t n, int from) {
    (void)g; (void)buf; (void)n; (void)from;
    CHECK(!"comm_recv_f32 over one rank");
}
void comm_alltoall_i32(CommGroup g, const int *send, int *recv, int n) {
    (void)g;
    memcpy(recv, send, sizeof(int) * (size_t)n);
}
void comm_alltoallv_f32(CommGroup g, const float *send, const int *scount, const int *sdispl,
                        float *recv, const int *rcount, const int *rdispl) {
    (void)g; (void)rcount;
    memcpy(recv + rdispl[0], send + sdispl[0], sizeof(float) * (size_t)scount[0]);
}
void comm_alltoallv_i32(CommGroup g, const int *send, const int *scount, const int *sdispl,
                        int *recv, const int *rcount, const int *rdispl) {
    (void)g; (void)rcount;
    memcpy(recv + rdispl[0], send + sdispl[0], sizeof(int) * (size_t)scount[0]);
}
void comm_bcast_f64(CommGroup g, double *buf, int n, int root) { (void)g; (void)buf; (void)n; (void)root; }
void comm_barrier(CommGroup g) { (void)g; }

#endif
