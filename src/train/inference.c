/* inference.c: `moelm eval`, `moelm generate` and `moelm info` behind their option structs. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "backend/runtime.h"
#include "data/corpus.h"
#include "io/fileio.h"
#include "data/span.h"
#include "io/json.h"
#include "io/weights.h"
#include "model/encdec.h"
#include "model/llama_gguf.h"
#include "model/llama_hf.h"
#include "train/checkpoint.h"
#include "train/dyneval.h"
#include "train/train.h"

/* Opens a model directory: a moelm checkpoint (CHECKSUMS verified, state.json read; *has_state 1) or a
 * Hugging Face directory (config.json and its weights; *has_state 0, state zeroed); a model for B x T
 * (an encoder-decoder: B x T encoder and B x Td decoder tokens) with its weights; its tokenizer,
 * tokenizer.model or HF's spiece.model, with T5's 100 sentinels for an encoder-decoder (*tok NULL when
 * the directory has none: the caller says whether it needs one). */
static moelm_status open_model(const char *path, int B, int T, int Td, Model *m, Tokenizer **tok, TrainState *state,
                               int *has_state, char *dir, size_t cap) {
    ModelConfig cfg;
    char p[4096];
    *tok = NULL;
    memset(state, 0, sizeof *state);
    if (gguf_is_file(path)) {   /* a llama.cpp model file (llama_gguf_read.c), its matrices as floats */
        snprintf(dir, cap, "%s", path);
        *has_state = 0;
        return llama_load_gguf(m, tok, NULL, path, B, T);
    }
    moelm_status st = ckpt_resolve(path, dir, cap);
    if (st) return st;
    snprintf(p, sizeof p, "%s/CHECKSUMS", dir);
    *has_state = path_exists(p);
    if (*has_state) {
        st = ckpt_read_config(dir, &cfg);
        if (!st) st = ckpt_read_state(dir, state);
    } else {
        snprintf(p, sizeof p, "%s/config.json", dir);
        st = config_load(&cfg, p);
        if (!st && cfg.note[0]) fprintf(stderr, "note: %s: %s\n", p, cfg.note);
    }
    if (st) return st;
    /* the tokenizer first: it must fit the model (a larger one makes ids the model has no row for, which
     * aborted in model.c), and a checkpoint's must be the one it was trained with */
    snprintf(p, sizeof p, "%s/tokenizer.model", dir);
    if (!path_exists(p)) snprintf(p, sizeof p, "%s/spiece.model", dir);
    if (path_exists(p)) {
        st = tokenizer_load(tok, p);
        if (!st && cfg.model_type == MODEL_SWITCH && (st = tokenizer_add_sentinels(*tok, 100)) != MOELM_OK)
            moelm_fail_context(st, "%s", p);
        if (!st && cfg.model_type == MODEL_SWITCH && tokenizer_vocab_size(*tok) > cfg.vocab_size)
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: %d pieces with T5's 100 sentinels, more than the model's vocab_size %d",
                            p, tokenizer_vocab_size(*tok), cfg.vocab_size);
        int V = st ? 0 : tokenizer_vocab_size(*tok);
        if (!st && cfg.model_type != MODEL_SWITCH && (*has_state ? V != cfg.vocab_size : V > cfg.vocab_size))
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: %d pieces, but config.json has vocab_size %d (not this model's tokenizer)",
                            p, V, cfg.vocab_size);
        if (!st && *has_state && tokenizer_hash(*tok) != state->tokenizer_hash)
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: not the tokenizer this model was trained with (its hash differs from "
                            "state.json's tokenizer_hash)", p);
    }
    if (T <= 0 && !*has_state && config_is_llama(&cfg)) T = 256;   /* HF's context may be 131072 */
    if (T <= 0) T = state->seq_len > 0 ? state->seq_len : cfg.n_positions;
    if (T > cfg.n_positions && cfg.model_type != MODEL_SWITCH) T = cfg.n_positions;
    if (!st) st = cfg.model_type == MODEL_SWITCH ? model_create_encdec(m, &cfg, B, T, Td > 0 ? Td : 1, 0, 0, 1)
                                                 : model_create(m, &cfg, B, T, 0);
    if (!st && !*has_state && config_is_llama(&cfg)) {   /* HF's per-expert tensors (llama_hf.c) */
        WeightSet *ws = NULL;
        st = ws_open(&ws, dir);
        if (!st) st = llama_read_hf(m, ws, dir);
        ws_close(ws);
        if (st) model_free(m);
    } else if (!st && (st = ckpt_load_model(dir, m)) != MOELM_OK) {
        model_free(m);
    }
    if (st) {
        tokenizer_free(*tok);
        *tok = NULL;
    }
    return st;
}

/* --ema: the weight average a training run kept (ema_decay > 0) in place of the weights of the model
 * open_model loaded from dir; on error the model and the tokenizer are freed (*tok NULL). */
static moelm_status use_ema(int ema, const char *dir, Model *m, Tokenizer **tok) {
    if (!ema) return MOELM_OK;
    char p[4096];
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    moelm_status st = path_exists(p) ? ckpt_load_ema(dir, m)
                                     : moelm_fail(MOELM_ERR_ARG, "--ema: %s is not a moelm training checkpoint (the weight "
                                                                 "average is kept by `moelm train --set ema_decay=...`)", dir);
    if (st) {
        model_free(m);
        tokenizer_free(*tok);
        *tok = NULL;
    }
    return st;
}

/* The tokenizer eval and generate need: an error naming the directory when it has none. */
static moelm_status need_tokenizer(const Tokenizer *tok, const char *dir) {
    return tok ? MOELM_OK : moelm_fail(MOELM_ERR_IO, "%s has no tokenizer (tokenizer.model or spiece.model): eval and "
                                                     "generate need one (moelm forward takes ids and needs none)", dir);
}

/* Opens a checkpoint as eval, generate and info always have: a tokenizer required. */
static moelm_status open_ckpt(const char *path, int B, int T, Model *m, Tokenizer **tok, TrainState *state, char *dir, size_t cap) {
    int has_state;
    moelm_status st = open_model(path, B, T, 0, m, tok, state, &has_state, dir, cap);
    if (!st && (st = need_tokenizer(*tok, dir)) != MOELM_OK) model_free(m);
    return st;
}

/* The model type and the training sequence length a directory holds (its config and state), without
 * loading the weights: an encoder-decoder's shapes depend on them. */
static moelm_status peek_model(const char *path, ModelType *type, int *seq_len) {
    char dir[4096], p[4096];
    ModelConfig cfg;
    TrainState state;
    memset(&state, 0, sizeof state);
    if (gguf_is_file(path)) {   /* the llama family (llama_load_gguf checks the rest) */
        *type = MODEL_LLAMA;
        *seq_len = 0;
        return MOELM_OK;
    }
    moelm_status st = ckpt_resolve(path, dir, sizeof dir);
    snprintf(p, sizeof p, "%s/state.json", dir);
    if (!st && path_exists(p)) st = ckpt_read_state(dir, &state);
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!st) st = config_load(&cfg, p);
    if (st) return st;
    *type = cfg.model_type;
    *seq_len = state.seq_len;
    return MOELM_OK;
}

/* moelm eval of an encoder-decoder: the text's windows span-corrupted with fixed noise (T5's), the mean
 * cross-entropy of the labels (the span-corruption loss) and its exp (the target perplexity). */
static moelm_status eval_span_run(const char *ckpt, const char *data, int B, int T, int ema) {
    SpanLengths len = span_lengths(T, 0.15f, 3.0f);
    size_t dn = data ? strlen(data) : 0;
    int tsv = dn > 4 && !strcmp(data + dn - 4, ".tsv");
    if (tsv) len = (SpanLengths){0, T, T, 0};   /* pairs: each side up to T tokens */
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096], name[4096];
    int has_state;
    moelm_status st = open_model(ckpt, B, len.inputs, len.targets, &m, &tok, &state, &has_state, dir, sizeof dir);
    if (!st) st = use_ema(ema, dir, &m, &tok);
    if (st) return st;
    st = need_tokenizer(tok, dir);
    Corpus c;
    memset(&c, 0, sizeof c);
    char *text = NULL;
    size_t n_text = 0;
    if (!st && (!data || path_is_dir(data) || !strcmp(data, "builtin"))) {
        const char *spec = data ? data : has_state ? state.data : "builtin";
        st = corpus_load(&c, strcmp(spec, "builtin") ? spec : NULL);
        if (!st) {
            text = c.text[CORPUS_TEST];
            n_text = c.len[CORPUS_TEST];
            snprintf(name, sizeof name, "%s", c.name[CORPUS_TEST]);
        }
    } else if (!st) {
        st = corpus_read_file(data, &text, &n_text);
        snprintf(name, sizeof name, "%s", data);
    }
    int *ids = NULL;
    size_t n = 0;
    if (!st) st = tokenizer_encode(tok, text, n_text, &ids, &n);
    if (!st && tsv) {
        /* input<TAB>target pairs: the labels' loss and perplexity, every pair once */
        Seq2SeqData d;
        memset(&d, 0, sizeof d);
        st = seq2seq_load_text(&d, text, n_text, name, tok, len.inputs, len.inputs, m.cfg.sw.pad_token_id, 1);
        EvalResult r;
        if (!st && (st = evaluate_pairs(&m, &d, 0, &r)) == MOELM_OK) {
            double loss = r.tokens > 0 ? r.nll / r.tokens : 0;
            printf("%s: %d input<TAB>target pairs (each side up to %d tokens), %.0f target tokens\n", name, d.n,
                   len.inputs, r.tokens);
            printf("target loss %.4f, target perplexity %.3f\n", loss, exp(loss));
            print_moe_stats(&r, stdout);
        }
        if (d.idx) seq2seq_free(&d);
        n = 0;
        moelm_free(ids);
        ids = NULL;
        goto done;
    }
    if (!st && n < (size_t)len.raw)
        st = moelm_fail(MOELM_ERR_DATA, "%s: %zu tokens, fewer than one window of %d", name, n, len.raw);
    if (!st && tokenizer_eos_id(tok) < 0) st = moelm_fail(MOELM_ERR_CONFIG, "%s: the tokenizer has no end-of-sequence id", dir);
    if (!st) {
        m.cfg.sw.eos_token_id = tokenizer_eos_id(tok);
        EvalResult r;
        double t0 = time_now();
        st = evaluate_span(&m, ids, n, len, 0, &r);
        if (!st) {
            double loss = r.tokens > 0 ? r.nll / r.tokens : 0;
            printf("%s: %zu windows of %d tokens, span-corrupted (density 0.15, mean span 3): encoder %d, decoder %d "
                   "tokens; %.0f target tokens\n", name, n / (size_t)len.raw, len.raw, len.inputs, len.targets, r.tokens);
            printf("span-corruption loss %.4f, target perplexity %.3f\n", loss, exp(loss));
            printf("eval time %.1f s\n", time_now() - t0);
            print_moe_stats(&r, stdout);
        }
    }
done:
    moelm_free(ids);
    if (c.text[0]) corpus_free(&c);
    else moelm_free(text);
    tokenizer_free(tok);
    model_free(&m);
    return st;
}

/* The unknown-token rate above which eval warns: PTB's own test split has ~6% (4794 literal <unk>s
 * in ~82k tokens), tinyshakespeare under a PTB word:10000 tokenizer ~46%. */
#define EVAL_UNK_WARN 0.10

/* The loss and perplexity lines of an evaluation, each starting with prefix. */
static void print_ppl(const char *prefix, const EvalResult *r, size_t words) {
    double per_tok = r->nll / r->tokens;
    printf("%stoken-level: loss %.4f, perplexity %.3f\n", prefix, per_tok, exp(per_tok));
    printf("%sword-level perplexity: %.3f\n", prefix, words ? exp(r->nll / (double)words) : 0.0);
}

/* A number of the training settings a checkpoint's state.json holds, within (lo, hi]; dflt when absent. */
static float state_train_number(const TrainState *state, const char *key, float lo, float hi, float dflt) {
    Json *j = NULL;
    float x = dflt;
    if (state->train_json[0] && json_parse(&j, state->train_json, strlen(state->train_json), "state.json train") == MOELM_OK) {
        const Json *v = json_get(j, key);
        if (v && json_type(v) == JSON_NUMBER && json_number(v) > lo && json_number(v) <= hi) x = (float)json_number(v);
    }
    json_free(j);
    return x;
}

/* eval --dynamic after the static evaluation: SGD, or with dyn->rms the RMS rule from the checkpoint's
 * Adam second moment; each update's gradient clipped at the run's grad_clip (1 when unknown: a segment
 * of a few dozen tokens can give a gradient far larger than a training batch's, and one unclipped step
 * then ruins the weights). Prints the dynamic numbers. The model ends adapted. */
static moelm_status eval_dynamic(Model *m, const char *dir, const TrainState *state, const EvalDynamic *dyn,
                                 const int *ids, size_t n, size_t words) {
    int rms = dyn->rms;   /* eval_run checked that the checkpoint has Adam's moments */
    float lr = dyn->lr >= 0 ? dyn->lr : rms ? DYN_LR_RMS : DYN_LR_SGD;
    Optimizer o;
    memset(&o, 0, sizeof o);
    moelm_status st = rms ? optim_create(&o, m->n_params) : MOELM_OK;
    if (!st && rms) st = ckpt_load_optimizer(dir, &o, m);
    if (!st && rms) dyn_ms_from_adam(o.v, &o, state_train_number(state, "beta2", 0, 0.999999f, 0.999f));
    float clip = state_train_number(state, "grad_clip", 0, 1e30f, 1.0f);
    DynEval d;
    if (!st) st = dyn_create(&d, m, lr, dyn->decay, rms ? o.v : NULL, clip);
    optim_free(&o);
    if (st) return st;
    printf("dynamic evaluation (adapts the weights on the text as it is read; not comparable with static numbers):\n"
           "  segments of %d tokens in order, each scored, then one %s step on it (lr %g, decay toward the trained "
           "weights %g, gradient clipped at norm %g)\n", m->T, rms ? "RMS-normalised (MS: the run's Adam second moment)" : "SGD",
           lr, dyn->decay, clip);
    EvalResult r;
    double t0 = time_now();
    st = evaluate_dynamic(&d, ids, n, &r, NULL);
    if (!st) {
        print_ppl("dynamic ", &r, words);
        printf("dynamic eval time %.1f s (%.0f tok/s)\n", time_now() - t0, r.tokens / (time_now() - t0));
    }
    dyn_free(&d);
    return st;
}

moelm_status eval_run(const char *ckpt, const char *data, int B, int T, int stride, int threads, int ema,
                      const EvalDynamic *dyn) {
    backend_set_threads(threads);
    ModelType type;
    int seq_len;
    moelm_status st = peek_model(ckpt, &type, &seq_len);
    if (st) return st;
    int dynamic = dyn && dyn->on;
    if (dynamic) {
        if (type == MODEL_SWITCH)
            return moelm_fail(MOELM_ERR_ARG, "eval --dynamic is for decoder-only models (lm, seed, llama, mixtral); this "
                                             "is an encoder-decoder (switch_transformers), whose span corruption has no reading order");
        if (stride > 0 && stride != T && stride != seq_len)
            return moelm_fail(MOELM_ERR_ARG, "eval --dynamic reads the text in non-overlapping segments: --stride does not apply");
        if (!(dyn->decay >= 0 && dyn->decay <= 1)) return moelm_fail(MOELM_ERR_ARG, "--dyn-decay must be in [0, 1]");
        char d[4096], p[4200];
        if (dyn->rms && !gguf_is_file(ckpt) && ckpt_resolve(ckpt, d, sizeof d) == MOELM_OK)
            snprintf(p, sizeof p, "%s/optimizer.safetensors", d);
        else snprintf(p, sizeof p, "%s", "");
        if (dyn->rms && !path_exists(p))
            return moelm_fail(MOELM_ERR_ARG, "--dyn-rms: %s is not a moelm training checkpoint with optimizer.safetensors (the "
                                             "RMS rule takes MS from its Adam second moment); without --dyn-rms: SGD", ckpt);
        B = 1;       /* one segment at a time, in order; the static numbers at the same windows */
        stride = 0;
    }
    if (type == MODEL_SWITCH) {
        if (stride > 0) return moelm_fail(MOELM_ERR_ARG, "--stride is for decoder-only models (an encoder-decoder is "
                                                         "evaluated on span-corrupted windows)");
        return eval_span_run(ckpt, data, B, T > 0 ? T : seq_len > 0 ? seq_len : 64, ema);
    }
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    st = open_ckpt(ckpt, B, T, &m, &tok, &state, dir, sizeof dir);
    if (!st) st = use_ema(ema, dir, &m, &tok);
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
        size_t words = text_count_words(text, len), unk = 0, first = eos >= 0;   /* the text's tokens: after <eos> */
        int unk_id = tokenizer_unk_id(tok);
        for (size_t i = first; i < n; i++) unk += unk_id >= 0 && ids[i] == unk_id;
        EvalResult r;
        double t0 = time_now();
        Rng rng0 = m.rng;   /* the dynamic pass draws what the static one did (the random router) */
        st = evaluate(&m, ids, n, 0, stride, &r);
        if (!st) {
            printf("%s: %.0f tokens, %zu words, windows of %d tokens", name, r.tokens, words, m.T);
            if (stride > 0 && stride < m.T) printf(" every %d (each scored token sees at least %d before it)\n", stride, m.T - stride);
            else printf(", not overlapping\n");
            if (dynamic) printf("static (the trained weights, one window at a time):\n");
            print_ppl("", &r, words);
            double unk_rate = (double)unk / (double)(n - first);
            printf("unknown tokens: %zu of %zu (%.2f%%)\n", unk, n - first, 100.0 * unk_rate);
            /* <unk> is one cheap guess for many words: above a few percent the perplexity flatters */
            if (unk_rate > EVAL_UNK_WARN)
                fprintf(stderr, "warning: %.1f%% of the tokens are <unk> (words this model's tokenizer does not "
                        "know): the perplexity is not comparable with that of text it covers\n", 100.0 * unk_rate);
            printf("eval time %.1f s (%.0f tok/s)\n", time_now() - t0, r.tokens / (time_now() - t0));
            print_moe_stats(&r, stdout);
            m.rng = rng0;
            if (dynamic) st = eval_dynamic(&m, dir, &state, dyn, ids, n, words);
        }
    }
    moelm_free(ids);
    if (c.text[0]) corpus_free(&c);
    else moelm_free(text);
    tokenizer_free(tok);
    model_free(&m);
    return st;
}

/* moelm generate with an encoder-decoder: the prompt (the tokenizer's line: EOS last, as T5Tokenizer
 * ends it) through the encoder once, then the decoder from decoder_start_token_id, greedy, sampling
 * or beam search, until EOS or n tokens; the decoded target on stdout. */
static moelm_status generate_encdec_run(const GenerateOptions *o) {
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    int has_state, *ids = NULL, *out = NULL;
    size_t n = 0;
    if (o->beams > ENCDEC_MAX_BEAMS || (o->beams > 1 && o->n > ENCDEC_MAX_NEW))
        return moelm_fail(MOELM_ERR_ARG, "beam search takes at most %d beams and -n %d", ENCDEC_MAX_BEAMS, ENCDEC_MAX_NEW);
    /* a first pass for the tokenizer only would load the weights twice: the prompt's length decides
     * the encoder's, so the model is opened at its largest input (n_positions), used in part */
    ModelType type;
    int seq_len;
    moelm_status st = peek_model(o->ckpt, &type, &seq_len);
    ModelConfig pc;
    char cp[4096], d0[4096];
    if (!st) st = ckpt_resolve(o->ckpt, d0, sizeof d0);
    snprintf(cp, sizeof cp, "%s/config.json", d0);
    if (!st) st = config_load(&pc, cp);
    if (st) return st;
    st = open_model(o->ckpt, 1, pc.n_positions, 1, &m, &tok, &state, &has_state, dir, sizeof dir);
    if (!st) st = use_ema(o->ema, dir, &m, &tok);
    if (st) return st;
    st = need_tokenizer(tok, dir);
    if (!st) st = tokenizer_encode(tok, o->prompt, strlen(o->prompt), &ids, &n);
    int eos = tok ? tokenizer_eos_id(tok) : -1;
    if (!st && n == 0) {   /* an empty prompt: the encoder reads EOS alone */
        ids[0] = eos >= 0 ? eos : 0;
        n = 1;
    }
    if (!st && (int)n > pc.n_positions)
        st = moelm_fail(MOELM_ERR_ARG, "prompt of %zu tokens is longer than n_positions %d", n, pc.n_positions);
    int beams = o->beams > 1 ? o->beams : 1;
    EncDecCache kv;
    memset(&kv, 0, sizeof kv);
    if (!st) st = encdec_cache_create(&kv, &m, beams, o->n + 1, (int)n);
    out = st ? NULL : moelm_malloc(sizeof(int) * (size_t)(o->n + 1));
    if (!st && !out) st = MOELM_ERR_NOMEM;
    if (!st) {
        int start = m.cfg.sw.decoder_start_token_id >= 0 ? m.cfg.sw.decoder_start_token_id : m.cfg.sw.pad_token_id;
        EncDecGenOptions g = {o->n, beams, o->length_penalty, o->temp, o->top_k, o->top_p, o->seed, start,
                              eos >= 0 ? eos : m.cfg.sw.eos_token_id};
        rng_seed(&m.rng, o->seed ^ 0x5bd1e995u);
        double t0 = time_now();
        encdec_cache_encode(&m, &kv, ids, NULL, (int)n);
        int made = encdec_generate(&m, &kv, &g, out);
        double dt = time_now() - t0;
        char *text = NULL;
        st = tokenizer_decode(tok, out, (size_t)made, &text);
        if (!st) {
            printf("%s\n", text);
            fflush(stdout);
            moelm_free(text);
            fprintf(stderr, "generated %d tokens in %.2f s (%.1f tok/s, %s)\n", made, dt, dt > 0 ? made / dt : 0.0,
                    beams > 1 ? "beam search" : o->temp > 0 ? "sampling" : "greedy");
        }
    }
    encdec_cache_free(&kv);
    moelm_free(out);
    moelm_free(ids);
    tokenizer_free(tok);
    model_free(&m);
    return st;
}

/* Generation state: the model, its cache and the tokens the cache holds (hist[0..kv.pos)). */
typedef struct {
    Model *m;
    KVCache *kv;
    Tokenizer *tok;
    int *hist;            /* [n_positions] */
    int slid;             /* times the context was slid */
    int at_line_start;    /* the printed text ends a line (word models put no space before a word) */
} Gen;

/* Feeds one token. A full context slides: the cache restarts from the newest half of its tokens, so
 * generation can run past n_positions (each token then sees between P/2 and P-1 tokens before it). */
static void gen_feed(Gen *g, int token) {
    int P = g->m->cfg.n_positions;
    if (g->kv->pos == P) {
        int keep = P / 2;
        memmove(g->hist, g->hist + P - keep, sizeof(int) * (size_t)keep);
        kv_reset(g->kv);
        for (int i = 0; i < keep; i++) model_step_kv(g->m, g->kv, g->hist[i]);
        g->slid++;
    }
    g->hist[g->kv->pos] = token;
    model_step_kv(g->m, g->kv, token);
}

/* Encodes a prompt (the start of a line, without the line end's <eos>) and feeds it; warns on stderr
 * about words the vocabulary lacks (they read as <unk>). */
static moelm_status gen_prompt(Gen *g, const char *prompt) {
    int *ids = NULL;
    size_t n = 0, unk = 0;
    if (!prompt[0]) return MOELM_OK;
    moelm_status st = tokenizer_encode(g->tok, prompt, strlen(prompt), &ids, &n);
    if (st) return st;
    if (n > 0 && ids[n - 1] == tokenizer_eos_id(g->tok)) n--;
    int unk_id = tokenizer_unk_id(g->tok);
    for (size_t i = 0; i < n; i++) unk += unk_id >= 0 && ids[i] == unk_id;
    if (unk && !strstr(prompt, "<unk>"))
        fprintf(stderr, "warning: %zu prompt token(s) are not in the model's vocabulary and read as <unk>\n", unk);
    for (size_t i = 0; i < n; i++) gen_feed(g, ids[i]);
    moelm_free(ids);
    return MOELM_OK;
}

/* Samples and prints up to n tokens; stop_at_eos ends at the model's <eos> (a line end). Returns the
 * number made. */
static int gen_sample(Gen *g, const GenerateOptions *o, int n, int stop_at_eos, Rng *rng, float *scratch) {
    int V = g->m->cfg.vocab_size, eos = tokenizer_eos_id(g->tok), made = 0;
    for (int i = 0; i < n; i++) {
        int next = sample_token(g->kv->logits, V, o->temp, o->top_k, o->top_p, rng, scratch);
        char *piece = NULL;
        if (tokenizer_decode_piece(g->tok, next, &piece) == MOELM_OK) {
            int word = tokenizer_kind(g->tok) == TOK_WORD;
            if (word && piece[0] != '\n' && !g->at_line_start) fputc(' ', stdout);
            fputs(piece, stdout);
            if (piece[0]) g->at_line_start = piece[strlen(piece) - 1] == '\n';
            moelm_free(piece);
        }
        made++;
        gen_feed(g, next);
        if (stop_at_eos && next == eos) break;
    }
    fflush(stdout);
    return made;
}

int generate_auto_threads(double bytes_per_token, double load, int cpus) {
    if (bytes_per_token < GEN_SMALL_BYTES) return 1;
    if (isfinite(load) && load >= cpus) return 1;
    return cpus < 2 ? 1 : 2;
}

moelm_status generate_run(const GenerateOptions *o) {
    /* -t not given: the encoder-decoder's size is not known yet: 2 threads unless the machine is busy */
    backend_set_threads(o->threads > 0 ? o->threads : generate_auto_threads(INFINITY, backend_load(), backend_cpus()));
    ModelType type;
    int seq_len;
    moelm_status pst = peek_model(o->ckpt, &type, &seq_len);
    if (pst) return pst;
    if (type == MODEL_SWITCH) {
        if (o->bf16) return moelm_fail(MOELM_ERR_ARG, "--bf16 is not yet supported for switch_transformers");
        return generate_encdec_run(o);
    }
    if (o->beams > 1) return moelm_fail(MOELM_ERR_ARG, "--beams is for encoder-decoder models (switch_transformers)");
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    /* a GGUF file's Q8_0 matrices stay int8 (q8), unless --bf16 asks for bf16 copies of float ones */
    Q8Arena q8 = {0};
    int gguf = gguf_is_file(o->ckpt);
    if (gguf) snprintf(dir, sizeof dir, "%s", o->ckpt);
    moelm_status st = gguf ? llama_load_gguf(&m, &tok, o->bf16 ? NULL : &q8, o->ckpt, 1, 1)
                           : open_ckpt(o->ckpt, 1, 1, &m, &tok, &state, dir, sizeof dir);
    if (!st) st = use_ema(o->ema, dir, &m, &tok);
    if (st) {
        q8_arena_free(&q8);
        tokenizer_free(tok);
        return st;
    }
    if (o->threads <= 0) {
        size_t total, active, per_expert;
        model_param_counts(&m, &total, &active, &per_expert);
        backend_set_threads(generate_auto_threads((double)active * (o->bf16 ? 2 : 4), backend_load(), backend_cpus()));
    }
    KVCache kv;
    st = kv_create(&kv, &m);
    if (!st) st = kv_load_weights(&kv, &m, o->bf16);
    if (!st && q8.n_span) st = kv_use_q8(&kv, &m, &q8);
    int V = m.cfg.vocab_size;
    float *scratch = st ? NULL : moelm_malloc(sizeof(float) * 2 * (size_t)V);
    int *hist = st ? NULL : moelm_malloc(sizeof(int) * (size_t)m.cfg.n_positions);
    if (!st && (!scratch || !hist)) st = MOELM_ERR_NOMEM;
    if (!st) {
        Gen g = {.m = &m, .kv = &kv, .tok = tok, .hist = hist, .at_line_start = 1};
        Rng rng;
        rng_seed(&rng, o->seed);
        rng_seed(&m.rng, o->seed ^ 0x5bd1e995u);
        /* a generation starts as a new line: <eos> first when the tokenizer has one (a GGUF file's BOS,
         * as llama.cpp starts: moelm's exports make it the end-of-text id) */
        int eos = tokenizer_eos_id(tok), start = gguf && m.cfg.bos_token_id >= 0 ? m.cfg.bos_token_id : eos;
        if (start >= 0) gen_feed(&g, start);
        else if (!o->prompt[0]) gen_feed(&g, 0);   /* no line start to give: token 0 */
        double t0 = time_now();
        int made = 0;
        if (!o->interactive) {
            st = gen_prompt(&g, o->prompt);
            fputs(o->prompt, stdout);
            g.at_line_start = o->prompt[0] == '\0';
            if (!st) made = gen_sample(&g, o, o->n, o->stop_eos, &rng, scratch);
            if (!g.at_line_start) fputc('\n', stdout);
        } else {
            /* llama.cpp's interactive mode: each stdin line continues the same context (the cache is
             * kept); the model completes it up to its line end or -n tokens; end of input stops */
            char line[4096];
            if (o->prompt[0]) st = gen_prompt(&g, o->prompt);
            fprintf(stderr, "interactive: type the start of a line, Enter to let the model finish it; "
                            "an empty line lets it write one; Ctrl-D ends\n");
            while (!st && (fputs("> ", stderr), fgets(line, sizeof line, stdin))) {
                line[strcspn(line, "\r\n")] = '\0';
                st = gen_prompt(&g, line);
                fputs(line, stdout);
                g.at_line_start = line[0] == '\0';
                if (!st) made += gen_sample(&g, o, o->n, 1, &rng, scratch);
                if (!g.at_line_start) fputc('\n', stdout);
                fflush(stdout);
                /* the next line starts a new one in the model's context too */
                if (eos >= 0 && kv.pos > 0 && hist[kv.pos - 1] != eos) gen_feed(&g, eos);
            }
        }
        fflush(stdout);
        double dt = time_now() - t0;
        if (g.slid)
            fprintf(stderr, "note: the context of %d positions was full %d time(s): it slid to its newest half\n",
                    m.cfg.n_positions, g.slid);
        fprintf(stderr, "generated %d tokens in %.2f s (%.1f tok/s, %d thread%s%s)", made, dt, dt > 0 ? made / dt : 0.0,
                backend_threads(), backend_threads() > 1 ? "s" : "", o->threads > 0 ? "" : ", chosen: -t N to set");
        if (o->interactive) fprintf(stderr, "; the context holds %d of %d positions", kv.pos, m.cfg.n_positions);
        fprintf(stderr, "\n");
    }
    moelm_free(hist);
    moelm_free(scratch);
    kv_free(&kv);
    q8_arena_free(&q8);
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
    if (state.threads > 0)
        printf("step %ld, %.0f tokens seen, %.1f s of training, data %s, %d threads\n", state.step, state.tokens_seen,
               state.elapsed_s, state.data, state.threads);
    else   /* a Hugging Face directory or a GGUF file: no state.json */
        printf("not trained by moelm (no training state)\n");
    printf("tokenizer: %s, vocab %d\n",
           tokenizer_kind(tok) == TOK_WORD ? "word" : tokenizer_kind(tok) == TOK_CHAR ? "char"
           : tokenizer_kind(tok) == TOK_UNIGRAM ? "unigram" : "bpe", tokenizer_vocab_size(tok));
    print_model_summary(&m, stdout);
    if (state.val_ppl > 0)
        printf("validation (step %ld): ppl %.2f, word ppl %.2f\n", state.val_step, state.val_ppl, state.val_word_ppl);
    if (state.train_json[0]) printf("training settings: %s\n", state.train_json);
    tokenizer_free(tok);
    model_free(&m);
    return MOELM_OK;
}

/* ---- export ------------------------------------------------------------------------------------- */

/* The special ids a Hugging Face config of the model carries, from its tokenizer where the config has
 * none: <s> as bos when there is such a piece, the tokenizer's end of text (moelm's line separator) as eos. */
static void special_ids(ModelConfig *c, const Tokenizer *tok) {
    if (c->bos_token_id < 0) c->bos_token_id = tokenizer_piece_id(tok, "<s>");
    if (c->eos_token_id < 0) c->eos_token_id = tokenizer_eos_id(tok);
    if (c->bos_token_id >= c->vocab_size) c->bos_token_id = -1;
    if (c->eos_token_id >= c->vocab_size) c->eos_token_id = -1;
}

static moelm_status write_generation_config(const char *dir, const ModelConfig *c) {
    StrBuf sb = {0};
    sb_printf(&sb, "{\n  \"_from_model_config\": true,\n");
    if (c->bos_token_id >= 0) sb_printf(&sb, "  \"bos_token_id\": %d,\n", c->bos_token_id);
    if (c->eos_token_id >= 0) sb_printf(&sb, "  \"eos_token_id\": %d,\n", c->eos_token_id);
    sb_printf(&sb, "  \"transformers_version\": \"4.46.0\"\n}\n");
    if (sb.failed) { sb_free(&sb); return MOELM_ERR_NOMEM; }
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    moelm_status st = file_write_atomic(path, sb.buf, sb.len);
    sb_free(&sb);
    return st;
}

moelm_status export_run(const ExportOptions *o) {
    Model m;
    Tokenizer *tok = NULL;
    TrainState state;
    char dir[4096];
    int has_state;
    moelm_status st = open_model(o->ckpt, 1, 1, 0, &m, &tok, &state, &has_state, dir, sizeof dir);
    if (!st) st = use_ema(o->ema, dir, &m, &tok);
    if (st) return st;
    if (!tok) {
        st = moelm_fail(MOELM_ERR_IO, "%s: no tokenizer.model (a SentencePiece model) beside the weights", dir);
    } else if (!config_is_llama(&m.cfg)) {
        st = moelm_fail(MOELM_ERR_ARG, "%s: export writes the llama family only (model_type mixtral or llama; this is %s)",
                        dir, m.cfg.model_type == MODEL_SEED ? "seed" : m.cfg.model_type == MODEL_SWITCH ? "switch_transformers" : "lm");
    } else if (o->gguf) {
        static const GgufTensorType types[4] = {GGUF_TENSOR_F32, GGUF_TENSOR_F16, GGUF_TENSOR_BF16, GGUF_TENSOR_Q8_0};
        st = llama_write_gguf(&m, tok, o->out, types[o->dtype]);
    } else if (o->dtype > 2) {
        st = moelm_fail(MOELM_ERR_ARG, "export --format hf: --dtype is f32, f16 or bf16");
    } else {
        special_ids(&m.cfg, tok);
        st = dir_make(o->out);
        if (!st) st = llama_write_hf(&m, o->out, o->dtype, o->max_shard_bytes);
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.model", o->out);
        if (!st) st = tokenizer_save(tok, path);
        if (!st) st = write_generation_config(o->out, &m.cfg);
    }
    tokenizer_free(tok);
    model_free(&m);
    return st;
}
