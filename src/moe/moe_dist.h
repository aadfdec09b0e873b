/* moe_dist.h: the MoE layer across ranks (internal to src/moe; moe.c calls these at its seams).
 *
 * Routing group. Over W ranks the routing group is the whole global batch: every token of every rank
 * of the step, ordered rank by rank (rank r holds rows r B/W .. of the global batch). Capacity is
 * computed from its Ng tokens, drop priority is the one-process order over it (all first choices in
 * token order, then all second choices, ...), and the auxiliary losses average over it. So W ranks
 * route exactly as one process routes the global batch (docs/SCALING.md).
 *
 * Expert parallelism (COMM_EP of P ranks): after dispatch each rank's rows, already grouped by expert
 * and so by owner, go to the owners (counts by MPI_Alltoall, rows by MPI_Alltoallv); the owner lays
 * them out expert-major (for expert e: peer 0's rows, peer 1's, ...), runs its experts, and the
 * results travel back the same way. The backward sends the gradients of the expert outputs the same
 * way and brings back those of the expert inputs.
 *
 * Dimensions: E experts, KS slots per token, C d_model, P ranks of COMM_EP, EL = E / P experts per rank.
 */
#ifndef MOELM_MOE_DIST_H
#define MOELM_MOE_DIST_H

#include "moe/moe.h"

/* a->kpos[k*E + e] = the drop-priority position, in the whole routing group, of this rank's first
 * slot k that chose e (slots that chose e before it: every rank's slots k' < k and the earlier ranks'
 * slots k). Reads a->expert[N, KS]; a collective over COMM_WORLD. */
void moe_dist_positions(MoEActs *a, int N, int E);

/* Forward direction: rows[S, C] of this rank, grouped by expert (a->offsets), to the owners' slabs
 * owner[ , C] laid out by a->ep_off. plan = 1 (the forward's first call) first exchanges the counts
 * and fills ep_send, ep_recv, ep_off and the all-to-all counts; later calls reuse them. */
void moe_ep_to_owners(MoEActs *a, const MoEConfig *cfg, const float *rows, float *owner, int plan);

/* The rows' slot ids (a->row_id, [S]) the same way, into owner[] laid out as the rows (a->ep_row_id),
 * after the forward's moe_ep_to_owners: the owner keys each row's expert dropout by them. */
void moe_ep_ids_to_owners(MoEActs *a, const MoEConfig *cfg, const int *ids, int *owner);

/* Back direction: owner[ , C] (laid out by a->ep_off) to this rank's rows[S, C]. */
void moe_ep_from_owners(MoEActs *a, const MoEConfig *cfg, const float *owner, float *rows);

#endif
