/* hooks.c: the test hooks (see hooks.h); empty unless built with -DMOELM_TEST_HOOKS. */
#include "train/hooks.h"

#ifdef MOELM_TEST_HOOKS
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/comm.h"

void hook_begin(void) {
    const char *fa = getenv("MOELM_FAIL_ALLOC_AFTER");
    if (fa && atol(fa) > 0) moelm_alloc_fail_after(atol(fa));
}

void hook_kill_rank(long step) {
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

void hook_nonfinite(Model *m, float *loss, long step) {
    static int parsed, grad_only;
    static long at;
    if (!parsed) {
        const char *e = getenv("MOELM_INJECT_NAN_STEP");
        char *end;
        if (e && *e) {
            at = strtol(e, &end, 10);
            grad_only = !strcmp(end, ":grad");
        }
        parsed = 1;
    }
    if (at <= 0 || step != at) return;
    if (!grad_only) {
        *loss = NAN;
        return;
    }
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].trainable) {
            m->grads[m->tensors[i].offset] = INFINITY;
            return;
        }
}

int hook_disk_full(long step) {
    static int parsed;
    static long at;
    if (!parsed) {
        const char *e = getenv("MOELM_FULL_DISK_AT_STEP");
        at = e ? atol(e) : 0;
        parsed = 1;
    }
    return at > 0 && step == at;
}

#else

void hook_begin(void) {}
void hook_kill_rank(long step) { (void)step; }
void hook_nonfinite(Model *m, float *loss, long step) { (void)m; (void)loss; (void)step; }
int hook_disk_full(long step) { (void)step; return 0; }

#endif
