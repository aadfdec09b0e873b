/* bench.c: `moelm bench` (see bench.h). Everything is sized and allocated before the timed loops;
 * the loops call exactly what a training step (train.c) and generation (inference.c) call. */
#include "train/bench.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "backend/gemm.h"
#include "backend/readprobe.h"
#include "backend/runtime.h"
#include "backend/gemm_bf16.h"
#include "io/fileio.h"
#include "data/span.h"
#include "model/encdec.h"
#include "model/llama_gguf.h"
#include "model/steps.h"
#include "optim/optim.h"
#include "train/step.h"
#include "train/train.h"

void bench_options_default(BenchOptions *o) {
    memset(o, 0, sizeof *o);
    o->config = "seed-switch";
    o->threads = 2;
    o->steps = 10;
    o->warmup = 2;
    o->vocab_size = 10000;
    o->n_gen = 100;
    o->peak = 1;
    o->peak_n = 2048;
    o->seed = 1;
}

/* Tokens per second of greedy generation: one prompt token, then n new ones through the KV cache.
 * A first pass warms the cache pages and the weights; then the median of GEN_PASSES timed passes (one
 * pass of 100 tokens lasts ~50 ms, over which this shared machine's speed moves by tens of percent;
 * bench/torch_ref.py times its generation the same way). */
enum { GEN_PASSES = 5 };

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double bench_generate(Model *m, KVCache *kv, int n, int first, Rng *r, float *scratch, double *skipped) {
    double tps[GEN_PASSES + 1];
    for (int rep = 0; rep <= GEN_PASSES; rep++) {
        kv_reset(kv);
        double t0 = time_now();
        model_step_kv(m, kv, first);
        for (int i = 0; i < n; i++) {
            int next = sample_token(kv->logits, m->cfg.vocab_size, 0.0f, 0, 1.0f, r, scratch);
            if (i + 1 < n) model_step_kv(m, kv, next);
        }
        tps[rep] = n / (time_now() - t0);
    }
    *skipped = kv_skipped_bytes(kv) / n;   /* a step's, over the last pass (n steps; greedy: as every pass) */
    qsort(tps + 1, GEN_PASSES, sizeof(double), cmp_double);
    return tps[1 + GEN_PASSES / 2];
}

/* --profile: a step's phases over the last pass (thread 0's times, its waits at barriers included),
 * each with the bytes of weights it read (bytes: kv_phase_bytes's, less the rows it skipped) and
 * their rate */
static void print_gen_phases(const KVCache *kv, int n, int bf16, const double bytes[KV_PHASES]) {
    double skipped[KV_PHASES], total = 0.0;
    kv_phase_skipped(kv, skipped);
    for (int p = 0; p < KV_PHASES; p++) total += kv->phase_s[p];
    printf("generate%s phases, a token:", bf16 ? " --bf16" : "");
    for (int p = 0; p < KV_PHASES; p++) {
        double sec = kv->phase_s[p] / n, read = bytes[p] - skipped[p] / n;
        if (bytes[p] == 0.0 || sec <= 0.0) continue;   /* a model without the phase */
        printf("%s %s %.1f us (%.0f%%, %.2f MB, %.0f GB/s)", p ? "," : "", kv_phase_names[p], 1e6 * sec,
               100.0 * kv->phase_s[p] / total, read / 1e6, read / sec / 1e9);
    }
    printf("\n");
}

/* ---- helpers ------------------------------------------------------------------------------------- */

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;   /* KiB on Linux */
}

/* Seconds of reps products C[M,N] = A[M,K] B[N,K]^T (the layout of matmul_forward) through gemm(),
 * or with bf16 through gemm_bf16() (bf16 operands packed per call, float sums), after one untimed,
 * into t[0..reps-1]. */
static moelm_status gemm_times(int M, int Nn, int K, int reps, double *t, int bf16) {
    float *A = moelm_malloc(sizeof(float) * (size_t)M * K), *Bm = moelm_malloc(sizeof(float) * (size_t)Nn * K);
    float *Cm = moelm_malloc(sizeof(float) * (size_t)M * Nn);
    if (!A || !Bm || !Cm) {
        moelm_free(A); moelm_free(Bm); moelm_free(Cm);
        return MOELM_ERR_NOMEM;
    }
    Rng r;
    rng_seed(&r, 7);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < (size_t)Nn * K; i++) Bm[i] = rng_uniform(&r) - 0.5f;
    memset(Cm, 0, sizeof(float) * (size_t)M * Nn);
    for (int i = -1; i < reps; i++) {   /* i = -1: the warm-up (pages, BLAS buffers, threads) */
        double t0 = time_now();
        if (bf16) gemm_bf16(0, 1, M, Nn, K, 1.0f, A, K, Bm, K, 0.0f, Cm, Nn);
        else gemm(0, 1, M, Nn, K, 1.0f, A, K, Bm, K, 0.0f, Cm, Nn);
        if (i >= 0) t[i] = time_now() - t0;
    }
    moelm_free(A); moelm_free(Bm); moelm_free(Cm);
    return MOELM_OK;
}

/* Seconds per pass of the plainest read of n words (a multiple of 64), read `passes` times over, into
 * t[0..reps-1], after one untimed pass: the threads take contiguous shares and read them front to back
 * (read_words), as a token step streams its weights. */
static uint32_t read_times(const uint32_t *a, size_t n, int passes, int reps, double *t) {
    uint32_t acc = 0;
    size_t blocks = n / 64;
    for (int i = -1; i < reps; i++) {
        double t0 = time_now();
        for (int p = 0; p < (i < 0 ? 1 : passes); p++) {
#pragma omp parallel reduction(^ : acc)
            {
#ifdef _OPENMP
                size_t nt = (size_t)omp_get_num_threads(), r = (size_t)omp_get_thread_num();
#else
                size_t nt = 1, r = 0;
#endif
                size_t lo = blocks * r / nt, hi = blocks * (r + 1) / nt;
                acc ^= read_words(a + 64 * lo, 64 * (hi - lo));
            }
        }
        if (i >= 0) t[i] = (time_now() - t0) / passes;
    }
    return acc;
}

/* The machine's read bandwidth (bytes/s) over the first `bytes` of the model's weights, base[held
 * bytes] (what a token step reads, in as many bytes and the same memory: no buffer of its own, so no
 * RSS added: the float parameters, or a GGUF file's Q8_0 blocks), reps samples into t[0..reps-1]: as
 * many passes per sample as make ~2 GB (3 to 100). */
static void read_bandwidth_times(const void *base, size_t held, double bytes, int reps, double *t) {
    size_t n = (size_t)(bytes / sizeof(uint32_t));
    if (n > held / sizeof(uint32_t)) n = held / sizeof(uint32_t);
    n &= ~(size_t)63;
    if (n == 0) {   /* fewer than 64 floats: nothing worth timing; the share is then printed as 0 */
        for (int i = 0; i < reps; i++) t[i] = 0.0;
        return;
    }
    double want = 2e9 / (4.0 * n);
    int passes = want < 3 ? 3 : want > 100 ? 100 : (int)want;
    volatile uint32_t sink = read_times((const uint32_t *)base, n, passes, reps, t);
    (void)sink;
    for (int i = 0; i < reps; i++) t[i] = 4.0 * n / t[i];
}

static double median_of(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

/* GFLOP/s of an M x N x K product at the median of n times (sorts t) */
static double median_gflops(int M, int Nn, int K, double *t, int n) {
    return 2.0 * M * Nn * K / median_of(t, n) / 1e9;
}

static moelm_status resolve_config(const BenchOptions *o, ModelConfig *cfg, TrainConfig *tc) {
    moelm_status st = train_resolve_config(o->config, o->sets, o->n_sets, cfg, tc);
    if (st) return st;
    if (o->batch_size > 0) tc->batch_size = o->batch_size;
    if (o->seq_len > 0) tc->seq_len = o->seq_len;
    if (cfg->vocab_size == 0) cfg->vocab_size = o->vocab_size;
    if (cfg->n_positions < tc->seq_len) cfg->n_positions = tc->seq_len;
    if (cfg->n_positions < o->n_gen + 1) cfg->n_positions = o->n_gen + 1;   /* the generation's context */
    return config_check(cfg);
}

/* ---- the run --------------------------------------------------------------------------------------- */

void bench_train(Model *m, Optimizer *opt, const TrainConfig *tc, const int *batches, int nbatch, int warmup, int steps,
                 BenchTrain *out) {
    int N = m->B * m->T;
    Trainer t = {m, opt, tc, 0};
    memset(out, 0, sizeof *out);
    for (int s = 0; s < warmup + steps; s++) {
        const int *inp = batches + (size_t)(s % nbatch) * 2 * N, *tgt = inp + N;
        StepResult r = train_step(&t, inp, tgt, tc->lr, s + 1);
        out->loss = r.loss;
        if (s < warmup) continue;
        out->fwd_s += r.fwd_s;
        out->bwd_s += r.bwd_s;
        out->opt_s += r.opt_s;
        ModelCost k;
        model_cost(m, NULL, &k);
        out->flops += 3.0 * k.flops;   /* forward + backward */
    }
}

/* tok[n] drawn with p(k) ~ 1 / (k + 1) over [0, V) (Zipf's law with exponent 1: on PTB's 10,000 words it
 * gives the 500 commonest 69% of the tokens, the text 70%) */
static moelm_status zipf_tokens(int *tok, size_t n, int V, Rng *r) {
    double *cdf = moelm_malloc(sizeof(double) * (size_t)V);
    if (!cdf) return MOELM_ERR_NOMEM;
    double sum = 0.0;
    for (int k = 0; k < V; k++) cdf[k] = sum += 1.0 / (k + 1);
    for (size_t i = 0; i < n; i++) {
        double u = rng_uniform(r) * sum;
        int lo = 0, hi = V - 1;
        while (lo < hi) {   /* the first k with cdf[k] > u */
            int mid = (lo + hi) / 2;
            if (cdf[mid] > u) hi = mid;
            else lo = mid + 1;
        }
        tok[i] = lo;
    }
    moelm_free(cdf);
    return MOELM_OK;
}

/* switch_transformers: train_step_seq2seq on span-corruption shapes of random ids (B x Te encoder,
 * B x Td decoder tokens: tokens a step B (Te + Td)), then generation: the encoder over Te tokens once and
 * n_gen greedy decoder tokens through the cache (the median of GEN_PASSES passes after a warm one). */
static moelm_status bench_run_switch(const BenchOptions *o, const ModelConfig *cfg, const TrainConfig *tc) {
    SpanLengths len = span_lengths(tc->seq_len, 0.15f, 3.0f);
    int B = tc->batch_size, Te = len.inputs, Td = len.targets, V = cfg->vocab_size;
    Model m;
    Optimizer opt;
    moelm_status st = model_create_encdec(&m, cfg, B, Te, Td, o->seed, 0, 1);
    if (st) return st;
    st = optim_create(&opt, m.n_params);
    if (st) {
        model_free(&m);
        return st;
    }
    int *ids = moelm_malloc(sizeof(int) * (size_t)B * Te), *lab = moelm_malloc(sizeof(int) * (size_t)B * Td);
    int *out = moelm_malloc(sizeof(int) * (size_t)(o->n_gen + 1));
    EncDecCache kv;
    memset(&kv, 0, sizeof kv);
    if (!ids || !lab || !out) st = MOELM_ERR_NOMEM;
    if (!st && o->n_gen > 0) st = encdec_cache_create(&kv, &m, 1, o->n_gen + 1, Te);
    if (!st) {
        Rng r;
        rng_seed(&r, o->seed ^ 0x9E3779B97F4A7C15ull);
        for (int i = 0; i < B * Te; i++) ids[i] = (int)rng_below(&r, (uint32_t)V);
        for (int i = 0; i < B * Td; i++) lab[i] = (int)rng_below(&r, (uint32_t)V);
        print_model_summary(&m, stdout);
        printf("bench: %s, batch %d x (%d + %d) (span corruption of %d-token windows), %d threads, backend %s\n",
               o->config, B, Te, Td, len.raw, o->threads, backend_name());
        fflush(stdout);
        Trainer t = {&m, &opt, tc, 0};
        Seq2SeqBatch b = {B, Te, Td, ids, NULL, NULL, lab, NULL};
        double fwd = 0, bwd = 0, opt_s = 0;
        float loss = 0;
        for (int s = 0; s < o->warmup + o->steps; s++) {
            StepResult sr = train_step_seq2seq(&t, &b, tc->lr, s + 1);
            loss = sr.loss;
            if (s < o->warmup) continue;
            fwd += sr.fwd_s;
            bwd += sr.bwd_s;
            opt_s += sr.opt_s;
        }
        double total = fwd + bwd + opt_s, tps = o->steps > 0 ? (double)B * (Te + Td) * o->steps / total : 0;
        if (o->steps > 0) {
            printf("train: %.2f ms/step, %.0f tok/s (encoder and decoder tokens), loss %.4f\n", 1e3 * total / o->steps,
                   tps, loss);
            if (o->profile)
                printf("train phases: forward %.2f ms, backward %.2f ms, clip+optimizer %.2f ms per step\n",
                       1e3 * fwd / o->steps, 1e3 * bwd / o->steps, 1e3 * opt_s / o->steps);
        }
        optim_free(&opt);
        double gen = 0;
        if (o->n_gen > 0) {
            double pass[GEN_PASSES + 1];
            EncDecGenOptions g = {o->n_gen, 1, 1.0f, 0.0f, 0, 1.0f, 1, 0, -1};   /* no eos: all n_gen tokens */
            for (int rep = 0; rep <= GEN_PASSES; rep++) {
                double t0 = time_now();
                encdec_cache_encode(&m, &kv, ids, NULL, Te);
                int made = encdec_generate(&m, &kv, &g, out);
                pass[rep] = made / (time_now() - t0);
            }
            qsort(pass + 1, GEN_PASSES, sizeof(double), cmp_double);
            gen = pass[1 + GEN_PASSES / 2];
            printf("generate: batch 1, encoder %d tokens, %d new tokens, %.1f tok/s\n", Te, o->n_gen, gen);
        }
        double rss = peak_rss_mb();
        printf("memory: peak RSS %.1f MB (training and generation)\n", rss);
        printf("RESULT config=%s threads=%d train_tok_s=%.1f train_ms_step=%.3f gen_tok_s=%.2f rss_mb=%.1f params=%zu\n",
               o->config, o->threads, tps, o->steps > 0 ? 1e3 * total / o->steps : 0.0, gen, rss, m.n_params);
        fflush(stdout);
    } else {
        optim_free(&opt);
    }
    encdec_cache_free(&kv);
    moelm_free(ids);
    moelm_free(lab);
    moelm_free(out);
    model_free(&m);
    return st;
}

/* -m FILE.gguf: generation from the file's weights as `moelm generate -m FILE` runs it (its Q8_0
 * matrices from their int8 blocks, q8_0_gemv), no training (a Q8_0 file's matrices are never floats
 * here): tok/s, the bytes of weights a token reads (kv_phase_bytes_q8: Q8_0 blocks at 34 bytes a 32
 * values, the rest float) and their share of the read bandwidth measured over as many bytes of the
 * same weights (the blocks when the file has Q8_0 matrices), half before and half after. */
static moelm_status bench_run_gguf(const BenchOptions *o) {
    enum { PEAK_REPS = 5 };
    backend_set_threads(o->threads);
    Model m;
    Q8Arena q8;
    KVCache kv;
    memset(&kv, 0, sizeof kv);
    moelm_status st = llama_load_gguf(&m, NULL, &q8, o->model, 1, 1);
    if (st) return st;
    int n = o->n_gen < m.cfg.n_positions ? o->n_gen : m.cfg.n_positions - 1;
    float *scratch = moelm_malloc(sizeof(float) * 2 * (size_t)m.cfg.vocab_size);
    if (!scratch) st = MOELM_ERR_NOMEM;
    if (!st) st = kv_create(&kv, &m);
    if (!st) st = kv_load_weights(&kv, &m, 0);
    if (!st && q8.n_span) st = kv_use_q8(&kv, &m, &q8);
    if (st) goto done;
    double phases[KV_PHASES], bytes = kv_phase_bytes_q8(&m, q8.n_span ? &q8 : NULL, phases), read_bw[2 * PEAK_REPS];
    const void *base = q8.n_span ? (const void *)q8.blocks : (const void *)m.params;
    size_t held = q8.n_span ? sizeof(BlockQ8_0) * (m.n_params / Q8_0_BLOCK) : sizeof(float) * m.n_params;
    print_model_summary(&m, stdout);
    printf("bench: %s (%s), %d threads: generation only (no training from a file's weights)\n", o->model,
           q8.n_span ? "Q8_0 matrices read from their int8 blocks" : "float matrices", o->threads);
    if (o->peak) read_bandwidth_times(base, held, bytes, PEAK_REPS, read_bw);
    double tps = 0.0, skip = 0.0, read_gbs = 0.0;
    if (n > 0) {
        Rng r;
        rng_seed(&r, o->seed ^ 0x9E3779B97F4A7C15ull);
        kv.profile = o->profile;
        tps = bench_generate(&m, &kv, n, m.cfg.bos_token_id >= 0 ? m.cfg.bos_token_id : 0, &r, scratch, &skip);
        printf("generate: batch 1, %d new tokens, %.1f tok/s (%.3f ms/token)\n", n, tps, 1e3 / tps);
        if (o->profile) print_gen_phases(&kv, n, 0, phases);
    }
    double gen_bytes = bytes - skip, gen_gbs = tps * gen_bytes / 1e9;
    if (o->peak) {
        read_bandwidth_times(base, held, bytes, PEAK_REPS, read_bw + PEAK_REPS);
        read_gbs = median_of(read_bw, 2 * PEAK_REPS) / 1e9;
        printf("read: %.1f GB/s over %.1f MB (median of %d, before and after the run); generate streams %.3f MB of "
               "weights a token: %.1f GB/s, %.0f%% of it\n", read_gbs, bytes / 1e6, 2 * PEAK_REPS, gen_bytes / 1e6,
               gen_gbs, read_gbs > 0 ? 100.0 * gen_gbs / read_gbs : 0.0);
    }
    printf("RESULT model=%s threads=%d gen_tok_s=%.2f gen_bytes=%.0f gen_gbs=%.2f read_gbs=%.2f gen_read_share=%.4f "
           "q8_kernel=%s rss_mb=%.1f\n", o->model, o->threads, tps, gen_bytes, gen_gbs, read_gbs,
           read_gbs > 0 ? gen_gbs / read_gbs : 0.0, q8.n_span ? q8_0_kernel_name() : "none", peak_rss_mb());
    fflush(stdout);
done:
    if (kv.mem) kv_free(&kv);
    moelm_free(scratch);
    q8_arena_free(&q8);
    model_free(&m);
    return st;
}

moelm_status bench_run(const BenchOptions *o) {
    if (o->model) return bench_run_gguf(o);
    ModelConfig cfg;
    TrainConfig tc;
    moelm_status st = resolve_config(o, &cfg, &tc);
    if (st) return st;
    backend_set_threads(o->threads);
    if (cfg.model_type == MODEL_SWITCH) return bench_run_switch(o, &cfg, &tc);
    int B = tc.batch_size, T = tc.seq_len, N = B * T, V = cfg.vocab_size;

    /* the machine's sgemm peak through the same gemm() and thread count: half the samples now, half
     * after training and generation, so that the share compares the two over the same stretch of a
     * machine whose speed moves (the buffers are freed before the model is made: no RSS added) */
    enum { PEAK_REPS = 5 };
    const int P = o->peak_n;   /* the peak's square product, P^3 */
    double peak_t[2 * PEAK_REPS], peak16_t[2 * PEAK_REPS];
    if (o->peak) {
        st = gemm_times(P, P, P, PEAK_REPS, peak_t, 0);
        if (!st && o->bf16) st = gemm_times(P, P, P, PEAK_REPS, peak16_t, 1);
        if (st) return st;
    }

    Model m;
    Optimizer opt;
    KVCache kv;
    memset(&kv, 0, sizeof kv);
    st = model_create(&m, &cfg, B, T, o->seed);
    if (st) return st;
    st = optim_create(&opt, m.n_params);
    if (st) { model_free(&m); return st; }
    if (o->n_gen > 0) st = kv_create(&kv, &m);
    /* the machine's read bandwidth over as many bytes as a float token step reads: half the samples
     * now, half after the runs, as the peak */
    double step_bytes = kv_step_bytes(&m, 0), read_bw[2 * PEAK_REPS];
    if (o->peak && o->n_gen > 0) read_bandwidth_times(m.params, sizeof(float) * m.n_params, step_bytes, PEAK_REPS, read_bw);
    enum { NBATCH = 4 };
    int *tok = moelm_malloc(sizeof(int) * (size_t)N * NBATCH * 2);
    float *scratch = moelm_malloc(sizeof(float) * 2 * (size_t)V);
    if (!st && (!tok || !scratch)) st = MOELM_ERR_NOMEM;
    if (st) goto done;
    Rng r;
    rng_seed(&r, o->seed ^ 0x9E3779B97F4A7C15ull);
    if (m.ad.n) {   /* an adaptive softmax's cost depends on the words: Zipf's law, as text has it */
        st = zipf_tokens(tok, (size_t)N * NBATCH * 2, V, &r);
        if (st) goto done;
    } else {
        for (size_t i = 0; i < (size_t)N * NBATCH * 2; i++) tok[i] = (int)rng_below(&r, (uint32_t)V);
    }

    print_model_summary(&m, stdout);
    if (m.ad.n)
        printf("bench: tokens drawn by Zipf's law (id k with p ~ 1/(k + 1)), as a frequency-ordered vocabulary's words "
               "are: the adaptive softmax's products depend on them\n");
    printf("bench: %s, batch %d x %d, %d threads, backend %s\n", o->config, B, T, o->threads, backend_name());
    fflush(stdout);

    /* training: train.c's step, on synthetic batches */
    BenchTrain bt;
    bench_train(&m, &opt, &tc, tok, NBATCH, o->warmup, o->steps, &bt);
    double t_total = bt.fwd_s + bt.bwd_s + bt.opt_s, flops = bt.flops;
    double train_tps = o->steps > 0 ? (double)N * o->steps / t_total : 0.0;
    double train_gflops = o->steps > 0 ? flops / t_total / 1e9 : 0.0;
    if (o->steps > 0) {
        printf("train: %.2f ms/step, %.0f tok/s, %.1f GFLOP/s (%.2f GFLOP/step), loss %.4f\n",
               1e3 * t_total / o->steps, train_tps, train_gflops, flops / o->steps / 1e9, bt.loss);
        if (o->profile)
            printf("train phases: forward %.2f ms, backward %.2f ms, clip+optimizer %.2f ms per step\n",
                   1e3 * bt.fwd_s / o->steps, 1e3 * bt.bwd_s / o->steps, 1e3 * bt.opt_s / o->steps);
    }
    /* the same steps again in bf16 mixed precision (from where the float ones left the weights); the
     * packed copies are freed before generation */
    double t16_total = 0.0, train16_tps = 0.0, train16_gflops = 0.0;
    if (o->bf16 && o->steps > 0) {
        st = model_set_bf16(&m, 1);
        if (st) goto done;
        BenchTrain b16;
        bench_train(&m, &opt, &tc, tok, NBATCH, o->warmup, o->steps, &b16);
        model_set_bf16(&m, 0);
        t16_total = b16.fwd_s + b16.bwd_s + b16.opt_s;
        train16_tps = (double)N * o->steps / t16_total;
        train16_gflops = b16.flops / t16_total / 1e9;
        printf("train --bf16: %.2f ms/step, %.0f tok/s, %.1f GFLOP/s, loss %.4f; %.2fx float (%s kernel)\n",
               1e3 * t16_total / o->steps, train16_tps, train16_gflops, b16.loss, train16_tps / train_tps,
               gemm_bf16_kernel());
        if (o->profile)
            printf("train --bf16 phases: forward %.2f ms, backward %.2f ms, clip+optimizer %.2f ms per step\n",
                   1e3 * b16.fwd_s / o->steps, 1e3 * b16.bwd_s / o->steps, 1e3 * b16.opt_s / o->steps);
    }

    /* generation: batch 1, one prompt token, then n_gen greedy tokens through the KV cache; with the
     * float weights, then (after the RSS is read: the copy is not part of training) with bf16 ones.
     * The optimizer's moments (twice the weights) go first, as `moelm generate` never has them: the
     * weights' copies for generation then fit in memory training used */
    optim_free(&opt);
    double gen_tps = 0.0, gen16_tps = 0.0, skip = 0.0, skip16 = 0.0;
    if (o->n_gen > 0) {
        st = kv_load_weights(&kv, &m, 0);
        if (st) goto done;
        kv.profile = o->profile;
        gen_tps = bench_generate(&m, &kv, o->n_gen, tok[0], &r, scratch, &skip);
        printf("generate: batch 1, %d new tokens, %.1f tok/s (%.3f ms/token)\n", o->n_gen, gen_tps, 1e3 / gen_tps);
        double phases[KV_PHASES];
        kv_phase_bytes(&m, 0, phases);
        if (o->profile) print_gen_phases(&kv, o->n_gen, 0, phases);
    }
    double rss = peak_rss_mb();
    printf("memory: peak RSS %.1f MB (training and generation)\n", rss);
    if (o->n_gen > 0) {
        st = kv_load_weights(&kv, &m, 1);
        if (st) goto done;
        gen16_tps = bench_generate(&m, &kv, o->n_gen, tok[0], &r, scratch, &skip16);
        printf("generate --bf16: %.1f tok/s (%.3f ms/token), %.2fx the float weights\n", gen16_tps, 1e3 / gen16_tps,
               gen16_tps / gen_tps);
        double phases[KV_PHASES];
        kv_phase_bytes(&m, 1, phases);
        if (o->profile) print_gen_phases(&kv, o->n_gen, 1, phases);
    }

    /* the bytes a step read: its weights less the rows it skipped after a ReLU */
    double gen_bytes = step_bytes - skip, gen16_bytes = kv_step_bytes(&m, 1) - skip16;
    double gen_gbs = gen_tps * gen_bytes / 1e9, read_gbs = 0.0;
    if (o->peak && o->n_gen > 0) {
        read_bandwidth_times(m.params, sizeof(float) * m.n_params, step_bytes, PEAK_REPS, read_bw + PEAK_REPS);
        read_gbs = median_of(read_bw, 2 * PEAK_REPS) / 1e9;
        printf("read: %.1f GB/s over %.1f MB (median of %d, before and after the runs); generate streams %.1f MB of "
               "weights a token (%.1f MB of zero units' rows skipped): %.1f GB/s, %.0f%% of it (bf16: %.1f MB, %.1f GB/s)\n",
               read_gbs, step_bytes / 1e6, 2 * PEAK_REPS, gen_bytes / 1e6, skip / 1e6, gen_gbs,
               read_gbs > 0 ? 100.0 * gen_gbs / read_gbs : 0.0, gen16_bytes / 1e6, gen16_tps * gen16_bytes / 1e9);
    }

    /* the peak's second half; the head's shape alone, for comparison */
    double peak = 0.0, peak16 = 0.0, head = 0.0, head_t[PEAK_REPS];
    int hM = N, hN = V, hK = cfg.model_type == MODEL_SEED ? cfg.head_hidden : cfg.d_model;
    if (o->peak) {
        st = gemm_times(P, P, P, PEAK_REPS, peak_t + PEAK_REPS, 0);
        if (!st && o->bf16) st = gemm_times(P, P, P, PEAK_REPS, peak16_t + PEAK_REPS, 1);
        if (!st) st = gemm_times(hM, hN, hK, PEAK_REPS, head_t, 0);
        if (st) goto done;
        peak = median_gflops(P, P, P, peak_t, 2 * PEAK_REPS);
        head = median_gflops(hM, hN, hK, head_t, PEAK_REPS);
        printf("sgemm: %d^3 %.1f GFLOP/s (median of %d, before and after the runs); head shape %dx%dx%d %.1f GFLOP/s\n",
               P, peak, 2 * PEAK_REPS, hM, hN, hK, head);
        if (o->steps > 0) printf("train: %.1f%% of the sgemm %d^3 peak\n", 100.0 * train_gflops / peak, P);
        if (o->bf16) {
            peak16 = median_gflops(P, P, P, peak16_t, 2 * PEAK_REPS);
            printf("bf16 product (%s kernel): %d^3 %.1f GFLOP/s (%.2fx sgemm)", gemm_bf16_kernel(), P, peak16, peak16 / peak);
            if (o->steps > 0) printf("; train --bf16: %.1f%% of it", 100.0 * train16_gflops / peak16);
            printf("\n");
        }
    }
    char kernel[64] = "none";   /* backend_name(): "openblas (KERNEL; config)" */
    const char *bn = strchr(backend_name(), '(');
    if (bn) snprintf(kernel, sizeof kernel, "%.*s", (int)strcspn(bn + 1, ";) "), bn + 1);
    printf("RESULT config=%s threads=%d train_tok_s=%.1f train_ms_step=%.3f train_gflops=%.2f train_bf16_tok_s=%.1f "
           "train_bf16_ms_step=%.3f train_bf16_gflops=%.2f gen_tok_s=%.2f gen_bf16_tok_s=%.2f sgemm_peak_gflops=%.2f "
           "peak_share=%.4f bf16_peak_gflops=%.2f bf16_peak_share=%.4f rss_mb=%.1f gen_gbs=%.2f read_gbs=%.2f "
           "gen_read_share=%.4f kernel=%s bf16_kernel=%s gen_bytes=%.0f\n",
           o->config, o->threads, train_tps, o->steps > 0 ? 1e3 * t_total / o->steps : 0.0, train_gflops, train16_tps,
           o->bf16 && o->steps > 0 ? 1e3 * t16_total / o->steps : 0.0, train16_gflops, gen_tps, gen16_tps, peak,
           peak > 0 ? train_gflops / peak : 0.0, peak16, peak16 > 0 ? train16_gflops / peak16 : 0.0, rss, gen_gbs,
           read_gbs, read_gbs > 0 ? gen_gbs / read_gbs : 0.0, kernel, gemm_bf16_kernel(), o->n_gen > 0 ? gen_bytes : 0.0);
    fflush(stdout);
done:
    moelm_free(tok);
    moelm_free(scratch);
    if (kv.mem) kv_free(&kv);
    optim_free(&opt);
    model_free(&m);
    return st;
}
