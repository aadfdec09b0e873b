/* test_train.c: the training step (src/train/step.c) and who calls it.
 *
 * 1. The MoE layers of every model type are found (model_moe_layers): the lm's sparse blocks, the
 *    seed model's head; use_expert_bias moves the selection bias of each of them during training
 *    (it stayed at zero on seed models while train.c looked for MoE layers block by block).
 * 2. `moelm bench` steps exactly as `moelm train`: a whole training run (train_run on the built-in
 *    corpus) and bench's training loop (bench_train) on the same batches from the same start must
 *    end with the same parameter bits; the run has use_expert_bias on, so that a step that leaves
 *    out the bias update (as bench's own copy of the step did) changes the routing and the weights.
 *    Bit equality, not a tolerance: both sides run the same arithmetic in the same order.
 * 3. A non-finite step updates nothing and the next step starts from zero gradients.
 * 4. Gradient accumulation (TrainConfig.grad_accum): N micro-batches of B make the update of one
 *    batch of N x B: the same loss, gradient norm and parameters, within float reordering.
 */
#include <string.h>
#include "test.h"
#include "tiny_models.h"
#include "backend/runtime.h"
#include "data/dataloader.h"
#include "data/corpus.h"
#include "data/tokens.h"
#include "io/fileio.h"
#include "optim/optim.h"
#include "train/bench.h"
#include "train/checkpoint.h"
#include "train/step.h"
#include "train/train.h"

/* nb batches [nb, 2, N] (inputs, then targets) of tokens below V, a fixed pattern */
static int *pattern_batches(int nb, int N, int V) {
    int *b = malloc(sizeof(int) * (size_t)nb * 2 * N);
    Rng r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < (size_t)nb * 2 * N; i++) b[i] = (int)rng_below(&r, (uint32_t)V);
    return b;
}

/* Trains cfg for `steps` steps with train_step; returns how many entries of each MoE layer's bias
 * moved off zero (the least over the layers), and the layer count in *n_moe. */
static int bias_moved(const ModelConfig *cfg, int steps, int *n_moe, int *head_block) {
    Model m;
    Optimizer opt;
    TrainConfig tc;
    config_preset_train(&tc, "tiny");
    int B = 2, T = 8, N = B * T;
    EXPECT(model_create(&m, cfg, B, T, 3) == MOELM_OK);
    EXPECT(optim_create(&opt, m.n_params) == MOELM_OK);
    int *batches = pattern_batches(4, N, cfg->vocab_size);
    Trainer t = {&m, &opt, &tc, 0};
    for (int s = 0; s < steps; s++) {
        const int *inp = batches + (size_t)(s % 4) * 2 * N;
        StepResult r = train_step(&t, inp, inp + N, tc.lr, s + 1);
        EXPECT(!r.nonfinite);
    }
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    *n_moe = model_moe_layers(&m, ml, CONFIG_MAX_MOE_LAYERS);
    *head_block = *n_moe ? ml[*n_moe - 1].block : 0;
    int least = 1 << 30;
    for (int l = 0; l < *n_moe; l++) {
        EXPECT(ml[l].p->expert_bias != NULL);
        int moved = 0;
        for (int e = 0; e < ml[l].cfg->E && ml[l].p->expert_bias; e++) moved += ml[l].p->expert_bias[e] != 0.0f;
        if (moved < least) least = moved;
    }
    free(batches);
    optim_free(&opt);
    model_free(&m);
    return *n_moe ? least : 0;
}

TEST(expert_bias_moves_on_a_seed_model) {
    ModelConfig c;
    tiny_seed(&c, ROUTER_SWITCH, 0.0f);
    c.num_experts = 4;
    c.use_expert_bias = 1;
    int n_moe, head;
    int moved = bias_moved(&c, 30, &n_moe, &head);
    EXPECT_MSG(n_moe == 1 && head == -1, "the seed model's MoE layer is its head: %d layers, last block %d", n_moe, head);
    /* every step moves every entry by +-rate or leaves it at a tie: after 30 steps most are off zero */
    EXPECT_MSG(moved >= 2, "only %d of 4 bias entries moved in 30 steps", moved);
}

TEST(expert_bias_moves_on_an_lm) {
    ModelConfig c;
    tiny_lm(&c, 13, 0.0f);
    c.num_layers = 3;
    c.sparse_step = 1;   /* every block sparse: three MoE layers */
    c.use_expert_bias = 1;
    int n_moe, head;
    int moved = bias_moved(&c, 30, &n_moe, &head);
    EXPECT_MSG(n_moe == 3 && head == 2, "%d MoE layers, the last in block %d", n_moe, head);
    EXPECT_MSG(moved >= 2, "only %d bias entries moved in the least-moved layer", moved);
}

TEST(moe_layers_of_every_model_type) {
    ModelConfig c;
    Model m;
    tiny_lm(&c, 13, 0.0f);
    c.num_layers = 4;
    c.sparse_step = 2;   /* HF: block i sparse when i % 2 == 1 */
    EXPECT(model_create(&m, &c, 1, 4, 1) == MOELM_OK);
    MoELayer ml[4];
    int n = model_moe_layers(&m, ml, 4);
    EXPECT(n == 2 && n == config_num_moe_layers(&c));
    EXPECT(n == 2 && ml[0].block == 1 && ml[1].block == 3);
    EXPECT(n == 2 && ml[0].p == &m.p.layers[1].moe && ml[0].g == &m.g.layers[1].moe && ml[0].a == &m.a.layers[1].moe);
    for (int l = 0; l < 4; l++) EXPECT(config_block_is_sparse(&c, l) == (l % 2 == 1));
    model_free(&m);
    tiny_lm(&c, 13, 0.0f);
    c.num_experts = 0;   /* dense */
    EXPECT(config_num_moe_layers(&c) == 0);
    tiny_seed(&c, ROUTER_SWITCH, 0.0f);
    EXPECT(model_create(&m, &c, 1, 4, 1) == MOELM_OK);
    n = model_moe_layers(&m, ml, 4);
    EXPECT(n == 1 && ml[0].block == -1 && ml[0].p == &m.p.head_moe && ml[0].a == &m.a.head_moe);
    for (int l = 0; l < c.num_layers; l++) EXPECT(!config_block_is_sparse(&c, l));
    model_free(&m);
}

/* The bench loop against a whole training run: same start (config, seed), same batches (the run's
 * data loader over its own token cache), the same constant learning rate. */
TEST(bench_steps_as_train) {
    const char *dir = "build/tmp/test_train_run";
    dir_remove_tree(dir);
    enum { STEPS = 12 };
    const char *sets[] = {"use_expert_bias=true", "expert_bias_rate=0.01", "lr_schedule=constant", NULL};
    TrainOptions o;
    train_options_default(&o);
    o.config = "tiny";
    o.out = dir;
    o.sets = sets;
    o.n_sets = 3;
    o.steps = STEPS;
    o.threads = 1;
    o.quiet = 1;
    o.eval_batches = 1;
    moelm_status st = train_run(&o);
    EXPECT_MSG(st == MOELM_OK, "train_run: %s", moelm_last_error());
    if (st) return;

    /* the run's model and settings */
    char ck[4096], path[4200];
    ModelConfig cfg;
    TrainConfig tc;
    EXPECT(ckpt_resolve(dir, ck, sizeof ck) == MOELM_OK);
    EXPECT(ckpt_read_config(ck, &cfg) == MOELM_OK);
    config_preset_train(&tc, "tiny");
    for (int i = 0; sets[i]; i++) {
        const char *eq = strchr(sets[i], '=');
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(eq - sets[i]), sets[i]);
        if (config_set(&cfg, key, eq + 1) != MOELM_OK) train_config_set(&tc, key, eq + 1);
    }
    EXPECT(cfg.use_expert_bias && tc.schedule == SCHED_CONSTANT && tc.warmup_steps == 0);
    int B = tc.batch_size, T = tc.seq_len, N = B * T;

    /* the run's batches: its token cache through a loader seeded as the run's */
    Tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.model", ck);
    EXPECT(tokenizer_load(&tok, path) == MOELM_OK);
    int *ids = NULL;
    size_t n = 0;
    snprintf(path, sizeof path, "%s/tokens.train.bin", dir);
    Corpus corpus;   /* the cache is keyed on the text it encodes */
    EXPECT(corpus_load(&corpus, NULL) == MOELM_OK);
    uint64_t key = tok ? tokens_cache_key(tokenizer_hash(tok), corpus.text[CORPUS_TRAIN], corpus.len[CORPUS_TRAIN]) : 0;
    corpus_free(&corpus);
    EXPECT(tok && tokens_read(path, &ids, &n, tokenizer_vocab_size(tok), key) == MOELM_OK);
    DataLoader dl;
    EXPECT(ids && dataloader_init(&dl, ids, n, B, T, T, 1, o.seed) == MOELM_OK);
    int *batches = malloc(sizeof(int) * (size_t)STEPS * 2 * N);
    for (int s = 0; s < STEPS; s++) dataloader_next(&dl, batches + (size_t)s * 2 * N, batches + (size_t)s * 2 * N + N);

    Model bm, tm;
    Optimizer opt;
    backend_set_threads(1);
    EXPECT(model_create(&bm, &cfg, B, T, o.seed) == MOELM_OK);
    EXPECT(model_create(&tm, &cfg, B, T, o.seed) == MOELM_OK);
    EXPECT(optim_create(&opt, bm.n_params) == MOELM_OK);
    BenchTrain bt;
    bench_train(&bm, &opt, &tc, batches, STEPS, 0, STEPS, &bt);
    EXPECT(ckpt_load_model(ck, &tm) == MOELM_OK);
    size_t differ = 0;
    for (size_t i = 0; i < bm.n_params; i++) differ += memcmp(&bm.params[i], &tm.params[i], sizeof(float)) != 0;
    EXPECT_MSG(differ == 0, "%zu of %zu parameters differ between bench's and train's steps", differ, bm.n_params);
    /* and the bias did move, so that a step without its update would have been seen */
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    int nl = model_moe_layers(&tm, ml, CONFIG_MAX_MOE_LAYERS), moved = 0;
    for (int l = 0; l < nl; l++)
        for (int e = 0; e < ml[l].cfg->E; e++) moved += ml[l].p->expert_bias[e] != 0.0f;
    EXPECT_MSG(nl >= 1 && moved > 0, "%d MoE layers, %d bias entries moved", nl, moved);

    free(batches);
    dataloader_free(&dl);
    moelm_free(ids);
    tokenizer_free(tok);
    optim_free(&opt);
    model_free(&bm);
    model_free(&tm);
    dir_remove_tree(dir);
}

/* A NaN loss makes no update; the step after it starts from zero gradients (as if from model_create). */
TEST(nonfinite_step_updates_nothing) {
    ModelConfig c;
    tiny_lm(&c, 13, 0.0f);
    Model a, b;
    Optimizer oa, ob;
    TrainConfig tc;
    config_preset_train(&tc, "tiny");
    int N = 2 * 8;
    EXPECT(model_create(&a, &c, 2, 8, 3) == MOELM_OK && model_create(&b, &c, 2, 8, 3) == MOELM_OK);
    EXPECT(optim_create(&oa, a.n_params) == MOELM_OK && optim_create(&ob, b.n_params) == MOELM_OK);
    int *batches = pattern_batches(2, N, 13);
    Trainer ta = {&a, &oa, &tc, 0}, tb = {&b, &ob, &tc, 0};
    /* a: position 0's embedding (read by every window) NaN for one step, so that its loss is NaN:
     * the step must update nothing (and count no Adam step) */
    float *wpe0 = NULL;
    for (int i = 0; i < a.n_tensors; i++)
        if (!strcmp(a.tensors[i].name, "pos_emb.weight")) wpe0 = a.params + a.tensors[i].offset;
    EXPECT(wpe0 != NULL);
    if (!wpe0) return;
    float saved = wpe0[0];
    wpe0[0] = NAN;
    StepResult r = train_step(&ta, batches, batches + N, tc.lr, 1);
    EXPECT(r.nonfinite && !isfinite(r.loss));
    EXPECT(oa.t == 0);
    wpe0[0] = saved;
    EXPECT(memcmp(a.params, b.params, sizeof(float) * a.n_params) == 0);
    /* then both take the same step: same bits (the NaN gradients of the skipped step are gone) */
    train_step(&ta, batches + 2 * N, batches + 3 * N, tc.lr, 2);
    train_step(&tb, batches + 2 * N, batches + 3 * N, tc.lr, 1);
    EXPECT(memcmp(a.params, b.params, sizeof(float) * a.n_params) == 0);
    free(batches);
    optim_free(&oa);
    optim_free(&ob);
    model_free(&a);
    model_free(&b);
}

/* Three steps on batches of 4 x 8 rows, and on the same rows as 2 micro-batches of 2 x 8: a dense
 * model (MoE capacity and balancing are per micro-batch by design), no dropout. Adam's eps is 1e-3
 * here so that a gradient entry that is only rounding noise (~1e-9) moves its parameter by ~lr * 1e-6
 * in both runs instead of +-lr by its sign; the update of a real gradient (~1e-2) then differs by
 * the relative rounding of the sums (~1e-6) times lr (3e-3): tolerance 1e-6 on the parameters and
 * 1e-5 relative on loss and norm. A step that left out the 1/N doubles the norm and, past the clip,
 * changes every update. */
TEST(grad_accum_is_a_larger_batch) {
    ModelConfig c;
    tiny_lm(&c, 13, 0.0f);
    c.num_experts = 0;
    Model a, b;
    Optimizer oa, ob;
    TrainConfig ta_cfg, tb_cfg;
    config_preset_train(&ta_cfg, "tiny");
    ta_cfg.eps = 1e-3f;
    tb_cfg = ta_cfg;
    tb_cfg.grad_accum = 2;
    int T = 8, N = 4 * T;
    EXPECT(model_create(&a, &c, 4, T, 3) == MOELM_OK && model_create(&b, &c, 2, T, 3) == MOELM_OK);
    EXPECT(memcmp(a.params, b.params, sizeof(float) * a.n_params) == 0);
    EXPECT(optim_create(&oa, a.n_params) == MOELM_OK && optim_create(&ob, b.n_params) == MOELM_OK);
    int *batches = pattern_batches(3, N, 13);
    Trainer ta = {&a, &oa, &ta_cfg, 0}, tb = {&b, &ob, &tb_cfg, 0};
    for (int s = 0; s < 3; s++) {
        const int *inp = batches + (size_t)s * 2 * N;   /* rows 0-1 are micro-batch 0, rows 2-3 micro-batch 1 */
        StepResult ra = train_step(&ta, inp, inp + N, ta_cfg.lr, s + 1);
        StepResult rb = train_step(&tb, inp, inp + N, tb_cfg.lr, s + 1);
        EXPECT_NEAR(ra.loss, rb.loss, 1e-5 * ra.loss);
        EXPECT_NEAR(ra.grad_norm, rb.grad_norm, 1e-5 * ra.grad_norm);
    }
    float worst = 0;
    for (size_t i = 0; i < a.n_params; i++) worst = fmaxf(worst, fabsf(a.params[i] - b.params[i]));
    EXPECT(worst < 1e-6f);
    EXPECT(memcmp(a.params, b.params, sizeof(float) * a.n_params) != 0 || worst == 0);
    free(batches);
    optim_free(&oa);
    optim_free(&ob);
    model_free(&a);
    model_free(&b);
}

int main(void) {
    test_one_thread();
    RUN(moe_layers_of_every_model_type);
    RUN(expert_bias_moves_on_a_seed_model);
    RUN(expert_bias_moves_on_an_lm);
    RUN(bench_steps_as_train);
    RUN(nonfinite_step_updates_nothing);
    RUN(grad_accum_is_a_larger_batch);
    return test_summary("train");
}
