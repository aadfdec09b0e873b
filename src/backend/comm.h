/* comm.h: the collectives moelm's data and expert parallelism use, over MPI or over nothing.
 *
 * comm.c holds both implementations: built with MPI (make MPI=1, -DMOELM_MPI) the functions call
 * the MPI standard (OpenMPI and MPICH alike); built without it, a world of one rank where every
 * collective is the identity. Nothing above src/backend/ knows which (STYLE: no #ifdef up there).
 *
 * Groups. The world of W ranks is a grid W = DP x EP, EP = the expert-parallel degree:
 *   COMM_WORLD  all W ranks: the routing group (every token of a step) and the gradients of the
 *               non-expert parameters;
 *   COMM_EP     the EP consecutive ranks r with the same r / EP: they share one copy of every
 *               expert, rank p of the group owning experts [p E/EP, (p+1) E/EP) of each MoE layer,
 *               and exchange token rows by all-to-all;
 *   COMM_DP     the DP ranks r with the same r % EP: replicas of the same experts, whose expert
 *               gradients are summed.
 * Without MPI, or before comm_init, every group has one rank.
 *
 * Errors: a failed collective is an environmental failure that the other ranks cannot recover from
 * (they would wait forever), so the MPI implementation aborts the whole job (MPI_ERRORS_ARE_FATAL).
 */
#ifndef MOELM_BACKEND_COMM_H
#define MOELM_BACKEND_COMM_H

#include <stddef.h>
#include <stdint.h>
#include "moelm.h"

typedef enum { COMM_WORLD = 0, COMM_EP, COMM_DP, COMM__COUNT } CommGroup;

/* Starts MPI (when built with it and not yet started) and builds the groups for an expert-parallel
 * degree ep (1: data parallel only). MOELM_ERR_CONFIG when ep does not divide the world size.
 * Safe to call again (later calls only rebuild the groups). */
moelm_status comm_init(int ep);
/* Ends MPI when comm_init started it. */
void comm_finalize(void);
/* Ends every rank of the job with this exit code (a rank that fails alone would leave the others
 * blocked in a collective). Returns only without MPI or with one rank. */
void comm_abort(int code);

int comm_rank(CommGroup g);
int comm_size(CommGroup g);
int comm_is_mpi(void);               /* 1 when built with MPI */

/* buf[n] = sum over the group's ranks of buf[n], in place. */
void comm_allreduce_f32(CommGroup g, float *buf, size_t n);
void comm_allreduce_f64(CommGroup g, double *buf, size_t n);
void comm_allreduce_i32(CommGroup g, int *buf, int n);
/* out[n] = sum of in[n] over the ranks before this one in the group (0 on rank 0). */
void comm_exscan_i32(CommGroup g, const int *in, int *out, int n);
/* Point to point (MPI_Send, MPI_Recv; messages between two ranks arrive in the order sent): buf[n]
 * to rank `to` of the group, and into buf[n] from rank `from`. Only over several ranks. */
void comm_send_f32(CommGroup g, const float *buf, size_t n, int to);
void comm_recv_f32(CommGroup g, float *buf, size_t n, int from);
/* Sends send[q*n .. q*n+n-1] to rank q and receives rank q's block into recv[q*n ..]. */
void comm_alltoall_i32(CommGroup g, const int *send, int *recv, int n);
/* Sends scount[q] floats from send + sdispl[q] to rank q; receives rcount[q] floats from rank q at
 * recv + rdispl[q] (MPI_Alltoallv). Counts and displacements in floats. */
void comm_alltoallv_f32(CommGroup g, const float *send, const int *scount, const int *sdispl,
                        float *recv, const int *rcount, const int *rdispl);
/* The same for ints (counts and displacements in ints). */
void comm_alltoallv_i32(CommGroup g, const int *send, const int *scount, const int *sdispl,
                        int *recv, const int *rcount, const int *rdispl);
void comm_bcast_f64(CommGroup g, double *buf, int n, int root);
void comm_barrier(CommGroup g);

/* Bytes this rank has sent to other ranks by all-to-all (comm_alltoall*) since the start; the
 * benchmark reads it. */
uint64_t comm_alltoall_bytes(void);

#endif
