/* train.c: a training run (see train.h), evaluation, and the summaries the CLI prints. */
#include "train/train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/gemm.h"
#include "data/corpus.h"
#include "data/dataloader.h"
#include "data/tokens.h"
#include "io/fileio.h"
#include "io/json.h"
#include "optim/optim.h"
#include "report/progress.h"
#include "report/routing.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/step.h"

void train_options_default(TrainOptions *o) {
    memset(o, 0, sizeof *o);
    o->config = NULL;   /* the "demo" preset, or on resume the checkpoint's */
    o->out = "runs/demo";
    o->seed = 1;
    o->threads = 2;
    o->eval_interval = 200;
    o->log_interval = 10;
    o->ckpt_interval = 0;   /* 0: at each eval and at the end */
    o->keep = 3;
    o->eval_batches = 0;
}

/* ---- summaries --------------------------------------------------------------------------------- */

static void fmt_count(char *buf, size_t cap, size_t n) {
    if (n >= 1000000) snprintf(buf, cap, "%.2fM", n / 1e6);
    else if (n >= 1000) snprintf(buf, cap, "%.1fK", n / 1e3);
    else snprintf(buf, cap, "%zu", n);
}

void print_model_summary(const Model *m, FILE *f) {
    const ModelConfig *c = &m->cfg;
    size_t total, active, per_expert;
    model_param_counts(m, &total, &active, &per_expert);
    char t[32], a[32], pe[32];
    fmt_count(t, sizeof t, total);
    fmt_count(a, sizeof a, active);
    fmt_count(pe, sizeof pe, per_expert);
    fprintf(f, "model: %s, vocab %d, d_model %d, %d layers, %d heads, d_ff %d, %s, %s%s\n",
            c->model_type == MODEL_SEED ? "seed" : "lm", c->vocab_size, c->d_model, c->num_layers, c->num_heads,
            c->d_ff, c->norm_type == NORM_RMS ? "rmsnorm" : "layernorm",
            c->hidden_act == ACT_RELU ? "relu" : c->hidden_act == ACT_GELU ? "gelu" : "swiglu",
            c->model_type == MODEL_LM ? (c->tie_word_embeddings ? ", tied head" : ", untied head") : "");
    int n_moe = config_num_moe_layers(c);
    if (n_moe) {
        const MoEConfig *mc = &m->moe_cfg;
        fprintf(f, "moe: %d sparse layer(s), %d experts (d_ff %d), router %s, k %d, capacity factor %g train / %g eval, "
                   "aux %g, z %g, jitter %g%s%s\n",
                n_moe, mc->E, mc->H, router_name(mc->router), mc->K, mc->capacity_factor_train, mc->capacity_factor_eval,
                mc->aux_coef, mc->z_coef, mc->jitter, mc->shared_expert ? ", shared expert" : "",
                mc->use_expert_bias ? ", expert bias" : "");
    }
    fprintf(f, "parameters: %s total, %s active per token", t, a);
    if (n_moe) fprintf(f, ", %s per expert", pe);
    fprintf(f, "\n");
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *ti = &m->tensors[i];
        if (!tensor_sharded(ti)) continue;
        char h[32], w[32];   /* expert parallelism: each rank holds a shard of the experts */
        fmt_count(h, sizeof h, m->n_params);
        fmt_count(w, sizeof w, m->n_params_full);
        fprintf(f, "expert parallel: each rank holds %" PRId64 " of the %" PRId64 " experts of each MoE layer, "
                   "%s of the %s parameters (and their gradients and Adam moments)\n", ti->shape[0], ti->full_dim0, h, w);
        break;
    }
}

void print_moe_stats(const EvalResult *r, FILE *f) {
    for (int l = 0; l < r->n_moe; l++) {
        const MoEStats *s = &r->stats[l];
        double kept = s->slots - s->dropped;
        fprintf(f, "  moe layer %d: dropped %.2f%%, entropy %.3f, top-1 prob %.3f, dead %d/%d, aux %.4f, z %.4f, load",
                l, s->slots > 0 ? 100.0 * s->dropped / s->slots : 0.0, s->tokens > 0 ? s->entropy_sum / s->tokens : 0.0,
                s->tokens > 0 ? s->top1_sum / s->tokens : 0.0, moe_stats_dead(s), s->E,
                s->batches ? s->aux_sum / s->batches : 0.0, s->batches ? s->z_sum / s->batches : 0.0);
        for (int e = 0; e < s->E && e < 256; e++) fprintf(f, " %.3f", kept > 0 ? s->load[e] / kept : 0.0);
        fprintf(f, "\n");
    }
}

/* ---- evaluation -------------------------------------------------------------------------------- */

moelm_status evaluate(Model *m, const int *ids, size_t n, size_t max_batches, int stride, EvalResult *r) {
    return evaluate_routed(m, ids, n, max_batches, stride, r, NULL);
}

moelm_status evaluate_routed(Model *m, const int *ids, size_t n, size_t max_batches, int stride, EvalResult *r,
                             RoutingRec *rec) {
    memset(r, 0, sizeof *r);
    int B = m->B, T = m->T, Bg = B * dist_world();   /* over W ranks each takes B of the Bg windows */
    int S = stride > 0 ? stride : T;
    CHECK(!rec || S == T);   /* the routing records stream positions of non-overlapping windows */
    if (S > T) return moelm_fail(MOELM_ERR_ARG, "evaluation stride %d is longer than the context %d", S, T);
    size_t nb = eval_num_batches(n, Bg, T, S);
    if (max_batches && nb > max_batches) nb = max_batches;
    int *inp = moelm_malloc(sizeof(int) * (size_t)Bg * T), *tgt = moelm_malloc(sizeof(int) * (size_t)Bg * T);
    if (!inp || !tgt) {
        moelm_free(inp);
        moelm_free(tgt);
        return MOELM_ERR_NOMEM;
    }
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    r->n_moe = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    for (int l = 0; l < r->n_moe; l++) moe_stats_reset(&r->stats[l], m->moe_cfg.E);
    dist_eval_begin();
    for (size_t b = 0; b < nb; b++) {
        eval_batch(ids, n, Bg, T, S, b, inp, tgt);
        dist_take_rows(inp, tgt, Bg, T);
        model_forward(m, inp, tgt, 0);
        for (int i = 0; i < B * T; i++)
            if (tgt[i] >= 0) r->nll += m->a.losses[i];
        r->tokens += m->n_valid;
        for (int l = 0; l < r->n_moe; l++) moe_stats_add(&r->stats[l], ml[l].a, ml[l].cfg);
        if (rec) routing_take(rec, m, inp, tgt, b);
    }
    dist_eval_end();
    dist_reduce_eval(r);
    moelm_free(inp);
    moelm_free(tgt);
    return MOELM_OK;
}

/* ---- data ---------------------------------------------------------------------------------------- */

static moelm_status make_tokenizer(Tokenizer **tok, const char *spec, const Corpus *c) {
    const char *text = c->text[CORPUS_TRAIN];
    size_t n = c->len[CORPUS_TRAIN];
    if (!strcmp(spec, "word")) return tokenizer_build_word(tok, text, n, 1 << 30);
    if (!strncmp(spec, "word:", 5)) {
        int v = atoi(spec + 5);
        if (v < 2) return moelm_fail(MOELM_ERR_CONFIG, "tokenizer '%s': the vocabulary size must be >= 2", spec);
        return tokenizer_build_word(tok, text, n, v);
    }
    if (!strcmp(spec, "char")) return tokenizer_build_char(tok, text, n);
    if (!strncmp(spec, "unigram:", 8) || !strncmp(spec, "bpe:", 4)) {
        int unigram = spec[0] == 'u';
        int v = atoi(spec + (unigram ? 8 : 4));
        if (v < 4) return moelm_fail(MOELM_ERR_CONFIG, "tokenizer '%s': the vocabulary size must be >= 4", spec);
        return tokenizer_train_spm(tok, text, n, unigram ? TOK_UNIGRAM : TOK_BPE, v);
    }
    return tokenizer_load(tok, spec);
}

/* Encodes a split, through the run directory's token cache when one is valid for this tokenizer.
 * Evaluation streams start with <eos> so that their first word is predicted too. */
static moelm_status split_ids(int **ids, size_t *n, const Corpus *c, int split, const Tokenizer *tok,
                              const char *run_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokens.%s.bin", run_dir, corpus_split_name(split));
    int V = tokenizer_vocab_size(tok);
    uint64_t h = tokenizer_hash(tok);
    if (path_exists(path) && tokens_read(path, ids, n, V, h) == MOELM_OK) return MOELM_OK;
    int *raw = NULL;
    size_t cnt = 0;
    moelm_status st = tokenizer_encode(tok, c->text[split], c->len[split], &raw, &cnt);
    if (st) return moelm_fail_context(st, "%s", c->name[split]);
    int eos = tokenizer_eos_id(tok);
    if (split != CORPUS_TRAIN && eos >= 0) {
        int *w = moelm_malloc(sizeof(int) * (cnt + 1));
        if (!w) { moelm_free(raw); return MOELM_ERR_NOMEM; }
        w[0] = eos;
        memcpy(w + 1, raw, sizeof(int) * cnt);
        moelm_free(raw);
        raw = w;
        cnt++;
    }
    *ids = raw;
    *n = cnt;
    return tokens_write(path, raw, cnt, V, h);
}

/* ---- the run ------------------------------------------------------------------------------------- */

typedef struct {
    FILE *metrics;
    Corpus corpus;
    Tokenizer *tok;
    int *ids[3];
    size_t n[3];
    size_t words[3];
    Model model;
    Optimizer opt;
    DataLoader dl;
    int *inp, *tgt;
    int model_ok, opt_ok, dl_ok;
} Run;

static void run_free(Run *r) {
    if (r->metrics) fclose(r->metrics);
    corpus_free(&r->corpus);
    if (r->tok) tokenizer_free(r->tok);
    for (int i = 0; i < 3; i++) moelm_free(r->ids[i]);
    if (r->model_ok) model_free(&r->model);
    if (r->opt_ok) optim_free(&r->opt);
    if (r->dl_ok) dataloader_free(&r->dl);
    moelm_free(r->inp);
    moelm_free(r->tgt);
}

static char *train_config_json(const TrainConfig *tc) {
    StrBuf sb = {0};
    sb_printf(&sb, "{\"batch_size\": %d, \"seq_len\": %d, \"stride\": %d, \"lr\": %.9g, \"min_lr_ratio\": %.9g, "
                   "\"warmup_steps\": %d, \"lr_schedule\": \"%s\", \"optimizer\": \"%s\", \"weight_decay\": %.9g, "
                   "\"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, \"grad_clip\": %.9g, \"steps\": %ld, "
                   "\"dropout_growth\": %.9g, \"dropout_epochs\": %.9g, \"dropout_max\": %.9g, \"tokenizer\": ",
              tc->batch_size, tc->seq_len, tc->stride, tc->lr, tc->min_lr_ratio, tc->warmup_steps,
              tc->schedule == SCHED_CONSTANT ? "constant" : tc->schedule == SCHED_COSINE ? "cosine" : "linear",
              tc->adamw ? "adamw" : "adam", tc->weight_decay, tc->beta1, tc->beta2, tc->eps, tc->grad_clip, tc->steps,
              tc->dropout_growth, tc->dropout_epochs, tc->dropout_max);
    sb_json_string(&sb, tc->tokenizer);
    sb_printf(&sb, "}");
    if (sb.failed) { sb_free(&sb); return NULL; }
    return sb.buf;
}

/* Re-applies a saved TrainConfig JSON (from state.json) key by key. */
static moelm_status train_config_from_json(TrainConfig *tc, const char *js) {
    Json *j = NULL;
    moelm_status st = json_parse(&j, js, strlen(js), "state.json train");
    if (st) return st;
    for (size_t i = 0; !st && i < json_len(j); i++) {
        const Json *v = json_at(j, i);
        char buf[64];
        const char *sv = buf;
        if (json_type(v) == JSON_STRING) sv = json_string(v);
        else snprintf(buf, sizeof buf, "%.9g", json_number(v));
        st = train_config_set(tc, json_key_at(j, i), sv);
    }
    json_free(j);
    return st;
}

/* Keeps the records of metrics.jsonl up to step (a resumed run rewrites what came after). */
static moelm_status metrics_truncate(const char *path, long step) {
    if (!path_exists(path)) return MOELM_OK;
    char *data = NULL;
    size_t n = 0;
    moelm_status st = file_read_all(path, &data, &n);
    if (st) return st;
    size_t keep = 0;
    for (size_t i = 0; i < n;) {
        char *nl = memchr(data + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - data) + 1 : n;
        const char *s = strstr(data + i, "\"step\": ");
        long v = s && s < data + end ? strtol(s + 8, NULL, 10) : -1;
        if (!nl || v > step || v < 0) break;   /* a torn last line, or a step after the checkpoint */
        keep = end;
        i = end;
    }
    st = file_write_atomic(path, data, keep);
    moelm_free(data);
    return st;
}

static double now_s(void) { return time_now(); }

/* The step at whose start a dropout rule fixes the rate: the end of the warm-up, and with a time
 * budget not before 20 steps have measured the speed. */
static long dropout_fix_step(const TrainConfig *tc, double budget_min) {
    long s = tc->warmup_steps;
    return budget_min > 0 && s < 20 ? 20 : s;
}

/* The model and training config of a preset name or a config.json path. */
static moelm_status config_base(const char *name, ModelConfig *cfg, TrainConfig *tc) {
    if (path_exists(name) && !path_is_dir(name)) {
        moelm_status st = config_load(cfg, name);
        if (!st) config_preset_train(tc, "demo");
        return st;
    }
    moelm_status st = config_preset(cfg, name);
    return st ? st : config_preset_train(tc, name);
}

/* Applies the --set overrides: model keys to cfg, the others to tc; *n_train counts the latter. */
static moelm_status config_apply_sets(const TrainOptions *o, ModelConfig *cfg, TrainConfig *tc, int *n_train) {
    *n_train = 0;
    for (int i = 0; i < o->n_sets; i++) {
        char key[128];
        const char *eq = strchr(o->sets[i], '=');
        if (!eq || eq == o->sets[i] || (size_t)(eq - o->sets[i]) >= sizeof key)
            return moelm_fail(MOELM_ERR_ARG, "--set '%s': expected key=value", o->sets[i]);
        memcpy(key, o->sets[i], (size_t)(eq - o->sets[i]));
        key[eq - o->sets[i]] = '\0';
        moelm_status st = config_set(cfg, key, eq + 1);
        if (st == MOELM_ERR_CONFIG && strstr(moelm_last_error(), "unknown config key")) {
            st = train_config_set(tc, key, eq + 1);
            (*n_train)++;
        }
        if (st) return st;
    }
    return MOELM_OK;
}

/* Resume without --force: the model config asked for on the command line (--config, --set) must be
 * the checkpoint's; otherwise the error names the first key that differs. */
static moelm_status resume_check_config(const TrainOptions *o, const ModelConfig *have, int seq_len) {
    ModelConfig want = *have;
    TrainConfig tc;
    int n_train = 0;
    config_preset_train(&tc, "demo");
    moelm_status st = o->config ? config_base(o->config, &want, &tc) : MOELM_OK;
    if (!st) st = config_apply_sets(o, &want, &tc, &n_train);
    if (st) return moelm_fail_context(st, "resume");
    if (n_train)
        return moelm_fail(MOELM_ERR_CONFIG, "resume: the training settings come from the checkpoint; "
                                            "--set of a training key is refused (use --force to override)");
    /* what a fresh run would have filled in */
    if (want.vocab_size == 0) want.vocab_size = have->vocab_size;
    if (want.n_positions < seq_len) want.n_positions = seq_len;
    char *a = config_to_json(have), *b = config_to_json(&want);
    if (!a || !b) st = moelm_fail(MOELM_ERR_NOMEM, "out of memory comparing configs");
    for (const char *x = a, *y = b; !st && *x && *y;) {
        size_t nx = strcspn(x, "\n"), ny = strcspn(y, "\n");
        if (nx != ny || memcmp(x, y, nx) != 0) {
            while (*x == ' ') x++, nx--;
            while (*y == ' ') y++, ny--;
            if (nx && x[nx - 1] == ',') nx--;
            if (ny && y[ny - 1] == ',') ny--;
            st = moelm_fail(MOELM_ERR_CONFIG, "resume: the checkpoint's model has %.*s, the requested config %.*s "
                                              "(the model comes from the checkpoint; use --force to continue with it)",
                            (int)nx, x, (int)ny, y);
        }
        x += nx + (x[nx] == '\n');
        y += ny + (y[ny] == '\n');
    }
    moelm_free(a);
    moelm_free(b);
    return st;
}

/* "%.6f" of x, or "null" when x is NaN or Inf (JSON has no spelling for them); buf holds 32 bytes. */
static const char *json_num(char *buf, double x) {
    if (!isfinite(x)) return "null";
    snprintf(buf, 32, "%.6f", x);
    return buf;
}

static moelm_status train_run_ranks(const TrainOptions *o);

/* Over MPI every rank runs this (see dist.h); without it, one rank. */
moelm_status train_run(const TrainOptions *o) {
    moelm_status st = dist_begin(o->expert_parallel);
    if (!st) st = train_run_ranks(o);
    return dist_end(st);
}

static moelm_status train_run_ranks(const TrainOptions *o) {
    Run r;
    memset(&r, 0, sizeof r);
    ModelConfig cfg;
    TrainConfig tc;
    TrainState state;
    memset(&state, 0, sizeof state);
    state.dropout = -1;
    moelm_status st = MOELM_OK;
    char ckdir[4096] = "";
    const char *run_dir = o->resume ? o->resume : o->out;
    if (strlen(run_dir) > 3000) return moelm_fail(MOELM_ERR_ARG, "run directory path too long");
    backend_set_threads(o->threads);

    if (o->resume) {
        st = ckpt_resolve(o->resume, ckdir, sizeof ckdir);
        if (!st) st = ckpt_read_config(ckdir, &cfg);
        if (!st) st = ckpt_read_state(ckdir, &state);
        if (st) return moelm_fail_context(st, "cannot resume from %s", o->resume);
        config_preset_train(&tc, "demo");
        st = train_config_from_json(&tc, state.train_json);
        if (st) return moelm_fail_context(st, "%s/state.json: \"train\"", ckdir);
        if (!(tc.lr > 0) || !isfinite(tc.lr) || tc.batch_size < 1 || tc.seq_len < 1 || tc.steps < 1)
            return moelm_fail(MOELM_ERR_FORMAT, "%s/state.json: \"train\" holds an invalid lr, batch size, sequence length "
                                                "or step count", ckdir);
        if (!o->force) {
            if (o->data && strcmp(o->data, state.data) != 0)
                return moelm_fail(MOELM_ERR_CONFIG, "resume: the run trained on '%s', not '%s' (use --force to continue anyway)",
                                  state.data, o->data);
            if (o->batch_size || o->seq_len)
                return moelm_fail(MOELM_ERR_CONFIG, "resume: the batch shape comes from the checkpoint; "
                                                    "-b and --seq-len are refused (use --force to override)");
            if (o->config || o->n_sets) {
                st = resume_check_config(o, &cfg, state.seq_len);
                if (st) return st;
            }
            if (o->threads != state.threads)
                fprintf(stderr, "moelm: warning: resuming with %d threads, the run used %d: losses will not be bit-identical\n",
                        o->threads, state.threads);
        }
        if (o->steps > 0) tc.steps = o->steps;
    } else {
        int n_train;
        st = config_base(o->config ? o->config : "demo", &cfg, &tc);
        if (st) return st;
        if (o->tokenizer) snprintf(tc.tokenizer, sizeof tc.tokenizer, "%s", o->tokenizer);
        st = config_apply_sets(o, &cfg, &tc, &n_train);
        if (st) return st;
        if (o->steps > 0) tc.steps = o->steps;
        if (o->batch_size > 0) tc.batch_size = o->batch_size;
        if (o->seq_len > 0) tc.seq_len = o->seq_len;
        if (o->stride > 0) tc.stride = o->stride;
        if (o->lr > 0) tc.lr = o->lr;
        snprintf(state.data, sizeof state.data, "%s", o->data ? o->data : "builtin");
        state.seed = o->seed;
        state.threads = o->threads;
        state.batch_size = tc.batch_size;
        state.seq_len = tc.seq_len;
    }
    if (tc.batch_size < 1 || tc.seq_len < 1) return moelm_fail(MOELM_ERR_CONFIG, "batch size and sequence length must be positive");
    if (tc.steps < 1) return moelm_fail(MOELM_ERR_CONFIG, "steps must be positive (got %ld)", tc.steps);
    if (!(tc.lr > 0) || !isfinite(tc.lr)) return moelm_fail(MOELM_ERR_CONFIG, "lr must be a positive number");
    if (cfg.n_positions < tc.seq_len) cfg.n_positions = tc.seq_len;

    Progress prog;   /* the terminal progress line (stderr, tty only) */
    progress_begin(&prog, "train", state.step, tc.steps, !o->quiet);
    progress_note(&prog, "preparing data and tokenizer (%s) ...", tc.tokenizer);
    /* data and tokenizer */
    st = dir_make(run_dir);
    if (!st && !o->resume && ckpt_newest_step(run_dir) >= 0) {
        /* a new run over an old one would mix their checkpoints and metrics: refused, or with
         * --force the old checkpoints are deleted first */
        if (!o->force)
            st = moelm_fail(MOELM_ERR_CONFIG, "%s already holds a run (its checkpoints): --resume %s continues it, "
                                              "--force starts over and deletes them, or choose another --out",
                            run_dir, run_dir);
        else if (dist_is_root()) {
            char rd[4096];
            snprintf(rd, sizeof rd, "%s/routing", run_dir);   /* the old run's routing dumps go too */
            st = ckpt_remove_all(run_dir);
            if (!st) st = dir_remove_tree(rd);
        }
    }
    if (!st) st = corpus_load(&r.corpus, strcmp(state.data, "builtin") ? state.data : NULL);
    if (!st) {
        if (o->resume) {
            char tp[4096];
            snprintf(tp, sizeof tp, "%s/tokenizer.model", ckdir);
            st = tokenizer_load(&r.tok, tp);
            if (!st && tokenizer_hash(r.tok) != state.tokenizer_hash)
                st = moelm_fail(MOELM_ERR_FORMAT, "%s: tokenizer hash differs from state.json", tp);
        } else {
            st = make_tokenizer(&r.tok, tc.tokenizer, &r.corpus);
        }
    }
    dist_serial_begin();   /* rank 0 writes the token cache first, the others then read it */
    for (int s = 0; !st && s < 2; s++) st = split_ids(&r.ids[s], &r.n[s], &r.corpus, s, r.tok, run_dir);
    dist_serial_end();
    if (st) { run_free(&r); return st; }
    r.words[CORPUS_VALID] = text_count_words(r.corpus.text[CORPUS_VALID], r.corpus.len[CORPUS_VALID]);
    int V = tokenizer_vocab_size(r.tok);
    if (cfg.vocab_size == 0) cfg.vocab_size = V;
    if (cfg.vocab_size != V) {
        run_free(&r);
        return moelm_fail(MOELM_ERR_CONFIG, "vocab_size %d in the config, but the tokenizer has %d", cfg.vocab_size, V);
    }
    state.tokenizer_hash = tokenizer_hash(r.tok);
    if (r.n[CORPUS_TRAIN] < (size_t)tc.seq_len + 1) {
        run_free(&r);
        return moelm_fail(MOELM_ERR_DATA, "%s: %zu tokens, too few for one window of %d", r.corpus.name[0], r.n[0], tc.seq_len + 1);
    }

    /* model, optimizer, data order */
    st = dist_check(&cfg, tc.batch_size);
    int part, parts;
    dist_expert_shard(&part, &parts);
    if (!st) st = model_create_sharded(&r.model, &cfg, tc.batch_size / dist_world(), tc.seq_len, state.seed, part, parts);
    r.model_ok = st == MOELM_OK;
    if (!st) st = optim_create(&r.opt, r.model.n_params);
    r.opt_ok = st == MOELM_OK;
    if (!st) st = dataloader_init(&r.dl, r.ids[0], r.n[0], tc.batch_size, tc.seq_len, tc.stride > 0 ? tc.stride : tc.seq_len,
                                  1, state.seed);
    r.dl_ok = st == MOELM_OK;
    if (!st && o->resume) {
        st = ckpt_load_model(ckdir, &r.model);
        if (!st) st = ckpt_load_optimizer(ckdir, &r.opt, &r.model);
        if (!st && (st = dataloader_seek(&r.dl, state.data_epoch, state.data_pos)) != MOELM_OK)
            moelm_fail_context(st, "%s/state.json", ckdir);
        r.model.rng.s = state.rng;
        if (state.dropout >= 0) r.model.train_dropout = (float)state.dropout;
    }
    r.inp = moelm_malloc(sizeof(int) * (size_t)tc.batch_size * tc.seq_len);
    r.tgt = moelm_malloc(sizeof(int) * (size_t)tc.batch_size * tc.seq_len);
    if (!st && (!r.inp || !r.tgt)) st = MOELM_ERR_NOMEM;
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", run_dir);
    if (!dist_is_root()) snprintf(mpath, sizeof mpath, "/dev/null");   /* rank 0 logs */
    else if (!st) st = metrics_truncate(mpath, state.step);
    if (!st && !(r.metrics = fopen(mpath, "a"))) st = moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", mpath, strerror(errno));
    char *tjs = train_config_json(&tc);
    if (tjs) {
        snprintf(state.train_json, sizeof state.train_json, "%s", tjs);
        moelm_free(tjs);
    }
    if (st) { run_free(&r); return st; }

    progress_clear(&prog);
    if (!o->quiet) {
        printf("data: %s (%zu train tokens, %zu valid tokens, %zu valid words), tokenizer %s, vocab %d\n",
               state.data, r.n[0], r.n[1], r.words[1], tc.tokenizer, V);
        print_model_summary(&r.model, stdout);
        printf("training: %ld steps, batch %d x %d, lr %g (%s, warm-up %d), %s, wd %g, clip %g, %d threads, backend %s\n",
               tc.steps, tc.batch_size, tc.seq_len, tc.lr,
               tc.schedule == SCHED_CONSTANT ? "constant" : tc.schedule == SCHED_COSINE ? "cosine" : "linear",
               tc.warmup_steps, tc.adamw ? "AdamW" : "Adam", tc.weight_decay, tc.grad_clip, o->threads, backend_name());
        if (tc.dropout_growth > 0 && state.dropout < 0)
            printf("dropout: %g until step %ld, then set from the epochs the run projects (+%g per doubling past %g epochs, "
                   "at most %g)\n", cfg.dropout_rate, dropout_fix_step(&tc, o->time_budget_min), tc.dropout_growth, tc.dropout_epochs,
                   tc.dropout_max);
        if (o->resume) printf("resumed from %s at step %ld\n", ckdir, state.step);
        fflush(stdout);
    }

    Model *m = &r.model;
    int eval_interval = o->eval_interval, log_interval = o->log_interval > 0 ? o->log_interval : 1;
    double t_run = now_s() - state.elapsed_s, t_log = now_s();
    long tokens_since = 0, skipped = 0;
    Trainer trainer = {m, &r.opt, &tc, 0};
    double budget_s = o->time_budget_min * 60.0, reserve_s = 0.0, t_end_start = 0.0, t_eval_s = 0.0;
    /* periodic evaluations may take --eval-batches batches; the final one takes the whole split */
    size_t full_batches = eval_num_batches(r.n[1], tc.batch_size, tc.seq_len, tc.seq_len);
    size_t part_batches = o->eval_batches > 0 && (size_t)o->eval_batches < full_batches ? (size_t)o->eval_batches : full_batches;
    int n_moe = config_num_moe_layers(&m->cfg);
    while (state.step < tc.steps) {
        long step = state.step;
        double elapsed = budget_s > 0 ? dist_root_value(now_s() - t_run) : 0.0;
        float lr;
        if (budget_s > 0) {
            if (elapsed >= budget_s) break;
            /* the schedule runs over the time budget: progress = elapsed / budget */
            lr = lr_at_progress(&tc, step, elapsed / (budget_s - reserve_s > 0 ? budget_s - reserve_s : budget_s));
        } else {
            lr = lr_at(&tc, step, tc.steps);
        }
        if (tc.dropout_growth > 0 && state.dropout < 0 && step >= dropout_fix_step(&tc, o->time_budget_min)) {
            /* the epochs this run will make: its steps, or with a time budget the steps so far
             * scaled to the whole budget (the same value on every rank) */
            double steps = (double)tc.steps;
            if (budget_s > 0 && elapsed > 0) steps = fmin(steps, (double)step * budget_s / elapsed);
            double epochs = steps * tc.batch_size * tc.seq_len / (double)r.n[0];
            m->train_dropout = train_dropout_for_epochs(&tc, cfg.dropout_rate, epochs);
            state.dropout = m->train_dropout;
            if (!o->quiet) printf("dropout %g from step %ld on: the run projects %.3g epochs\n", m->train_dropout, step + 1, epochs);
        }
        dataloader_next(&r.dl, r.inp, r.tgt);
        dist_take_rows(r.inp, r.tgt, tc.batch_size, tc.seq_len);
        StepResult sr = train_step(&trainer, r.inp, r.tgt, lr, step + 1);
        float loss = sr.loss, gnorm = sr.grad_norm;
        if (sr.nonfinite) {
            if (!o->skip_nonfinite) {
                run_free(&r);
                return moelm_fail(MOELM_ERR_NONFINITE,
                                  "non-finite %s at step %ld (loss %g, grad norm %g); stopped, the last checkpoint in %s is intact "
                                  "(lower --lr, or --skip-nonfinite to skip such updates)",
                                  isfinite(loss) ? "gradient" : "loss", step + 1, loss, gnorm, run_dir);
            }
            skipped++;
            fprintf(stderr, "moelm: step %ld: non-finite loss or gradients, update skipped (%ld so far)\n", step + 1, skipped);
        }
        state.step++;
        tokens_since += (long)tc.batch_size * tc.seq_len;
        state.tokens_seen += (double)tc.batch_size * tc.seq_len;
        /* with a time budget the run ends so that its final evaluation and checkpoint finish on time:
         * it stops once the time left is less than what the last evaluation + checkpoint took (twice
         * that at a step with a periodic evaluation, which then becomes the final one) */
        int periodic = eval_interval > 0 && state.step % eval_interval == 0;
        int last = state.step == tc.steps || state.step == o->stop_at ||
                   (budget_s > 0 && dist_root_value(now_s() - t_run) + reserve_s * (1 + periodic) >= budget_s);
        int do_log = state.step % log_interval == 0 || state.step == 1 || last;
        int do_eval = periodic || last;
        if (do_log || do_eval) progress_clear(&prog);
        if (do_log) {
            double t = now_s(), dt = t - t_log;
            double tps = dt > 0 ? tokens_since / dt : 0;
            double ms = log_interval > 0 ? 1000.0 * dt / (state.step == 1 ? 1 : (state.step % log_interval ? state.step % log_interval : log_interval)) : 0;
            if (!o->quiet) {
                printf("step %6ld | loss %.4f", state.step, loss);
                if (n_moe) printf(" | aux %.4f", m->aux_loss);
                printf(" | lr %.2e | grad norm %.3f | %.1f ms | %.0f tok/s\n", lr, gnorm, ms, tps);
                fflush(stdout);
            }
            char jl[32], ja[32], jg[32];   /* a skipped non-finite step logs null: the line stays JSON */
            fprintf(r.metrics, "{\"step\": %ld, \"loss\": %s, \"aux_loss\": %s, \"lr\": %.6g, \"grad_norm\": %s, "
                               "\"tokens_per_s\": %.1f, \"time_s\": %.3f, \"tokens\": %.0f, \"dropout\": %.6g",
                    state.step, json_num(jl, loss), json_num(ja, m->aux_loss), lr, json_num(jg, gnorm), tps,
                    now_s() - t_run, state.tokens_seen, m->train_dropout);
            if (!do_eval) fprintf(r.metrics, "}\n");
            t_log = now_s();
            tokens_since = 0;
        }
        if (do_eval) {
            EvalResult ev;
            RoutingRec rec;   /* the routing dump records the evaluation's own forward passes */
            double t0 = t_end_start = now_s();
            if (routing_begin(&rec, m, r.n[1], (size_t)o->eval_batches))   /* rec stays empty */
                fprintf(stderr, "moelm: warning: routing dump not written: %s\n", moelm_last_error());
            st = evaluate_routed(m, r.ids[1], r.n[1], last ? 0 : part_batches, 0, &ev, &rec);
            t_eval_s = now_s() - t0;
            if (st) { routing_free(&rec); run_free(&r); return st; }
            double tok_nll = ev.tokens > 0 ? ev.nll / ev.tokens : 0;
            /* word-level perplexity: the NLL of the whole split over its words (<eos> included);
             * a partial evaluation scales its mean to the split's token count */
            double total_nll = tok_nll * (double)(r.n[1] - 1);
            double word_ppl = r.words[1] ? exp(total_nll / (double)r.words[1]) : 0;
            if (!do_log) fprintf(r.metrics, "{\"step\": %ld", state.step);
            fprintf(r.metrics, ", \"val_loss\": %.6f, \"val_ppl\": %.4f, \"val_word_ppl\": %.4f", tok_nll, exp(tok_nll), word_ppl);
            if (ev.n_moe) {
                fprintf(r.metrics, ", \"moe\": [");
                for (int l = 0; l < ev.n_moe; l++) {
                    const MoEStats *s = &ev.stats[l];
                    double kept = s->slots - s->dropped;
                    fprintf(r.metrics, "%s{\"layer\": %d, \"dropped\": %.6f, \"entropy\": %.6f, \"top1\": %.6f, \"dead\": %d, "
                                       "\"aux\": %.6f, \"z\": %.6f, \"load\": [",
                            l ? ", " : "", l, s->slots > 0 ? s->dropped / s->slots : 0, s->tokens > 0 ? s->entropy_sum / s->tokens : 0,
                            s->tokens > 0 ? s->top1_sum / s->tokens : 0, moe_stats_dead(s), s->batches ? s->aux_sum / s->batches : 0,
                            s->batches ? s->z_sum / s->batches : 0);
                    for (int e = 0; e < s->E && e < 256; e++) fprintf(r.metrics, "%s%.5f", e ? ", " : "", kept > 0 ? s->load[e] / kept : 0);
                    fprintf(r.metrics, "]}");
                }
                fprintf(r.metrics, "]");
            }
            fprintf(r.metrics, "}\n");
            if (!o->quiet) {
                printf("eval   %6ld | val loss %.4f | val ppl %.2f | word ppl %.2f | %.1f s\n", state.step, tok_nll, exp(tok_nll),
                       word_ppl, now_s() - t0);
                print_moe_stats(&ev, stdout);
                fflush(stdout);
            }
            if (routing_finish(&rec, run_dir, state.step, m, r.tok, r.ids[1], r.n[1], state.data))
                fprintf(stderr, "moelm: warning: routing dump not written: %s\n", moelm_last_error());
            t_log = now_s();
        }
        fflush(r.metrics);
        int do_ckpt = o->ckpt_interval > 0 ? (state.step % o->ckpt_interval == 0 || last) : (do_eval || last);
        if (do_ckpt) {
            state.elapsed_s = now_s() - t_run;
            state.data_epoch = r.dl.epoch;
            state.data_pos = r.dl.pos;
            state.rng = m->rng.s;
            st = dist_save_checkpoint(run_dir, m, &r.opt, &state, r.tok, o->keep);
            if (dist_any_failed(st)) { run_free(&r); return st ? st : moelm_fail(MOELM_ERR_IO, "rank 0 failed to write a checkpoint"); }
        }
        /* what the end of the run will take: the whole split's evaluation, routing dump, checkpoint */
        if (do_eval && !last)
            reserve_s = dist_root_value(now_s() - t_end_start - t_eval_s +
                                        t_eval_s * (double)full_batches / (double)(part_batches ? part_batches : 1));
        progress_update(&prog, state.step, "loss %.3f", loss);
        if (last) break;
    }
    progress_end(&prog);
    if (skipped && !o->quiet) printf("skipped %ld non-finite updates\n", skipped);
    run_free(&r);
    return MOELM_OK;
}
