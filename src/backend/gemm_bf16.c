/* gemm_bf16.c: bf16-operand, float-accumulating GEMM: packing, the three kernels, the blocked driver.
 * See gemm_bf16.h for the order of the sums and the error bound.
 *
 * Blocking (BLIS's): for each block of GEMM_BF16_KC k, B's columns are packed in panels of NR
 * (pairs of k in a 32-bit word, [k/2][NR] per panel; gemm_bf16_packed reads a panel that was packed
 * once over all of K) and A's rows in panels of MR ([k/2][MR], the same pairs), BF16_MC rows at a
 * time; a kernel call multiplies one A panel by one B panel into an MR x NR tile of C. The B panel
 * (KC/2 x NR words, 32 KiB) stays in L1 while the A panels of a block (60 KiB) pass; a block of B
 * columns (BF16_NC) stays in L2.
 *
 * Not here: float products (gemm.c), choosing bf16 (the model decides, src/model/model.c).
 */
#include "gemm_bf16.h"

#include <pthread.h>
#include <stdlib.h>
#include "common/util.h"
#ifdef _OPENMP
#include <omp.h>
#endif

enum { MR = GEMM_BF16_MR, NR = GEMM_BF16_NR, KC = GEMM_BF16_KC };
#define BF16_MC 120           /* rows of A packed at a time (a multiple of MR) */
#define BF16_NC 512           /* columns of a float B packed at a time (a multiple of NR) */
#define BF16_PAR_MACS ((double)(1 << 22))   /* multiply-adds from which a product is cut over the threads */

/* ---- packing ------------------------------------------------------------------------------------ */

/* Two values as one word of a packed operand: lo (k even) in the low half, hi (k odd) in the high. */
static inline uint32_t pair16(float lo, float hi) { return (uint32_t)bf16_rne(lo) | (uint32_t)bf16_rne(hi) << 16; }

/* One panel of an operand, w words wide (MR rows of A, or NR columns of B): lines r0..r0+n-1 (n <= w)
 * over k0..k0+kc-1, as d[kp w + r] = pair(X(r, k0+2kp), X(r, k0+2kp+1)); lines past n and the k past
 * kc are zero. kmajor 0: line r's k lie side by side, X(r, k) = X[(r0+r) ldx + k] (A, or B stored
 * [N,K]); kmajor 1: a pair is two rows of the store, X(r, k) = X[k ldx + r0+r] (A stored [K,M], or B). */
static inline __attribute__((always_inline)) void pack_panel(uint32_t *d, int w, int kmajor, const float *X, int ldx,
                                                               int r0, int n, int k0, int kc) {
    int kh = kc / 2, kp_n = (kc + 1) / 2;
    if (!kmajor) {
        for (int r = 0; r < w; r++) {
            if (r >= n) {
                for (int kp = 0; kp < kp_n; kp++) d[(size_t)kp * w + r] = 0;
                continue;
            }
            const float *row = X + (size_t)(r0 + r) * ldx + k0;
            for (int kp = 0; kp < kh; kp++) d[(size_t)kp * w + r] = pair16(row[2 * kp], row[2 * kp + 1]);
            if (kc & 1) d[(size_t)kh * w + r] = pair16(row[kc - 1], 0.0f);
        }
    } else {
        for (int kp = 0; kp < kp_n; kp++) {
            const float *x0 = X + (size_t)(k0 + 2 * kp) * ldx + r0;
            uint32_t *dk = d + (size_t)kp * w;
            if (2 * kp + 1 < kc) {
                const float *x1 = x0 + ldx;
                for (int r = 0; r < n; r++) dk[r] = pair16(x0[r], x1[r]);
            } else {
                for (int r = 0; r < n; r++) dk[r] = pair16(x0[r], 0.0f);
            }
            for (int r = n; r < w; r++) dk[r] = 0;
        }
    }
}

/* rows i0..i0+mr-1 of op(A) as an A panel */
static void pack_a_panel(uint32_t *d, int transA, const float *A, int lda, int i0, int mr, int k0, int kc) {
    if (transA) pack_panel(d, MR, 1, A, lda, i0, mr, k0, kc);
    else pack_panel(d, MR, 0, A, lda, i0, mr, k0, kc);
}

/* columns j0..j0+nc-1 of op(B) as a B panel */
static void pack_b_panel(uint32_t *d, int transB, const float *B, int ldb, int j0, int nc, int k0, int kc) {
    if (transB) pack_panel(d, NR, 0, B, ldb, j0, nc, k0, kc);
    else pack_panel(d, NR, 1, B, ldb, j0, nc, k0, kc);
}

size_t gemm_bf16_packed_size(int K, int N) {
    size_t panels = ((size_t)N + NR - 1) / NR;
    return panels * (size_t)((K + 1) / 2) * NR * 2;
}

size_t gemm_bf16_packed_offset(int K, int n0) {
    CHECK(n0 % NR == 0);
    return gemm_bf16_packed_size(K, n0);
}

void gemm_bf16_pack(uint16_t *Bp, int transB, int K, int N, const float *B, int ldb) {
    int panels = (N + NR - 1) / NR;
    size_t stride = (size_t)((K + 1) / 2) * NR;   /* words a panel */
    uint32_t *d = (uint32_t *)(void *)Bp;
    /* each panel is written by one thread */
#pragma omp parallel for schedule(static) if ((size_t)K * N >= ((size_t)1 << 16))
    for (int p = 0; p < panels; p++) {
        int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
        pack_b_panel(d + (size_t)p * stride, transB, B, ldb, j0, nc, 0, K);
    }
}

size_t bf16_weight_size(int OC, int C) { return gemm_bf16_packed_size(C, OC) + gemm_bf16_packed_size(OC, C); }

void bf16_weight_bind(Bf16Weight *w, uint16_t *mem, int E, int OC, int C) {
    w->fwd = mem;
    w->bwd = mem + (size_t)E * gemm_bf16_packed_size(C, OC);
}

Bf16Weight bf16_weight_expert(const Bf16Weight *slab, int e, int OC, int C) {
    Bf16Weight w = {slab->fwd + (size_t)e * gemm_bf16_packed_size(C, OC), slab->bwd + (size_t)e * gemm_bf16_packed_size(OC, C)};
    return w;
}

void bf16_weight_pack(const Bf16Weight *w, const float *W, int E, int OC, int C) {
    /* experts side by side (each written by one thread); one matrix's panels inside gemm_bf16_pack */
#pragma omp parallel for schedule(dynamic, 1) if (E > 1)
    for (int e = 0; e < E; e++) {
        Bf16Weight we = bf16_weight_expert(w, e, OC, C);
        const float *We = W + (size_t)e * OC * C;
        gemm_bf16_pack(we.fwd, 1, C, OC, We, C);   /* B = W^T [C, OC], stored as W */
        gemm_bf16_pack(we.bwd, 0, OC, C, We, C);   /* B = W [OC, C] */
    }
}

/* ---- kernels: C tile [mr, ncols] (mr <= MR, ncols <= NR) from kp_n pairs of k -------------------- */

/* The tile's update of C: first block of k: C = alpha acc + beta C (C not read when beta == 0);
 * later blocks: C = C + alpha acc. Both kernels compute these expressions in this order. */
typedef void (*TileFn)(int kp_n, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr, int ncols,
                       float alpha, float beta, int first);

static inline float word_lo(uint32_t u) { u <<= 16; float f; memcpy(&f, &u, sizeof f); return f; }
static inline float word_hi(uint32_t u) { u &= 0xffff0000u; float f; memcpy(&f, &u, sizeof f); return f; }

/* The portable kernel, 16 columns at a time: acc += a_odd b_odd, then += a_even b_even (each product
 * of two bf16 is exact in float, so this is vdpbf16ps's arithmetic, subnormals kept). */
static void tile_portable(int kp_n, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr, int ncols,
                          float alpha, float beta, int first) {
    for (int c0 = 0; c0 < ncols; c0 += 16) {
        int w = ncols - c0 < 16 ? ncols - c0 : 16;
        float acc[MR][16] = {{0}};
        for (int kp = 0; kp < kp_n; kp++) {
            const uint32_t *bk = b + (size_t)kp * NR + c0;
            float bl[16], bh[16];
            for (int j = 0; j < 16; j++) {
                bl[j] = word_lo(bk[j]);
                bh[j] = word_hi(bk[j]);
            }
            for (int i = 0; i < MR; i++) {
                float al = word_lo(a[(size_t)kp * MR + i]), ah = word_hi(a[(size_t)kp * MR + i]);
                for (int j = 0; j < 16; j++) acc[i][j] = (acc[i][j] + ah * bh[j]) + al * bl[j];
            }
        }
        for (int i = 0; i < mr; i++) {
            float *c = C + (size_t)i * ldc + c0;
            for (int j = 0; j < w; j++) {
                float r = alpha * acc[i][j];
                c[j] = !first ? c[j] + r : beta == 0.0f ? r : r + beta * c[j];
            }
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BF16_HAVE_FAST 1
#define BF16_TARGET __attribute__((target("avx512f,avx512bf16")))

/* An MR x 16 nv tile with vdpbf16ps: per pair of k, nv vectors of B (16 columns x 2 k each) and one
 * broadcast word of A per row; acc[i][v] += A[i] . B[v] over the pair (odd product first). */
BF16_TARGET static inline __attribute__((always_inline)) void tile_avx(const int nv, int kp_n, const uint32_t *a,
                                                                      const uint32_t *b, float *C, int ldc, int mr,
                                                                      int ncols, float alpha, float beta, int first) {
    __m512 acc[MR][4];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    for (int kp = 0; kp < kp_n; kp++) {
        __m512i bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = _mm512_loadu_si512((const void *)(b + (size_t)kp * NR + 16 * v));
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m512i ai = _mm512_set1_epi32((int)a[(size_t)kp * MR + i]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)ai, (__m512bh)bv[v]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) {
            int w = ncols - 16 * v;
            __mmask16 m = w >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << w) - 1u);
            float *c = C + (size_t)i * ldc + 16 * v;
            __m512 r = _mm512_mul_ps(va, acc[i][v]);
            if (!first) r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c), r);
            else if (beta != 0.0f) r = _mm512_add_ps(r, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, c)));
            _mm512_mask_storeu_ps(c, m, r);
        }
}

BF16_TARGET static void tile_fast(int kp_n, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr, int ncols,
                                  float alpha, float beta, int first) {
    switch ((ncols + 15) / 16) {   /* vectors of B that hold columns: the others are not multiplied */
    case 1: tile_avx(1, kp_n, a, b, C, ldc, mr, ncols, alpha, beta, first); break;
    case 2: tile_avx(2, kp_n, a, b, C, ldc, mr, ncols, alpha, beta, first); break;
    case 3: tile_avx(3, kp_n, a, b, C, ldc, mr, ncols, alpha, beta, first); break;
    default: tile_avx(4, kp_n, a, b, C, ldc, mr, ncols, alpha, beta, first); break;
    }
}
#endif

#ifdef BF16_HAVE_FAST

/* The portable kernel's arithmetic on AVX2 (a CPU without AVX-512 BF16): the same sums in the same
 * order (an FMA of an exact product rounds as the add does), 16 columns at a time in two vectors; B's
 * words widened per pair of k (the high half masked, the low half shifted up), A's once per call into
 * aw [kp][MR][odd, even]. Three rows at a time (6 sums, 4 widened B vectors and 2 of A: 12 of the 16
 * registers; all six rows at once spill). */
#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define AVX2_INLINE AVX2_TARGET static inline __attribute__((always_inline))

AVX2_INLINE void avx2_rows3(int kp_n, const float *aw, const uint32_t *b, __m256 out[6]) {
    const __m256i himask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00;
    for (int kp = 0; kp < kp_n; kp++) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(b + (size_t)kp * NR));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(b + (size_t)kp * NR + 8));
        __m256 h0 = _mm256_castsi256_ps(_mm256_and_si256(w0, himask)), l0 = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16));
        __m256 h1 = _mm256_castsi256_ps(_mm256_and_si256(w1, himask)), l1 = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16));
        const float *ak = aw + (size_t)kp * MR * 2;
        __m256 ah = _mm256_broadcast_ss(ak), al = _mm256_broadcast_ss(ak + 1);
        s00 = _mm256_fmadd_ps(al, l0, _mm256_fmadd_ps(ah, h0, s00));
        s01 = _mm256_fmadd_ps(al, l1, _mm256_fmadd_ps(ah, h1, s01));
        ah = _mm256_broadcast_ss(ak + 2), al = _mm256_broadcast_ss(ak + 3);
        s10 = _mm256_fmadd_ps(al, l0, _mm256_fmadd_ps(ah, h0, s10));
        s11 = _mm256_fmadd_ps(al, l1, _mm256_fmadd_ps(ah, h1, s11));
        ah = _mm256_broadcast_ss(ak + 4), al = _mm256_broadcast_ss(ak + 5);
        s20 = _mm256_fmadd_ps(al, l0, _mm256_fmadd_ps(ah, h0, s20));
        s21 = _mm256_fmadd_ps(al, l1, _mm256_fmadd_ps(ah, h1, s21));
    }
    out[0] = s00; out[1] = s01; out[2] = s10; out[3] = s11; out[4] = s20; out[5] = s21;
}

AVX2_TARGET static void tile_avx2(int kp_n, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr, int ncols,
                                  float alpha, float beta, int first) {
    float aw[KC / 2 * MR * 2];
    for (int t = 0; t < kp_n * MR; t++) {
        aw[2 * t] = word_hi(a[t]);
        aw[2 * t + 1] = word_lo(a[t]);
    }
    for (int c0 = 0; c0 < ncols; c0 += 16) {
        __m256 acc[12];
        avx2_rows3(kp_n, aw, b + c0, acc);
        if (mr > 3) avx2_rows3(kp_n, aw + 6, b + c0, acc + 6);
        int w = ncols - c0 < 16 ? ncols - c0 : 16;
        for (int i = 0; i < mr; i++) {
            float r[16], *c = C + (size_t)i * ldc + c0;
            _mm256_storeu_ps(r, acc[2 * i]);
            _mm256_storeu_ps(r + 8, acc[2 * i + 1]);
            for (int j = 0; j < w; j++) {
                float v = alpha * r[j];
                c[j] = !first ? c[j] + v : beta == 0.0f ? v : v + beta * c[j];
            }
        }
    }
}
#endif

static int g_force_portable;

/* 2: AVX-512 BF16, 1: AVX2 and FMA, 0: neither (or not x86-64) */
static int cpu_level(void) {
#ifdef BF16_HAVE_FAST
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") ? 2
              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    }
    return level;
#else
    return 0;
#endif
}

int gemm_bf16_fast(void) { return cpu_level() == 2 && !g_force_portable; }

const char *gemm_bf16_kernel(void) {
    if (g_force_portable) return "portable";
    return cpu_level() == 2 ? "avx512bf16" : cpu_level() == 1 ? "avx2" : "portable";
}

void gemm_bf16_force_portable(int on) { g_force_portable = on; }

static TileFn tile_fn(void) {
#ifdef BF16_HAVE_FAST
    if (!g_force_portable && cpu_level() == 2) return tile_fast;
    if (!g_force_portable && cpu_level() == 1) return tile_avx2;
#endif
    return tile_portable;
}

/* ---- the blocked driver ------------------------------------------------------------------------- */

/* Per-thread packing buffers: [BF16_MC/MR panels of A][KC/2][MR] then [BF16_NC/NR panels of B][KC/2][NR]
 * words, allocated on a thread's first product and freed when the thread ends (libgomp ends the pool's
 * surplus threads when a team shrinks, and starts new ones when it grows again). */
enum { ABUF_WORDS = BF16_MC * KC / 2, BBUF_WORDS = BF16_NC * KC / 2 };
static _Thread_local uint32_t *t_buf;
static pthread_key_t g_buf_key;           /* its destructor frees a thread's buffer at the thread's end */
static pthread_once_t g_buf_once = PTHREAD_ONCE_INIT;
static long g_buf_allocs;                 /* buffers allocated so far (gemm_bf16_buffers) */

static void buf_key_init(void) { CHECK(pthread_key_create(&g_buf_key, free) == 0); }

static uint32_t *thread_buf(void) {
    if (!t_buf) {
        void *p = NULL;
        pthread_once(&g_buf_once, buf_key_init);
        if (posix_memalign(&p, 64, sizeof(uint32_t) * (ABUF_WORDS + BBUF_WORDS)) != 0) return NULL;
        pthread_setspecific(g_buf_key, p);
        t_buf = p;
        __atomic_add_fetch(&g_buf_allocs, 1, __ATOMIC_RELAXED);
    }
    return t_buf;
}

long gemm_bf16_buffers(void) { return __atomic_load_n(&g_buf_allocs, __ATOMIC_RELAXED); }

int gemm_bf16_reserve(void) {
    int fail = 0;
#pragma omp parallel reduction(| : fail)
    fail |= thread_buf() == NULL;
    return fail ? -1 : 0;
}

/* C[M, nc] (+)= alpha op(A)[M, k0..k0+kc) B-panels: panel q of B at b + q bstride words, its first
 * pair of k at b. first: this is the first block of k (beta applies). */
static void run_block(TileFn tile, int M, int nc, int kc, int k0, int transA, const float *A, int lda,
                      const uint32_t *b, size_t bstride, float alpha, float beta, int first, float *C, int ldc,
                      uint32_t *abuf) {
    int kp_n = (kc + 1) / 2;
    for (int ic = 0; ic < M; ic += BF16_MC) {
        int mc = M - ic < BF16_MC ? M - ic : BF16_MC;
        for (int ir = 0; ir < mc; ir += MR)
            pack_a_panel(abuf + (size_t)(ir / MR) * kp_n * MR, transA, A, lda, ic + ir, mc - ir < MR ? mc - ir : MR, k0, kc);
        for (int jr = 0; jr < nc; jr += NR) {
            const uint32_t *bp = b + (size_t)(jr / NR) * bstride;
            int ncols = nc - jr < NR ? nc - jr : NR;
            for (int ir = 0; ir < mc; ir += MR)
                tile(kp_n, abuf + (size_t)(ir / MR) * kp_n * MR, bp, C + (size_t)(ic + ir) * ldc + jr, ldc,
                     mc - ir < MR ? mc - ir : MR, ncols, alpha, beta, first);
        }
    }
}

/* C = beta C where K = 0 (no products): as gemm() does */
static void scale_c(int M, int N, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

/* One product on the calling thread: B in float (Bp NULL) or packed (Bp). */
static void bf16_serial(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, const uint16_t *Bp, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { scale_c(M, N, beta, C, ldc); return; }
    uint32_t *buf = thread_buf();
    CHECK(buf != NULL);   /* 300 KiB a thread: gemm_bf16_reserve reports running out beforehand */
    uint32_t *abuf = buf, *bbuf = buf + ABUF_WORDS;
    TileFn tile = tile_fn();
    if (Bp) {
        size_t bstride = (size_t)((K + 1) / 2) * NR;
        const uint32_t *b = (const uint32_t *)(const void *)Bp;
        for (int pc = 0; pc < K; pc += KC)
            run_block(tile, M, N, K - pc < KC ? K - pc : KC, pc, transA, A, lda, b + (size_t)(pc / 2) * NR, bstride,
                      alpha, beta, pc == 0, C, ldc, abuf);
        return;
    }
    for (int jc = 0; jc < N; jc += BF16_NC) {
        int nc = N - jc < BF16_NC ? N - jc : BF16_NC;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            size_t bstride = (size_t)((kc + 1) / 2) * NR;
            for (int jr = 0; jr < nc; jr += NR)
                pack_b_panel(bbuf + (size_t)(jr / NR) * bstride, transB, B, ldb, jc + jr, nc - jr < NR ? nc - jr : NR, pc, kc);
            run_block(tile, M, nc, kc, pc, transA, A, lda, bbuf, bstride, alpha, beta, pc == 0, C + jc, ldc, abuf);
        }
    }
}

/* Outside a parallel region with several threads, a product of at least BF16_PAR_MACS is cut into one
 * part a thread: by columns in whole panels when there are enough, else by rows. Each part is a whole
 * product of its own (the same sums: see gemm_bf16.h), and writes only its part of C. */
static void bf16_any(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, const uint16_t *Bp, float beta, float *C, int ldc) {
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    if (nt > 1 && !omp_in_parallel() && (double)M * N * K >= BF16_PAR_MACS) {
        int panels = (N + NR - 1) / NR, by_cols = panels >= nt;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int t = 0; t < nt; t++) {
            if (by_cols) {
                int p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
                int n0 = p0 * NR, n1 = p1 * NR < N ? p1 * NR : N;
                const float *Bt = B ? (transB ? B + (size_t)n0 * ldb : B + n0) : NULL;
                const uint16_t *Bpt = Bp ? Bp + gemm_bf16_packed_offset(K, n0) : NULL;
                bf16_serial(transA, transB, M, n1 - n0, K, alpha, A, lda, Bt, ldb, Bpt, beta, C + n0, ldc);
            } else {
                int m0 = M * t / nt, m1 = M * (t + 1) / nt;
                const float *At = transA ? A + m0 : A + (size_t)m0 * lda;
                bf16_serial(transA, transB, m1 - m0, N, K, alpha, At, lda, B, ldb, Bp, beta, C + (size_t)m0 * ldc, ldc);
            }
        }
        return;
    }
#endif
    bf16_serial(transA, transB, M, N, K, alpha, A, lda, B, ldb, Bp, beta, C, ldc);
}

void gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    bf16_any(transA, transB, M, N, K, alpha, A, lda, B, ldb, NULL, beta, C, ldc);
}

void gemm_bf16_packed(int transA, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *Bp,
                      float beta, float *C, int ldc) {
    bf16_any(transA, 0, M, N, K, alpha, A, lda, NULL, 0, Bp, beta, C, ldc);
}

void gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                float a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += (double)word_hi((uint32_t)bf16_rne(a) << 16) * (double)word_hi((uint32_t)bf16_rne(b) << 16);
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * (double)*c));
        }
}
