/* train.c: a training run (see train.h), evaluation, and the summaries the CLI prints. */
#include "train/train.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "backend/runtime.h"
#include "backend/gemm_bf16.h"
#include "data/corpus.h"
#include "data/dataloader.h"
#include "data/span.h"
#include "data/tokens.h"
#include "io/fileio.h"
#include "io/json.h"
#include "model/encdec.h"
#include "optim/optim.h"
#include "train/progress.h"
#include "train/routing.h"
#include "train/checkpoint.h"
#include "train/init_from.h"
#include "train/dist.h"
#include "train/hooks.h"
#include "train/keys.h"
#include "train/step.h"

void train_options_default(TrainOptions *o) {
    memset(o, 0, sizeof *o);
    o->config = NULL;   /* the "demo" preset, or on resume the checkpoint's */
    o->out = NULL;   /* runs/demo (on resume: the checkpoint's run directory) */
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
    if (c->model_type == MODEL_SWITCH)
        fprintf(f, "model: switch_transformers (encoder-decoder), vocab %d, d_model %d, %d encoder + %d decoder blocks, "
                   "%d heads of %d, d_ff %d, %s, sparse blocks every %d / %d, %s head\n",
                c->vocab_size, c->d_model, c->num_layers, c->sw.num_decoder_layers, c->num_heads, c->sw.d_kv, c->d_ff,
                c->hidden_act == ACT_RELU ? "relu" : c->hidden_act == ACT_GELU ? "gelu" : "gelu_new",
                config_switch_sparse_step(c, 0), config_switch_sparse_step(c, 1), c->tie_word_embeddings ? "tied" : "untied");
    else
    fprintf(f, "model: %s, vocab %d, d_model %d, %d layers, %d heads, d_ff %d, %s, %s%s\n",
            c->model_type == MODEL_SEED ? "seed" : c->model_type == MODEL_MIXTRAL ? "mixtral (GQA, RoPE)"
            : c->model_type == MODEL_LLAMA ? "llama (GQA, RoPE)" : c->rope ? "lm (RoPE)" : "lm", c->vocab_size, c->d_model, c->num_layers, c->num_heads,
            c->d_ff, c->norm_type == NORM_RMS ? "rmsnorm" : "layernorm",
            c->hidden_act == ACT_RELU ? "relu" : c->hidden_act == ACT_GELU ? "gelu" : "swiglu",
            c->model_type != MODEL_SEED ? (c->tie_word_embeddings ? ", tied head" : ", untied head") : "");
    if (c->n_adaptive) {
        fprintf(f, "adaptive softmax: ids [0, %d) in the head, %d tail cluster%s from id", c->adaptive_cutoffs[0],
                c->n_adaptive, c->n_adaptive > 1 ? "s" : "");
        for (int k = 0; k < c->n_adaptive; k++) fprintf(f, "%s %d", k ? "," : "", c->adaptive_cutoffs[k]);
        fprintf(f, "\n");
    }
    int n_moe = config_num_moe_layers(c);
    if (n_moe) {
        const MoEConfig *mc = &m->moe_cfg;
        if (c->model_type == MODEL_SWITCH) {
            char cap[64];
            if (c->expert_capacity > 0) snprintf(cap, sizeof cap, "expert_capacity %d", c->expert_capacity);
            else snprintf(cap, sizeof cap, "capacity factor %g train / %g eval", c->capacity_factor, c->eval_capacity_factor);
            char rt[32];
            if (c->router_type == ROUTER_TOPK) snprintf(rt, sizeof rt, "top-%d", mc->K);
            else snprintf(rt, sizeof rt, "%s", c->router_type == ROUTER_SWITCH ? "top-1" : router_name(c->router_type));
            fprintf(f, "moe: %d sparse block(s), %d experts (d_ff %d), %s, %s a sequence, aux %g, z %g (%s), jitter %g\n",
                    n_moe, mc->E, mc->H, rt, cap, c->router_aux_loss_coef, c->router_z_loss_coef,
                    c->router_type != ROUTER_SWITCH ? "each layer's own" : c->sw.hf_router_losses ? "HF v4's losses"
                                                                         : "losses on every sparse stack", mc->jitter);
        } else
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

int moe_stats_collapsed(const MoEStats *s, RouterType router) {
    if (s->slots <= 0) return 0;
    return moe_router_collapsed(router, s->E, s->dropped / s->slots, moe_stats_dead(s));
}

void print_moe_stats(const EvalResult *r, FILE *f) {
    for (int l = 0; l < r->n_moe; l++) {
        const MoEStats *s = &r->stats[l];
        double kept = s->slots - s->dropped;
        char dead[96];
        /* the random router gives each batch one expert: unused ones are not dead, just not drawn */
        if (r->router == ROUTER_RANDOM)
            snprintf(dead, sizeof dead, "unused %d/%d (random router: one expert per batch, %d batches)",
                     moe_stats_dead(s), s->E, s->batches);
        else
            snprintf(dead, sizeof dead, "dead %d/%d", moe_stats_dead(s), s->E);
        if (r->stack[l] >= 0) fprintf(f, "  %s block %d: dropped", r->stack[l] ? "decoder" : "encoder", r->block[l]);
        else fprintf(f, "  moe layer %d: dropped", l);
        fprintf(f, " %.2f%%, entropy %.3f, top-1 prob %.3f, %s, aux %.4f, z %.4f, load",
                s->slots > 0 ? 100.0 * s->dropped / s->slots : 0.0, s->tokens > 0 ? s->entropy_sum / s->tokens : 0.0,
                s->tokens > 0 ? s->top1_sum / s->tokens : 0.0, dead,
                s->batches ? s->aux_sum / s->batches : 0.0, s->batches ? s->z_sum / s->batches : 0.0);
        for (int e = 0; e < s->E && e < 256; e++) fprintf(f, " %.3f", kept > 0 ? s->load[e] / kept : 0.0);
        fprintf(f, "\n");
        if (moe_stats_collapsed(s, r->router))
            fprintf(f, "  warning: moe layer %d's router has collapsed (%.0f%% of the tokens dropped, %d of %d experts "
                       "dead)%s\n",
                    l, 100.0 * s->dropped / s->slots, moe_stats_dead(s), s->E,
                    s->entropy_sum > 0.95 * log((double)s->E) * s->tokens
                        ? ": its probabilities are near uniform, so every token reaches it with nearly the same hidden "
                          "state (docs/MOE.md, the seed Switch's collapse)"
                        : ": try a larger router_aux_loss_coef or capacity_factor, or a smaller lr");
    }
}

/* ---- evaluation -------------------------------------------------------------------------------- */

/* The statistics of every MoE layer, reset, and which block (and stack) each is. */
static void eval_layers_begin(const Model *m, EvalResult *r, MoELayer *ml) {
    r->n_moe = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    r->router = r->n_moe ? ml[0].cfg->router : ROUTER_SWITCH;
    for (int l = 0; l < r->n_moe; l++) {
        moe_stats_reset(&r->stats[l], ml[l].cfg->E);
        r->block[l] = ml[l].block;
        r->stack[l] = m->ed ? ml[l].stack : -1;
    }
}

/* One evaluation batch of an encoder-decoder: the forward, the labels' loss and the layers' statistics. */
static void eval_seq2seq_batch(Model *m, const Seq2SeqBatch *bt, const MoELayer *ml, EvalResult *r) {
    const EncDec *ed = m->ed;
    encdec_forward(m, bt, 0);
    for (int i = 0; i < bt->B * bt->Td; i++)
        if (ed->labels[i] >= 0) r->nll += ed->losses[i];
    r->tokens += m->n_valid;
    for (int l = 0; l < r->n_moe; l++) moe_stats_add(&r->stats[l], ml[l].a, ml[l].cfg);
}

moelm_status evaluate_span(Model *m, const int *ids, size_t n, SpanLengths len, size_t max_batches, EvalResult *r) {
    memset(r, 0, sizeof *r);
    const EncDec *ed = m->ed;
    int Bl = ed->Bmax, Bg = Bl * dist_world(), Te = len.inputs, Td = len.targets, L = len.raw;
    size_t nb = span_eval_batches(n, len, Bg);
    if (max_batches && nb > max_batches) nb = max_batches;
    const ModelConfig *c = &m->cfg;
    int *inp = moelm_malloc(sizeof(int) * (size_t)Bg * Te), *lab = moelm_malloc(sizeof(int) * (size_t)Bg * Td);
    int *tok = moelm_malloc(sizeof(int) * (size_t)L * 4);
    uint8_t *mask = moelm_malloc((size_t)L);
    moelm_status st = inp && lab && tok && mask ? MOELM_OK : MOELM_ERR_NOMEM;
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    eval_layers_begin(m, r, ml);
    int sent0 = c->vocab_size - 1, eos = c->sw.eos_token_id;
    dist_eval_begin();
    for (size_t b = 0; b < nb && !st; b++) {
        /* the same noise every time: the split's fixed corruption (seed 0) */
        int rows = span_eval_batch(ids, n, len, 0.15f, 3.0f, Bg, b, 0, sent0, 100, eos, inp, lab, tok, mask, tok + L);
        /* a short last batch: the missing rows score nothing (labels -100), each rank still takes its rows */
        for (int i = rows * Te; i < Bg * Te; i++) inp[i] = 0;
        for (int i = rows * Td; i < Bg * Td; i++) lab[i] = -100;
        dist_take_rows2(inp, Te, lab, Td, Bg);
        Seq2SeqBatch bt = {Bl, Te, Td, inp, NULL, NULL, lab, NULL};
        eval_seq2seq_batch(m, &bt, ml, r);
    }
    dist_eval_end();
    dist_reduce_eval(r);
    moelm_free(inp);
    moelm_free(lab);
    moelm_free(tok);
    moelm_free(mask);
    return st;
}

moelm_status evaluate_pairs(Model *m, const Seq2SeqData *d, size_t max_batches, EvalResult *r) {
    memset(r, 0, sizeof *r);
    const EncDec *ed = m->ed;
    int Bl = ed->Bmax, Bg = Bl * dist_world(), Te = d->Te, Td = d->Td;
    size_t nb = seq2seq_eval_batches(d, Bg);
    if (max_batches && nb > max_batches) nb = max_batches;
    int *inp = moelm_malloc(sizeof(int) * (size_t)Bg * Te), *msk = moelm_malloc(sizeof(int) * (size_t)Bg * Te);
    int *lab = moelm_malloc(sizeof(int) * (size_t)Bg * Td);
    moelm_status st = inp && msk && lab ? MOELM_OK : MOELM_ERR_NOMEM;
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    eval_layers_begin(m, r, ml);
    dist_eval_begin();
    for (size_t b = 0; b < nb && !st; b++) {
        int rows = seq2seq_eval_batch(d, Bg, b, inp, msk, lab);
        /* a short last batch: the missing rows are padding and score nothing */
        for (int i = rows * Te; i < Bg * Te; i++) inp[i] = d->pad, msk[i] = 0;
        for (int i = rows * Td; i < Bg * Td; i++) lab[i] = -100;
        dist_take_rows(inp, msk, Bg, Te);
        dist_take_rows2(lab, Td, NULL, 0, Bg);
        Seq2SeqBatch bt = {Bl, Te, Td, inp, msk, NULL, lab, NULL};
        eval_seq2seq_batch(m, &bt, ml, r);
    }
    dist_eval_end();
    dist_reduce_eval(r);
    moelm_free(inp);
    moelm_free(msk);
    moelm_free(lab);
    return st;
}

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
    eval_layers_begin(m, r, ml);
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
        /* "bpe:N" or "bpe:N:bytes" (sentencepiece's byte fallback: the 256 byte pieces, as llama.cpp needs) */
        int unigram = spec[0] == 'u';
        char *end;
        long v = strtol(spec + (unigram ? 8 : 4), &end, 10);
        int bytes = !strcmp(end, ":bytes");
        if (v < 4 || v > 1000000 || (*end && !bytes))
            return moelm_fail(MOELM_ERR_CONFIG, "tokenizer '%s': expected %s:N or %s:N:bytes with N >= 4", spec,
                              unigram ? "unigram" : "bpe", unigram ? "unigram" : "bpe");
        if (bytes) return tokenizer_train_spm_bytes(tok, text, n, unigram ? TOK_UNIGRAM : TOK_BPE, (int)v);
        return tokenizer_train_spm(tok, text, n, unigram ? TOK_UNIGRAM : TOK_BPE, (int)v);
    }
    return tokenizer_load(tok, spec);
}

/* Encodes a split, through the run directory's token cache when one is valid for this tokenizer and
 * this text (tokens_cache_key: a cache of other data in the same --out is rebuilt, not trained on).
 * Evaluation streams start with <eos> so that their first word is predicted too. */
static moelm_status split_ids(int **ids, size_t *n, const Corpus *c, int split, const Tokenizer *tok,
                              const char *run_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokens.%s.bin", run_dir, corpus_split_name(split));
    int V = tokenizer_vocab_size(tok);
    uint64_t h = tokens_cache_key(tokenizer_hash(tok), c->text[split], c->len[split]);
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

/* Everything a run holds, from its set-up to its end. */
typedef struct {
    const TrainOptions *o;
    const char *dir;            /* the run directory: --out, or the one of --resume's checkpoint */
    char dirbuf[4096];          /* dir on resume */
    int lock_fd;                /* the run directory's lock (rank 0), -1: none */
    char ckdir[4096];           /* on resume: the checkpoint it continues from */
    InitSource *src;            /* --init-from: the model the run starts from (NULL: none) */
    ModelConfig cfg;
    TrainConfig tc;
    TrainState state;           /* what the next checkpoint records; state.step: the steps done */
    Progress prog;              /* the terminal progress line (stderr, tty only) */
    Corpus corpus;
    Tokenizer *tok;
    int *ids[3];                /* token ids of the train and valid splits */
    size_t n[3], words[3];      /* their token counts; the valid split's word count */
    Model model;
    Optimizer opt;
    DataLoader dl;
    Trainer trainer;            /* train_step's state over model, opt, tc */
    /* switch_transformers: span-corrupted windows of the stream instead of the lm's windows */
    int s2s;                    /* the model is an encoder-decoder */
    SpanLoader span;
    int span_ok;
    SpanLengths len;            /* a window's raw length, the encoder's Te and the decoder's Td */
    int *lab;                   /* [B*Td] the step's labels (inp holds [B*Te] encoder ids) */
    int pairs;                  /* input<TAB>target pairs (--data FILE.tsv) instead of span corruption */
    Seq2SeqData pd[2];          /* the train and valid splits' pairs */
    int pd_ok[2];
    int *msk;                   /* [B*Te] the step's encoder attention mask (pairs) */
    EvalResult ev;              /* the last evaluation's */
    EvalResult ev_ema;          /* the last evaluation's of the averaged weights (tc.ema_decay > 0) */
    int *inp, *tgt;             /* [B*T] the step's batch */
    int metrics_fd;             /* metrics.jsonl, appended to (rank 0; -1 on the other ranks) */
    StrBuf mrec;                /* the record being appended */
    int model_ok, opt_ok, dl_ok;
    /* the clock */
    double t_run;               /* when the run started, less the time of its earlier parts (resume) */
    double t_log;               /* when the last log line or evaluation ended */
    long tokens_since;          /* tokens trained since then */
    long skipped;               /* non-finite updates skipped (--skip-nonfinite) */
    double budget_s;            /* --time-budget in seconds (0: none) */
    double reserve_s;           /* what the end of the run will take: its evaluation and checkpoint */
    double t_eval_start, t_eval_s;        /* the last evaluation: its start, its duration */
    size_t full_batches, part_batches;    /* validation batches of the final and of a periodic evaluation */
    int reserve_measured;       /* reserve_s is a periodic evaluation's measure, not the estimate */
    double fwd_s, ckpt_s;       /* a micro-batch's mean forward time; the last checkpoint's write time */
    long fwd_n;
    /* the end-of-run summary */
    int complete;               /* nothing to train: 1 resumed a complete run, -1 --print-config */
    long step0;                 /* the step this invocation started at */
    double best_ppl;            /* the best validation perplexity so far (0: none yet) */
    long best_step;
    int signal;                 /* the SIGINT or SIGTERM that stopped the run (0: none) */
    int made_dir;               /* this run made its directory: a failure in the set-up removes it */
    int resume_elsewhere;       /* resumed from a checkpoint outside its run directory, into --out */
    int started;                /* the set-up is done */
    char ad_dropped[96];        /* the adaptive softmax's cutoffs the tokenizer's vocabulary was too small for */
} Run;

static void run_free(Run *r) {
    moelm_free(r->src);
    if (r->metrics_fd >= 0) close(r->metrics_fd);
    sb_free(&r->mrec);
    ckpt_unlock_run(r->lock_fd);
    corpus_free(&r->corpus);
    if (r->tok) tokenizer_free(r->tok);
    for (int i = 0; i < 3; i++) moelm_free(r->ids[i]);
    if (r->model_ok) model_free(&r->model);
    if (r->opt_ok) optim_free(&r->opt);
    if (r->dl_ok) dataloader_free(&r->dl);
    if (r->span_ok) span_loader_free(&r->span);
    for (int i = 0; i < 2; i++) if (r->pd_ok[i]) seq2seq_free(&r->pd[i]);
    moelm_free(r->msk);
    moelm_free(r->lab);
    moelm_free(r->inp);
    moelm_free(r->tgt);
}

/* Micro-batches per update. */
static int run_accum(const TrainConfig *tc) { return tc->grad_accum > 1 ? tc->grad_accum : 1; }

/* The shortest decimal that reads back as the float v (0.001, not 0.00100000005); buf: 32 bytes. */
static const char *float_str(char *buf, float v) {
    for (int p = 6; p <= 9; p++) {
        snprintf(buf, 32, "%.*g", p, v);
        if ((float)strtod(buf, NULL) == v) break;
    }
    return buf;
}

/* all: also the keys a run leaves out of state.json at their defaults (grad_accum, the budget's). */
static char *train_config_json(const TrainConfig *tc, int all) {
    StrBuf sb = {0};
    char f[8][32];
    sb_printf(&sb, "{\"batch_size\": %d, \"seq_len\": %d, \"stride\": %d, \"lr\": %s, \"min_lr_ratio\": %s, "
                   "\"warmup_steps\": %d, \"lr_schedule\": \"%s\", \"optimizer\": \"%s\", \"weight_decay\": %s, "
                   "\"beta1\": %s, \"beta2\": %s, \"eps\": %s, \"grad_clip\": %s, \"steps\": %ld, ",
              tc->batch_size, tc->seq_len, tc->stride, float_str(f[0], tc->lr), float_str(f[1], tc->min_lr_ratio),
              tc->warmup_steps, tc->schedule == SCHED_CONSTANT ? "constant" : tc->schedule == SCHED_COSINE ? "cosine" : "linear",
              optim_name(tc), float_str(f[2], tc->weight_decay), float_str(f[3], tc->beta1),
              float_str(f[4], tc->beta2), float_str(f[5], tc->eps), float_str(f[6], tc->grad_clip), tc->steps);
    sb_printf(&sb, "\"dropout_growth\": %s, ", float_str(f[0], tc->dropout_growth));
    sb_printf(&sb, "\"dropout_epochs\": %s, ", float_str(f[0], tc->dropout_epochs));
    sb_printf(&sb, "\"dropout_max\": %s, \"tokenizer\": ", float_str(f[0], tc->dropout_max));
    sb_json_string(&sb, tc->tokenizer);
    if (tc->dropout_start_epochs > 0 || all)
        sb_printf(&sb, ", \"dropout_start_epochs\": %s", float_str(f[0], tc->dropout_start_epochs));
    if (tc->grad_accum > 1 || all) sb_printf(&sb, ", \"grad_accum\": %d", run_accum(tc));
    if (tc->ema_decay > 0 || all) sb_printf(&sb, ", \"ema_decay\": %s", float_str(f[0], tc->ema_decay));
    if (tc->shift_windows || all) sb_printf(&sb, ", \"shift_windows\": %d", tc->shift_windows);
    if (tc->unigram_output_bias || all) sb_printf(&sb, ", \"unigram_output_bias\": %d", tc->unigram_output_bias);
    if (tc->time_budget_s > 0 || all)
        sb_printf(&sb, ", \"time_budget_s\": %s, \"warmup_share\": %s", float_str(f[0], tc->time_budget_s),
                  float_str(f[1], tc->warmup_share));
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
        else json_number_text(json_number(v), buf);
        st = train_config_set(tc, json_key_at(j, i), sv);
    }
    json_free(j);
    return st;
}

/* Keeps the records of metrics.jsonl up to step (a resumed run rewrites what came after); *best,
 * *best_step: the best validation perplexity among them (left as they are when none has one). */
static moelm_status metrics_truncate(const char *path, long step, double *best, long *best_step) {
    struct stat sb;
    if (stat(path, &sb) != 0) return MOELM_OK;
    if (!S_ISREG(sb.st_mode)) return moelm_fail(MOELM_ERR_IO, "%s: not a regular file", path);
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
        const char *p = strstr(data + i, "\"val_ppl\": ");
        double ppl = p && p < data + end ? strtod(p + 11, NULL) : 0;
        if (ppl > 0 && (*best <= 0 || ppl < *best)) {
            *best = ppl;
            *best_step = v;
        }
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
static long dropout_fix_step(const TrainConfig *tc, double budget_s) {
    long s = tc->warmup_steps;
    return budget_s > 0 && s < 20 ? 20 : s;
}

/* The model and training config of a preset name or a config.json path. */
/* An experiment file: a JSON object of model and training keys, optionally on a "preset" (its
 * model and training settings; without one the model keys start from config_load's defaults and
 * the training settings from the demo preset's). */
static moelm_status experiment_load(const char *path, ModelConfig *cfg, TrainConfig *tc) {
    Json *j = NULL;
    moelm_status st = json_parse_file(&j, path);
    if (st) return st;
    char where[4200];
    snprintf(where, sizeof where, "%s: ", path);
    const Json *p = json_type(j) == JSON_OBJECT ? json_get(j, "preset") : NULL;
    if (p && json_type(p) != JSON_STRING) st = moelm_fail(MOELM_ERR_CONFIG, "%s\"preset\" must be a preset name", where);
    if (!st && p) {
        st = config_preset(cfg, json_string(p));
        if (!st) st = config_preset_train(tc, json_string(p));
    } else if (!st) {
        st = config_load_skipping(cfg, path, key_is_training);
        const char *u = st ? strstr(moelm_last_error(), "unknown config key '") : NULL;
        if (u) {   /* config_load's message, with a suggestion */
            char k[128];
            snprintf(k, sizeof k, "%.*s", (int)strcspn(u + 20, "'"), u + 20);
            st = key_unknown(where, k);
        }
        if (!st) st = config_preset_train(tc, "demo");
    }
    for (size_t i = 0; !st && i < json_len(j); i++) {   /* the keys over the preset's (config_load did the model's) */
        const char *k = json_key_at(j, i);
        const Json *v = json_at(j, i);
        if (!strcmp(k, "preset") || !strcmp(k, "moelm_version") || (!p && !key_is_training(k))) continue;
        char buf[64];
        const char *sv = buf;
        if (json_type(v) == JSON_STRING) sv = json_string(v);
        else if (json_type(v) == JSON_BOOL) sv = json_bool(v) ? "true" : "false";
        else if (json_type(v) == JSON_NUMBER) snprintf(buf, sizeof buf, "%.9g", json_number(v));
        else st = moelm_fail(MOELM_ERR_CONFIG, "key '%s' must be a number, string or boolean", k);
        if (!st) st = key_is_training(k) ? train_config_set(tc, k, sv) : config_set(cfg, k, sv);
        if (st && strstr(moelm_last_error(), "unknown config key")) st = key_unknown(where, k);
        else if (st) st = moelm_fail_context(st, "%s", path);
    }
    if (!st && p && (st = config_check_open_vocab(cfg))) st = moelm_fail_context(st, "%s", path);
    json_free(j);
    return st;
}

static moelm_status config_base(const char *name, ModelConfig *cfg, TrainConfig *tc) {
    if (path_exists(name) && !path_is_dir(name)) return experiment_load(name, cfg, tc);
    if (path_is_dir(name))
        return moelm_fail(MOELM_ERR_CONFIG, "--config %s is a folder: give a preset or a JSON file (a run's is "
                          "%s/latest/config.json; --resume %s continues the run)", name, name, name);
    size_t n = strlen(name);
    if (strchr(name, '/') || (n > 5 && !strcmp(name + n - 5, ".json")))
        return moelm_fail(MOELM_ERR_CONFIG, "--config %s: no such file (moelm train --help lists the presets)", name);
    moelm_status st = config_preset(cfg, name);
    return st ? st : config_preset_train(tc, name);
}

/* Applies the --set overrides: model keys to cfg, the others to tc; *n_train counts the latter. */
static moelm_status config_apply_sets(const char *const *sets, int n_sets, ModelConfig *cfg, TrainConfig *tc,
                                      int *n_train) {
    *n_train = 0;
    for (int i = 0; i < n_sets; i++) {
        char key[128];
        const char *eq = strchr(sets[i], '=');
        if (!eq || eq == sets[i] || (size_t)(eq - sets[i]) >= sizeof key)
            return moelm_fail(MOELM_ERR_ARG, "--set '%s': expected key=value", sets[i]);
        memcpy(key, sets[i], (size_t)(eq - sets[i]));
        key[eq - sets[i]] = '\0';
        moelm_status st = key_is_training(key) ? train_config_set(tc, key, eq + 1) : config_set(cfg, key, eq + 1);
        *n_train += key_is_training(key);
        if (st && strstr(moelm_last_error(), "unknown config key")) return key_unknown("--set: ", key);
        if (st) return st;
    }
    return MOELM_OK;
}

moelm_status train_resolve_config(const char *name, const char *const *sets, int n_sets, ModelConfig *cfg,
                                  TrainConfig *tc) {
    int n_train;
    moelm_status st = config_base(name, cfg, tc);
    return st ? st : config_apply_sets(sets, n_sets, cfg, tc, &n_train);
}

/* MOELM_OK when the configs are the same; else an error "<what> "key": a, the requested config "key": b <why>"
 * naming the first key that differs. */
static moelm_status config_compare(const ModelConfig *have, const ModelConfig *want, const char *what, const char *why) {
    /* another family: its first key differs too ("moelm_version" against "architectures"), but says less */
    if (have->model_type != want->model_type && !(config_is_llama(have) && config_is_llama(want)))
        return moelm_fail(MOELM_ERR_CONFIG, "%s model_type %s, the requested config model_type %s %s", what,
                          config_model_type_name(have->model_type), config_model_type_name(want->model_type), why);
    moelm_status st = MOELM_OK;
    char *a = config_to_json(have), *b = config_to_json(want);
    if (!a || !b) st = moelm_fail(MOELM_ERR_NOMEM, "out of memory comparing configs");
    for (const char *x = a, *y = b; !st && *x && *y;) {
        size_t nx = strcspn(x, "\n"), ny = strcspn(y, "\n");
        if (nx != ny || memcmp(x, y, nx) != 0) {
            while (*x == ' ') x++, nx--;
            while (*y == ' ') y++, ny--;
            if (nx && x[nx - 1] == ',') nx--;
            if (ny && y[ny - 1] == ',') ny--;
            st = moelm_fail(MOELM_ERR_CONFIG, "%s %.*s, the requested config %.*s %s", what, (int)nx, x, (int)ny, y, why);
        }
        x += nx + (x[nx] == '\n');
        y += ny + (y[ny] == '\n');
    }
    moelm_free(a);
    moelm_free(b);
    return st;
}

/* Resume without --force: the model config asked for on the command line (--config, --set) must be
 * the checkpoint's; otherwise the error names the first key that differs. */
static moelm_status resume_check_config(const TrainOptions *o, const ModelConfig *have, int seq_len) {
    ModelConfig want = *have;
    TrainConfig tc;
    int n_train = 0;
    config_preset_train(&tc, "demo");
    moelm_status st = o->config ? config_base(o->config, &want, &tc) : MOELM_OK;
    if (!st) st = config_apply_sets(o->sets, o->n_sets, &want, &tc, &n_train);
    if (st) return moelm_fail_context(st, "resume");
    if (n_train)
        return moelm_fail(MOELM_ERR_CONFIG, "resume: the training settings come from the checkpoint; "
                                            "--set of a training key is refused (use --force to override)");
    /* what a fresh run would have filled in */
    if (want.vocab_size == 0) want.vocab_size = have->vocab_size;
    if (want.n_positions < seq_len) want.n_positions = seq_len;
    return config_compare(have, &want, "resume: the checkpoint's model has",
                          "(the model comes from the checkpoint; use --force to continue with it)");
}

/* "%.6f" of x, or "null" when x is NaN or Inf (JSON has no spelling for them); buf holds 32 bytes. */
static const char *json_num(char *buf, double x) {
    if (!isfinite(x)) return "null";
    snprintf(buf, 32, "%.6f", x);
    return buf;
}

/* ---- set-up -------------------------------------------------------------------------------------- */

/* The steps of a run whose length is its time budget: no bound ("%.9g" in state.json keeps it an
 * integer). */
#define BUDGET_STEPS 999999999L

/* A resumed run's settings: the checkpoint's model, training settings and state; what the command
 * line asks for must agree with them unless --force. */
static moelm_status run_resume_settings(Run *r) {
    const TrainOptions *o = r->o;
    TrainState *s = &r->state;
    TrainConfig *tc = &r->tc;
    moelm_status st = ckpt_resolve(o->resume, r->ckdir, sizeof r->ckdir);
    if (!st && !ckpt_run_dir(r->ckdir, r->dirbuf, sizeof r->dirbuf)) {
        /* a checkpoint copied out of its run: it goes on in a new run directory the user names, never
         * in whatever directory holds the copy */
        if (!o->out)
            return moelm_fail(MOELM_ERR_ARG, "%s: a checkpoint outside its run directory (no latest or metrics.jsonl "
                                             "beside it): add --out DIR to continue it in a new run directory", r->ckdir);
        r->dir = o->out;
        r->resume_elsewhere = 1;
    } else if (!st) {   /* RUN, RUN/latest or RUN/ckpt-N: the run goes on in RUN, never inside a checkpoint */
        r->dir = r->dirbuf;
        /* the lock first: another process may be replacing the checkpoint this reads (and a run it has
         * taken past --steps must be refused as busy, not reported complete) */
        if (dist_is_root()) st = ckpt_lock_run(r->dir, &r->lock_fd);
        if (st) return st;
    }
    if (!st) st = ckpt_read_config(r->ckdir, &r->cfg);
    if (!st) st = ckpt_read_state(r->ckdir, s);
    if (st) return moelm_fail_context(st, "cannot resume from %s", o->resume);
    config_preset_train(tc, "demo");
    st = train_config_from_json(tc, s->train_json);
    if (st) return moelm_fail_context(st, "%s/state.json: \"train\"", r->ckdir);
    if (!(tc->lr > 0) || !isfinite(tc->lr) || tc->batch_size < 1 || tc->seq_len < 1 || tc->steps < 1)
        return moelm_fail(MOELM_ERR_FORMAT, "%s/state.json: \"train\" holds an invalid lr, batch size, sequence length "
                                            "or step count", r->ckdir);
    if (!o->force) {
        if (o->data && strcmp(o->data, s->data) != 0)
            return moelm_fail(MOELM_ERR_CONFIG, "resume: the run trained on '%s', not '%s' (use --force to continue anyway)",
                              s->data, o->data);
        if ((o->batch_size && o->batch_size != tc->batch_size) || (o->seq_len && o->seq_len != tc->seq_len))
            return moelm_fail(MOELM_ERR_CONFIG, "resume: the run trains batches of %d x %d, not %d x %d (the batch shape "
                                                "comes from the checkpoint; use --force to continue anyway)",
                              tc->batch_size, tc->seq_len, o->batch_size ? o->batch_size : tc->batch_size,
                              o->seq_len ? o->seq_len : tc->seq_len);
        if (o->grad_accum > 0 && o->grad_accum != run_accum(tc))
            return moelm_fail(MOELM_ERR_CONFIG, "resume: the run accumulates %d micro-batches, not %d (use --force to "
                                                "continue anyway)", run_accum(tc), o->grad_accum);
        if (o->config || o->n_sets) {
            st = resume_check_config(o, &r->cfg, s->seq_len);
            if (st) return st;
        }
        if (o->threads != s->threads)
            fprintf(stderr, "moelm: warning: resuming with %d threads, the run used %d: losses will not be bit-identical "
                    "(-t %d resumes exactly)\n", o->threads, s->threads, s->threads);
    }
    /* the run's length: its steps and its time budget (state.json's), or longer ones given now; a run
     * whose final checkpoint this is and that is given nothing longer is complete */
    float budget = tc->time_budget_s;
    if (o->steps > 0) tc->steps = o->steps;
    if (o->time_budget_min > 0) tc->time_budget_s = (float)(o->time_budget_min * 60.0);
    r->complete = s->step >= tc->steps || (s->complete && o->steps <= 0 && !(tc->time_budget_s > budget + 0.5f));
    s->complete = 0;
    return MOELM_OK;
}

/* --init-from: SRC's model config and tokenizer; the training settings those of --config, else of
 * SRC's run (a moelm checkpoint's state.json), else the demo preset's. */
static moelm_status run_init_settings(Run *r) {
    const TrainOptions *o = r->o;
    InitSource *s = r->src = moelm_calloc(1, sizeof *r->src);
    if (!s) return MOELM_ERR_NOMEM;
    moelm_status st = init_from_open(s, o->init_from);
    if (st) return st;
    ModelConfig scratch;
    TrainState ts;
    config_preset_train(&r->tc, "demo");
    if (o->config) {
        st = config_base(o->config, &scratch, &r->tc);   /* its model keys: init_check_config */
    } else if (s->is_ckpt && (st = ckpt_read_state(s->dir, &ts)) == MOELM_OK) {
        st = train_config_from_json(&r->tc, ts.train_json);
        if (st) st = moelm_fail_context(st, "%s/state.json: \"train\"", s->dir);
    }
    if (st) return st;
    r->cfg = s->cfg;
    if (s->tokenizer[0] && o->tokenizer)
        return moelm_fail(MOELM_ERR_ARG, "--init-from %s has its own tokenizer (%s): --tokenizer is for a SRC without one",
                          o->init_from, s->tokenizer);
    if (s->tokenizer[0] && strlen(s->tokenizer) >= sizeof r->tc.tokenizer)
        return moelm_fail(MOELM_ERR_ARG, "--init-from: path too long");
    if (s->tokenizer[0]) snprintf(r->tc.tokenizer, sizeof r->tc.tokenizer, "%s", s->tokenizer);
    return MOELM_OK;
}

/* --init-from with --config: the model keys of --config (after --set) must be SRC's (after --set); the
 * error names the first key that differs. */
static moelm_status init_check_config(const Run *r) {
    const TrainOptions *o = r->o;
    ModelConfig want;
    TrainConfig tc;
    int n_train;
    moelm_status st = config_base(o->config, &want, &tc);
    if (!st) st = config_apply_sets(o->sets, o->n_sets, &want, &tc, &n_train);
    if (st) return st;
    /* what a new run would have filled in: the vocabulary, positions for the sequence length */
    if (want.vocab_size == 0) want.vocab_size = r->cfg.vocab_size;
    if (want.n_positions < r->cfg.n_positions) want.n_positions = r->cfg.n_positions;
    /* and the special ids an export writes from the tokenizer where a preset leaves them null */
    if (want.bos_token_id < 0) want.bos_token_id = r->cfg.bos_token_id;
    if (want.eos_token_id < 0) want.eos_token_id = r->cfg.eos_token_id;
    if (want.pad_token_id < 0) want.pad_token_id = r->cfg.pad_token_id;
    char what[4200];
    snprintf(what, sizeof what, "--init-from: %s's model has", o->init_from);
    return config_compare(&r->cfg, &want, what, "(the model comes from SRC: leave the model keys out of --config, or "
                                                "--set the ones that keep its shapes)");
}

/* A new run's settings: the preset or config.json (or --init-from's SRC), then --tokenizer, --set and
 * the flags. */
static moelm_status run_new_settings(Run *r) {
    const TrainOptions *o = r->o;
    TrainConfig *tc = &r->tc;
    int n_train;
    moelm_status st = o->init_from ? run_init_settings(r) : config_base(o->config ? o->config : "demo", &r->cfg, tc);
    if (st) return st;
    if (o->tokenizer) snprintf(tc->tokenizer, sizeof tc->tokenizer, "%s", o->tokenizer);
    st = config_apply_sets(o->sets, o->n_sets, &r->cfg, tc, &n_train);
    if (st) return st;
    long preset_steps = tc->steps;
    if (o->steps > 0) tc->steps = o->steps;
    /* with a time budget the budget is the run's length (unless --steps) and the warm-up takes the
     * share of it that it takes of the preset's steps */
    if (o->time_budget_min > 0) tc->time_budget_s = (float)(o->time_budget_min * 60.0);
    if (tc->time_budget_s > 0) {
        if (!(tc->warmup_share > 0) && preset_steps > 0)
            tc->warmup_share = fminf(0.5f, (float)tc->warmup_steps / (float)preset_steps);
        if (o->steps <= 0) tc->steps = BUDGET_STEPS;
    }
    if (o->batch_size > 0) tc->batch_size = o->batch_size;
    if (o->seq_len > 0) tc->seq_len = o->seq_len;
    if (o->stride > 0) tc->stride = o->stride;
    if (o->grad_accum > 0) tc->grad_accum = o->grad_accum;
    if (o->lr > 0) tc->lr = o->lr;
    snprintf(r->state.data, sizeof r->state.data, "%s", o->data ? o->data : "builtin");
    r->state.seed = o->seed;
    r->state.threads = o->threads;
    r->state.batch_size = tc->batch_size;
    r->state.seq_len = tc->seq_len;
    if (o->init_from && o->config && (st = init_check_config(r)) != MOELM_OK) return st;
    int learned_pos = !config_uses_rope(&r->cfg) && r->cfg.model_type != MODEL_SWITCH;
    if (o->init_from && learned_pos && r->cfg.n_positions < tc->seq_len)
        return moelm_fail(MOELM_ERR_CONFIG, "--init-from: sequences of %d tokens, but %s's model has learned positions "
                          "for %d", tc->seq_len, o->init_from, r->cfg.n_positions);
    return MOELM_OK;
}

/* The run's settings, resumed or new, checked. */
static moelm_status run_settings(Run *r) {
    if (r->o->resume && r->o->init_from)
        return moelm_fail(MOELM_ERR_ARG, "--init-from starts a new run and --resume continues one: give one of them");
    moelm_status st = r->o->resume ? run_resume_settings(r) : run_new_settings(r);
    if (st) return st;
    const TrainConfig *tc = &r->tc;
    if (tc->batch_size < 1 || tc->seq_len < 1) return moelm_fail(MOELM_ERR_CONFIG, "batch size and sequence length must be positive");
    if (tc->steps < 1) return moelm_fail(MOELM_ERR_CONFIG, "steps must be positive (got %ld)", tc->steps);
    if (!(tc->lr > 0) || !isfinite(tc->lr)) return moelm_fail(MOELM_ERR_CONFIG, "lr must be a positive number");
    if (tc->dropout_growth > 0 && tc->dropout_start_epochs > 0 && !(tc->dropout_start_epochs < tc->dropout_epochs))
        return moelm_fail(MOELM_ERR_CONFIG, "dropout_start_epochs (%g) must be below dropout_epochs (%g): the rate "
                          "rises from 0 at the first to dropout_rate, and grows past it from the second",
                          tc->dropout_start_epochs, tc->dropout_epochs);
    if (tc->shift_windows && r->cfg.model_type == MODEL_SWITCH)
        return moelm_fail(MOELM_ERR_CONFIG, "shift_windows moves the windows of a decoder-only model's text; a "
                          "switch_transformers run trains on span-corrupted windows or input<TAB>target pairs");
    if (r->cfg.n_positions < tc->seq_len) r->cfg.n_positions = tc->seq_len;
    return MOELM_OK;
}

/* The run directory, made and locked (rank 0 takes an exclusive flock for the whole run: a second
 * `train` into it, new or resumed, is refused with one line instead of both interleaving their
 * checkpoints and metrics); a new run over an old one would mix their checkpoints and metrics:
 * refused, or with --force the old checkpoints (and routing dumps) are deleted first. */
static moelm_status run_claim_dir(Run *r) {
    int fresh = !r->o->resume || r->resume_elsewhere;   /* a new run directory (resume_elsewhere: from a copy) */
    r->made_dir = fresh && !path_exists(r->dir) && dist_is_root();
    moelm_status st = dir_make(r->dir);
    if (!st && dist_is_root() && r->lock_fd < 0) st = ckpt_lock_run(r->dir, &r->lock_fd);   /* resume: taken already */
    if (st || !fresh || ckpt_newest_step(r->dir) < 0) return st;
    if (!r->o->force)
        return moelm_fail(MOELM_ERR_CONFIG, "%s already holds a run (its checkpoints): --resume %s continues it, "
                                            "--force starts over and deletes them, or choose another --out",
                          r->dir, r->dir);
    if (!dist_is_root()) return MOELM_OK;
    char rd[4096];
    snprintf(rd, sizeof rd, "%s/routing", r->dir);
    st = ckpt_remove_all(r->dir);
    return st ? st : dir_remove_tree(rd);
}

/* The corpus, the tokenizer (the checkpoint's on resume) and the token ids of the train and valid
 * splits (through the run directory's cache); the vocabulary fills in or must match the config. */
static moelm_status run_load_data(Run *r) {
    TrainState *s = &r->state;
    moelm_status st = corpus_load(&r->corpus, strcmp(s->data, "builtin") ? s->data : NULL);
    r->s2s = r->cfg.model_type == MODEL_SWITCH;
    size_t dl_ = strlen(s->data);
    r->pairs = r->s2s && dl_ > 4 && !strcmp(s->data + dl_ - 4, ".tsv");
    char tp[4096] = "";
    if (!st && r->o->resume) {
        snprintf(tp, sizeof tp, "%s/tokenizer.model", r->ckdir);
        st = tokenizer_load(&r->tok, tp);
    } else if (!st) {
        st = make_tokenizer(&r->tok, r->tc.tokenizer, &r->corpus);
    }
    /* an encoder-decoder's vocabulary ends with T5's 100 sentinels (Hugging Face's T5Tokenizer's) */
    if (!st && r->s2s) st = tokenizer_add_sentinels(r->tok, 100);
    if (!st && r->s2s && tokenizer_eos_id(r->tok) < 0)
        st = moelm_fail(MOELM_ERR_CONFIG, "switch_transformers needs a tokenizer with an end-of-sequence id (word, "
                        "unigram or bpe; not char)");
    if (!st && r->o->resume && tokenizer_hash(r->tok) != s->tokenizer_hash)
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: tokenizer hash differs from state.json", tp);
    dist_serial_begin();   /* rank 0 writes the token cache first, the others then read it */
    for (int i = 0; !st && i < 2 && !r->pairs; i++) st = split_ids(&r->ids[i], &r->n[i], &r->corpus, i, r->tok, r->dir);
    dist_serial_end();
    if (st) return st;
    r->words[CORPUS_VALID] = text_count_words(r->corpus.text[CORPUS_VALID], r->corpus.len[CORPUS_VALID]);
    int V = tokenizer_vocab_size(r->tok);
    if (r->cfg.vocab_size == 0) config_take_vocab(&r->cfg, V, r->ad_dropped, sizeof r->ad_dropped);
    if (r->cfg.vocab_size != V)
        return moelm_fail(MOELM_ERR_CONFIG, "vocab_size %d in the config, but the tokenizer has %d", r->cfg.vocab_size, V);
    s->tokenizer_hash = tokenizer_hash(r->tok);
    if (r->s2s) {
        /* T5's token ids: eos the tokenizer's; the pad (and the decoder's start) 0 unless the config says */
        r->cfg.sw.eos_token_id = tokenizer_eos_id(r->tok);
        if (r->cfg.sw.decoder_start_token_id < 0) r->cfg.sw.decoder_start_token_id = r->cfg.sw.pad_token_id;
        if (r->pairs) {   /* input<TAB>target lines, each side up to seq_len tokens (EOS last) */
            for (int i = 0; i < 2 && !st; i++) {
                st = seq2seq_load_text(&r->pd[i], r->corpus.text[i], r->corpus.len[i], r->corpus.name[i], r->tok,
                                       r->tc.seq_len, r->tc.seq_len, r->cfg.sw.pad_token_id, s->seed);
                r->pd_ok[i] = st == MOELM_OK;
            }
            r->len = (SpanLengths){0, r->tc.seq_len, r->tc.seq_len, 0};
            return st;
        }
        r->len = span_lengths(r->tc.seq_len, 0.15f, 3.0f);
        if (r->n[CORPUS_TRAIN] < (size_t)r->len.raw)
            return moelm_fail(MOELM_ERR_DATA, "%s: %zu tokens, too few for one window of %d", r->corpus.name[0], r->n[0],
                              r->len.raw);
        return MOELM_OK;
    }
    if (r->n[CORPUS_TRAIN] < (size_t)r->tc.seq_len + 1)
        return moelm_fail(MOELM_ERR_DATA, "%s: %zu tokens, too few for one window of %d", r->corpus.name[0], r->n[0],
                          r->tc.seq_len + 1);
    return MOELM_OK;
}

/* The loader whose (epoch, pos) is the run's data position: the lm's windows, the span windows, or the
 * pairs. */
static DataLoader *run_loader(Run *r) { return r->pairs ? &r->pd[0].dl : r->s2s ? &r->span.dl : &r->dl; }

/* The model (this rank's shard of the experts), the optimizer, the data order and the batch; on
 * resume the checkpoint's weights, moments, data position, RNG and fixed dropout. */
static moelm_status run_build_model(Run *r) {
    const TrainConfig *tc = &r->tc;
    TrainState *s = &r->state;
    int part, parts;
    dist_expert_shard(&part, &parts);
    moelm_status st = dist_check(&r->cfg, tc->batch_size);
    int Bl = tc->batch_size / dist_world();
    if (!st && r->s2s) st = model_create_encdec(&r->model, &r->cfg, Bl, r->len.inputs, r->len.targets, s->seed, part, parts);
    else if (!st) st = model_create_sharded(&r->model, &r->cfg, Bl, tc->seq_len, s->seed, part, parts);
    r->model_ok = st == MOELM_OK;
    /* a new run's output bias from the training tokens (a resumed one loads its own below) */
    if (!st && tc->unigram_output_bias && !r->o->resume && !r->s2s && !r->pairs)
        model_init_output_bias(&r->model, r->ids[0], r->n[0]);
    if (!st) st = optim_create(&r->opt, r->model.n_params);
    r->opt_ok = st == MOELM_OK;
    if (!st && r->pairs) {
        /* the pairs' order: pd[0].dl */
    } else if (!st && r->s2s) {
        st = span_loader_init(&r->span, r->ids[0], r->n[0], tc->batch_size, tc->seq_len, 0.15f, 3.0f,
                              r->cfg.vocab_size - 1, 100, r->cfg.sw.eos_token_id, s->seed);
        r->span_ok = st == MOELM_OK;
    } else if (!st) {
        st = dataloader_init(&r->dl, r->ids[0], r->n[0], tc->batch_size, tc->seq_len,
                             tc->stride > 0 ? tc->stride : tc->seq_len, 1, s->seed);
        r->dl_ok = st == MOELM_OK;
        if (!st && tc->shift_windows) dataloader_shift_windows(&r->dl);
    }
    if (!st && r->o->resume) st = ckpt_load_model(r->ckdir, &r->model);
    if (!st && r->src) st = init_from_load(r->src, &r->model);
    /* the weight average starts as the weights; a resume reads it from the checkpoint when it has one */
    if (!st && tc->ema_decay > 0) st = optim_enable_ema(&r->opt, &r->model);
    if (!st && r->o->resume) {
        st = ckpt_load_optimizer(r->ckdir, &r->opt, &r->model);
        if (!st && (st = dataloader_seek(run_loader(r), s->data_epoch, s->data_pos)) != MOELM_OK)
            moelm_fail_context(st, "%s/state.json", r->ckdir);
        r->model.rng.s = s->rng;
        if (s->dropout >= 0) r->model.train_dropout = (float)s->dropout;
        if (s->bf16 != r->o->bf16 && dist_is_root())
            printf("resume: the run trained in %s until step %ld; it goes on in %s\n", s->bf16 ? "bf16" : "float",
                   s->step, r->o->bf16 ? "bf16 (--bf16)" : "float");
    }
    if (!st && r->o->bf16) st = model_set_bf16(&r->model, 1);
    s->bf16 = r->o->bf16;
    if (!st && r->s2s && run_accum(tc) > 1)
        st = moelm_fail(MOELM_ERR_CONFIG, "--grad-accum: for language models only (not yet for sequence to sequence)");
    r->inp = moelm_malloc(sizeof(int) * (size_t)run_accum(tc) * tc->batch_size * tc->seq_len);
    r->tgt = moelm_malloc(sizeof(int) * (size_t)run_accum(tc) * tc->batch_size * tc->seq_len);
    r->lab = moelm_malloc(sizeof(int) * (size_t)tc->batch_size * (r->s2s ? r->len.targets : 1));
    r->msk = moelm_malloc(sizeof(int) * (size_t)tc->batch_size * tc->seq_len);
    if (!st && (!r->inp || !r->tgt || !r->lab || !r->msk)) st = MOELM_ERR_NOMEM;
    r->trainer = (Trainer){&r->model, &r->opt, &r->tc, 0};
    return st;
}

/* metrics.jsonl, cut back to the resumed step (rank 0; the other ranks log nothing), and the
 * training settings as the checkpoints record them. */
static moelm_status run_open_metrics(Run *r) {
    char path[4096];
    moelm_status st = MOELM_OK;
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    if (dist_is_root()) {
        st = metrics_truncate(path, r->state.step, &r->best_ppl, &r->best_step);
        if (!st && (r->metrics_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0)
            st = moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        /* the record buffer, sized once for the longest record (an evaluation's: every MoE layer's
         * statistics and the load of each of its experts, at most 16 bytes each), so no step allocates */
        size_t cap = 4096 + (size_t)config_num_moe_layers(&r->cfg) * (512 + 16 * (size_t)(r->cfg.num_experts > 0 ? r->cfg.num_experts : 1));
        if (!st && !(r->mrec.buf = moelm_malloc(cap))) st = moelm_fail_context(MOELM_ERR_NOMEM, "%s", path);
        r->mrec.cap = r->mrec.buf ? cap : 0;
    }
    char *tjs = train_config_json(&r->tc, 0);
    if (tjs) {
        snprintf(r->state.train_json, sizeof r->state.train_json, "%s", tjs);
        moelm_free(tjs);
    }
    return st;
}

static void run_print_header(const Run *r) {
    const TrainOptions *o = r->o;
    const TrainConfig *tc = &r->tc;
    printf("data: %s (%zu train tokens, %zu valid tokens, %zu valid words), tokenizer %s, vocab %d\n",
           r->state.data, r->n[0], r->n[1], r->words[1], tc->tokenizer, tokenizer_vocab_size(r->tok));
    print_model_summary(&r->model, stdout);
    if (r->ad_dropped[0])
        printf("adaptive softmax: cutoff%s %s not below the vocabulary of %d: left out%s\n", strchr(r->ad_dropped, ',') ? "s" : "",
               r->ad_dropped, r->cfg.vocab_size, r->cfg.n_adaptive ? "" : " (a full softmax)");
    if (r->pairs)
        printf("objective: sequence to sequence, %d train and %d valid input<TAB>target pairs, each side up to %d tokens\n",
               r->pd[0].n, r->pd[1].n, r->tc.seq_len);
    else if (r->s2s)
        printf("objective: T5 span corruption (noise density 0.15, mean span 3, sentinels <extra_id_N>): windows of %d "
               "tokens -> encoder %d, decoder %d\n", r->len.raw, r->len.inputs, r->len.targets);
    const char *sched = tc->schedule == SCHED_CONSTANT ? "constant" : tc->schedule == SCHED_COSINE ? "cosine" : "linear";
    char batch[64] = "";
    if (tc->grad_accum > 1) snprintf(batch, sizeof batch, " (%d micro-batches of %d)", tc->grad_accum, tc->batch_size);
    if (tc->time_budget_s > 0) {
        char len[32], most[48] = "";
        progress_fmt_eta(len, sizeof len, tc->time_budget_s);
        if (tc->steps < BUDGET_STEPS) snprintf(most, sizeof most, " (at most %ld steps)", tc->steps);
        printf("training: %s time budget%s, batch %d x %d%s, lr %g (%s over the time, warm-up %.3g%% of it), %s, wd %g, "
               "clip %g, %d threads, backend %s\n", len, most, tc->batch_size * run_accum(tc), tc->seq_len, batch, tc->lr,
               sched, 100.0 * tc->warmup_share, optim_name(tc), tc->weight_decay, tc->grad_clip, o->threads,
               backend_name());
    } else {
        printf("training: %ld steps, batch %d x %d%s, lr %g (%s, warm-up %d), %s, wd %g, clip %g, %d threads, backend %s\n",
               tc->steps, tc->batch_size * run_accum(tc), tc->seq_len, batch, tc->lr, sched, tc->warmup_steps,
               optim_name(tc), tc->weight_decay, tc->grad_clip, o->threads, backend_name());
    }
    if (r->dl_ok && r->dl.reach > 0)
        printf("windows: every epoch's starts move by a shift of 0 to %zu tokens drawn for it (shift_windows)\n",
               r->dl.reach);
    if (o->bf16)
        printf("precision: bf16 mixed (bf16 operands, float sums and weights), %s kernel%s\n", gemm_bf16_kernel(),
               gemm_bf16_fast() ? "" : " (this CPU has no AVX-512 BF16: the same numbers, slower than float)");
    if (tc->dropout_growth > 0 && r->state.dropout < 0) {
        char below[96] = "";
        if (tc->dropout_start_epochs > 0)
            snprintf(below, sizeof below, "0 up to %g epochs, +%g per doubling up to %g; ", tc->dropout_start_epochs,
                     tc->dropout_growth, r->cfg.dropout_rate);
        printf("dropout: %g until step %ld, then set from the epochs the run projects (%s+%g per doubling past %g "
               "epochs, at most %g)\n", r->cfg.dropout_rate, dropout_fix_step(tc, tc->time_budget_s), below,
               tc->dropout_growth, tc->dropout_epochs, tc->dropout_max);
    }
    if (r->full_batches == 0)
        printf("no evaluation: the valid split has %s to predict\n", r->pairs ? "no pair" : "nothing");
    if (o->resume) printf("resumed from %s at step %ld\n", r->ckdir, r->state.step);
    if (r->src) printf("initialised from %s (its weights%s; a new optimizer and schedule)\n", r->src->dir,
                       r->src->tokenizer[0] ? " and tokenizer" : "");
    fflush(stdout);
}

/* Everything before the first step. r is freed by run_free whatever happens. */
static moelm_status run_setup(Run *r, const TrainOptions *o) {
    memset(r, 0, sizeof *r);
    r->lock_fd = r->metrics_fd = -1;
    r->o = o;
    r->dir = o->resume ? o->resume : o->out ? o->out : "runs/demo";
    r->state.dropout = -1;
    if (strlen(r->dir) > 3000) return moelm_fail(MOELM_ERR_ARG, "run directory path too long");
    backend_set_threads(o->threads);
    moelm_status st = run_settings(r);
    if (!st && o->print_config) {   /* the settings only: nothing is trained or written */
        char *mj = config_to_json(&r->cfg), *tj = train_config_json(&r->tc, 1);
        st = mj && tj ? keys_print(mj, tj, stdout) : MOELM_ERR_NOMEM;
        moelm_free(mj);
        moelm_free(tj);
        r->complete = -1;
        return st;
    }
    if (st || r->complete) return st;
    r->budget_s = r->tc.time_budget_s;
    if (r->budget_s > 0)   /* the line counts seconds of the budget */
        progress_begin(&r->prog, "train (s)", (long)r->state.elapsed_s, (long)r->budget_s, !o->quiet);
    else
        progress_begin(&r->prog, "train", r->state.step, r->tc.steps, !o->quiet);
    progress_note(&r->prog, "preparing data and tokenizer (%s) ...", r->tc.tokenizer);
    st = run_claim_dir(r);
    if (!st) st = run_load_data(r);
    if (!st) st = run_build_model(r);
    if (!st) st = run_open_metrics(r);
    if (st) return st;
    /* periodic evaluations may take --eval-batches batches, the final one the whole split */
    r->full_batches = r->pairs ? seq2seq_eval_batches(&r->pd[1], r->tc.batch_size)
                    : r->s2s ? span_eval_batches(r->n[1], r->len, r->tc.batch_size)
                             : eval_num_batches(r->n[1], r->tc.batch_size, r->tc.seq_len, r->tc.seq_len);
    r->part_batches = o->eval_batches > 0 && (size_t)o->eval_batches < r->full_batches ? (size_t)o->eval_batches
                                                                                        : r->full_batches;
    progress_clear(&r->prog);
    if (!o->quiet) run_print_header(r);
    /* the clock */
    r->t_run = now_s() - r->state.elapsed_s;
    r->t_log = now_s();
    r->step0 = r->state.step;
    r->reserve_s = r->state.reserve_s;   /* the schedule's span, as the run left it */
    r->reserve_measured = r->state.reserve_measured;
    r->started = 1;
    return MOELM_OK;
}

/* ---- the steps ----------------------------------------------------------------------------------- */

/* Whether another step runs: steps remain and the time budget is not spent; *elapsed: the run's
 * wall-clock so far (rank 0's, on every rank; 0 without a budget). */
static int run_continues(Run *r, double *elapsed) {
    *elapsed = 0.0;
    if (r->state.step >= r->tc.steps) return 0;
    if (r->budget_s <= 0) return 1;
    *elapsed = dist_root_value(now_s() - r->t_run);
    return *elapsed < r->budget_s;
}

/* The next step's learning rate: over its steps, or with a time budget over the budget (progress =
 * elapsed / the budget less what the end of the run will take). */
static float run_lr(const Run *r, double elapsed) {
    if (r->budget_s <= 0) return lr_at(&r->tc, r->state.step, r->tc.steps);
    double span = r->budget_s - r->reserve_s > 0 ? r->budget_s - r->reserve_s : r->budget_s;
    double p = elapsed / span, w = r->tc.warmup_share;
    if (!(w > 0)) return lr_at_progress(&r->tc, r->state.step, p);
    /* the warm-up over its share of the time (from the first step's lr of a step warm-up on) */
    if (p < w) return r->tc.lr * (float)fmax(p / w, 1.0 / (r->tc.warmup_steps > 1 ? r->tc.warmup_steps : 2));
    TrainConfig decay = r->tc;
    decay.warmup_steps = 0;
    return lr_at_progress(&decay, r->state.step, (p - w) / (1 - w));
}

/* The dropout rule (TrainConfig.dropout_growth): at dropout_fix_step the rate is fixed from the
 * epochs this run will make: its steps, or with a time budget the steps so far scaled to the whole
 * budget (the same value on every rank). */
static void run_dropout_rule(Run *r, double elapsed) {
    const TrainConfig *tc = &r->tc;
    long step = r->state.step;
    if (!(tc->dropout_growth > 0) || r->state.dropout >= 0 || step < dropout_fix_step(tc, tc->time_budget_s) ||
        !r->n[0])   /* pairs: no token stream to count epochs in */
        return;
    double steps = (double)tc->steps;
    if (r->budget_s > 0 && elapsed > 0) steps = fmin(steps, (double)step * r->budget_s / elapsed);
    double epochs = steps * tc->batch_size * (r->s2s ? r->len.raw : tc->seq_len) / (double)r->n[0];
    r->model.train_dropout = train_dropout_for_epochs(tc, r->cfg.dropout_rate, epochs);
    r->state.dropout = r->model.train_dropout;
    if (!r->o->quiet) printf("dropout %g from step %ld on: the run projects %.3g epochs\n", r->model.train_dropout, step + 1, epochs);
}

/* The step: the next batch, this rank's rows of it, train_step. A non-finite step ends the run
 * (the last checkpoint stays as it is) unless --skip-nonfinite, which counts it. */
static moelm_status run_step(Run *r, float lr, StepResult *sr) {
    int N = run_accum(&r->tc), B = r->tc.batch_size, T = r->tc.seq_len;
    long step = r->state.step, tokens = (long)N * B * T;
    if (r->s2s) {
        int Te = r->len.inputs, Td = r->len.targets;
        tokens = (long)B * (Te + Td);
        if (r->pairs) {
            seq2seq_next(&r->pd[0], B, r->inp, r->msk, r->lab);
            dist_take_rows(r->inp, r->msk, B, Te);
            dist_take_rows2(r->lab, Td, NULL, 0, B);
        } else {
            span_loader_next(&r->span, r->inp, r->lab);
            dist_take_rows2(r->inp, Te, r->lab, Td, B);
        }
        Seq2SeqBatch b = {B / dist_world(), Te, Td, r->inp, r->pairs ? r->msk : NULL, NULL, r->lab, NULL};
        *sr = train_step_seq2seq(&r->trainer, &b, lr, step + 1);
    } else {
        size_t rows = (size_t)(B / dist_world()) * T;   /* this rank's share of a micro-batch */
        for (int k = 0; k < N; k++) {   /* micro-batch k: drawn whole, this rank's rows kept at k * rows */
            dataloader_next(&r->dl, r->inp + k * rows, r->tgt + k * rows);
            dist_take_rows(r->inp + k * rows, r->tgt + k * rows, B, T);
        }
        *sr = train_step(&r->trainer, r->inp, r->tgt, lr, step + 1);
    }
    if (r->budget_s > 0) {   /* until a periodic evaluation measures it: the end's cost estimated */
        /* the mean forward time from the second step on (the first is cold); the reserve moves a
         * tenth of the way to the new estimate each step (the schedule's span moves smoothly, and a
         * resume starts from the reserve it saved), and is at most half the budget */
        if (r->state.step > r->step0 + 1) r->fwd_s += (sr->fwd_s / N - r->fwd_s) / (double)++r->fwd_n;
        if (!r->reserve_measured && r->fwd_n > 0) {
            double ckpt = r->ckpt_s > 0 ? r->ckpt_s : (double)r->model.n_params * 12 / 1e8;   /* 100 MB/s */
            double est = (double)r->full_batches * r->fwd_s + ckpt;
            est = r->reserve_s > 0 ? 0.9 * r->reserve_s + 0.1 * est : est;
            r->reserve_s = dist_root_value(fmin(est, 0.5 * r->budget_s));
        }
    }
    if (sr->nonfinite) {
        if (!r->o->skip_nonfinite)
            return moelm_fail(MOELM_ERR_NONFINITE,
                              "non-finite %s at step %ld (loss %g, grad norm %g); stopped, the last checkpoint in %s is intact "
                              "(lower --lr, or --skip-nonfinite to skip such updates)",
                              isfinite(sr->loss) ? "gradient" : "loss", step + 1, sr->loss, sr->grad_norm, r->dir);
        r->skipped++;
        fprintf(stderr, "moelm: step %ld: non-finite loss or gradients, update skipped (%ld so far)\n", step + 1, r->skipped);
    }
    r->state.step++;
    r->tokens_since += tokens;
    r->state.tokens_seen += (double)tokens;
    return MOELM_OK;
}

/* What follows a step. */
typedef struct {
    int last;                   /* the run ends after it */
    int log, eval, ckpt;
} StepEnds;

static StepEnds run_ends(const Run *r) {
    const TrainOptions *o = r->o;
    long s = r->state.step;
    int log_interval = o->log_interval > 0 ? o->log_interval : 1;
    StepEnds e;
    /* with a time budget the run ends so that its final evaluation and checkpoint finish on time:
     * it stops once the time left is less than what the last evaluation + checkpoint took (twice
     * that at a step with a periodic evaluation, which then becomes the final one; before a periodic
     * evaluation has measured it, an estimate from the steps' forward time, run_step) */
    int periodic = o->eval_interval > 0 && s % o->eval_interval == 0;
    e.last = s == r->tc.steps || s == o->stop_at ||
             (r->budget_s > 0 && dist_root_value(now_s() - r->t_run) + r->reserve_s * (1 + (periodic && r->reserve_measured)) >=
                                r->budget_s);
    e.log = s % log_interval == 0 || s == 1 || e.last;
    e.eval = periodic || e.last;
    e.ckpt = o->ckpt_interval > 0 ? (s % o->ckpt_interval == 0 || e.last) : e.eval;   /* 0: at each evaluation */
    return e;
}

/* One line of metrics.jsonl: a logged step's numbers, an evaluation's, or both. */
typedef struct {
    long step;
    int has_train;
    float loss, aux_loss, lr, grad_norm, dropout;
    double tokens_per_s, time_s, tokens;
    const EvalResult *ev;       /* NULL: no evaluation at this step */
    double val_loss, val_word_ppl;
    int has_ema;                /* the averaged weights' evaluation (tc.ema_decay > 0) */
    double val_loss_ema, val_word_ppl_ema;
} MetricsRecord;

/* One record as a line of JSON, appended to sb. */
static void metrics_format(StrBuf *sb, const MetricsRecord *m) {
    sb_printf(sb, "{\"step\": %ld", m->step);
    if (m->has_train) {
        char jl[32], ja[32], jg[32];   /* a skipped non-finite step logs null: the line stays JSON */
        sb_printf(sb, ", \"loss\": %s, \"aux_loss\": %s, \"lr\": %.6g, \"grad_norm\": %s, \"tokens_per_s\": %.1f, "
                      "\"time_s\": %.3f, \"tokens\": %.0f, \"dropout\": %.6g",
                  json_num(jl, m->loss), json_num(ja, m->aux_loss), m->lr, json_num(jg, m->grad_norm), m->tokens_per_s,
                  m->time_s, m->tokens, m->dropout);
    }
    if (m->ev) {
        const EvalResult *ev = m->ev;
        sb_printf(sb, ", \"val_loss\": %.6f, \"val_ppl\": %.4f, \"val_word_ppl\": %.4f", m->val_loss, exp(m->val_loss),
                  m->val_word_ppl);
        if (m->has_ema)
            sb_printf(sb, ", \"val_loss_ema\": %.6f, \"val_ppl_ema\": %.4f, \"val_word_ppl_ema\": %.4f", m->val_loss_ema,
                      exp(m->val_loss_ema), m->val_word_ppl_ema);
        if (ev->n_moe) {
            sb_printf(sb, ", \"moe\": [");
            for (int l = 0; l < ev->n_moe; l++) {
                const MoEStats *s = &ev->stats[l];
                double kept = s->slots - s->dropped;
                sb_printf(sb, "%s{\"layer\": %d, ", l ? ", " : "", l);
                if (ev->stack[l] >= 0)
                    sb_printf(sb, "\"stack\": \"%s\", \"block\": %d, ", ev->stack[l] ? "decoder" : "encoder", ev->block[l]);
                sb_printf(sb, "\"dropped\": %.6f, \"entropy\": %.6f, \"top1\": %.6f, \"dead\": %d, \"aux\": %.6f, \"z\": %.6f, "
                              "\"load\": [",
                          s->slots > 0 ? s->dropped / s->slots : 0, s->tokens > 0 ? s->entropy_sum / s->tokens : 0,
                          s->tokens > 0 ? s->top1_sum / s->tokens : 0, moe_stats_dead(s), s->batches ? s->aux_sum / s->batches : 0,
                          s->batches ? s->z_sum / s->batches : 0);
                for (int e = 0; e < s->E && e < 256; e++) sb_printf(sb, "%s%.5f", e ? ", " : "", kept > 0 ? s->load[e] / kept : 0);
                sb_printf(sb, "]}");
            }
            sb_printf(sb, "]");
        }
    }
    sb_printf(sb, "}\n");
}

/* Appends the record to metrics.jsonl whole or not at all: when a write fails or stores only part of
 * it (a full disk), the file is cut back to where the record began and the run stops with the cause
 * (the last checkpoint stays intact; a resume rewrites the records after it). */
static moelm_status metrics_append(Run *r, const MetricsRecord *m) {
    if (r->metrics_fd < 0) return MOELM_OK;
    StrBuf *sb = &r->mrec;   /* reserved by run_open_metrics */
    sb->len = 0;
    sb->failed = 0;
    metrics_format(sb, m);
    if (sb->failed) return moelm_fail(MOELM_ERR_NOMEM, "out of memory formatting the metrics of step %ld", m->step);
    off_t start = lseek(r->metrics_fd, 0, SEEK_END);
    size_t done = 0;
    int err = 0;
    while (done < sb->len) {
        size_t want = sb->len - done;
        if (hook_disk_full(m->step)) {   /* test hook: half the record is stored, then the disk is full */
            if (done) { err = ENOSPC; break; }
            want /= 2;
        }
        ssize_t k = write(r->metrics_fd, sb->buf + done, want);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { err = k < 0 ? errno : ENOSPC; break; }
        done += (size_t)k;
    }
    if (!err) return MOELM_OK;
    int cut = start >= 0 && ftruncate(r->metrics_fd, start) == 0;
    return moelm_fail(MOELM_ERR_IO, "%s/metrics.jsonl: cannot append the record of step %ld: %s; %s, the run stops "
                      "(the last checkpoint is intact: --resume %s goes on from it)", r->dir, m->step, strerror(err),
                      cut ? "cut back to its last whole record" : "and it could not be cut back (a torn last line)", r->dir);
}

/* A logged step: its line on stdout, its numbers into rec. */
static void run_log(Run *r, const StepResult *sr, float lr, MetricsRecord *rec) {
    long step = r->state.step;
    int log_interval = r->o->log_interval > 0 ? r->o->log_interval : 1;
    double t = now_s(), dt = t - r->t_log;
    double tps = dt > 0 ? r->tokens_since / dt : 0;
    double ms = 1000.0 * dt / (step == 1 ? 1 : (step % log_interval ? step % log_interval : log_interval));
    if (!r->o->quiet) {
        printf("step %6ld | loss %.4f", step, sr->loss);
        if (config_num_moe_layers(&r->cfg)) printf(" | aux %.4f", sr->aux_loss);
        printf(" | lr %.2e | grad norm %.3f | %.1f ms | %.0f tok/s\n", lr, sr->grad_norm, ms, tps);
        fflush(stdout);
    }
    rec->has_train = 1;
    rec->loss = sr->loss;
    rec->aux_loss = sr->aux_loss;
    rec->lr = lr;
    rec->grad_norm = sr->grad_norm;
    rec->tokens_per_s = tps;
    rec->time_s = now_s() - r->t_run;
    rec->tokens = r->state.tokens_seen;
    rec->dropout = r->model.train_dropout;
    r->t_log = now_s();
    r->tokens_since = 0;
}

/* The valid split's evaluation by the model as it stands, nb batches (0: all of it), into ev, with no
 * routing dump: a pair corpus's targets, a span-corrupted stream's (encoder-decoder) or a language
 * model's windows. */
static moelm_status run_evaluate_split(Run *r, size_t nb, EvalResult *ev) {
    return r->pairs ? evaluate_pairs(&r->model, &r->pd[1], nb, ev)
         : r->s2s   ? evaluate_span(&r->model, r->ids[1], r->n[1], r->len, nb, ev)
                    : evaluate(&r->model, r->ids[1], r->n[1], nb, 0, ev);
}

/* An encoder-decoder's evaluation: the span-corruption loss of the valid split's windows and the target
 * perplexity (no routing dump: the routing maps are the lm's). */
static moelm_status run_evaluate_span(Run *r, int last, MetricsRecord *rec) {
    double t0 = r->t_eval_start = now_s();
    size_t nb = last ? 0 : r->part_batches;
    moelm_status st = run_evaluate_split(r, nb, &r->ev);
    r->t_eval_s = now_s() - t0;
    if (st) return st;
    double loss = r->ev.tokens > 0 ? r->ev.nll / r->ev.tokens : 0;
    rec->ev = &r->ev;
    rec->val_loss = loss;
    rec->val_word_ppl = 0;
    if (!r->o->quiet) {
        printf("eval   %6ld | %s loss %.4f | target ppl %.2f | %.1f s\n", r->state.step,
               r->pairs ? "target" : "span-corruption", loss, exp(loss), now_s() - t0);
        print_moe_stats(&r->ev, stdout);
        fflush(stdout);
    }
    r->t_log = now_s();
    return MOELM_OK;
}

/* word-level perplexity: the NLL of the whole split over its words (<eos> included); a partial
 * evaluation scales its mean to the split's token count (0: no words, or an encoder-decoder) */
static double run_word_ppl(const Run *r, double tok_nll) {
    if (r->s2s || !r->words[1]) return 0;
    return exp(tok_nll * (double)(r->n[1] - 1) / (double)r->words[1]);
}

/* With a weight average (ema_decay > 0): the evaluation just made, repeated on the averaged weights
 * (swapped in and back out; no routing dump), its line on stdout and its numbers into rec. The
 * model's random stream is left as it was: the run's draws do not depend on the average. */
static moelm_status run_evaluate_ema(Run *r, int last, MetricsRecord *rec) {
    if (!r->opt.ema) return MOELM_OK;
    double t0 = now_s();
    size_t nb = last ? 0 : r->part_batches;
    uint64_t rng = r->model.rng.s;
    optim_swap_ema(&r->opt, &r->model);
    moelm_status st = run_evaluate_split(r, nb, &r->ev_ema);
    optim_swap_ema(&r->opt, &r->model);
    r->model.rng.s = rng;
    r->t_eval_s += now_s() - t0;
    if (st || !(r->ev_ema.tokens > 0)) return st;
    rec->has_ema = 1;
    rec->val_loss_ema = r->ev_ema.nll / r->ev_ema.tokens;
    rec->val_word_ppl_ema = run_word_ppl(r, rec->val_loss_ema);
    if (!r->o->quiet) {
        printf("eval   %6ld | averaged weights: val loss %.4f | %s ppl %.2f", r->state.step, rec->val_loss_ema,
               r->s2s ? "target" : "val", exp(rec->val_loss_ema));
        if (rec->val_word_ppl_ema > 0) printf(" | word ppl %.2f", rec->val_word_ppl_ema);
        printf(" | %.1f s\n", now_s() - t0);
        fflush(stdout);
    }
    r->t_log = now_s();
    return MOELM_OK;
}

static moelm_status run_evaluate_lm(Run *r, int last, MetricsRecord *rec);

/* An evaluation of the valid split (a periodic one takes --eval-batches batches; the last the whole
 * split), its line and expert statistics on stdout, its numbers into rec, and the routing dump of
 * its own forward passes; then the averaged weights' (ema_decay > 0). A valid split with nothing to
 * predict gives none (its loss is not 0). */

static moelm_status run_evaluate(Run *r, int last, MetricsRecord *rec) {
    if (r->full_batches == 0) {
        r->t_eval_start = now_s();
        r->t_eval_s = 0;
        return MOELM_OK;
    }
    moelm_status st = r->s2s ? run_evaluate_span(r, last, rec) : run_evaluate_lm(r, last, rec);
    if (!st) st = run_evaluate_ema(r, last, rec);
    return st;
}

/* A language model's evaluation (run_evaluate). */
static moelm_status run_evaluate_lm(Run *r, int last, MetricsRecord *rec) {
    Model *m = &r->model;
    RoutingRec routing;
    double t0 = r->t_eval_start = now_s();
    if (routing_begin(&routing, m, r->n[1], (size_t)r->o->eval_batches))   /* routing stays empty */
        fprintf(stderr, "moelm: warning: routing dump not written: %s\n", moelm_last_error());
    moelm_status st = evaluate_routed(m, r->ids[1], r->n[1], last ? 0 : r->part_batches, 0, &r->ev, &routing);
    r->t_eval_s = now_s() - t0;
    if (st) {
        routing_free(&routing);
        return st;
    }
    double tok_nll = r->ev.tokens > 0 ? r->ev.nll / r->ev.tokens : 0;
    rec->ev = &r->ev;
    rec->val_loss = tok_nll;
    rec->val_word_ppl = run_word_ppl(r, tok_nll);
    if (r->ev.tokens > 0) {
        r->state.val_step = r->state.step;
        r->state.val_ppl = exp(tok_nll);
        r->state.val_word_ppl = rec->val_word_ppl;
    }
    if (r->ev.tokens > 0 && (r->best_ppl <= 0 || exp(tok_nll) < r->best_ppl)) {
        r->best_ppl = exp(tok_nll);
        r->best_step = r->state.step;
    }
    if (!r->o->quiet) {
        printf("eval   %6ld | val loss %.4f | val ppl %.2f | word ppl %.2f | %.1f s\n", r->state.step, tok_nll, exp(tok_nll),
               rec->val_word_ppl, now_s() - t0);
        print_moe_stats(&r->ev, stdout);
        fflush(stdout);
    }
    if (routing_finish(&routing, r->dir, r->state.step, m, r->tok, r->ids[1], r->n[1], r->state.data))
        fprintf(stderr, "moelm: warning: routing dump not written: %s\n", moelm_last_error());
    r->t_log = now_s();
    return MOELM_OK;
}

/* A checkpoint of the whole run (a collective: rank 0 writes it). */
static moelm_status run_checkpoint(Run *r) {
    TrainState *s = &r->state;
    s->elapsed_s = now_s() - r->t_run;
    const DataLoader *dl = run_loader(r);
    s->data_epoch = dl->epoch;
    s->data_pos = dl->pos;
    s->rng = r->model.rng.s;
    s->reserve_s = r->budget_s > 0 ? r->reserve_s : 0;
    s->reserve_measured = r->reserve_measured;
    double t0 = now_s();
    moelm_status st = dist_save_checkpoint(r->dir, &r->model, &r->opt, s, r->tok, r->o->keep);
    r->ckpt_s = now_s() - t0;
    if (dist_any_failed(st)) return st ? st : moelm_fail(MOELM_ERR_IO, "rank 0 failed to write a checkpoint");
    return MOELM_OK;
}

/* After a periodic evaluation and its checkpoint: what the end of the run will take, its whole-split
 * evaluation, routing dump and checkpoint (the time budget keeps it in reserve). */
static void run_measure_end(Run *r) {
    double parts = (double)r->full_batches / (double)(r->part_batches ? r->part_batches : 1);
    r->reserve_s = dist_root_value(now_s() - r->t_eval_start - r->t_eval_s + r->t_eval_s * parts);
    r->reserve_measured = 1;
}

/* ---- the run ------------------------------------------------------------------------------------- */

/* ---- signals ------------------------------------------------------------------------------------ */

/* The first SIGINT or SIGTERM during the steps ends the run after the current step, with a
 * checkpoint; the handler resets itself (SA_RESETHAND), so a second one ends the process at once. */
static volatile sig_atomic_t run_signal_seen;
static int last_signal;

static void run_on_signal(int sig) { run_signal_seen = sig; }

int train_last_signal(void) { return last_signal; }

static void run_catch_signals(struct sigaction *old_int, struct sigaction *old_term) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = run_on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    run_signal_seen = 0;
    sigaction(SIGINT, &sa, old_int);
    sigaction(SIGTERM, &sa, old_term);
    /* one ignored by the parent (a background job of a script, nohup) stays ignored */
    if (old_int->sa_handler == SIG_IGN) sigaction(SIGINT, old_int, NULL);
    if (old_term->sa_handler == SIG_IGN) sigaction(SIGTERM, old_term, NULL);
}

/* ---- the end ------------------------------------------------------------------------------------- */

/* What the run did, where its checkpoint is, and what comes next (stdout). */
static void run_print_summary(const Run *r) {
    char ck[4096], tok[32], took[32];
    snprintf(ck, sizeof ck, "%s/ckpt-%08ld", r->dir, r->state.step);
    fmt_count(tok, sizeof tok, (size_t)r->state.tokens_seen);
    progress_fmt_eta(took, sizeof took, now_s() - r->t_run);
    printf("done: %ld steps", r->state.step);
    if (r->step0) printf(" (%ld in this session)", r->state.step - r->step0);
    printf(", %s tokens, %s", tok, took);
    if (r->best_ppl > 0) {
        double tok_nll = r->ev.tokens > 0 ? r->ev.nll / r->ev.tokens : 0;
        printf("; val ppl best %.2f (step %ld), final %.2f", r->best_ppl, r->best_step, exp(tok_nll));
        if (r->opt.ema && r->ev_ema.tokens > 0) printf(", averaged weights %.2f", exp(r->ev_ema.nll / r->ev_ema.tokens));
    }
    printf("\ncheckpoint: %s\nreport: moelm report %s\n", ck, r->dir);
    fflush(stdout);
}

/* A resumed run that is already complete: says so, and how to train on. */
static void run_print_complete(const Run *r) {
    const TrainConfig *tc = &r->tc;
    if (tc->time_budget_s > 0) {
        char len[32];
        progress_fmt_eta(len, sizeof len, tc->time_budget_s);
        printf("%s: the run is complete (%ld steps in its %s time budget); to train on, give it a longer one: "
               "moelm train --resume %s --time-budget MINUTES\n", r->dir, r->state.step, len, r->dir);
    } else {
        printf("%s: the run is complete (%ld of %ld steps); to train on, give it more: moelm train --resume %s --steps N "
               "(N > %ld; the lr schedule then spans N steps)\n", r->dir, r->state.step, tc->steps, r->dir, r->state.step);
    }
}

/* ---- the run ------------------------------------------------------------------------------------- */

static moelm_status train_run_ranks(const TrainOptions *o) {
    Run r;
    moelm_status st = run_setup(&r, o);
    if (!st && r.complete) {
        if (r.complete > 0) run_print_complete(&r);
        run_free(&r);
        return MOELM_OK;
    }
    struct sigaction old_int, old_term;
    run_catch_signals(&old_int, &old_term);
    last_signal = 0;
    double elapsed;
    if (!st && r.src) {   /* where the run starts: SRC's loss on this data */
        MetricsRecord rec = {.step = 0};
        st = run_evaluate(&r, 0, &rec);
        if (!st && r.ev.tokens > 0) st = metrics_append(&r, &rec);
    }
    while (!st && run_continues(&r, &elapsed)) {
        float lr = run_lr(&r, elapsed);
        run_dropout_rule(&r, elapsed);
        StepResult sr;
        st = run_step(&r, lr, &sr);
        if (st) break;
        StepEnds end = run_ends(&r);
        r.signal = (int)dist_root_value(run_signal_seen);
        if (r.signal) end = (StepEnds){.last = 1, .log = 1, .ckpt = 1};   /* no evaluation: the user is waiting */
        MetricsRecord rec = {.step = r.state.step};
        if (end.log || end.eval) progress_clear(&r.prog);
        if (end.log) run_log(&r, &sr, lr, &rec);
        if (end.eval) st = run_evaluate(&r, end.last, &rec);
        if (st) break;
        if (end.log || end.eval) st = metrics_append(&r, &rec);   /* one record a step at most */
        r.state.complete = end.last && !r.signal && r.state.step != o->stop_at;
        if (!st && end.ckpt) st = run_checkpoint(&r);
        if (st) break;
        if (end.eval && !end.last) run_measure_end(&r);
        if (r.budget_s > 0) progress_update(&r.prog, (long)(now_s() - r.t_run), "step %ld | loss %.3f", r.state.step, sr.loss);
        else progress_update(&r.prog, r.state.step, "loss %.3f", sr.loss);
        if (end.last) break;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (!st) {
        progress_end(&r.prog);
        if (r.skipped && !o->quiet) printf("skipped %ld non-finite updates\n", r.skipped);
        if (r.signal) {
            last_signal = r.signal;
            fprintf(stderr, "moelm: %s: stopped after step %ld with a checkpoint; moelm train --resume %s continues "
                            "the run\n", r.signal == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)",
                    r.state.step, r.dir);
        } else if (!o->quiet) {
            run_print_summary(&r);
        }
    }
    if (st && r.made_dir && !r.started) {   /* a set-up that failed leaves no --out behind (its token cache at most) */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", moelm_last_error());
        dir_remove_tree(r.dir);
        moelm_fail(st, "%s", msg);
    }
    run_free(&r);
    return st;
}

/* Over MPI every rank runs this (see dist.h); without it, one rank. */
moelm_status train_run(const TrainOptions *o) {
    moelm_status st = dist_begin(o->expert_parallel);
    if (!st) st = train_run_ranks(o);
    return dist_end(st);
}
