/* hooks.h: the faults the tests inject, compiled into test builds only.
 *
 * hooks.c is built twice: into the library with empty bodies (the shipped ./moelm reads none of
 * these variables), and with -DMOELM_TEST_HOOKS into the object that build/moelm-test links ahead of
 * the library, where they read the environment once:
 *   MOELM_FAIL_ALLOC_AFTER=N        the N-th allocation of the library fails (tests/test_faults.sh)
 *   MOELM_INJECT_NAN_STEP=N         train_step N (1-based) sees a NaN loss; N:grad, an Inf gradient
 *                                   instead; either must be caught by that step's non-finite check
 *   MOELM_KILL_RANK_AT_STEP=R:S     rank R kills itself with SIGKILL in the middle of step S (after
 *                                   the forward's collectives, before the backward's), as a crashed
 *                                   node would (tests/test_mpi.sh); the last checkpoint must survive
 *   MOELM_FULL_DISK_AT_STEP=N       the metrics.jsonl record of step N is written in part and then
 *                                   fails with ENOSPC, as on a disk that fills up (tests/test_faults.sh)
 * Unset (the normal case), nothing fires.
 */
#ifndef MOELM_TRAIN_HOOKS_H
#define MOELM_TRAIN_HOOKS_H

#include "model/model.h"

/* At the start of main: arms MOELM_FAIL_ALLOC_AFTER. */
void hook_begin(void);
/* In train_step after the forward: MOELM_KILL_RANK_AT_STEP. */
void hook_kill_rank(long step);
/* In train_step after the gradients are reduced: MOELM_INJECT_NAN_STEP (sets *loss or a gradient). */
void hook_nonfinite(Model *m, float *loss, long step);
/* Before each write(2) of step's metrics record: 1 when MOELM_FULL_DISK_AT_STEP names step (the
 * writer then stores part of the record, and the next write fails). */
int hook_disk_full(long step);

#endif
