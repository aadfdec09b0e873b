/* runtime.h: the thread count, the BLAS in use, and the environment the BLAS and OpenMP
 * runtimes read when they load. Implemented in gemm.c.
 */
#ifndef MOELM_RUNTIME_H
#define MOELM_RUNTIME_H


/* Threads for both OpenMP loops and BLAS (one pool with the OpenMP build of OpenBLAS). */
void backend_set_threads(int n);
int backend_threads(void);
const char *backend_name(void);

/* The processors this process may run on (sched_getaffinity; 1 when unknown), and the machine's
 * 1-minute load average (/proc/loadavg; NaN when unreadable): how crowded the cores are. */
int backend_cpus(void);
double backend_load(void);   /* e.g. "openblas (Haswell; ...)" or "reference (no BLAS)" */

/* The environment the BLAS and OpenMP runtimes read once, when they load (before main() runs).
 * libgomp by default lets a thread that reaches a barrier spin for up to ~300k iterations: on a
 * shared machine (more runnable threads than cores) the spinner holds the core its descheduled
 * sibling needs, and every parallel region ends late. Unless the user chose (OMP_WAIT_POLICY or
 * GOMP_SPINCOUNT set), this sets a short spin, and names the BLAS kernel the CPU supports unless
 * OPENBLAS_CORETYPE is set. Returns 1 when it set something: the runtimes see it only in a process
 * started afterwards, so the CLI re-executes itself once (src/cli/main.c). Measured on the 2-core
 * machine under load: training 2.1-2.6x faster at 2 threads, the same bits (bench/RESULTS.md). */
int backend_runtime_env(void);

#endif
