/* bench.h: `moelm bench`: training and generation speed of a model config on synthetic tokens.
 *
 * What it measures, in one process:
 *   train     steps of (zero grad, forward with dropout, backward, clip, Adam/AdamW) on random token
 *             batches of the preset's B x T: ms/step, tokens/s, and GFLOP/s from an analytic count of
 *             the forward + backward FLOPs (3x model_cost's forward: the backward computes two
 *             products per forward product);
 *   generate  batch 1, a one-token prompt then n_gen greedy tokens through the KV cache: tokens/s;
 *   peak      sgemm through gemm() at peak_n^3 (2048^3) and at the model's largest GEMM shape: GFLOP/s, so the
 *             training figure can be given as a share of what this machine's GEMM reaches now;
 *   read      the plainest streaming read (read_words) over as many bytes of the weights as a token
 *             step reads (kv_step_bytes): GB/s, so generation's bytes per second can be given as a
 *             share of what this machine's memory delivers now (both halves of peak and read are
 *             sampled before and after the runs);
 *   memory    the process's peak RSS after training and generation (before the peak GEMM buffers).
 * With a GGUF file (BenchOptions.model) only generation and read, from the file's weights (Q8_0 matrices
 * from their int8 blocks, counted in bytes as a step reads them: kv_phase_bytes_q8).
 * What it is not: a convergence test (the tokens are uniform noise).
 */
#ifndef MOELM_BENCH_H
#define MOELM_BENCH_H

#include "model/model.h"
#include "optim/optim.h"

typedef struct {
    const char *config;         /* preset name or config.json (default "seed-switch") */
    const char *model;          /* NULL, or a GGUF file: its generation alone (config, training unused) */
    const char *const *sets;    /* "key=value" model or training overrides, NULL-terminated */
    int n_sets;
    int threads;
    int steps;                  /* timed training steps (default 10) */
    int warmup;                 /* untimed steps first (default 2) */
    int batch_size, seq_len;    /* > 0: override the preset */
    int vocab_size;             /* when the config leaves it 0 (default 10000) */
    int n_gen;                  /* generated tokens (default 100; 0: skip) */
    int peak;                   /* measure the sgemm peak (default 1) */
    int peak_n;                 /* the peak's product is peak_n^3 (default 2048) */
    int profile;                /* print forward / backward / optimizer times per step */
    int bf16;                   /* also time training in bf16 mode (model_set_bf16) and the bf16 product's peak */
    uint64_t seed;
} BenchOptions;

void bench_options_default(BenchOptions *o);
moelm_status bench_run(const BenchOptions *o);

/* bench's training: warmup untimed steps, then `steps` timed ones, step s (0-based) on batch s % nbatch
 * of batches [nbatch, 2, B*T] (inputs, then targets), at tc's constant peak lr: train_step, as `moelm
 * train` runs it. */
typedef struct {
    double fwd_s, bwd_s, opt_s;   /* the timed steps' phases (StepResult), summed */
    double flops;                 /* their forward + backward FLOPs (3x model_cost's flops each) */
    float loss;                   /* the last step's */
} BenchTrain;
void bench_train(Model *m, Optimizer *opt, const TrainConfig *tc, const int *batches, int nbatch, int warmup, int steps,
                 BenchTrain *out);

#endif
