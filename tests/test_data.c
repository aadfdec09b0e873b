/* test_data.c: src/data/ — the built-in corpus, corpus loading, token files, batching.
 *
 * Run from the repository root; temporary files go under build/tmp/test_data.<pid>/ and are removed.
 * ../shared/data/ptb is read (never written or copied) when it exists.
 */
#define _POSIX_C_SOURCE 200809L
#include "test.h"
#include "common/util.h"
#include "data/builtin.h"
#include "data/corpus.h"
#include "data/dataloader.h"
#include "data/span.h"
#include "data/tokens.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#else
#define SLOW_BUILD 0
#endif

/* ---- helpers ------------------------------------------------------------------------------------ */

/* CPU seconds of this process: a limit on work, which a busy neighbour on the same cores does not move
 * (wall-clock seconds it can double) */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char g_tmp[256];

static void tmp_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_tmp, name); }

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { printf("  cannot create %s: %s\n", path, strerror(errno)); exit(2); }
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}
static void write_str(const char *path, const char *s) { write_bytes(path, s, strlen(s)); }

static void make_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) { printf("  cannot mkdir %s\n", path); exit(2); }
}

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* Splits a line (not NUL-terminated, length n) into at most maxw words of < 32 chars each. */
static int split_words(const char *line, size_t n, char words[][32], int maxw) {
    int k = 0;
    size_t i = 0;
    while (i < n && k < maxw) {
        while (i < n && line[i] == ' ') i++;
        size_t j = i;
        while (j < n && line[j] != ' ') j++;
        if (j > i) {
            size_t len = j - i < 31 ? j - i : 31;
            memcpy(words[k], line + i, len);
            words[k][len] = '\0';
            k++;
        }
        i = j;
    }
    return k;
}

static int is_num(const char *s) {
    if (!*s) return 0;
    for (; *s; s++) if (*s < '0' || *s > '9') return 0;
    return 1;
}

/* A tiny string -> id map for word statistics (open addressing, test-only, plain malloc). */
typedef struct { char **keys; int *ids; size_t cap; int n; } WordMap;
static void wm_init(WordMap *m, size_t cap) {
    m->keys = calloc(cap, sizeof *m->keys); m->ids = calloc(cap, sizeof *m->ids); m->cap = cap; m->n = 0;
}
static void wm_free(WordMap *m) {
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys); free(m->ids);
}
/* id of w, adding it when add is set; -1 if absent. */
static int wm_id(WordMap *m, const char *w, int add) {
    size_t h = (size_t)hash_fnv1a64(w, strlen(w)) % m->cap;
    while (m->keys[h]) {
        if (strcmp(m->keys[h], w) == 0) return m->ids[h];
        h = (h + 1) % m->cap;
    }
    if (!add) return -1;
    if ((size_t)m->n * 2 >= m->cap) { printf("  word map full\n"); exit(2); }
    m->keys[h] = strdup(w);
    m->ids[h] = m->n;
    return m->n++;
}

/* Word-level tokenization of a text: whitespace words and one <eos> per line. Returns the count;
 * ids[] (plain malloc) gets ids from the map, -1 for words not in it when add is 0. */
static size_t word_tokens(const char *text, size_t n, WordMap *m, int add, int **ids_out) {
    size_t cap = 1024, cnt = 0;
    int *ids = malloc(cap * sizeof *ids);
    size_t i = 0;
    char word[256];
    int eos = wm_id(m, "<eos>", add);
    while (i < n) {
        size_t e = i;
        while (e < n && text[e] != '\n') e++;
        size_t p = i;
        while (p < e) {
            while (p < e && text[p] == ' ') p++;
            size_t q = p;
            while (q < e && text[q] != ' ') q++;
            if (q > p) {
                size_t len = q - p < 255 ? q - p : 255;
                memcpy(word, text + p, len);
                word[len] = '\0';
                if (cnt + 2 > cap) { cap *= 2; ids = realloc(ids, cap * sizeof *ids); }
                ids[cnt++] = wm_id(m, word, add);
            }
            p = q;
        }
        if (cnt + 2 > cap) { cap *= 2; ids = realloc(ids, cap * sizeof *ids); }
        ids[cnt++] = eos;
        i = e + 1;
    }
    *ids_out = ids;
    return cnt;
}

/* ---- built-in corpus ------------------------------------------------------------------------------ */

TEST(builtin_deterministic_and_sized) {
    size_t live = moelm_alloc_live_bytes();
    double t0 = cpu_now();
    char *a[3];
    size_t na[3];
    for (int s = 0; s < 3; s++)
        EXPECT(builtin_generate(&a[s], &na[s], s, s ? BUILTIN_EVAL_BYTES : BUILTIN_TRAIN_BYTES, NULL, NULL) == MOELM_OK);
    double dt = cpu_now() - t0;
    /* the brief: generating the default corpus must stay well under a training step's start-up cost
     * (CPU seconds: the suite runs two tests at once, tests/run.sh) */
    EXPECT_MSG(dt < (SLOW_BUILD ? 3.0 : 0.3), "generation took %.3f s of CPU", dt);
    for (int s = 0; s < 3; s++) {
        char *b;
        size_t nb;
        EXPECT(builtin_generate(&b, &nb, s, s ? BUILTIN_EVAL_BYTES : BUILTIN_TRAIN_BYTES, NULL, NULL) == MOELM_OK);
        EXPECT(nb == na[s] && memcmp(a[s], b, nb) == 0);
        EXPECT(strlen(a[s]) == na[s]);
        size_t want = s ? BUILTIN_EVAL_BYTES : BUILTIN_TRAIN_BYTES;
        EXPECT_MSG(na[s] >= want && na[s] < want + 1024, "split %d: %zu bytes, wanted about %zu", s, na[s], want);
        moelm_free(b);
    }
    /* Pinned bytes: every measured result (losses, routing maps) depends on this corpus, so a change to
     * the generator must be deliberate; update these values together with the docs when it is. */
    static const uint64_t pinned[3] = {0xf81e0115c1c5ae53ull, 0x91c797bf9635fd45ull, 0x7bc2d9fee734059dull};
    for (int s = 0; s < 3; s++)
        EXPECT_MSG(hash_fnv1a64(a[s], na[s]) == pinned[s], "split %d changed: %zu bytes, fnv1a64 0x%016llx", s, na[s],
                   (unsigned long long)hash_fnv1a64(a[s], na[s]));
    /* splits come from different seeds: their first lines differ */
    EXPECT(memcmp(a[0], a[1], 200) != 0 && memcmp(a[1], a[2], 200) != 0 && memcmp(a[0], a[2], 200) != 0);
    /* a prefix request gives a prefix of the same stream */
    char *c;
    size_t nc;
    EXPECT(builtin_generate(&c, &nc, 1, 5000, NULL, NULL) == MOELM_OK);
    EXPECT(nc >= 5000 && nc < 6000 && memcmp(c, a[1], nc) == 0);
    moelm_free(c);
    EXPECT(builtin_generate(&c, &nc, 0, 0, NULL, NULL) == MOELM_OK);
    EXPECT(nc == 0 && c && c[0] == '\0');
    moelm_free(c);
    for (int s = 0; s < 3; s++) moelm_free(a[s]);
    EXPECT(builtin_generate(&c, &nc, 3, 100, NULL, NULL) == MOELM_ERR_CONFIG);
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(builtin_format) {
    char *t;
    size_t n;
    int *dom;
    size_t nl;
    EXPECT(builtin_generate(&t, &n, 0, BUILTIN_TRAIN_BYTES, &dom, &nl) == MOELM_OK);
    size_t lines = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch == '\n') {
            lines++;
            if (i == 0 || t[i - 1] == '\n' || t[i - 1] == ' ') bad++;   /* empty line or trailing space */
            continue;
        }
        if (ch < 0x21 && ch != ' ') bad++;
        if (ch > 0x7e || (ch >= 'A' && ch <= 'Z')) bad++;             /* lowercase ASCII only */
        if (ch == ' ' && (i == 0 || t[i - 1] == ' ' || t[i - 1] == '\n')) bad++;   /* leading or double space */
    }
    EXPECT_MSG(bad == 0, "%zu formatting faults", bad);
    EXPECT(n > 0 && t[n - 1] == '\n');
    EXPECT(lines == nl);
    size_t per[BUILTIN_DOMAINS] = {0};
    for (size_t i = 0; i < nl; i++) {
        EXPECT(dom[i] >= 0 && dom[i] < BUILTIN_DOMAINS);
        if (dom[i] >= 0 && dom[i] < BUILTIN_DOMAINS) per[dom[i]]++;
    }
    for (int d = 0; d < BUILTIN_DOMAINS; d++)   /* drawn uniformly: each near 25% of the lines */
        EXPECT_MSG(per[d] > nl / 5 && per[d] < nl * 3 / 10, "domain %s has %zu of %zu lines",
                   builtin_domain_name(d), per[d], nl);
    EXPECT(strcmp(builtin_domain_name(0), "arithmetic") == 0 && strcmp(builtin_domain_name(3), "code") == 0);
    EXPECT(strcmp(builtin_domain_name(4), "?") == 0);
    moelm_free(t);
    moelm_free(dom);
}

/* Clock time in minutes from words at w[*k]: "noon", "midnight", "H am", "H : MM pm". -1 if malformed. */
static int parse_time(char w[][32], int nw, int *k) {
    int i = *k;
    if (i >= nw) return -1;
    if (strcmp(w[i], "noon") == 0) { *k = i + 1; return 12 * 60; }
    if (strcmp(w[i], "midnight") == 0) { *k = i + 1; return 0; }
    if (!is_num(w[i])) return -1;
    int h = atoi(w[i]), mm = 0;
    i++;
    if (i < nw && strcmp(w[i], ":") == 0) {
        if (i + 1 >= nw || !is_num(w[i + 1])) return -1;
        mm = atoi(w[i + 1]);
        i += 2;
    }
    if (i >= nw || h < 1 || h > 12 || mm > 59) return -1;
    int pm = strcmp(w[i], "pm") == 0;
    if (!pm && strcmp(w[i], "am") != 0) return -1;
    *k = i + 1;
    return ((h % 12) + (pm ? 12 : 0)) * 60 + mm;
}

static const char *const T_DAYS[7] = {"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"};
static const char *const T_MONTHS[12] = {"january", "february", "march", "april", "may", "june", "july",
                                         "august", "september", "october", "november", "december"};
static int find_word(const char *const *list, int n, const char *w) {
    for (int i = 0; i < n; i++) if (strcmp(list[i], w) == 0) return i;
    return -1;
}
static int t_mdays(int m, int y) {
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return d[m] + (m == 1 && y % 4 == 0);   /* 2020..2029 only */
}
/* Weekday by counting days from wednesday, january 1 2020 (an independent method from the generator's). */
static int t_weekday(int y, int m, int d) {
    long days = 0;
    for (int yy = 2020; yy < y; yy++) days += 365 + (yy % 4 == 0);
    for (int mm = 0; mm < m; mm++) days += t_mdays(mm, y);
    days += d - 1;
    return (int)((3 + days) % 7);
}

TEST(builtin_content_is_right) {
    char *t;
    size_t n;
    int *dom;
    size_t nl;
    EXPECT(builtin_generate(&t, &n, 0, BUILTIN_TRAIN_BYTES, &dom, &nl) == MOELM_OK);
    char w[96][32];
    size_t arith = 0, arith_ok = 0, facts = 0, facts_bad = 0, asserts = 0, asserts_ok = 0, art_bad = 0, brace_bad = 0;
    const char *p = t;
    for (size_t li = 0; li < nl; li++) {
        const char *e = strchr(p, '\n');
        int nw = split_words(p, (size_t)(e - p), w, 96);
        size_t bad_before = facts_bad;
        if (dom[li] == 0) {
            arith++;
            int ok = 0;
            if (nw == 5 && is_num(w[0]) && is_num(w[2]) && is_num(w[4]) && strcmp(w[3], "equals") == 0) {
                int a = atoi(w[0]), b = atoi(w[2]), c = atoi(w[4]);
                if (strcmp(w[1], "plus") == 0) ok = a + b == c;
                if (strcmp(w[1], "minus") == 0) ok = a - b == c;
                if (strcmp(w[1], "times") == 0) ok = a * b == c;
            } else if (nw == 6 && strcmp(w[1], "divided") == 0 && strcmp(w[2], "by") == 0 && strcmp(w[4], "equals") == 0) {
                int a = atoi(w[0]), b = atoi(w[3]), c = atoi(w[5]);
                ok = b > 0 && a == b * c;
            } else if (nw == 8 && strcmp(w[0], "the") == 0 && strcmp(w[1], "sum") == 0 && strcmp(w[4], "and") == 0) {
                ok = atoi(w[3]) + atoi(w[5]) == atoi(w[7]);
            } else if (nw == 7 && strcmp(w[1], "plus") == 0 && strcmp(w[3], "minus") == 0 && strcmp(w[5], "equals") == 0) {
                ok = atoi(w[0]) + atoi(w[2]) - atoi(w[4]) == atoi(w[6]) && atoi(w[6]) >= 0;
            }
            if (ok) arith_ok++;
            else if (arith - arith_ok < 4) printf("  wrong arithmetic: %.*s\n", (int)(e - p), p);
        } else if (dom[li] == 1) {
            int a, b, k;
            if (nw == 6 && strcmp(w[0], "the") == 0 && strcmp(w[4], "is") == 0 &&
                (a = find_word(T_DAYS, 7, w[3])) >= 0 && (b = find_word(T_DAYS, 7, w[5])) >= 0) {
                facts++;
                facts_bad += b != (strcmp(w[2], "after") == 0 ? (a + 1) % 7 : (a + 6) % 7);
            } else if (nw == 6 && strcmp(w[0], "the") == 0 && strcmp(w[1], "month") == 0 &&
                       (a = find_word(T_MONTHS, 12, w[3])) >= 0 && (b = find_word(T_MONTHS, 12, w[5])) >= 0) {
                facts++;
                facts_bad += b != (strcmp(w[2], "after") == 0 ? (a + 1) % 12 : (a + 11) % 12);
            } else if (nw == 7 && strcmp(w[5], "a") == 0 && (a = find_word(T_MONTHS, 12, w[0])) >= 0) {
                facts++;   /* march 3 , 2025 is a monday */
                facts_bad += find_word(T_DAYS, 7, w[6]) != t_weekday(atoi(w[3]), a, atoi(w[1]));
            } else if (nw == 5 && strcmp(w[2], "has") == 0 && (a = find_word(T_MONTHS, 12, w[0])) >= 0) {
                facts++;   /* february 2024 has 29 days */
                facts_bad += atoi(w[3]) != t_mdays(a, atoi(w[1]));
            } else if (nw >= 6 && is_num(w[0]) && strcmp(w[2], "after") == 0) {
                facts++;   /* 3 hours after 10 am it is 1 pm */
                k = 3;
                int t1 = parse_time(w, nw, &k);
                int okw = t1 >= 0 && k + 2 < nw && strcmp(w[k], "it") == 0 && strcmp(w[k + 1], "is") == 0;
                k += 2;
                int t2 = okw ? parse_time(w, nw, &k) : -1;
                facts_bad += !(okw && t2 >= 0 && k == nw && t2 == (t1 + 60 * atoi(w[0])) % (24 * 60));
            } else if (nw >= 6 && strcmp(w[0], "from") == 0) {
                facts++;   /* from 9 am to 5 pm is 8 hours */
                k = 1;
                int t1 = parse_time(w, nw, &k);
                int okw = t1 >= 0 && k < nw && strcmp(w[k], "to") == 0;
                k++;
                int t2 = okw ? parse_time(w, nw, &k) : -1;
                facts_bad += !(okw && t2 > t1 && k + 3 == nw && strcmp(w[k], "is") == 0 && (t2 - t1) == 60 * atoi(w[k + 1]));
            }
            for (int i = 0; i + 5 < nw; i++) {   /* "... on friday , may 9 , 2025 at ..." */
                if (strcmp(w[i], "on") == 0 && (a = find_word(T_DAYS, 7, w[i + 1])) >= 0 &&
                    (b = find_word(T_MONTHS, 12, w[i + 3])) >= 0 && i + 6 < nw && strcmp(w[i + 5], ",") == 0) {
                    facts++;
                    facts_bad += a != t_weekday(atoi(w[i + 6]), b, atoi(w[i + 4]));
                }
            }
            if (facts_bad > bad_before && facts_bad < 4) printf("  wrong date fact: %.*s\n", (int)(e - p), p);
        } else if (dom[li] == 2) {
            for (int i = 0; i + 1 < nw; i++) {
                char c0 = w[i + 1][0];
                int vowel = c0 == 'a' || c0 == 'e' || c0 == 'i' || c0 == 'o' || c0 == 'u';
                if ((strcmp(w[i], "a") == 0 && vowel) || (strcmp(w[i], "an") == 0 && !vowel)) art_bad++;
                if (strcmp(w[i], "there") == 0 && strcmp(w[i + 1], "is") == 0 && i + 2 < nw &&
                    strcmp(w[i + 2], "a") != 0 && strcmp(w[i + 2], "an") != 0) art_bad++;
            }
        } else {
            int depth_b = 0, depth_p = 0, neg = 0;
            for (int i = 0; i < nw; i++) {
                depth_b += (strcmp(w[i], "{") == 0) - (strcmp(w[i], "}") == 0);
                depth_p += (strcmp(w[i], "(") == 0) - (strcmp(w[i], ")") == 0);
                if (depth_b < 0 || depth_p < 0) neg = 1;
            }
            brace_bad += neg || depth_b || depth_p;
            /* let x = 3 ; let y = x + 4 ; assert y == 7 ; */
            if (nw == 17 && strcmp(w[0], "let") == 0 && strcmp(w[5], "let") == 0 && strcmp(w[12], "assert") == 0) {
                asserts++;
                int va = atoi(w[3]), vb = atoi(w[10]), vr = atoi(w[15]);
                int r = w[9][0] == '+' ? va + vb : w[9][0] == '-' ? va - vb : va * vb;
                asserts_ok += strcmp(w[8], w[1]) == 0 && strcmp(w[13], w[6]) == 0 && r == vr;
            }
        }
        p = e + 1;
    }
    EXPECT(arith > 1000 && arith_ok == arith);
    EXPECT_MSG(facts > 2000 && facts_bad == 0, "%zu of %zu date facts wrong", facts_bad, facts);
    EXPECT_MSG(art_bad == 0, "%zu article faults", art_bad);
    EXPECT_MSG(brace_bad == 0, "%zu unbalanced code lines", brace_bad);
    EXPECT(asserts > 500 && asserts_ok == asserts);
    moelm_free(t);
    moelm_free(dom);
}

TEST(builtin_domains_distinct) {
    char *t;
    size_t n;
    int *dom;
    size_t nl;
    EXPECT(builtin_generate(&t, &n, 0, BUILTIN_TRAIN_BYTES, &dom, &nl) == MOELM_OK);
    WordMap m;
    wm_init(&m, 8192);
    enum { MAXV = 4096 };
    static long cnt[BUILTIN_DOMAINS][MAXV];
    memset(cnt, 0, sizeof cnt);
    char w[96][32];
    const char *p = t;
    for (size_t li = 0; li < nl; li++) {
        const char *e = strchr(p, '\n');
        int nw = split_words(p, (size_t)(e - p), w, 96);
        for (int i = 0; i < nw; i++)
            if (!is_num(w[i])) cnt[dom[li]][wm_id(&m, w[i], 1)]++;   /* numbers are shared on purpose */
        p = e + 1;
    }
    for (int d = 0; d < BUILTIN_DOMAINS; d++) {
        long own = 0, shared = 0;
        for (int v = 0; v < m.n; v++) {
            if (!cnt[d][v]) continue;
            int other = 0;
            for (int d2 = 0; d2 < BUILTIN_DOMAINS; d2++) other |= d2 != d && cnt[d2][v];
            own += cnt[d][v];
            shared += other ? cnt[d][v] : 0;
        }
        /* most of each domain's (non-number) tokens are words no other domain uses */
        EXPECT_MSG(shared * 2 < own, "domain %s: %ld of %ld tokens are shared", builtin_domain_name(d), shared, own);
        for (int d2 = d + 1; d2 < BUILTIN_DOMAINS; d2++) {
            int both = 0;
            for (int v = 0; v < m.n; v++) both += cnt[d][v] && cnt[d2][v];
            EXPECT_MSG(both <= 12, "domains %s and %s share %d words", builtin_domain_name(d), builtin_domain_name(d2), both);
        }
    }
    wm_free(&m);
    moelm_free(t);
    moelm_free(dom);
}

/* Vocabulary size and unigram entropy (the report's numbers), and that the text has structure: a
 * word-bigram model on valid is far below the unigram entropy. */
TEST(builtin_learnable) {
    Corpus c;
    EXPECT(corpus_load(&c, "builtin") == MOELM_OK);
    WordMap m;
    wm_init(&m, 8192);
    int *tr, *va;
    size_t ntr = word_tokens(c.text[0], c.len[0], &m, 1, &tr);
    size_t nva = word_tokens(c.text[1], c.len[1], &m, 0, &va);
    int V = m.n;
    double *uni = calloc((size_t)V, sizeof *uni);
    int *big = calloc((size_t)V * V, sizeof *big);
    for (size_t i = 0; i < ntr; i++) {
        uni[tr[i]] += 1;
        if (i) big[(size_t)tr[i - 1] * V + tr[i]]++;
    }
    size_t oov = 0;
    double h1 = 0, h2 = 0;
    for (size_t i = 0; i < nva; i++) {
        if (va[i] < 0) { oov++; continue; }
        double pu = uni[va[i]] / (double)ntr;
        h1 -= log(pu);
        int prev = i ? va[i - 1] : wm_id(&m, "<eos>", 0);
        if (prev < 0) prev = 0;
        /* bigram interpolated with the unigram (lambda 0.9): a fixed, simple smoother */
        double pb = uni[prev] > 0 ? big[(size_t)prev * V + va[i]] / uni[prev] : 0;
        h2 -= log(0.9 * pb + 0.1 * pu);
    }
    h1 /= (double)(nva - oov);
    h2 /= (double)(nva - oov);
    printf("  builtin corpus: %d word types (with <eos>), %zu train tokens; valid: unigram entropy %.4f nats/token, "
           "bigram %.4f\n", V, ntr, h1, h2);
    EXPECT_MSG(V >= 500 && V <= 1500, "vocabulary %d", V);
    EXPECT_MSG(oov == 0, "%zu valid words not in train", oov);
    EXPECT(h1 > 4.0 && h1 < 7.0);
    EXPECT_MSG(h2 < h1 - 1.5, "bigram %.3f vs unigram %.3f", h2, h1);
    free(uni); free(big); free(tr); free(va);
    wm_free(&m);
    corpus_free(&c);
}

TEST(builtin_alloc_failure) {
    size_t live = moelm_alloc_live_bytes();
    for (long k = 1; k <= 3; k++) {
        char *t = (char *)1;
        size_t n = 7;
        int *d = (int *)1;
        size_t nl = 7;
        moelm_alloc_fail_after(k);
        moelm_status st = builtin_generate(&t, &n, 0, 300000, &d, &nl);
        moelm_alloc_fail_after(0);
        if (st == MOELM_OK) { moelm_free(t); moelm_free(d); continue; }
        EXPECT(st == MOELM_ERR_NOMEM && t == NULL && d == NULL);
    }
    EXPECT(moelm_alloc_live_bytes() == live);
}

/* ---- corpus loading ------------------------------------------------------------------------------- */

TEST(corpus_builtin) {
    size_t live = moelm_alloc_live_bytes();
    Corpus c, d;
    EXPECT(corpus_load(&c, NULL) == MOELM_OK);
    EXPECT(corpus_load(&d, "builtin") == MOELM_OK);
    for (int s = 0; s < 3; s++) {
        EXPECT(c.len[s] == d.len[s] && memcmp(c.text[s], d.text[s], c.len[s]) == 0);
        char want[32];
        snprintf(want, sizeof want, "builtin:%s", corpus_split_name(s));
        EXPECT(strcmp(c.name[s], want) == 0);
    }
    EXPECT(c.len[0] >= BUILTIN_TRAIN_BYTES && c.len[1] >= BUILTIN_EVAL_BYTES && c.len[2] >= BUILTIN_EVAL_BYTES);
    corpus_free(&c);
    corpus_free(&d);
    corpus_free(&d);   /* twice is harmless */
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(corpus_dirs) {
    size_t live = moelm_alloc_live_bytes();
    char dir[512], p[600];
    Corpus c;
    /* plain naming */
    tmp_path(dir, sizeof dir, "plain");
    make_dir(dir);
    snprintf(p, sizeof p, "%s/train.txt", dir); write_str(p, "a b c\nd e\n");
    snprintf(p, sizeof p, "%s/valid.txt", dir); write_str(p, "v w\n");
    snprintf(p, sizeof p, "%s/test.txt", dir);  write_str(p, "t u\n");
    EXPECT(corpus_load(&c, dir) == MOELM_OK);
    EXPECT(c.len[0] == 10 && strcmp(c.text[0], "a b c\nd e\n") == 0);
    EXPECT(strcmp(c.text[1], "v w\n") == 0 && strcmp(c.text[2], "t u\n") == 0);
    snprintf(p, sizeof p, "%s/valid.txt", dir);
    EXPECT(strcmp(c.name[1], p) == 0);
    corpus_free(&c);
    /* trailing slash */
    snprintf(p, sizeof p, "%s/", dir);
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    snprintf(p, sizeof p, "%s/test.txt", dir);
    EXPECT(strcmp(c.name[2], p) == 0);
    corpus_free(&c);
    /* ptb naming wins when both exist */
    snprintf(p, sizeof p, "%s/ptb.train.txt", dir); write_str(p, " ptb train \n");
    snprintf(p, sizeof p, "%s/ptb.valid.txt", dir); write_str(p, " ptb valid \n");
    snprintf(p, sizeof p, "%s/ptb.test.txt", dir);  write_str(p, " ptb test \n");
    EXPECT(corpus_load(&c, dir) == MOELM_OK);
    EXPECT(strcmp(c.text[0], " ptb train \n") == 0 && strcmp(c.text[2], " ptb test \n") == 0);
    snprintf(p, sizeof p, "%s/ptb.train.txt", dir);
    EXPECT(strcmp(c.name[0], p) == 0);
    corpus_free(&c);
    /* ptb naming with a missing file: error names it */
    snprintf(p, sizeof p, "%s/ptb.valid.txt", dir); remove(p);
    EXPECT(corpus_load(&c, dir) == MOELM_ERR_IO);
    EXPECT_MSG(contains(moelm_last_error(), p), "%s", moelm_last_error());
    EXPECT(c.text[0] == NULL);
    /* an empty folder: the message lists both namings */
    tmp_path(dir, sizeof dir, "emptydir");
    make_dir(dir);
    EXPECT(corpus_load(&c, dir) == MOELM_ERR_IO);
    EXPECT_MSG(contains(moelm_last_error(), dir) && contains(moelm_last_error(), "ptb.train.txt") &&
               contains(moelm_last_error(), "train.txt, valid.txt, test.txt"), "%s", moelm_last_error());
    /* empty train, and a blank-only valid */
    tmp_path(dir, sizeof dir, "emptytrain");
    make_dir(dir);
    snprintf(p, sizeof p, "%s/valid.txt", dir); write_str(p, "v\n");
    snprintf(p, sizeof p, "%s/test.txt", dir);  write_str(p, "t\n");
    snprintf(p, sizeof p, "%s/train.txt", dir); write_str(p, "");
    EXPECT(corpus_load(&c, dir) == MOELM_ERR_DATA);
    char want[700];
    snprintf(want, sizeof want, "%s: corpus is empty", p);
    EXPECT_MSG(strcmp(moelm_last_error(), want) == 0, "%s", moelm_last_error());
    write_str(p, " \n\n \t\n");
    EXPECT(corpus_load(&c, dir) == MOELM_ERR_DATA);
    write_str(p, "x\n");
    snprintf(p, sizeof p, "%s/valid.txt", dir); write_str(p, "\n");
    EXPECT(corpus_load(&c, dir) == MOELM_ERR_DATA);
    EXPECT_MSG(contains(moelm_last_error(), "valid.txt: corpus is empty"), "%s", moelm_last_error());
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(corpus_ptb) {
    const char *dir = "../shared/data/ptb";
    struct stat sb;
    if (stat(dir, &sb) != 0) { printf("  (skipped: %s not present)\n", dir); return; }
    size_t live = moelm_alloc_live_bytes();
    Corpus c;
    EXPECT(corpus_load(&c, dir) == MOELM_OK);
    const char *files[3] = {"ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"};
    for (int s = 0; s < 3; s++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, files[s]);
        EXPECT(strcmp(c.name[s], p) == 0);
        EXPECT(stat(p, &sb) == 0 && (size_t)sb.st_size == c.len[s]);
        EXPECT(strlen(c.text[s]) == c.len[s]);
    }
    size_t lines = 0;
    for (size_t i = 0; i < c.len[0]; i++) lines += c.text[0][i] == '\n';
    EXPECT(lines == 42068);   /* the standard Mikolov PTB train split */
    corpus_free(&c);
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(corpus_single_file) {
    size_t live = moelm_alloc_live_bytes();
    char p[512], buf[4096];
    Corpus c;
    tmp_path(p, sizeof p, "lines100.txt");
    size_t k = 0;
    for (int i = 0; i < 100; i++) k += (size_t)snprintf(buf + k, sizeof buf - k, "line %d\n", i);
    write_str(p, buf);
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    EXPECT(strncmp(c.text[0], "line 0\n", 7) == 0 && contains(c.text[0], "line 89\n") && !contains(c.text[0], "line 90\n"));
    EXPECT(strcmp(c.text[1], "line 90\nline 91\nline 92\nline 93\nline 94\n") == 0);
    EXPECT(strcmp(c.text[2], "line 95\nline 96\nline 97\nline 98\nline 99\n") == 0);
    EXPECT(c.len[0] + c.len[1] + c.len[2] == k);
    char want[600];
    snprintf(want, sizeof want, "%s:valid", p);
    EXPECT(strcmp(c.name[1], want) == 0);
    corpus_free(&c);
    /* no final newline: the last line still counts */
    write_str(p, "a\nb\nc");
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    EXPECT(strcmp(c.text[0], "a\n") == 0 && strcmp(c.text[1], "b\n") == 0 && strcmp(c.text[2], "c") == 0);
    corpus_free(&c);
    /* one or two lines: all train, valid and test empty */
    write_str(p, "only line\n");
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    EXPECT(strcmp(c.text[0], "only line\n") == 0 && c.len[1] == 0 && c.len[2] == 0 && c.text[1] && c.text[2]);
    corpus_free(&c);
    /* 45 lines: 2 valid, 2 test */
    k = 0;
    for (int i = 0; i < 45; i++) k += (size_t)snprintf(buf + k, sizeof buf - k, "%d\n", i);
    write_str(p, buf);
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    EXPECT(strcmp(c.text[1], "41\n42\n") == 0 && strcmp(c.text[2], "43\n44\n") == 0);
    corpus_free(&c);
    /* a byte order mark is dropped */
    write_str(p, "\xEF\xBB\xBFhello\n");
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    EXPECT(strcmp(c.text[0], "hello\n") == 0);
    corpus_free(&c);
    /* empty file, blank file */
    write_str(p, "");
    EXPECT(corpus_load(&c, p) == MOELM_ERR_DATA);
    snprintf(want, sizeof want, "%s: corpus is empty", p);
    EXPECT_MSG(strcmp(moelm_last_error(), want) == 0, "%s", moelm_last_error());
    write_str(p, "\n\n\n   \n");
    EXPECT(corpus_load(&c, p) == MOELM_ERR_DATA);
    /* missing */
    tmp_path(p, sizeof p, "does-not-exist.txt");
    EXPECT(corpus_load(&c, p) == MOELM_ERR_IO);
    EXPECT_MSG(contains(moelm_last_error(), p) && contains(moelm_last_error(), "No such file"), "%s", moelm_last_error());
    EXPECT(corpus_load(&c, "") == MOELM_ERR_IO);
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(corpus_utf8) {
    size_t live = moelm_alloc_live_bytes();
    char p[512];
    Corpus c;
    tmp_path(p, sizeof p, "utf8.txt");
    /* valid: 2-, 3- and 4-byte sequences */
    write_str(p, "caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x98\x80\n\xEF\xBF\xBD \xF4\x8F\xBF\xBF\n");
    EXPECT(corpus_load(&c, p) == MOELM_OK);
    corpus_free(&c);
    static const struct { const char *bytes; size_t n; size_t offset; int line; } bad[] = {
        {"ok\nab\x80z\n", 9, 5, 2},                 /* lone continuation byte */
        {"\xC0\xAF\n", 3, 0, 1},                    /* overlong '/' */
        {"x \xE0\x80\xAF\n", 6, 2, 1},              /* overlong 3-byte */
        {"a\nb\nc \xED\xA0\x80\n", 10, 6, 3},       /* surrogate U+D800 */
        {"abc \xF4\x90\x80\x80\n", 9, 4, 1},        /* past U+10FFFF */
        {"\xF5\x80\x80\x80\n", 5, 0, 1},            /* F5 lead byte */
        {"end \xE2\x82", 6, 4, 1},                  /* truncated at end of file */
        {"x \xC3 y\n", 6, 2, 1},                    /* lead byte without continuation */
        {"line\nnul\0here\n", 14, 8, 2},            /* NUL byte */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_bytes(p, bad[i].bytes, bad[i].n);
        EXPECT(corpus_load(&c, p) == MOELM_ERR_FORMAT);
        char want[128];
        snprintf(want, sizeof want, "at byte offset %zu (line %d,", bad[i].offset, bad[i].line);
        EXPECT_MSG(contains(moelm_last_error(), want) && contains(moelm_last_error(), p), "case %zu: %s", i,
                   moelm_last_error());
        EXPECT(c.text[0] == NULL);
    }
    EXPECT(contains(moelm_last_error(), "NUL"));
    /* the same checks apply to the files of a folder */
    char dir[512], q[600];
    tmp_path(dir, sizeof dir, "utf8dir");
    make_dir(dir);
    snprintf(q, sizeof q, "%s/train.txt", dir); write_str(q, "fine\n");
    snprintf(q, sizeof q, "%s/valid.txt", dir); write_str(q, "fine\n");
    snprintf(q, sizeof q, "%s/test.txt", dir);  write_str(q, "bad \xFF\n");
    EXPECT(corpus_load(&c, dir) == MOELM_ERR_FORMAT);
    EXPECT_MSG(contains(moelm_last_error(), q) && contains(moelm_last_error(), "invalid UTF-8"), "%s", moelm_last_error());
    /* corpus_read_file: same checks, no emptiness rule */
    char *t;
    size_t n;
    write_str(p, "");
    EXPECT(corpus_read_file(p, &t, &n) == MOELM_OK && n == 0 && t && t[0] == '\0');
    moelm_free(t);
    EXPECT(corpus_read_file(dir, &t, &n) == MOELM_ERR_IO);
    EXPECT(moelm_alloc_live_bytes() == live);
}

/* ---- token files ---------------------------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { *n = 0; return NULL; }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

#define HASH 0x1234abcd5678ef90ull

TEST(tokens_round_trip) {
    size_t live = moelm_alloc_live_bytes();
    char p[512], tmp[600];
    tmp_path(p, sizeof p, "rt.tok");
    enum { N = 5000, V = 10000 };
    int *ids = malloc(N * sizeof *ids);
    Rng r;
    rng_seed(&r, 7);
    for (int i = 0; i < N; i++) ids[i] = (int)rng_below(&r, V);
    ids[0] = 0; ids[1] = V - 1;
    EXPECT(tokens_write(p, ids, N, V, HASH) == MOELM_OK);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    EXPECT(access(tmp, F_OK) != 0);   /* the temporary was renamed away */
    size_t fn;
    unsigned char *raw = read_all(p, &fn);
    EXPECT(fn == TOKENS_HEADER_BYTES + 4 * (size_t)N);
    EXPECT(memcmp(raw, "MOELMTOK", 8) == 0 && raw[8] == 1 && raw[12] == (V & 0xFF) && raw[13] == (V >> 8));
    EXPECT(raw[24] == (N & 0xFF) && raw[25] == (N >> 8) && raw[TOKENS_HEADER_BYTES + 4] == (unsigned char)(V - 1));
    free(raw);
    int *back;
    size_t n;
    EXPECT(tokens_read(p, &back, &n, V, HASH) == MOELM_OK);
    EXPECT(n == N && memcmp(back, ids, N * sizeof *ids) == 0);
    moelm_free(back);
    /* overwrite in place, and zero tokens */
    EXPECT(tokens_write(p, ids, 0, V, HASH) == MOELM_OK);
    EXPECT(tokens_read(p, &back, &n, V, HASH) == MOELM_OK && n == 0 && back != NULL);
    moelm_free(back);
    free(ids);
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(tokens_write_errors) {
    char p[512];
    int ids[4] = {1, 2, 10000, 3};
    tmp_path(p, sizeof p, "bad-write.tok");
    EXPECT(tokens_write(p, ids, 4, 10000, HASH) == MOELM_ERR_DATA);
    EXPECT_MSG(contains(moelm_last_error(), "token id 10000 at position 2 out of range [0, 10000)"), "%s", moelm_last_error());
    EXPECT(access(p, F_OK) != 0);
    EXPECT(tokens_write(p, ids, 2, 0, HASH) == MOELM_ERR_DATA);
    tmp_path(p, sizeof p, "no/such/dir/x.tok");
    EXPECT(tokens_write(p, ids, 2, 10, HASH) == MOELM_ERR_IO);
    EXPECT_MSG(contains(moelm_last_error(), "no/such/dir/x.tok.tmp"), "%s", moelm_last_error());
}

/* The token cache key follows the data, not only the tokenizer: a run killed before its first
 * checkpoint left tokens.train.bin of data A, and a run on data B in the same --out trained on A. */
TEST(tokens_cache_key_follows_data) {
    const char *a = "the cat sat on the mat\n", *b = "the cat sat on the hat\n";
    size_t n = strlen(a);
    uint64_t k = tokens_cache_key(7, a, n);
    EXPECT(k == tokens_cache_key(7, a, n));
    EXPECT(k != tokens_cache_key(7, b, n));        /* other data, same size */
    EXPECT(k != tokens_cache_key(8, a, n));        /* other tokenizer */
    EXPECT(k != tokens_cache_key(7, a, n - 1));    /* a prefix */
    EXPECT(k != 7);                                /* never just the tokenizer's hash (what old caches hold) */
}

TEST(tokens_check_range_message) {
    int ids[60];
    for (int i = 0; i < 60; i++) ids[i] = i;
    ids[55] = 10007;
    EXPECT(tokens_check_range(ids, 60, 10000, "ptb.train.tok") == MOELM_ERR_DATA);
    EXPECT_MSG(strcmp(moelm_last_error(), "ptb.train.tok: token id 10007 at position 55 out of range [0, 10000)") == 0,
               "%s", moelm_last_error());
    ids[55] = -1;
    EXPECT(tokens_check_range(ids, 60, 10000, "x") == MOELM_ERR_DATA && contains(moelm_last_error(), "token id -1 at position 55"));
    ids[55] = 55;
    EXPECT(tokens_check_range(ids, 60, 10000, "x") == MOELM_OK);
    EXPECT(tokens_check_range(ids, 0, 1, "x") == MOELM_OK);
}

/* Builds a token file image by hand, so that each field can be made wrong on its own. */
static size_t craft(unsigned char *buf, const char *magic, uint32_t version, uint32_t vocab, uint64_t hash,
                    uint64_t count, const int *ids, size_t nids, int crc_delta) {
    memcpy(buf, magic, 8);
    put32(buf + 8, version);
    put32(buf + 12, vocab);
    put64(buf + 16, hash);
    put64(buf + 24, count);
    for (size_t i = 0; i < nids; i++) put32(buf + TOKENS_HEADER_BYTES + 4 * i, (uint32_t)ids[i]);
    put32(buf + 32, crc32_update(0, buf + TOKENS_HEADER_BYTES, 4 * nids) + (uint32_t)crc_delta);
    return TOKENS_HEADER_BYTES + 4 * nids;
}

TEST(tokens_corrupt_files) {
    size_t live = moelm_alloc_live_bytes();
    char p[512];
    tmp_path(p, sizeof p, "corrupt.tok");
    unsigned char buf[256];
    int good[8] = {0, 1, 2, 3, 4, 5, 6, 99};
    int badid[8] = {0, 1, 2, 3, 100, 5, 6, 7};
    int negid[8] = {0, 1, 2, 3, 4, -5, 6, 7};
    int edgeid[8] = {100, 1, 2, 3, 4, 5, 6, 7};
    int minid[8] = {0, 1, 2, 3, 4, 5, 6, INT32_MIN};
    const struct { const char *what; const char *magic; uint32_t version, vocab; uint64_t hash, count; const int *ids;
                   size_t nids; int crc_delta; long trunc; moelm_status st; const char *msg; } cases[] = {
        {"sanity", "MOELMTOK", 1, 100, HASH, 8, good, 8, 0, 0, MOELM_OK, ""},
        {"bad magic", "MOELMTOX", 1, 100, HASH, 8, good, 8, 0, 0, MOELM_ERR_FORMAT, "bad magic"},
        {"text file", "hello wo", 1, 100, HASH, 8, good, 8, 0, 0, MOELM_ERR_FORMAT, "not a moelm token file"},
        {"version", "MOELMTOK", 2, 100, HASH, 8, good, 8, 0, 0, MOELM_ERR_FORMAT, "version 2"},
        {"vocab", "MOELMTOK", 1, 200, HASH, 8, good, 8, 0, 0, MOELM_ERR_DATA, "vocab size 200"},
        {"hash", "MOELMTOK", 1, 100, HASH + 1, 8, good, 8, 0, 0, MOELM_ERR_DATA, "different tokenizer"},
        {"count too large", "MOELMTOK", 1, 100, HASH, 1ull << 60, good, 8, 0, 0, MOELM_ERR_FORMAT, "header says 1152921504606846976 tokens"},
        {"count max", "MOELMTOK", 1, 100, HASH, UINT64_MAX, good, 8, 0, 0, MOELM_ERR_FORMAT, "header says"},
        {"count too small", "MOELMTOK", 1, 100, HASH, 7, good, 8, 0, 0, MOELM_ERR_FORMAT, "holds 32 bytes"},
        {"truncated ids", "MOELMTOK", 1, 100, HASH, 8, good, 8, 0, 3, MOELM_ERR_FORMAT, "truncated"},
        {"truncated header", "MOELMTOK", 1, 100, HASH, 8, good, 8, 0, 20 + 32, MOELM_ERR_FORMAT, "shorter than the 36-byte header"},
        {"empty file", "MOELMTOK", 1, 100, HASH, 8, good, 8, 0, 36 + 32, MOELM_ERR_FORMAT, "0 bytes"},
        {"crc", "MOELMTOK", 1, 100, HASH, 8, good, 8, 1, 0, MOELM_ERR_FORMAT, "checksum"},
        {"id out of range", "MOELMTOK", 1, 100, HASH, 8, badid, 8, 0, 0, MOELM_ERR_DATA, "token id 100 at position 4 out of range [0, 100)"},
        {"negative id", "MOELMTOK", 1, 100, HASH, 8, negid, 8, 0, 0, MOELM_ERR_DATA, "token id -5 at position 5"},
        {"id == V", "MOELMTOK", 1, 100, HASH, 8, edgeid, 8, 0, 0, MOELM_ERR_DATA, "token id 100 at position 0"},
        {"id INT_MIN", "MOELMTOK", 1, 100, HASH, 8, minid, 8, 0, 0, MOELM_ERR_DATA, "token id -2147483648 at position 7"},
        {"version 0", "MOELMTOK", 0, 100, HASH, 8, good, 8, 0, 0, MOELM_ERR_FORMAT, "version 0"},
        {"vocab 0", "MOELMTOK", 1, 0, HASH, 8, good, 8, 0, 0, MOELM_ERR_DATA, "vocab size 0"},
        {"vocab 2^32-1", "MOELMTOK", 1, UINT32_MAX, HASH, 8, good, 8, 0, 0, MOELM_ERR_DATA, "vocab size"},
        {"zero magic", "\0\0\0\0\0\0\0\0", 1, 100, HASH, 8, good, 8, 0, 0, MOELM_ERR_FORMAT, ""},
        {"count 0, ids follow", "MOELMTOK", 1, 100, HASH, 0, good, 8, 0, 0, MOELM_ERR_FORMAT, "header says 0 tokens"},
        {"count odd bytes", "MOELMTOK", 1, 100, HASH, 8, good, 8, 0, 1, MOELM_ERR_FORMAT, ""},
        {"crc high bit", "MOELMTOK", 1, 100, HASH, 8, good, 8, INT32_MIN, 0, MOELM_ERR_FORMAT, "checksum"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = craft(buf, cases[i].magic, cases[i].version, cases[i].vocab, cases[i].hash, cases[i].count,
                         cases[i].ids, cases[i].nids, cases[i].crc_delta);
        write_bytes(p, buf, n - (size_t)cases[i].trunc);
        int *ids = (int *)1;
        size_t cnt = 77;
        size_t before = moelm_alloc_live_bytes();
        moelm_status st = tokens_read(p, &ids, &cnt, 100, HASH);
        EXPECT_MSG(st == cases[i].st, "%s: status %d, %s", cases[i].what, st, moelm_last_error());
        if (st == MOELM_OK) {
            EXPECT(cnt == 8 && ids[7] == 99);
            moelm_free(ids);
            continue;
        }
        EXPECT(ids == NULL && cnt == 0 && moelm_alloc_live_bytes() == before);
        EXPECT_MSG(contains(moelm_last_error(), p) && contains(moelm_last_error(), cases[i].msg), "%s: %s",
                   cases[i].what, moelm_last_error());
    }
    /* the id check also runs on a file the caller expects with a smaller vocabulary */
    write_bytes(p, buf, craft(buf, "MOELMTOK", 1, 50, HASH, 8, good, 8, 0));
    int *ids;
    size_t cnt;
    EXPECT(tokens_read(p, &ids, &cnt, 50, HASH) == MOELM_ERR_DATA && contains(moelm_last_error(), "token id 99 at position 7"));
    /* missing file, a directory */
    tmp_path(p, sizeof p, "missing.tok");
    EXPECT(tokens_read(p, &ids, &cnt, 100, HASH) == MOELM_ERR_IO && contains(moelm_last_error(), p));
    EXPECT(tokens_read(g_tmp, &ids, &cnt, 100, HASH) == MOELM_ERR_IO);
    EXPECT(moelm_alloc_live_bytes() == live);
}

/* ---- dataloader ------------------------------------------------------------------------------------ */

static int *iota(size_t n) {
    int *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) ids[i] = (int)i;
    return ids;
}

TEST(dataloader_epochs) {
    size_t live = moelm_alloc_live_bytes();
    enum { N = 1000, B = 4, T = 16 };
    int *ids = iota(N);
    DataLoader dl;
    EXPECT(dataloader_init(&dl, ids, N, B, T, T, 1, 42) == MOELM_OK);
    EXPECT(dl.nwin == (N - T - 1) / T + 1);   /* 62 */
    size_t nwin = dl.nwin;
    int in[B * T], tg[B * T];
    /* three epochs' worth of windows, read in batches that do not divide an epoch */
    size_t total = 3 * nwin;
    size_t *starts = malloc((total + B) * sizeof *starts);
    size_t got = 0;
    int shifted = 1;
    size_t live_mid = moelm_alloc_live_bytes();
    moelm_alloc_fail_after(1);   /* next must never allocate: the first allocation would fail */
    while (got < total) {
        dataloader_next(&dl, in, tg);
        for (int b = 0; b < B; b++) {
            starts[got++] = (size_t)in[b * T];
            for (int t = 0; t < T; t++) shifted &= tg[b * T + t] == in[b * T + t] + 1 && in[b * T + t] == in[b * T] + t;
        }
    }
    moelm_alloc_fail_after(0);
    EXPECT(moelm_alloc_live_bytes() == live_mid);
    EXPECT(shifted);
    for (int e = 0; e < 3; e++) {
        char *seen = calloc(nwin, 1);
        int ok = 1;
        for (size_t i = 0; i < nwin; i++) {
            size_t s = starts[e * nwin + i];
            ok &= s % T == 0 && s / T < nwin && !seen[s / T] && s + T + 1 <= N;
            if (s / T < nwin) seen[s / T] = 1;
        }
        EXPECT_MSG(ok, "epoch %d does not visit every window exactly once", e);
        free(seen);
    }
    /* epochs are reshuffled, and shuffling happened at all */
    EXPECT(memcmp(starts, starts + nwin, nwin * sizeof *starts) != 0);
    int sequential = 1;
    for (size_t i = 0; i < nwin; i++) sequential &= starts[i] == i * T;
    EXPECT(!sequential);
    EXPECT(dl.epoch == 3 || (dl.epoch == 2 && dl.pos == nwin));
    dataloader_free(&dl);
    /* a different seed gives a different order; the same seed the same */
    DataLoader d1, d2, d3;
    EXPECT(dataloader_init(&d1, ids, N, B, T, T, 1, 42) == MOELM_OK);
    EXPECT(dataloader_init(&d2, ids, N, B, T, T, 1, 43) == MOELM_OK);
    EXPECT(dataloader_init(&d3, ids, N, B, T, T, 1, 42) == MOELM_OK);
    EXPECT(memcmp(d1.order, d2.order, nwin * 4) != 0);
    EXPECT(memcmp(d1.order, d3.order, nwin * 4) == 0);
    dataloader_free(&d1); dataloader_free(&d2); dataloader_free(&d3);
    /* no shuffle: sequential windows, every epoch */
    EXPECT(dataloader_init(&d1, ids, N, 1, T, T, 0, 42) == MOELM_OK);
    int seq = 1;
    for (size_t i = 0; i < 2 * nwin; i++) {
        dataloader_next(&d1, in, tg);
        seq &= (size_t)in[0] == (i % nwin) * T;
    }
    EXPECT(seq);
    dataloader_free(&d1);
    free(starts);
    free(ids);
    EXPECT(moelm_alloc_live_bytes() == live);
}

TEST(dataloader_stride_and_errors) {
    enum { N = 300, T = 32 };
    int *ids = iota(N);
    DataLoader dl;
    EXPECT(dataloader_init(&dl, ids, N, 3, T, 1, 1, 5) == MOELM_OK);
    EXPECT(dl.nwin == N - T);   /* starts 0 .. n-T-1 */
    char *seen = calloc(dl.nwin, 1);
    int in[3 * T], tg[3 * T], ok = 1;
    for (size_t i = 0; i < dl.nwin / 3; i++) {
        dataloader_next(&dl, in, tg);
        for (int b = 0; b < 3; b++) {
            ok &= in[b * T] >= 0 && (size_t)in[b * T] < dl.nwin && !seen[in[b * T]] && tg[b * T + T - 1] <= N - 1;
            seen[in[b * T]] = 1;
        }
    }
    EXPECT(ok);
    free(seen);
    dataloader_free(&dl);
    /* stride 7: starts 0, 7, ..., last start + T + 1 <= n */
    EXPECT(dataloader_init(&dl, ids, N, 1, T, 7, 0, 5) == MOELM_OK);
    EXPECT(dl.nwin == (N - T - 1) / 7 + 1 && (dl.nwin - 1) * 7 + T + 1 <= N && dl.nwin * 7 + T + 1 > N);
    dataloader_free(&dl);
    /* exactly one window */
    EXPECT(dataloader_init(&dl, ids, T + 1, 2, T, T, 1, 5) == MOELM_OK && dl.nwin == 1);
    dataloader_next(&dl, in, tg);
    EXPECT(in[0] == 0 && in[T] == 0 && tg[2 * T - 1] == T);
    dataloader_free(&dl);
    EXPECT(dataloader_init(&dl, ids, T, 2, T, T, 1, 5) == MOELM_ERR_DATA);
    EXPECT_MSG(contains(moelm_last_error(), "too few tokens") && contains(moelm_last_error(), "T+1"), "%s", moelm_last_error());
    EXPECT(dl.order == NULL);
    EXPECT(dataloader_init(&dl, ids, N, 0, T, T, 1, 5) == MOELM_ERR_CONFIG);
    EXPECT(dataloader_init(&dl, ids, N, 1, 0, T, 1, 5) == MOELM_ERR_CONFIG);
    EXPECT(dataloader_init(&dl, ids, N, 1, T, 0, 1, 5) == MOELM_ERR_CONFIG);
    EXPECT(dataloader_init(&dl, ids, N, 1, T, T, 1, 5) == MOELM_OK);
    EXPECT(dataloader_seek(&dl, 0, dl.nwin + 1) == MOELM_ERR_DATA);
    dataloader_free(&dl);
    dataloader_free(&dl);
    free(ids);
}

/* shifted windows: every epoch visits each of its windows once, all at one shift in [0, stride), every
 * window inside the text; the shifts differ between epochs and follow (seed, epoch) only (a seek to an
 * epoch gives the same batches); edges: a text that fits the largest shift keeps its windows, one that
 * does not loses the last window, a single window only moves as far as the text allows */
TEST(dataloader_shifted) {
    enum { N = 1000, B = 4, T = 16, E = 6 };
    int *ids = iota(N);
    DataLoader dl;
    EXPECT(dataloader_init(&dl, ids, N, B, T, T, 1, 42) == MOELM_OK);
    size_t nwin0 = dl.nwin;   /* 62: the last start 976, + 15 + 17 > 1000 */
    dataloader_shift_windows(&dl);
    EXPECT_MSG(dl.nwin == nwin0 - 1 && dl.reach == T - 1, "nwin %zu of %zu, reach %zu", dl.nwin, nwin0, dl.reach);
    size_t nwin = dl.nwin, shifts[E];
    int in[B * T], tg[B * T], ok = 1, distinct = 0;
    size_t *starts = malloc((E * nwin + B) * sizeof *starts), got = 0;
    while (got < E * nwin) {
        dataloader_next(&dl, in, tg);
        for (int b = 0; b < B; b++) {
            starts[got++] = (size_t)in[b * T];
            ok &= tg[b * T + T - 1] == in[b * T] + T && tg[b * T + T - 1] <= N - 1;
        }
    }
    EXPECT(ok);
    for (int e = 0; e < E; e++) {
        char *seen = calloc(nwin, 1);
        size_t sh = starts[e * nwin] % T;   /* the epoch's shift, which every window must share */
        int fine = 1;
        for (size_t i = 0; i < nwin; i++) {
            size_t s = starts[e * nwin + i], w = s / T;
            fine &= s % T == sh && w < nwin && !seen[w] && s + T + 1 <= N;
            if (w < nwin) seen[w] = 1;
        }
        EXPECT_MSG(fine, "epoch %d: not every window once at one shift", e);
        shifts[e] = sh;
        for (int f = 0; f < e; f++) distinct |= shifts[f] != sh;
        free(seen);
    }
    EXPECT_MSG(distinct, "six epochs, one shift (%zu)", shifts[0]);
    /* a loader sought to epoch 3 gives epoch 3's windows; so does one of another run with the same seed */
    DataLoader re;
    EXPECT(dataloader_init(&re, ids, N, B, T, T, 1, 42) == MOELM_OK);
    dataloader_shift_windows(&re);
    EXPECT(dataloader_seek(&re, 3, 0) == MOELM_OK);
    dataloader_next(&re, in, tg);
    EXPECT(re.shift == shifts[3] && (size_t)in[0] == starts[3 * nwin] && (size_t)in[T] == starts[3 * nwin + 1]);
    dataloader_free(&re);
    dataloader_free(&dl);
    /* a text that fits the largest shift: 2 windows of 16 + 1 and 15 to spare keep both */
    EXPECT(dataloader_init(&dl, ids, 2 * T + 1 + T - 1, 1, T, T, 1, 7) == MOELM_OK && dl.nwin == 2);
    dataloader_shift_windows(&dl);
    EXPECT(dl.nwin == 2 && dl.reach == T - 1);
    dataloader_free(&dl);
    /* one window and 3 tokens to spare: shifts 0..3, the window always inside */
    EXPECT(dataloader_init(&dl, ids, T + 1 + 3, 1, T, T, 1, 7) == MOELM_OK && dl.nwin == 1);
    dataloader_shift_windows(&dl);
    EXPECT(dl.nwin == 1 && dl.reach == 3);
    int inside = 1;
    for (int e = 0; e < 20; e++) {
        dataloader_next(&dl, in, tg);
        inside &= in[0] >= 0 && in[0] <= 3 && tg[T - 1] <= T + 3;
    }
    EXPECT(inside);
    dataloader_free(&dl);
    free(starts);
    free(ids);
}

TEST(dataloader_seek_restores) {
    enum { N = 5000, B = 3, T = 10, STEPS = 400 };
    int *ids = iota(N);
    DataLoader a, b;
    EXPECT(dataloader_init(&a, ids, N, B, T, T, 1, 1234) == MOELM_OK);
    int ia[B * T], ta[B * T], ib[B * T], tb[B * T];
    /* run past one epoch boundary (499 windows), save, continue; a fresh loader seeks and must match */
    for (int s = 0; s < 250; s++) dataloader_next(&a, ia, ta);
    uint64_t ep = a.epoch;
    size_t pos = a.pos;
    EXPECT(ep == 1);
    EXPECT(dataloader_init(&b, ids, N, B, T, T, 1, 1234) == MOELM_OK);
    EXPECT(dataloader_seek(&b, ep, pos) == MOELM_OK);
    int same = 1;
    for (int s = 0; s < STEPS; s++) {
        dataloader_next(&a, ia, ta);
        dataloader_next(&b, ib, tb);
        same &= memcmp(ia, ib, sizeof ia) == 0 && memcmp(ta, tb, sizeof ta) == 0;
    }
    EXPECT(same && a.epoch == b.epoch && a.pos == b.pos);
    /* seeking to the end of an epoch continues with the next one */
    EXPECT(dataloader_seek(&b, 4, b.nwin) == MOELM_OK);
    dataloader_next(&b, ib, tb);
    EXPECT(b.epoch == 5 && b.pos == B);
    EXPECT(dataloader_seek(&a, 5, 0) == MOELM_OK);
    dataloader_next(&a, ia, ta);
    EXPECT(memcmp(ia, ib, sizeof ia) == 0);
    dataloader_free(&a);
    dataloader_free(&b);
    free(ids);
}

TEST(eval_batches_cover_once) {
    size_t live = moelm_alloc_live_bytes();
    static const struct { size_t n; int B, T, S; } cases[] = {
        {1000, 4, 16, 16}, {1000, 1, 1, 1}, {17, 4, 16, 16}, {16, 4, 16, 16}, {33, 2, 16, 16}, {2, 3, 5, 5},
        {1001, 3, 10, 10}, {12345, 7, 33, 33},
        /* sliding windows */
        {1000, 4, 16, 8}, {1000, 3, 16, 1}, {17, 4, 16, 5}, {18, 2, 16, 1}, {12345, 7, 33, 11}, {2, 3, 5, 2}, {40, 1, 8, 3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c].n;
        int B = cases[c].B, T = cases[c].T, S = cases[c].S;
        int *ids = iota(n);
        size_t nb = eval_num_batches(n, B, T, S);
        size_t windows = n - 1 <= (size_t)T ? 1 : 1 + (n - 1 - (size_t)T + (size_t)S - 1) / (size_t)S;
        EXPECT(nb == (windows + (size_t)B - 1) / (size_t)B);
        int *hits = calloc(n, sizeof *hits);
        int *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
        int ok = 1;
        size_t scored_ctx_min = (size_t)-1;
        for (size_t bi = 0; bi < nb; bi++) {
            eval_batch(ids, n, B, T, S, bi, in, tg);
            for (int b = 0; b < B; b++) {
                size_t w = bi * (size_t)B + (size_t)b;
                for (int t = 0; t < T; t++) {
                    int k = b * T + t;
                    /* a row is one contiguous stretch of the stream, then padding */
                    if (t > 0 && in[k] != 0) ok &= in[k] == in[k - 1] + 1;
                    if (tg[k] == -1) continue;
                    ok &= tg[k] >= 1 && (size_t)tg[k] < n && in[k] == tg[k] - 1;
                    if (tg[k] >= 1 && (size_t)tg[k] < n) hits[tg[k]]++;
                    if (w > 0 && (size_t)t < scored_ctx_min) scored_ctx_min = (size_t)t;   /* tokens before it in its window */
                }
            }
        }
        for (size_t p = 1; p < n; p++) ok &= hits[p] == 1;
        if (windows > 1) ok &= scored_ctx_min >= (size_t)(T - S);
        EXPECT_MSG(ok, "n %zu B %d T %d S %d", n, B, T, S);
        free(hits); free(in); free(tg); free(ids);
    }
    EXPECT(eval_num_batches(0, 4, 8, 8) == 0 && eval_num_batches(1, 4, 8, 8) == 0);
    EXPECT(eval_num_batches(2, 4, 8, 8) == 1 && eval_num_batches(9, 1, 8, 8) == 1 && eval_num_batches(10, 1, 8, 8) == 2);
    EXPECT(eval_num_batches(10, 1, 8, 1) == 2 && eval_num_batches(11, 1, 8, 1) == 3);
    EXPECT(moelm_alloc_live_bytes() == live);
}

/* ---- span corruption (T5) -------------------------------------------------------------------------- */

/* HF's run_t5_mlm_flax: inputs of 512 come from windows of 568 raw tokens, with 114-token targets. */
TEST(span_lengths_as_hf) {
    SpanLengths s = span_lengths(512, 0.15f, 3.0f);
    EXPECT(s.raw == 568 && s.inputs == 512 && s.targets == 114 && s.spans == 28);
    s = span_lengths_of(100, 0.15f, 3.0f);   /* 15 noise tokens in 5 spans */
    EXPECT(s.inputs == 100 - 15 + 5 + 1 && s.targets == 15 + 5 + 1 && s.spans == 5);
    EXPECT(span_lengths_of(10, 0.25f, 3.0f).spans == 1);   /* round(2.5) = 2 noise (half to even), 1 span */
    EXPECT(span_lengths_of(10, 0.25f, 3.0f).targets == 2 + 1 + 1);
}

/* Over 10,000 windows of 64..512 tokens: the noise density and the mean span length within 2% of 0.15 and
 * 3 (the bound); every window starts kept, ends in noise, has exactly the spans span_lengths_of
 * says, each span non-empty; and the noise is spread over the window (every inner tenth of the windows
 * within 15% of the density: the spans' places are uniform, not clustered). */
TEST(span_noise_statistics) {
    enum { NSEQ = 10000, LMAX = 512 };
    static uint8_t mask[LMAX];
    static int scratch[3 * LMAX];
    Rng r, lr;
    rng_seed(&r, 7);
    rng_seed(&lr, 8);
    double noise = 0, total = 0, spans = 0, dec_noise[10] = {0}, dec_total[10] = {0};
    int bad = 0;
    for (int s = 0; s < NSEQ; s++) {
        int L = 64 + (int)rng_below(&lr, LMAX - 64 + 1);
        span_noise_mask(mask, L, 0.15f, 3.0f, &r, scratch);
        SpanLengths sl = span_lengths_of(L, 0.15f, 3.0f);
        int ns = 0, nn = 0;
        for (int t = 0; t < L; t++) {
            nn += mask[t];
            ns += mask[t] && (t == 0 || !mask[t - 1]);
            dec_noise[t * 10 / L] += mask[t];
            dec_total[t * 10 / L] += 1;
        }
        bad += mask[0] != 0 || mask[L - 1] != 1 || ns != sl.spans || nn != sl.targets - sl.spans - 1;
        noise += nn;
        spans += ns;
        total += L;
    }
    double density = noise / total, mean_span = noise / spans;
    printf("  noise density %.4f, mean span length %.4f over %d windows\n", density, mean_span, NSEQ);
    EXPECT(bad == 0);
    EXPECT(fabs(density - 0.15) <= 0.02 * 0.15);
    EXPECT(fabs(mean_span - 3.0) <= 0.02 * 3.0);
    for (int d = 1; d < 9; d++) EXPECT_MSG(fabs(dec_noise[d] / dec_total[d] - 0.15) <= 0.15 * 0.15, "tenth %d: %.4f", d,
                                           dec_noise[d] / dec_total[d]);
}

/* The corrupted pair holds the window: putting each noise span back at its sentinel rebuilds it. */
TEST(span_corrupt_round_trip) {
    int L = 57, tokens[57], in[80], lab[80], scratch[3 * 57], back[80];
    uint8_t mask[57];
    for (int t = 0; t < L; t++) tokens[t] = 3 + (t * 13) % 50;
    Rng r;
    rng_seed(&r, 3);
    for (int rep = 0; rep < 50; rep++) {
        span_noise_mask(mask, L, 0.15f, 3.0f, &r, scratch);
        int ni, nl;
        span_corrupt(in, &ni, lab, &nl, tokens, mask, L, 199, 100, 1);
        SpanLengths sl = span_lengths_of(L, 0.15f, 3.0f);
        EXPECT(ni == sl.inputs && nl == sl.targets && in[ni - 1] == 1 && lab[nl - 1] == 1);
        int nb = 0, k = 0, sent = 0;
        for (int i = 0; i < ni - 1; i++) {
            if (in[i] > 100) {   /* sentinel 199 - s: its span follows it in the labels */
                EXPECT(in[i] == 199 - sent && lab[k] == in[i]);
                k++;
                sent++;
                while (k < nl - 1 && lab[k] < 100) back[nb++] = lab[k++];
            } else {
                back[nb++] = in[i];
            }
        }
        EXPECT(nb == L && !memcmp(back, tokens, sizeof tokens) && k == nl - 1);
    }
}

/* The loader: fixed shapes, a batch determined by (seed, epoch, window) and so reproduced after a seek. */
TEST(span_loader_batches_and_resume) {
    enum { N = 3000, B = 4 };
    static int ids[N];
    for (int i = 0; i < N; i++) ids[i] = 2 + (i * 7919) % 90;
    SpanLoader a, b;
    EXPECT(span_loader_init(&a, ids, N, B, 40, 0.15f, 3.0f, 199, 100, 1, 11) == MOELM_OK);
    EXPECT(span_loader_init(&b, ids, N, B, 40, 0.15f, 3.0f, 199, 100, 1, 11) == MOELM_OK);
    int Te = a.len.inputs, Td = a.len.targets;
    EXPECT(Te <= 40 && Te >= 38);
    int *in1 = malloc(sizeof(int) * B * Te), *lb1 = malloc(sizeof(int) * B * Td);
    int *in2 = malloc(sizeof(int) * B * Te), *lb2 = malloc(sizeof(int) * B * Td);
    /* run a past an epoch's end, remember its state, take a batch; b seeks there and must give it */
    for (int s = 0; s < 30; s++) span_loader_next(&a, in1, lb1);
    uint64_t ep = a.dl.epoch;
    size_t pos = a.dl.pos;
    span_loader_next(&a, in1, lb1);
    EXPECT(ep >= 1);
    EXPECT(dataloader_seek(&b.dl, ep, pos) == MOELM_OK);
    span_loader_next(&b, in2, lb2);
    EXPECT(!memcmp(in1, in2, sizeof(int) * B * Te) && !memcmp(lb1, lb2, sizeof(int) * B * Td));
    for (int r = 0; r < B; r++) EXPECT(in1[r * Te + Te - 1] == 1 && lb1[r * Td] == 199);
    /* evaluation: every window once, in order, the same noise each time */
    SpanLengths L = a.len;
    size_t nb = span_eval_batches(N, L, B), rows = 0;
    int tok[64], scr[3 * 64];
    uint8_t msk[64];
    EXPECT(nb == ((size_t)N / L.raw + B - 1) / B);
    for (size_t k = 0; k < nb; k++) {
        int r1 = span_eval_batch(ids, N, L, 0.15f, 3.0f, B, k, 5, 199, 100, 1, in1, lb1, tok, msk, scr);
        int r2 = span_eval_batch(ids, N, L, 0.15f, 3.0f, B, k, 5, 199, 100, 1, in2, lb2, tok, msk, scr);
        EXPECT(r1 == r2 && !memcmp(in1, in2, sizeof(int) * (size_t)r1 * Te) && in1[0] == ids[k * B * L.raw]);
        rows += (size_t)r1;
    }
    EXPECT(rows == (size_t)N / L.raw);
    /* too short a stream, too many spans for the sentinels */
    SpanLoader c;
    EXPECT(span_loader_init(&c, ids, 20, B, 40, 0.15f, 3.0f, 199, 100, 1, 11) == MOELM_ERR_DATA);
    EXPECT(span_loader_init(&c, ids, N, B, 400, 0.15f, 3.0f, 199, 5, 1, 11) == MOELM_ERR_CONFIG);
    span_loader_free(&a);
    span_loader_free(&b);
    free(in1); free(lb1); free(in2); free(lb2);
}

/* input<TAB>target pairs: tokenized with EOS, truncated, padded (mask 0, labels -100); a line without a
 * tab is an error naming it. */
TEST(seq2seq_tsv_pairs) {
    char path[512];
    tmp_path(path, sizeof path, "pairs.tsv");
    write_str(path, "the cat sat\tcat sat the\n\nthe the the the the the the\tthe\n");
    Tokenizer *tok;
    const char *vocab = "the cat sat\n";
    EXPECT(tokenizer_build_word(&tok, vocab, strlen(vocab), 10) == MOELM_OK);
    Seq2SeqData d;
    EXPECT(seq2seq_load_tsv(&d, path, tok, 5, 4, 0, 3) == MOELM_OK);
    EXPECT(d.n == 2);
    int ids[2 * 5], mask[2 * 5], lab[2 * 4];
    seq2seq_next(&d, 2, ids, mask, lab);
    int the = tokenizer_piece_id(tok, "the"), cat = tokenizer_piece_id(tok, "cat"), eos = tokenizer_eos_id(tok);
    for (int r = 0; r < 2; r++) {
        int first = ids[r * 5] == the && ids[r * 5 + 1] == cat;   /* pair 0, else pair 1 */
        int want_in[2][5] = {{the, cat, tokenizer_piece_id(tok, "sat"), eos, 0}, {the, the, the, the, eos}};
        int want_m[2][5] = {{1, 1, 1, 1, 0}, {1, 1, 1, 1, 1}};
        int want_l[2][4] = {{cat, tokenizer_piece_id(tok, "sat"), the, eos}, {the, eos, -100, -100}};
        int w = first ? 0 : 1;
        EXPECT(!memcmp(ids + r * 5, want_in[w], sizeof want_in[w]) && !memcmp(mask + r * 5, want_m[w], sizeof want_m[w]));
        EXPECT(!memcmp(lab + r * 4, want_l[w], sizeof want_l[w]));
    }
    EXPECT(ids[0] != ids[5] || ids[1] != ids[6]);   /* one epoch: both pairs once */
    seq2seq_free(&d);
    write_str(path, "a\tb\nno tab here\n");
    EXPECT(seq2seq_load_tsv(&d, path, tok, 5, 4, 0, 3) == MOELM_ERR_DATA && strstr(moelm_last_error(), "line 2"));
    write_str(path, "\n\n");
    EXPECT(seq2seq_load_tsv(&d, path, tok, 5, 4, 0, 3) == MOELM_ERR_DATA);
    tokenizer_free(tok);
}

int main(void) {
    test_one_thread();
    snprintf(g_tmp, sizeof g_tmp, "build/tmp/test_data.%ld", (long)getpid());
    make_dir("build");
    make_dir("build/tmp");
    make_dir(g_tmp);

    RUN(builtin_deterministic_and_sized);
    RUN(builtin_format);
    RUN(builtin_content_is_right);
    RUN(builtin_domains_distinct);
    RUN(builtin_learnable);
    RUN(builtin_alloc_failure);
    RUN(corpus_builtin);
    RUN(corpus_dirs);
    RUN(corpus_ptb);
    RUN(corpus_single_file);
    RUN(corpus_utf8);
    RUN(tokens_round_trip);
    RUN(tokens_write_errors);
    RUN(tokens_cache_key_follows_data);
    RUN(tokens_check_range_message);
    RUN(tokens_corrupt_files);
    RUN(dataloader_epochs);
    RUN(dataloader_stride_and_errors);
    RUN(dataloader_seek_restores);
    RUN(dataloader_shifted);
    RUN(eval_batches_cover_once);
    RUN(span_lengths_as_hf);
    RUN(span_noise_statistics);
    RUN(span_corrupt_round_trip);
    RUN(span_loader_batches_and_resume);
    RUN(seq2seq_tsv_pairs);

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) printf("  could not remove %s\n", g_tmp);
    return test_summary("data");
}
