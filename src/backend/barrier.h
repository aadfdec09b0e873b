/* barrier.h: a spinning barrier for the threads of one OpenMP parallel region. Implemented in gemm.c.
 */
#ifndef MOELM_BARRIER_H
#define MOELM_BARRIER_H


/* A barrier for the threads of one parallel region: each spins (then yields the core, so a machine with
 * more runnable threads than cores still progresses) until all nthreads have arrived; generation
 * passes ~30 barriers per token, and libgomp's barrier makes a system call on every release (measured
 * against this one: bench/RESULTS.md, session 8). Zero-initialised before first use; one region at a
 * time. */
typedef struct {
    int arrived;
    char pad[60];     /* the two counters on different cache lines */
    int generation;
    char pad2[60];
} TeamBarrier;
void team_barrier_wait(TeamBarrier *b, int nthreads);

#endif
