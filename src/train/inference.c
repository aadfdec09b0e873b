/* inference.c: `moelm eval`, `moelm generate` and `moelm info` behind their option structs. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "backend/gemm.h"
#include "data/corpus.h"
#include "io/fileio.h"
#include "train/checkpoint.h"
#include "train/train.h"

/* Opens a checkpoint: its config, a model for B x T with its weights, its tokenizer. */
static moelm_status open_ckpt(const char *path, int B, int T, Model *m, Tokenizer **tok, TrainState *state, char *dir, size_t cap) {
    ModelConfig cfg;
    moelm_status st = ckpt_resolve(path, dir, cap);
    if (!st) st = ckpt_read_config(dir, &cfg);
    if (!st) st = ckpt_read_state(dir, state);
    if (st) return st;
    if (T <= 0) T = state->seq_len;
    if (T > cfg.n_positions) T = cfg.n_positions;
    st = model_create(m, &cfg, B, T, 0);
    if (st) return st;
    st = ckpt_load_model(dir, m);
    char tp[4096];
    snprintf(tp, sizeof tp, "%s/tokenizer.model", dir);
    if (!st) st = tokenizer_load(tok, tp);
    if (st) model_free(m);
    return st;
}

moelm_status eval_run(const char *ckpt, const char *data, int B, int T, int stride, int threads) {
    backend_set_threads(threads);
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    moelm_status st = open_ckpt(ckpt, B, T, &m, &tok, &state, dir, sizeof dir);
    if (st) return st;
    char *text = NULL;
    size_t len = 0;
    char name[4096];
    Corpus c;
    memset(&c, 0, sizeof c);
    if (!data || path_is_dir(data) || !strcmp(data, "builtin")) {
        const char *spec = data ? data : state.data;
        st = corpus_load(&c, strcmp(spec, "builtin") ? spec : NULL);
        if (!st) {
            text = c.text[CORPUS_TEST];
            len = c.len[CORPUS_TEST];
            snprintf(name, sizeof name, "%s", c.name[CORPUS_TEST]);
        }
    } else {
        st = corpus_read_file(data, &text, &len);
        snprintf(name, sizeof name, "%s", data);
    }
    int *ids = NULL;
    size_t n = 0;
    if (!st) st = tokenizer_encode(tok, text, len, &ids, &n);
    int eos = tokenizer_eos_id(tok);
    if (!st && eos >= 0) {
        /* the stream starts with <eos> so that the first word is predicted as well */
        int *w = moelm_malloc(sizeof(int) * (n + 1));
        if (!w) st = MOELM_ERR_NOMEM;
        else {
            w[0] = eos;
            memcpy(w + 1, ids, sizeof(int) * n);
            moelm_free(ids);
            ids = w;
            n++;
        }
    }
    if (!st && n < 2) st = moelm_fail(MOELM_ERR_DATA, "%s: no tokens to evaluate", name);
    if (!st) {
        size_t words = text_count_words(text, len);
        EvalResult r;
        double t0 = time_now();
        st = evaluate(&m, ids, n, 0, stride, &r);
        if (!st) {
            double per_tok = r.nll / r.tokens;
            printf("%s: %.0f tokens, %zu words, windows of %d tokens", name, r.tokens, words, m.T);
            if (stride > 0 && stride < m.T) printf(" every %d (each scored token sees at least %d before it)\n", stride, m.T - stride);
            else printf(", not overlapping\n");
            printf("token-level: loss %.4f, perplexity %.3f\n", per_tok, exp(per_tok));
            printf("word-level perplexity: %.3f\n", words ? exp(r.nll / (double)words) : 0.0);
            printf("eval time %.1f s (%.0f tok/s)\n", time_now() - t0, r.tokens / (time_now() - t0));
            print_moe_stats(&r, stdout);
        }
    }
    moelm_free(ids);
    if (c.text[0]) corpus_free(&c);
    else moelm_free(text);
    tokenizer_free(tok);
    model_free(&m);
    return st;
}

moelm_status generate_run(const GenerateOptions *o) {
    backend_set_threads(o->threads);
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    moelm_status st = open_ckpt(o->ckpt, 1, 1, &m, &tok, &state, dir, sizeof dir);
    if (st) return st;
    KVCache kv;
    st = kv_create(&kv, &m);
    if (!st) st = kv_load_weights(&kv, &m, o->bf16);
    int *ids = NULL;
    size_t n = 0;
    if (!st && o->prompt[0]) {
        /* the prompt is the start of a line: encoded as text, without the line end's <eos> */
        st = tokenizer_encode(tok, o->prompt, strlen(o->prompt), &ids, &n);
        if (!st && n > 0 && ids[n - 1] == tokenizer_eos_id(tok)) n--;
    }
    int V = m.cfg.vocab_size, maxT = m.cfg.n_positions;
    float *scratch = st ? NULL : moelm_malloc(sizeof(float) * 2 * (size_t)V);
    if (!st && !scratch) st = MOELM_ERR_NOMEM;
    if (!st && (int)n + 1 > maxT) st = moelm_fail(MOELM_ERR_ARG, "prompt of %zu tokens does not fit the context of %d", n, maxT);
    if (!st) {
        Rng rng;
        rng_seed(&rng, o->seed);
        rng_seed(&m.rng, o->seed ^ 0x5bd1e995u);
        /* a generation starts as a new line: <eos> first when the tokenizer has one */
        int eos = tokenizer_eos_id(tok);
        if (eos >= 0) model_step_kv(&m, &kv, eos);
        for (size_t i = 0; i < n; i++) model_step_kv(&m, &kv, ids[i]);
        if (eos < 0 && n == 0) model_step_kv(&m, &kv, 0);
        fputs(o->prompt, stdout);
        double t0 = time_now();
        int made = 0, at_line_start = o->prompt[0] == '\0';
        for (int i = 0; i < o->n && kv.pos < maxT; i++) {
            int next = sample_token(kv.logits, V, o->temp, o->top_k, o->top_p, &rng, scratch);
            char *piece = NULL;
            if (tokenizer_decode_piece(tok, next, &piece) == MOELM_OK) {
                int word = tokenizer_kind(tok) == TOK_WORD;
                if (word && piece[0] != '\n' && !at_line_start) fputc(' ', stdout);
                fputs(piece, stdout);
                at_line_start = piece[0] && piece[strlen(piece) - 1] == '\n';
                moelm_free(piece);
            }
            made++;
            if (kv.pos < maxT) model_step_kv(&m, &kv, next);
        }
        if (!at_line_start) fputc('\n', stdout);
        fflush(stdout);
        double dt = time_now() - t0;
        fflush(stdout);
        fprintf(stderr, "generated %d tokens in %.2f s (%.1f tok/s)\n", made, dt, dt > 0 ? made / dt : 0.0);
    }
    moelm_free(scratch);
    moelm_free(ids);
    kv_free(&kv);
    tokenizer_free(tok);
    model_free(&m);
    return st;
}

moelm_status info_run(const char *ckpt) {
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    moelm_status st = open_ckpt(ckpt, 1, 1, &m, &tok, &state, dir, sizeof dir);
    if (st) return st;
    printf("checkpoint: %s\n", dir);
    printf("step %ld, %.0f tokens seen, %.1f s of training, data %s, %d threads\n", state.step, state.tokens_seen,
           state.elapsed_s, state.data, state.threads);
    printf("tokenizer: %s, vocab %d\n",
           tokenizer_kind(tok) == TOK_WORD ? "word" : tokenizer_kind(tok) == TOK_CHAR ? "char"
           : tokenizer_kind(tok) == TOK_UNIGRAM ? "unigram" : "bpe", tokenizer_vocab_size(tok));
    print_model_summary(&m, stdout);
    printf("training settings: %s\n", state.train_json);
    tokenizer_free(tok);
    model_free(&m);
    return MOELM_OK;
}
