/* cmd_tokenizer.c: `moelm tokenizer train|encode|decode`, with sentencepiece's flag names.
 *
 *   moelm tokenizer train --input a.txt,b.txt --model_prefix P --vocab_size 8000 --model_type unigram
 *   moelm tokenizer encode --model P.model [--output_format id|piece] [FILE]     (stdin by default)
 *   moelm tokenizer decode --model P.model [--input_format id|piece] [FILE]
 *
 * Flags take "--flag value" or "--flag=value"; dashes and underscores are interchangeable.
 * Boolean flags alone mean true ("--byte_fallback"), or take true/false/1/0.
 * Errors print "moelm: <message>" on one line; usage errors return 2, other failures 1.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokenizer/tok_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *k_usage =
    "usage: moelm tokenizer <train|encode|decode> [flags]\n"
    "\n"
    "train: learns a tokenizer, writes PREFIX.model and PREFIX.vocab (piece<TAB>score per line)\n"
    "  --input FILE[,FILE...]            text files, one sentence per line (required)\n"
    "  --model_prefix STR                output prefix (required)\n"
    "  --vocab_size INT                  vocabulary size, special pieces included (default 8000)\n"
    "  --model_type unigram|bpe|word|char (default unigram)\n"
    "  --character_coverage FLOAT        share of characters kept; the rest are <unk> (default 0.9995)\n"
    "  --normalization_rule_name identity|nmt_nfkc  (default identity; nmt_nfkc needs\n"
    "                                    --normalization_charsmap_from)\n"
    "  --normalization_charsmap_from MODEL  copy the precompiled charsmap of an existing .model\n"
    "  --byte_fallback[=BOOL]            unknown characters become <0xNN> byte pieces (default false)\n"
    "  --user_defined_symbols A,B,...    pieces always kept whole (default none)\n"
    "  --control_symbols A,B,...         control pieces, never produced by encoding (default none)\n"
    "  --max_sentence_length INT         longer lines (bytes) are skipped (default 4192)\n"
    "  --input_sentence_size INT         use only the first N lines, 0 = all (default 0)\n"
    "  --max_sentencepiece_length INT    longest piece in characters (default 16)\n"
    "  --split_digits[=BOOL]             digits are single pieces (default false)\n"
    "  --split_by_whitespace[=BOOL]      (default true)\n"
    "  --split_by_unicode_script[=BOOL]  (default true)\n"
    "  --split_by_number[=BOOL]          (default true)\n"
    "  --treat_whitespace_as_suffix[=BOOL] (default false)\n"
    "  --add_dummy_prefix[=BOOL]         (default true)\n"
    "  --remove_extra_whitespaces[=BOOL] (default true)\n"
    "  --hard_vocab_limit[=BOOL]         fail when the corpus cannot fill vocab_size (default true)\n"
    "  --seed_sentencepiece_size INT     unigram seed pieces (default 1000000)\n"
    "  --shrinking_factor FLOAT          unigram pruning factor (default 0.75)\n"
    "  --num_sub_iterations INT          unigram EM sub-iterations (default 2)\n"
    "  --unk_id INT --bos_id INT --eos_id INT --pad_id INT   special ids, -1 = none (default 0 1 2 -1)\n"
    "  --num_threads INT                 accepted for compatibility; training is single-threaded\n"
    "\n"
    "encode: one output line per input line, like spm_encode\n"
    "  --model FILE                      .model file (SentencePiece or moelm word/char) (required)\n"
    "  --output_format id|piece          (default piece)\n"
    "  [FILE]                            input (default stdin)\n"
    "\n"
    "decode: one output line per input line, like spm_decode\n"
    "  --model FILE                      (required)\n"
    "  --input_format id|piece           (default piece)\n"
    "  [FILE]                            input (default stdin)\n";

static int fail(int code) {
    fprintf(stderr, "moelm: %s\n", moelm_last_error());
    return code;
}

/* flag name equality with '-' and '_' interchangeable; name is given with underscores */
static int flag_eq(const char *arg, size_t n, const char *name) {
    if (strlen(name) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        char a = arg[i] == '-' ? '_' : arg[i];
        if (a != name[i]) return 0;
    }
    return 1;
}

typedef struct { const char *name; int is_bool; } FlagDef;

/* Parses argv[*i]; returns the index of the matched flag in defs (value in *val), -1 if argv[*i]
 * is not a flag (positional), -2 on error (message set). */
static int next_flag(int argc, char **argv, int *i, const FlagDef *defs, int ndefs, const char **val) {
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) != 0 || a[2] == 0) return -1;
    const char *body = a + 2, *eq = strchr(body, '=');
    size_t n = eq ? (size_t)(eq - body) : strlen(body);
    for (int k = 0; k < ndefs; k++) {
        if (!flag_eq(body, n, defs[k].name)) continue;
        if (eq) { *val = eq + 1; (*i)++; return k; }
        if (defs[k].is_bool) {
            const char *nx = *i + 1 < argc ? argv[*i + 1] : NULL;
            if (nx && (!strcmp(nx, "true") || !strcmp(nx, "false") || !strcmp(nx, "1") || !strcmp(nx, "0"))) { *val = nx; *i += 2; }
            else { *val = "true"; *i += 1; }
            return k;
        }
        if (*i + 1 >= argc) { moelm_fail(MOELM_ERR_ARG, "--%s needs a value", defs[k].name); return -2; }
        *val = argv[*i + 1];
        *i += 2;
        return k;
    }
    char flag[64];
    snprintf(flag, sizeof flag, "%.*s", (int)(n < 63 ? n : 63), body);
    for (char *u = flag; *u; u++) if (*u == '-') *u = '_';
    const char *near = NULL;
    int dist = 1 << 30;
    for (int k = 0; k < ndefs; k++) str_nearer(flag, defs[k].name, &near, &dist);
    if (near && str_near_miss(flag, dist))
        moelm_fail(MOELM_ERR_ARG, "unknown flag '%.*s' (did you mean --%s? see moelm tokenizer --help)", (int)(n + 2), a, near);
    else
        moelm_fail(MOELM_ERR_ARG, "unknown flag '%.*s' (see moelm tokenizer --help)", (int)(n + 2), a);
    return -2;
}

static int parse_bool(const char *flag, const char *v, int *out) {
    if (!strcmp(v, "true") || !strcmp(v, "1")) { *out = 1; return 0; }
    if (!strcmp(v, "false") || !strcmp(v, "0")) { *out = 0; return 0; }
    moelm_fail(MOELM_ERR_ARG, "--%s: expected true or false, got '%s'", flag, v);
    return 1;
}
static int parse_int(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        moelm_fail(MOELM_ERR_ARG, "--%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, v);
        return 1;
    }
    *out = x;
    return 0;
}
static int parse_double(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        moelm_fail(MOELM_ERR_ARG, "--%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, v);
        return 1;
    }
    *out = x;
    return 0;
}

/* PREFIX.vocab: piece<TAB>score, as spm_train writes it */
static moelm_status write_vocab(const Tokenizer *t, const char *path) {
    size_t cap = 1 << 16, n = 0;
    char *b = moelm_malloc(cap);
    if (!b) return MOELM_ERR_NOMEM;
    for (int i = 0; i < t->V; i++) {
        size_t need = t->plen[i] + 64;
        if (n + need > cap) {
            while (n + need > cap) cap *= 2;
            char *nb = moelm_realloc(b, cap);
            if (!nb) { moelm_free(b); return MOELM_ERR_NOMEM; }
            b = nb;
        }
        memcpy(b + n, t->piece[i], t->plen[i]);
        n += t->plen[i];
        n += (size_t)snprintf(b + n, 64, "\t%g\n", (double)t->score[i]);
    }
    moelm_status st = tok_write_atomic(path, b, n);
    moelm_free(b);
    return st;
}

static int cmd_train_tok(int argc, char **argv) {
    enum { F_INPUT, F_PREFIX, F_VOCAB, F_TYPE, F_COVER, F_NORM, F_CHARSMAP, F_BYTE, F_USER, F_CTRL, F_MAXLEN,
           F_INSIZE, F_MAXPIECE, F_SPLITDIG, F_SPLITWS, F_SPLITSCRIPT, F_SPLITNUM, F_SUFFIX, F_DUMMY, F_REMOVEWS,
           F_HARD, F_SEED, F_SHRINK, F_SUBITER, F_UNK, F_BOS, F_EOS, F_PAD, F_THREADS, F_HELP, F_N };
    static const FlagDef defs[F_N] = {
        {"input", 0}, {"model_prefix", 0}, {"vocab_size", 0}, {"model_type", 0}, {"character_coverage", 0},
        {"normalization_rule_name", 0}, {"normalization_charsmap_from", 0}, {"byte_fallback", 1},
        {"user_defined_symbols", 0}, {"control_symbols", 0}, {"max_sentence_length", 0}, {"input_sentence_size", 0},
        {"max_sentencepiece_length", 0}, {"split_digits", 1}, {"split_by_whitespace", 1}, {"split_by_unicode_script", 1},
        {"split_by_number", 1}, {"treat_whitespace_as_suffix", 1}, {"add_dummy_prefix", 1}, {"remove_extra_whitespaces", 1},
        {"hard_vocab_limit", 1}, {"seed_sentencepiece_size", 0}, {"shrinking_factor", 0}, {"num_sub_iterations", 0},
        {"unk_id", 0}, {"bos_id", 0}, {"eos_id", 0}, {"pad_id", 0}, {"num_threads", 0}, {"help", 1},
    };
    SpmTrainOptions o;
    spm_train_options_default(&o);
    const char *input = NULL, *prefix = NULL, *charsmap_from = NULL, *type = "unigram";
    int bad = 0;
    for (int i = 1; i < argc && !bad;) {
        const char *v = NULL;
        int k = next_flag(argc, argv, &i, defs, F_N, &v);
        if (k == -1) { moelm_fail(MOELM_ERR_ARG, "tokenizer train: unexpected argument '%s'", argv[i]); return fail(2); }
        if (k == -2) return fail(2);
        long x; double d;
        const char *nm = defs[k].name;
        switch (k) {
        case F_INPUT: input = v; break;
        case F_PREFIX: prefix = v; break;
        case F_VOCAB: bad = parse_int(nm, v, 1, 1 << 24, &x); o.vocab_size = (int)x; break;
        case F_TYPE: type = v; break;
        case F_COVER: bad = parse_double(nm, v, 1e-9, 1.0, &d); o.character_coverage = d; break;
        case F_NORM:
            if (strcmp(v, "identity") && strcmp(v, "nmt_nfkc") && strcmp(v, "nfkc") && strcmp(v, "nmt_nfkc_cf") && strcmp(v, "nfkc_cf")) {
                moelm_fail(MOELM_ERR_ARG, "--%s: unknown rule '%s' (identity, nmt_nfkc, nfkc, nmt_nfkc_cf, nfkc_cf)", nm, v); bad = 1;
            } else snprintf(o.normalization_rule_name, sizeof o.normalization_rule_name, "%s", v);
            break;
        case F_CHARSMAP: charsmap_from = v; break;
        case F_BYTE: bad = parse_bool(nm, v, &o.byte_fallback); break;
        case F_USER: o.user_defined_symbols = (char *)v; break;
        case F_CTRL: o.control_symbols = (char *)v; break;
        case F_MAXLEN: bad = parse_int(nm, v, 1, 1L << 30, &x); o.max_sentence_length = (int)x; break;
        case F_INSIZE: bad = parse_int(nm, v, 0, 1L << 40, &x); o.input_sentence_size = x; break;
        case F_MAXPIECE: bad = parse_int(nm, v, 1, 16, &x); o.max_sentencepiece_length = (int)x; break;
        case F_SPLITDIG: bad = parse_bool(nm, v, &o.split_digits); break;
        case F_SPLITWS: bad = parse_bool(nm, v, &o.split_by_whitespace); break;
        case F_SPLITSCRIPT: bad = parse_bool(nm, v, &o.split_by_unicode_script); break;
        case F_SPLITNUM: bad = parse_bool(nm, v, &o.split_by_number); break;
        case F_SUFFIX: bad = parse_bool(nm, v, &o.treat_whitespace_as_suffix); break;
        case F_DUMMY: bad = parse_bool(nm, v, &o.add_dummy_prefix); break;
        case F_REMOVEWS: bad = parse_bool(nm, v, &o.remove_extra_whitespaces); break;
        case F_HARD: bad = parse_bool(nm, v, &o.hard_vocab_limit); break;
        case F_SEED: bad = parse_int(nm, v, 1, 1L << 30, &x); o.seed_sentencepiece_size = (int)x; break;
        case F_SHRINK: bad = parse_double(nm, v, 0.01, 0.99, &d); o.shrinking_factor = d; break;
        case F_SUBITER: bad = parse_int(nm, v, 1, 100, &x); o.num_sub_iterations = (int)x; break;
        case F_UNK: bad = parse_int(nm, v, -1, 1 << 24, &x); o.unk_id = (int)x; break;
        case F_BOS: bad = parse_int(nm, v, -1, 1 << 24, &x); o.bos_id = (int)x; break;
        case F_EOS: bad = parse_int(nm, v, -1, 1 << 24, &x); o.eos_id = (int)x; break;
        case F_PAD: bad = parse_int(nm, v, -1, 1 << 24, &x); o.pad_id = (int)x; break;
        case F_THREADS: bad = parse_int(nm, v, 1, 1024, &x); o.num_threads = (int)x; break;
        case F_HELP: fputs(k_usage, stdout); return 0;
        }
    }
    if (bad) return fail(2);
    if (!input) { moelm_fail(MOELM_ERR_ARG, "tokenizer train: --input is required"); return fail(2); }
    if (!prefix) { moelm_fail(MOELM_ERR_ARG, "tokenizer train: --model_prefix is required"); return fail(2); }
    if (!strcmp(type, "unigram")) o.model_type = TOK_UNIGRAM;
    else if (!strcmp(type, "bpe")) o.model_type = TOK_BPE;
    else if (!strcmp(type, "word")) o.model_type = TOK_WORD;
    else if (!strcmp(type, "char")) o.model_type = TOK_CHAR;
    else { moelm_fail(MOELM_ERR_ARG, "--model_type: expected unigram, bpe, word or char, got '%s'", type); return fail(2); }

    /* read the inputs */
    const char *texts[256];
    size_t lens[256];
    uint8_t *bufs[256];
    int nt = 0, rc = 1;
    Tokenizer *t = NULL, *src = NULL;
    char *list = moelm_strdup(input), *path = NULL;
    if (!list) return fail(1);
    for (char *save = NULL, *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
        if (nt == 256) { moelm_fail(MOELM_ERR_ARG, "--input: more than 256 files"); goto out; }
        if (tok_read_file(f, &bufs[nt], &lens[nt])) goto out;
        texts[nt] = (const char *)bufs[nt];
        nt++;
    }
    if (nt == 0) { moelm_fail(MOELM_ERR_ARG, "--input: no files"); rc = 2; goto out; }
    if (charsmap_from) {
        if (tokenizer_load(&src, charsmap_from)) goto out;
        if (!src->norm.charsmap) { moelm_fail(MOELM_ERR_ARG, "%s: has no precompiled charsmap", charsmap_from); goto out; }
        o.charsmap = src->norm.charsmap;
        o.charsmap_len = src->norm.charsmap_len;
        if (!strcmp(o.normalization_rule_name, "identity"))
            snprintf(o.normalization_rule_name, sizeof o.normalization_rule_name, "%s", src->norm.name);
    }
    double t0 = time_now();
    if (o.model_type == TOK_WORD || o.model_type == TOK_CHAR) {
        size_t total = 0;
        for (int k = 0; k < nt; k++) total += lens[k] + 1;
        char *all = moelm_malloc(total + 1);
        if (!all) goto out;
        size_t n = 0;
        for (int k = 0; k < nt; k++) {
            memcpy(all + n, texts[k], lens[k]); n += lens[k];
            if (lens[k] && texts[k][lens[k] - 1] != '\n') all[n++] = '\n';
        }
        moelm_status st = o.model_type == TOK_WORD ? tokenizer_build_word(&t, all, n, o.vocab_size) : tokenizer_build_char(&t, all, n);
        moelm_free(all);
        if (st) goto out;
    } else if (spm_train(&t, texts, lens, nt, &o)) goto out;
    size_t pl = strlen(prefix);
    path = moelm_malloc(pl + 8);
    if (!path) goto out;
    snprintf(path, pl + 8, "%s.model", prefix);
    if (tokenizer_save(t, path)) goto out;
    snprintf(path, pl + 8, "%s.vocab", prefix);
    if (write_vocab(t, path)) goto out;
    fprintf(stderr, "moelm: trained %s tokenizer, %d pieces, %.2f s: %s.model %s.vocab\n", type, t->V, time_now() - t0, prefix, prefix);
    rc = 0;
out:
    for (int k = 0; k < nt; k++) moelm_free(bufs[k]);
    moelm_free(list);
    moelm_free(path);
    tokenizer_free(t);
    tokenizer_free(src);
    return rc ? fail(rc) : 0;
}

static int cmd_encode_decode(int argc, char **argv, int encode) {
    enum { F_MODEL, F_OUTFMT, F_INFMT, F_HELP, F_N };
    static const FlagDef defs[F_N] = { {"model", 0}, {"output_format", 0}, {"input_format", 0}, {"help", 1} };
    const char *model = NULL, *fmt = "piece", *file = NULL;
    for (int i = 1; i < argc;) {
        const char *v = NULL;
        int k = next_flag(argc, argv, &i, defs, F_N, &v);
        if (k == -2) return fail(2);
        if (k == -1) {
            if (file) { moelm_fail(MOELM_ERR_ARG, "tokenizer %s: more than one input file", argv[0]); return fail(2); }
            file = argv[i++];
            continue;
        }
        if (k == F_MODEL) model = v;
        else if (k == F_HELP) { fputs(k_usage, stdout); return 0; }
        else if ((k == F_OUTFMT) != encode) {
            moelm_fail(MOELM_ERR_ARG, "tokenizer %s: --%s does not apply here", argv[0], defs[k].name);
            return fail(2);
        } else fmt = v;
    }
    if (!model) { moelm_fail(MOELM_ERR_ARG, "tokenizer %s: --model is required", argv[0]); return fail(2); }
    int ids_fmt = !strcmp(fmt, "id");
    if (!ids_fmt && strcmp(fmt, "piece")) { moelm_fail(MOELM_ERR_ARG, "tokenizer %s: format must be id or piece, got '%s'", argv[0], fmt); return fail(2); }
    Tokenizer *t;
    if (tokenizer_load(&t, model)) return fail(1);
    FILE *in = file ? fopen(file, "rb") : stdin;
    if (!in) { moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", file, strerror(errno)); tokenizer_free(t); return fail(1); }
    int spm = t->kind == TOK_UNIGRAM || t->kind == TOK_BPE;
    char *line = NULL;
    size_t cap = 0;
    ssize_t r;
    int rc = 0;
    int *dec = NULL;
    size_t dcap = 0;
    while ((r = getline(&line, &cap, in)) >= 0) {
        if (r && line[r - 1] == '\n') r--;
        if (encode) {
            int *ids; size_t n;
            moelm_status st = spm ? tokenizer_encode_line(t, line, (size_t)r, &ids, &n) : tokenizer_encode(t, line, (size_t)r, &ids, &n);
            if (st) { rc = 1; break; }
            if (!spm && t->kind == TOK_WORD && n && ids[n - 1] == t->eos_id) n--;   /* the line end is the newline */
            for (size_t k = 0; k < n; k++) {
                if (k) fputc(' ', stdout);
                if (ids_fmt) printf("%d", ids[k]); else fputs(t->piece[ids[k]], stdout);
            }
            fputc('\n', stdout);
            moelm_free(ids);
        } else {
            size_t n = 0;
            line[r] = 0;
            for (char *save = NULL, *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
                if (n == dcap) {
                    dcap = dcap ? dcap * 2 : 256;
                    int *nd = moelm_realloc(dec, dcap * sizeof *nd);
                    if (!nd) { rc = 1; break; }
                    dec = nd;
                }
                long id;
                if (ids_fmt) {
                    if (parse_int("input_format=id", tok, 0, t->V - 1, &id)) { rc = 1; break; }
                } else {
                    id = tokenizer_piece_id(t, tok);
                    if (id < 0) id = t->unk_id;
                }
                dec[n++] = (int)id;
            }
            if (rc) break;
            char *text;
            moelm_status st = spm ? tokenizer_decode_line(t, dec, n, &text) : tokenizer_decode(t, dec, n, &text);
            if (st) { rc = 1; break; }
            fputs(text, stdout);
            if (!(t->kind == TOK_WORD && strlen(text) && text[strlen(text) - 1] == '\n')) fputc('\n', stdout);
            moelm_free(text);
        }
    }
    free(line);
    moelm_free(dec);
    if (file) fclose(in);
    tokenizer_free(t);
    if (fflush(stdout) != 0 && !rc) { moelm_fail(MOELM_ERR_IO, "stdout: write error"); rc = 1; }
    return rc ? fail(rc) : 0;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(k_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return cmd_train_tok(argc - 1, argv + 1);
    if (!strcmp(argv[1], "encode")) return cmd_encode_decode(argc - 1, argv + 1, 1);
    if (!strcmp(argv[1], "decode")) return cmd_encode_decode(argc - 1, argv + 1, 0);
    static const char *const subcommands[] = {"train", "encode", "decode", NULL};
    const char *near = str_nearest(argv[1], subcommands);
    if (near)
        moelm_fail(MOELM_ERR_ARG, "tokenizer: unknown subcommand '%s' (did you mean %s? train, encode, decode)", argv[1], near);
    else
        moelm_fail(MOELM_ERR_ARG, "tokenizer: unknown subcommand '%s' (train, encode, decode)", argv[1]);
    return fail(2);
}
