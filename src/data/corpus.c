/* corpus.c: loading the train/valid/test texts from the built-in generator, a folder or one file.
 * See corpus.h for the accepted specs and the errors.
 *
 * Invariant: on failure the Corpus is left zeroed (nothing to free); on success all three texts are
 * allocated (possibly empty strings) and NUL-terminated.
 */
#define _POSIX_C_SOURCE 200809L
#include "data/corpus.h"
#include "data/builtin.h"
#include "common/util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const char *corpus_split_name(int split) {
    static const char *const names[3] = {"train", "valid", "test"};
    return split >= 0 && split < 3 ? names[split] : "?";
}

/* ---- UTF-8 ------------------------------------------------------------------------------------------ */

int utf8_check(const char *str, size_t n, size_t *bad_offset) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c >= 0x01 && c < 0x80) { i++; continue; }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) { len = 3; lo = 0xA0; }              /* no overlong 3-byte forms */
        else if (c >= 0xE1 && c <= 0xEC) len = 3;
        else if (c == 0xED) { len = 3; hi = 0x9F; }              /* no surrogates U+D800..DFFF */
        else if (c >= 0xEE && c <= 0xEF) len = 3;
        else if (c == 0xF0) { len = 4; lo = 0x90; }              /* no overlong 4-byte forms */
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) { len = 4; hi = 0x8F; }              /* nothing past U+10FFFF */
        else { *bad_offset = i; return 0; }                        /* NUL, continuation byte, C0, C1, F5.. */
        if (i + len > n) { *bad_offset = i; return 0; }
        if (s[i + 1] < lo || s[i + 1] > hi) { *bad_offset = i; return 0; }
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) { *bad_offset = i; return 0; }
        i += len;
    }
    return 1;
}

/* ---- files -------------------------------------------------------------------------------------------- */

static moelm_status read_checked(const char *path, char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return moelm_fail(MOELM_ERR_IO, "%s: is a directory, expected a text file", path);
    if (!S_ISREG(sb.st_mode) && !S_ISFIFO(sb.st_mode))   /* /dev/zero, /dev/urandom, a disk: endless or not text */
        return moelm_fail(MOELM_ERR_IO, "%s: not a regular file or a pipe (a device?), expected a text file", path);
    if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size > CORPUS_MAX_BYTES)
        return moelm_fail(MOELM_ERR_DATA, "%s: %.1f GiB, more than moelm reads into memory (%.0f GiB a file); split it "
                                          "or take a part", path, (double)sb.st_size / 1073741824.0,
                          (double)CORPUS_MAX_BYTES / 1073741824.0);
    FILE *f = fopen(path, "rb");
    if (!f) return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));

    /* Read to EOF with a growing buffer, starting from the size stat reported (0 for pipes). */
    size_t cap = S_ISREG(sb.st_mode) ? (size_t)sb.st_size + 2 : 65536, n = 0;   /* +2: room for the NUL, and EOF seen without growing */
    char *buf = moelm_malloc(cap);
    moelm_status st = MOELM_OK;
    if (!buf) { fclose(f); return moelm_fail_context(MOELM_ERR_NOMEM, "%s", path); }
    for (;;) {
        if (n > CORPUS_MAX_BYTES) {   /* a pipe that does not end */
            st = moelm_fail(MOELM_ERR_DATA, "%s: more than %.0f GiB, more than moelm reads into memory; split it or take "
                                            "a part", path, (double)CORPUS_MAX_BYTES / 1073741824.0);
            break;
        }
        if (n + 1 >= cap) {
            char *q = moelm_realloc(buf, cap * 2);
            if (!q) { st = moelm_fail_context(MOELM_ERR_NOMEM, "%s", path); break; }
            buf = q;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) st = moelm_fail(MOELM_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (st) { moelm_free(buf); return st; }
    buf[n] = '\0';

    if (n >= 3 && (unsigned char)buf[0] == 0xEF && (unsigned char)buf[1] == 0xBB && (unsigned char)buf[2] == 0xBF) {
        memmove(buf, buf + 3, n - 3 + 1);   /* drop the byte order mark */
        n -= 3;
    }
    size_t bad;
    if (!utf8_check(buf, n, &bad)) {
        size_t line = 1, line_start = 0;
        for (size_t i = 0; i < bad; i++) if (buf[i] == '\n') { line++; line_start = i + 1; }
        if (buf[bad] == '\0')
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: NUL byte at byte offset %zu (line %zu, column %zu); not a text file",
                            path, bad, line, bad - line_start + 1);
        else
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: invalid UTF-8 (byte 0x%02X) at byte offset %zu (line %zu, column %zu)",
                            path, (unsigned char)buf[bad], bad, line, bad - line_start + 1);
        moelm_free(buf);
        return st;
    }
    *text = buf;
    *len = n;
    return MOELM_OK;
}

moelm_status corpus_read_file(const char *path, char **text, size_t *len) { return read_checked(path, text, len); }

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return 0;
    return 1;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void set_name(Corpus *c, int split, const char *fmt, const char *a, const char *b) {
    snprintf(c->name[split], sizeof c->name[split], fmt, a, b);
}

/* ---- the three kinds of spec ------------------------------------------------------------------------ */

static moelm_status load_builtin(Corpus *c) {
    for (int s = 0; s < 3; s++) {
        moelm_status st = builtin_generate(&c->text[s], &c->len[s], s,
                                           s == 0 ? BUILTIN_TRAIN_BYTES : BUILTIN_EVAL_BYTES, NULL, NULL);
        if (st) return st;
        set_name(c, s, "%s%s", "builtin:", corpus_split_name(s));
    }
    return MOELM_OK;
}

static moelm_status load_dir(Corpus *c, const char *dir) {
    static const char *const namings[2][3] = {
        {"ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"},
        {"train.txt", "valid.txt", "test.txt"},
    };
    size_t dl = strlen(dir);
    const char *sep = (dl > 0 && dir[dl - 1] == '/') ? "" : "/";
    char path[3][4096];
    int naming = -1;
    for (int k = 0; k < 2 && naming < 0; k++) {
        snprintf(path[0], sizeof path[0], "%s%s%s", dir, sep, namings[k][0]);
        if (file_exists(path[0])) naming = k;
    }
    if (naming < 0)
        return moelm_fail(MOELM_ERR_IO, "%s: no corpus files: looked for ptb.train.txt, ptb.valid.txt, ptb.test.txt "
                          "or train.txt, valid.txt, test.txt (or give --data one text file: split 90/5/5)", dir);
    for (int s = 0; s < 3; s++) {
        int w = snprintf(path[s], sizeof path[s], "%s%s%s", dir, sep, namings[naming][s]);
        if (w < 0 || (size_t)w >= sizeof path[s]) return moelm_fail(MOELM_ERR_IO, "%s: path too long", dir);
        if (!file_exists(path[s]))
            return moelm_fail(MOELM_ERR_IO, "%s: missing: the folder has %s, so %s, %s and %s are all expected",
                              path[s], namings[naming][0], namings[naming][0], namings[naming][1], namings[naming][2]);
    }
    for (int s = 0; s < 3; s++) {
        moelm_status st = read_checked(path[s], &c->text[s], &c->len[s]);
        if (st) return st;
        if (is_blank(c->text[s], c->len[s])) return moelm_fail(MOELM_ERR_DATA, "%s: corpus is empty", path[s]);
        set_name(c, s, "%s%s", path[s], "");
    }
    return MOELM_OK;
}

static moelm_status load_file(Corpus *c, const char *path) {
    char *all;
    size_t n;
    moelm_status st = read_checked(path, &all, &n);
    if (st) return st;

    size_t lines = 0;   /* a last line without '\n' counts too */
    for (size_t i = 0; i < n; i++) if (all[i] == '\n') lines++;
    if (n > 0 && all[n - 1] != '\n') lines++;
    size_t nv = lines / 20;
    if (nv == 0 && lines >= 3) nv = 1;
    size_t ntrain = lines - 2 * nv;

    /* byte offsets where valid and test begin: after ntrain and ntrain + nv line ends */
    size_t cut[4] = {0, n, n, n}, seen = 0;
    for (size_t i = 0; i < n && seen < ntrain + nv; i++) {
        if (all[i] == '\n') {
            seen++;
            if (seen == ntrain) cut[1] = i + 1;
            if (seen == ntrain + nv) cut[2] = i + 1;
        }
    }
    if (nv == 0) cut[1] = cut[2] = n;
    for (int s = 0; s < 3 && !st; s++) {
        size_t len = cut[s + 1] - cut[s];
        c->text[s] = moelm_malloc(len + 1);
        if (!c->text[s]) { st = moelm_fail_context(MOELM_ERR_NOMEM, "%s", path); break; }
        memcpy(c->text[s], all + cut[s], len);
        c->text[s][len] = '\0';
        c->len[s] = len;
        set_name(c, s, "%s:%s", path, corpus_split_name(s));
    }
    moelm_free(all);
    if (!st && is_blank(c->text[0], c->len[0])) st = moelm_fail(MOELM_ERR_DATA, "%s: corpus is empty", path);
    return st;
}

moelm_status corpus_load(Corpus *c, const char *spec) {
    memset(c, 0, sizeof *c);
    moelm_status st;
    if (!spec || strcmp(spec, "builtin") == 0) {
        st = load_builtin(c);
    } else {
        struct stat sb;
        if (spec[0] == '\0') return moelm_fail(MOELM_ERR_IO, "corpus: empty path (use \"builtin\" for the built-in corpus)");
        if (stat(spec, &sb) != 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open corpus: %s", spec, strerror(errno));
        st = S_ISDIR(sb.st_mode) ? load_dir(c, spec) : load_file(c, spec);
    }
    if (st) corpus_free(c);
    return st;
}

void corpus_free(Corpus *c) {
    for (int s = 0; s < 3; s++) moelm_free(c->text[s]);
    memset(c, 0, sizeof *c);
}
