/* gemm.h: the one matrix-multiply interface of moelm.
 *
 * Row-major single-precision GEMM:  C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C[M,N]
 * where op(X) is X or X^T (trans != 0). lda/ldb/ldc are row strides of the stored matrices.
 * gemm_ref is the plain reference, always compiled. gemm() goes to OpenBLAS when built with BLAS
 * (the default) and to gemm_ref otherwise (make BLAS=0). Nothing above src/backend/ knows which.
 */
#ifndef MOELM_GEMM_H
#define MOELM_GEMM_H

#include <stddef.h>
#include <stdint.h>

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);

void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* One gemm() call's arguments, for gemm_pair. With bf16 set it is a gemm_bf16() call instead (bf16
 * operands, float sums: gemm_bf16.h), with Bp set a gemm_bf16_packed() call on that packed B (B,
 * ldb and transB unused). */
typedef struct {
    int transA, transB, M, N, K;
    float alpha;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    float beta;
    float *C;
    int ldc;
    int bf16;
    const uint16_t *Bp;
} GemmCall;

/* Two independent products (neither writes what the other reads), e.g. a linear layer's input
 * gradient and weight gradient. With two threads, outside any parallel region, and both products
 * small (a GEMM of a few hundred MFLOP does not scale to two threads, PERF-NOTES), they run side by
 * side, one thread each, BLAS single-threaded inside the region; otherwise one after the other: each
 * product above that size (2^30 multiply-adds) cut in two halves along the longer side of C that run
 * side by side (with two threads outside a region), a smaller one threaded by BLAS. A product whose
 * C is NULL is not asked for: the other runs alone. No way of running changes an element's sum. */
void gemm_pair(const GemmCall *a, const GemmCall *b);
/* gemm() with A not transposed, its rows cut in two halves that gemm_pair runs side by side when it
 * would (each half computed whole by one thread; BLAS may round a half's shape otherwise than the
 * whole, so the bits can differ from one gemm() call); a larger product as gemm_pair runs one. */
void gemm_halves(int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
/* gemm_halves of any call with A not transposed (a bf16 one included) */
void gemm_halves_call(const GemmCall *g);

/* y[N] = W[N,K] x[K] (+ bias[N]; bias may be NULL), W row-major as nn.Linear stores it: matmul_forward
 * for one row, with the same bits as gemm() gives it under BLAS, on the calling thread (inside a
 * parallel region or not). Each y[n] is computed from row n alone, so a product split by rows over a
 * team (each thread calling it on its rows) has the bits of the whole. */
void gemv_one(float *y, const float *x, const float *W, const float *bias, int N, int K);

/* The words of a[0..n) (whole blocks of 64) folded by XOR, read front to back with the widest loads:
 * the plainest streaming read, against which `moelm bench` measures generation; on the calling thread. */
uint32_t read_words(const uint32_t *a, size_t n);

/* A barrier for the threads of one parallel region: each spins (then yields the core, so a machine with
 * more runnable threads than cores still progresses) until all nthreads have arrived. libgomp's barrier
 * makes a futex system call on every release (1.2-1.7 us in this VM against 0.4 us here); generation
 * passes ~30 barriers per token. Zero-initialised before first use; one region at a time. */
typedef struct {
    int arrived;
    char pad[60];     /* the two counters on different cache lines */
    int generation;
    char pad2[60];
} TeamBarrier;
void team_barrier_wait(TeamBarrier *b, int nthreads);

/* bfloat16 (the upper 16 bits of a float) for generation's weights: bf16_round rounds to nearest,
 * ties to even (NaN stays NaN, Inf stays Inf); bf16_to_f32 is exact. gemv_one_bf16 is gemv_one with
 * W in bf16: each weight widened exactly, products and sums in float, half the bytes to stream; each
 * y[n] again from row n alone. */
uint16_t bf16_round(float f);
float bf16_to_f32(uint16_t h);
void bf16_from_f32(uint16_t *dst, const float *src, size_t n);
void gemv_one_bf16(float *y, const float *x, const uint16_t *W, const float *bias, int N, int K);

/* y[i] = bias[i] + sum over the cnt units k = idx[j] (ascending) of x[k] Wt[k ldw + i], for i < n: a
 * product after a ReLU in generation, against (a block of columns of) the matrix stored down-major
 * (Wt [K, ldw], the transpose of nn.Linear's layout), with idx the nonzero units of x (nz_index: its
 * indices k < K with x[k] != 0, ascending, into idx [K]; returns their count), so that a zero unit's
 * row of weights is never read. The sum of gemv_one in another order: one FMA a unit, in order, from
 * the bias, so every y[i] gets the same bits whichever block or thread computes it. A zero x[k] drops
 * its row even where a weight is Inf or NaN (0 * Inf would be NaN); a NaN x[k] is kept. On this
 * machine skipping pays where each row is read in one run of >= 1 KiB (n = ldw = 256: with half the
 * rows zero, 1.5x gemv_one's speed over the same matrix; with 95%, 8x); runs of 512 bytes read about
 * as slowly as the whole matrix (the prefetcher fetches the skipped rows anyway), and two threads
 * each reading half of every row, or four rows read side by side, are slower than gemv_one. The
 * _bf16 form reads bf16 weights, each widened exactly: rows of 256 are 512 bytes, and pay only when
 * most of x is zero (0.76x gemv_one_bf16 at half, 1.4-1.7x at three quarters); rows of 1024 (2 KiB)
 * pay at half. */
int nz_index(const float *x, int K, int *idx);
void gemv_t_nz(float *y, const float *x, const int *idx, int cnt, const float *Wt, int ldw, const float *bias, int n);
void gemv_t_nz_bf16(float *y, const float *x, const int *idx, int cnt, const uint16_t *Wt, int ldw, const float *bias, int n);

/* Threads for both OpenMP loops and BLAS (one pool with the OpenMP build of OpenBLAS). */
void backend_set_threads(int n);
int backend_threads(void);
const char *backend_name(void);

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
