/* json.c: strict RFC 8259 parser into a small DOM, and the StrBuf writer. See json.h.
 *
 * Parsing takes two passes over the text. The first validates everything except duplicate keys and
 * counts: nodes, object members, string bytes, and the children of every container (in preorder).
 * The second builds the tree into one exact-size block:
 *     [Json nodes: root, then every container's children contiguously] [key pointers] [string bytes]
 * so the root's address is the block's and json_free(root) releases everything. Memory is thus a
 * small constant times the input (24 bytes a node, 8 + 16 transient a key, 4 a bracket, <= 1 a
 * string byte), whatever the input is, with three allocations in all and no per-node overhead.
 * Recursion depth is bounded by JSON_MAX_DEPTH when parsing and writing.
 */
#include "io/json.h"
#include "io/fileio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct Json {
    uint8_t type;          /* JsonType */
    uint8_t b;             /* JSON_BOOL value */
    uint8_t is_int;        /* JSON_NUMBER written as an integer literal that fits int64: u.ival */
    uint8_t pad_;
    uint32_t n;            /* JSON_ARRAY / JSON_OBJECT: child count */
    union {
        double num;        /* JSON_NUMBER, !is_int */
        int64_t ival;      /* JSON_NUMBER, is_int */
        const char *str;   /* JSON_STRING: NUL-terminated UTF-8 */
        Json *items;       /* containers: [n] children */
    } u;
    const char **keys;     /* JSON_OBJECT: [n] keys */
};

/* ---- parser ----------------------------------------------------------------------------------- */

typedef struct { const char *k; size_t pos; } KeyPos;

typedef struct {
    const unsigned char *s;
    size_t n, pos;
    const char *what;
    int depth;
    int build;                 /* 0: validating and counting pass; 1: building pass */
    /* counted in pass 1 */
    size_t nodes, members, strbytes, containers;
    uint32_t *counts;          /* [containers] children per container, preorder */
    /* used in pass 2 */
    size_t cidx;               /* next container, preorder */
    Json *node_at;   size_t node_next;
    const char **key_at; size_t key_next;
    char *str_at;    size_t str_next;
    KeyPos *scratch; size_t scratch_top;   /* [members] a stack: open objects' keys */
} Parser;

/* Reports the error at byte offset `at` as line:column (1-based; column counts bytes). */
static moelm_status perr_at(const Parser *p, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static moelm_status perr_at(const Parser *p, size_t at, const char *fmt, ...) {
    size_t line = 1, col = 1;
    if (at > p->n) at = p->n;
    for (size_t i = 0; i < at; i++) {
        if (p->s[i] == '\n') { line++; col = 1; } else col++;
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return moelm_fail(MOELM_ERR_FORMAT, "%s: line %zu, column %zu: %s", p->what, line, col, msg);
}

static moelm_status nomem(const Parser *p) {
    return moelm_fail_context(MOELM_ERR_NOMEM, "%s: parsing JSON", p->what);
}

static void skip_ws(Parser *p) {
    while (p->pos < p->n) {
        unsigned char c = p->s[p->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->pos++;
        else break;
    }
}

/* Describes the byte at pos for messages: a printable character, "end of input" or a hex byte. */
static const char *describe(const Parser *p, size_t pos, char buf[16]) {
    if (pos >= p->n) return "end of input";
    unsigned char c = p->s[pos];
    if (c >= 0x21 && c < 0x7f) snprintf(buf, 16, "'%c'", c);
    else snprintf(buf, 16, "byte 0x%02x", c);
    return buf;
}

/* Length of the valid UTF-8 sequence at s[0..avail), or 0 if it is invalid (RFC 3629: no overlong
 * forms, no surrogates U+D800..DFFF, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 0;
    if (avail < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

static int hex4(const unsigned char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t utf8_put(char *d, unsigned cp) {
    if (cp < 0x80) { d[0] = (char)cp; return 1; }
    if (cp < 0x800) { d[0] = (char)(0xC0 | (cp >> 6)); d[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | (cp >> 12)); d[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (cp >> 18)); d[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string starting at the opening quote. Pass 1 validates and counts its bytes; pass 2
 * decodes it into the string area and sets *out. */
static moelm_status parse_string(Parser *p, const char **out) {
    size_t start = p->pos + 1, i = start;
    for (;;) {
        if (i >= p->n) return perr_at(p, p->pos, "unterminated string");
        unsigned char c = p->s[i];
        if (c == '"') break;
        if (c < 0x20) return perr_at(p, i, "raw control character 0x%02x in string (must be escaped)", c);
        if (c == '\\') {
            if (i + 1 >= p->n) return perr_at(p, p->pos, "unterminated string");
            unsigned char e = p->s[i + 1];
            if (e == 'u') {
                unsigned u;
                if (i + 6 > p->n || !hex4(p->s + i + 2, &u))
                    return perr_at(p, i, "bad \\u escape (need four hex digits)");
                if (u == 0) return perr_at(p, i, "\\u0000 is not supported (strings are C strings)");
                if (u >= 0xDC00 && u <= 0xDFFF) return perr_at(p, i, "lone low surrogate \\u%04x", u);
                if (u >= 0xD800 && u <= 0xDBFF) {
                    unsigned u2;
                    if (i + 12 > p->n || p->s[i + 6] != '\\' || p->s[i + 7] != 'u' ||
                        !hex4(p->s + i + 8, &u2) || u2 < 0xDC00 || u2 > 0xDFFF)
                        return perr_at(p, i, "high surrogate \\u%04x not followed by a low surrogate", u);
                    i += 12;
                } else {
                    i += 6;
                }
                continue;
            }
            if (e == 0 || !strchr("\"\\/bfnrt", e))
                return perr_at(p, i, "bad escape sequence '\\%c'", (e >= 0x20 && e < 0x7f) ? e : '?');
            i += 2;
            continue;
        }
        size_t len = utf8_len(p->s + i, p->n - i);
        if (!len) return perr_at(p, i, "invalid UTF-8 byte 0x%02x in string", c);
        i += len;
    }
    size_t end = i;
    p->pos = end + 1;
    if (!p->build) {
        p->strbytes += end - start + 1;   /* decoded text is never longer than its source */
        return MOELM_OK;
    }
    /* Pass 2: decode; pass 1 guarantees every escape and sequence is well formed. */
    char *d = p->str_at + p->str_next;
    size_t k = 0;
    for (i = start; i < end;) {
        unsigned char c = p->s[i];
        if (c != '\\') { d[k++] = (char)c; i++; continue; }
        unsigned char e = p->s[i + 1];
        switch (e) {
        case 'b': d[k++] = '\b'; i += 2; break;
        case 'f': d[k++] = '\f'; i += 2; break;
        case 'n': d[k++] = '\n'; i += 2; break;
        case 'r': d[k++] = '\r'; i += 2; break;
        case 't': d[k++] = '\t'; i += 2; break;
        case 'u': {
            unsigned u, u2;
            hex4(p->s + i + 2, &u);
            i += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                hex4(p->s + i + 2, &u2);
                i += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00);
            }
            k += utf8_put(d + k, u);
            break;
        }
        default: d[k++] = (char)e; i += 2; break;   /* " \ / */
        }
    }
    d[k] = 0;
    p->str_next += k + 1;
    *out = d;
    return MOELM_OK;
}

static moelm_status parse_number(Parser *p, Json *j) {
    size_t start = p->pos, i = start;
    int integral = 1;
    if (i < p->n && p->s[i] == '-') i++;
    if (i >= p->n || p->s[i] < '0' || p->s[i] > '9') return perr_at(p, start, "invalid number");
    if (p->s[i] == '0') {
        i++;
        if (i < p->n && p->s[i] >= '0' && p->s[i] <= '9')
            return perr_at(p, start, "leading zeros are not allowed in numbers");
    } else {
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') i++;
    }
    if (i < p->n && p->s[i] == '.') {
        integral = 0;
        i++;
        if (i >= p->n || p->s[i] < '0' || p->s[i] > '9')
            return perr_at(p, i, "digit expected after decimal point");
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') i++;
    }
    if (i < p->n && (p->s[i] == 'e' || p->s[i] == 'E')) {
        integral = 0;
        i++;
        if (i < p->n && (p->s[i] == '+' || p->s[i] == '-')) i++;
        if (i >= p->n || p->s[i] < '0' || p->s[i] > '9') return perr_at(p, i, "digit expected in exponent");
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') i++;
    }
    int neg = p->s[start] == '-';
    if (integral) {
        /* exact int64, accumulated negatively so that INT64_MIN fits */
        int64_t acc = 0;
        int ok = 1;
        for (size_t k = start + (size_t)neg; k < i; k++) {
            int d = p->s[k] - '0';
            if (acc < (INT64_MIN + d) / 10) { ok = 0; break; }
            acc = acc * 10 - d;
        }
        if (ok && !neg && acc == INT64_MIN) ok = 0;
        if (ok && neg && acc == 0) ok = 0;   /* "-0" is the double -0.0: keep its sign */
        if (ok) {
            /* (double)ival and strtod of the same integer round identically: json_number agrees */
            if (j) { j->type = JSON_NUMBER; j->is_int = 1; j->u.ival = neg ? acc : -acc; }
            p->pos = i;
            return MOELM_OK;
        }
    }
    size_t len = i - start;
    char small[64], *buf = small;
    if (len >= sizeof small) {
        /* Rare (hundreds of digits): a transient copy for strtod, which needs a terminator. */
        buf = malloc(len + 1);
        if (!buf) return moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory parsing a number", p->what);
    }
    memcpy(buf, p->s + start, len);
    buf[len] = 0;
    double v = strtod(buf, NULL);   /* the grammar above is a subset of strtod's (C locale) */
    if (buf != small) free(buf);
    if (isinf(v)) return perr_at(p, start, "number out of range (overflows a double)");
    if (j) { j->type = JSON_NUMBER; j->u.num = v; }
    p->pos = i;
    return MOELM_OK;
}

static int keypos_cmp(const void *a, const void *b) {
    const KeyPos *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    if (c) return c;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static moelm_status parse_value(Parser *p, Json *j);

/* Pass 1: j is NULL; the container's child count goes to counts[its preorder index].
 * Pass 2: j's children are the next counts[idx] free nodes; keys are checked for duplicates. */
static moelm_status parse_container(Parser *p, Json *j, int is_obj) {
    size_t open = p->pos;
    if (++p->depth > JSON_MAX_DEPTH)
        return perr_at(p, open, "nesting deeper than %d levels", JSON_MAX_DEPTH);
    size_t idx = p->build ? p->cidx++ : p->containers++;
    size_t expect = 0, base = p->scratch_top;
    if (p->build) {
        expect = p->counts[idx];
        j->type = is_obj ? JSON_OBJECT : JSON_ARRAY;
        j->n = (uint32_t)expect;
        j->u.items = p->node_at + p->node_next;
        p->node_next += expect;
        if (is_obj) { j->keys = p->key_at + p->key_next; p->key_next += expect; }
    }
    p->pos++;
    size_t count = 0;
    char close = is_obj ? '}' : ']';
    char db[16];
    moelm_status st;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == (unsigned char)close) {
        p->pos++;
    } else {
        for (;;) {
            skip_ws(p);
            Json *child = NULL;
            if (p->build) {
                CHECK(count < expect);   /* both passes read the same text */
                child = &j->u.items[count];
            }
            if (is_obj) {
                if (p->pos >= p->n || p->s[p->pos] != '"')
                    return perr_at(p, p->pos, "object key (a string) expected, found %s", describe(p, p->pos, db));
                size_t kpos = p->pos;
                const char *key = NULL;
                if ((st = parse_string(p, &key))) return st;
                if (p->build) {
                    j->keys[count] = key;
                    p->scratch[p->scratch_top].k = key;
                    p->scratch[p->scratch_top].pos = kpos;
                    p->scratch_top++;
                }
                skip_ws(p);
                if (p->pos >= p->n || p->s[p->pos] != ':')
                    return perr_at(p, p->pos, "':' expected after object key, found %s", describe(p, p->pos, db));
                p->pos++;
                skip_ws(p);
            }
            if ((st = parse_value(p, child))) return st;
            count++;
            skip_ws(p);
            if (p->pos < p->n && p->s[p->pos] == ',') { p->pos++; continue; }
            if (p->pos < p->n && p->s[p->pos] == (unsigned char)close) { p->pos++; break; }
            return perr_at(p, p->pos, "',' or '%c' expected, found %s", close, describe(p, p->pos, db));
        }
    }
    if (!p->build) {
        p->counts[idx] = (uint32_t)count;
        p->nodes += count;
        if (is_obj) p->members += count;
    } else {
        CHECK(count == expect);
        if (is_obj && count > 1) {
            /* Duplicate keys: sort (key, position) pairs; a duplicate is reported at its second use. */
            KeyPos *kp = p->scratch + base;
            qsort(kp, count, sizeof *kp, keypos_cmp);
            for (size_t i = 1; i < count; i++) {
                if (strcmp(kp[i - 1].k, kp[i].k) == 0) {
                    char shown[64];
                    return perr_at(p, kp[i].pos, "duplicate key \"%s\"", json_display(kp[i].k, shown, sizeof shown));
                }
            }
        }
        p->scratch_top = base;
    }
    p->depth--;
    return MOELM_OK;
}

static moelm_status parse_value(Parser *p, Json *j) {
    char db[16];
    if (p->pos >= p->n) return perr_at(p, p->pos, "value expected, found end of input");
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, j, 1);
    case '[': return parse_container(p, j, 0);
    case '"': {
        const char *s = NULL;
        moelm_status st = parse_string(p, &s);
        if (st) return st;
        if (j) { j->type = JSON_STRING; j->u.str = s; }
        return MOELM_OK;
    }
    case 't': case 'f': case 'n': {
        const char *lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
        size_t len = strlen(lit);
        if (p->n - p->pos < len || memcmp(p->s + p->pos, lit, len) != 0)
            return perr_at(p, p->pos, "invalid literal (expected %s)", lit);
        p->pos += len;
        if (j) { j->type = c == 'n' ? JSON_NULL : JSON_BOOL; j->b = c == 't'; }
        return MOELM_OK;
    }
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, j);
        return perr_at(p, p->pos, "value expected, found %s", describe(p, p->pos, db));
    }
}

/* One pass over the whole text: a value surrounded by optional whitespace. */
static moelm_status parse_text(Parser *p, Json *root) {
    p->pos = 0;
    p->depth = 0;
    skip_ws(p);
    if (p->pos >= p->n) return perr_at(p, p->pos, "empty input (no JSON value)");
    moelm_status st = parse_value(p, root);
    if (st) return st;
    skip_ws(p);
    char db[16];
    if (p->pos < p->n)
        return perr_at(p, p->pos, "trailing characters after the JSON value (%s)", describe(p, p->pos, db));
    return MOELM_OK;
}

moelm_status json_parse(Json **out, const char *text, size_t n, const char *what) {
    *out = NULL;
    Parser p;
    memset(&p, 0, sizeof p);
    p.s = (const unsigned char *)text;
    p.n = n;
    p.what = what ? what : "(json)";
    if (n > UINT32_MAX)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: JSON text of %zu bytes is larger than the 4 GiB supported", p.what, n);
    if (n >= 3 && p.s[0] == 0xEF && p.s[1] == 0xBB && p.s[2] == 0xBF)
        return perr_at(&p, 0, "byte order mark is not allowed");
    /* Every container starts with a bracket byte: their count bounds the number of containers. */
    size_t brackets = 0;
    for (size_t i = 0; i < n; i++) brackets += p.s[i] == '[' || p.s[i] == '{';
    if (brackets) {
        p.counts = moelm_malloc(brackets * sizeof *p.counts);
        if (!p.counts) return nomem(&p);
    }
    moelm_status st = parse_text(&p, NULL);
    if (st) { moelm_free(p.counts); return st; }

    size_t nodes = 1 + p.nodes;
    size_t bytes = nodes * sizeof(Json) + p.members * sizeof(const char *) + p.strbytes;
    char *block = moelm_malloc(bytes);
    if (p.members) p.scratch = moelm_malloc(p.members * sizeof *p.scratch);
    if (!block || (p.members && !p.scratch)) {
        moelm_free(block); moelm_free(p.scratch); moelm_free(p.counts);
        return nomem(&p);
    }
    memset(block, 0, nodes * sizeof(Json));
    Json *root = (Json *)block;
    p.node_at = root;
    p.node_next = 1;
    p.key_at = (const char **)(block + nodes * sizeof(Json));
    p.str_at = block + nodes * sizeof(Json) + p.members * sizeof(const char *);
    p.build = 1;
    st = parse_text(&p, root);
    moelm_free(p.scratch);
    moelm_free(p.counts);
    if (st) { moelm_free(block); return st; }   /* only a duplicate key gets here */
    CHECK(p.node_next == nodes && p.key_next == p.members && p.str_next <= p.strbytes);
    *out = root;
    return MOELM_OK;
}

moelm_status json_parse_file(Json **out, const char *path) {
    *out = NULL;
    char *data = NULL;
    size_t n = 0;
    moelm_status st = file_read_all_limit(path, &data, &n, JSON_MAX_FILE);
    if (st) return st;
    st = json_parse(out, data, n, path);
    moelm_free(data);
    return st;
}

void json_free(Json *j) { moelm_free(j); }   /* the root is the start of the one block */

const char *json_display(const char *s, char *buf, size_t cap) {
    CHECK(cap >= 4);
    size_t n = strlen(s), keep = n < cap ? n : cap - 4;   /* one byte per byte: no expansion */
    while (keep < n && keep > 0 && ((unsigned char)s[keep] & 0xC0) == 0x80) keep--;   /* whole characters */
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (keep < n) { memcpy(buf + keep, "...", 3); keep += 3; }
    buf[keep] = 0;
    return buf;
}

/* ---- accessors -------------------------------------------------------------------------------- */

JsonType json_type(const Json *j) { return j ? (JsonType)j->type : JSON_NULL; }

const Json *json_get(const Json *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT || !key) return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->u.items[i];
    return NULL;
}

size_t json_len(const Json *j) {
    return (j && (j->type == JSON_ARRAY || j->type == JSON_OBJECT)) ? j->n : 0;
}

const Json *json_at(const Json *j, size_t i) {
    if (!j || (j->type != JSON_ARRAY && j->type != JSON_OBJECT) || i >= j->n) return NULL;
    return &j->u.items[i];
}

const char *json_key_at(const Json *obj, size_t i) {
    if (!obj || obj->type != JSON_OBJECT || i >= obj->n) return NULL;
    return obj->keys[i];
}

double json_number(const Json *j) {
    if (!j || j->type != JSON_NUMBER) return 0.0;
    return j->is_int ? (double)j->u.ival : j->u.num;
}

const char *json_number_text(double x, char *buf) {
    if (x == floor(x) && fabs(x) < 1e60) snprintf(buf, 64, "%.0f", x);
    else snprintf(buf, 64, "%.9g", x);
    return buf;
}
int json_bool(const Json *j) { return (j && j->type == JSON_BOOL) ? j->b : 0; }
const char *json_string(const Json *j) { return (j && j->type == JSON_STRING) ? j->u.str : NULL; }

int json_int64(const Json *j, int64_t *v) {
    if (!j || j->type != JSON_NUMBER || !j->is_int) return 0;
    *v = j->u.ival;
    return 1;
}

/* ---- StrBuf ----------------------------------------------------------------------------------- */

static int sb_reserve(StrBuf *sb, size_t extra) {
    if (sb->failed) return 0;
    if (extra > SIZE_MAX - sb->len - 1) { sb->failed = 1; return 0; }
    size_t need = sb->len + extra + 1;
    if (need <= sb->cap) return 1;
    size_t nc = sb->cap ? sb->cap : 64;
    while (nc < need) nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    char *nb = moelm_realloc(sb->buf, nc);
    if (!nb) { sb->failed = 1; return 0; }
    sb->buf = nb;
    sb->cap = nc;
    return 1;
}

void sb_append(StrBuf *sb, const void *data, size_t n) {
    if (!sb_reserve(sb, n)) return;
    if (n) memcpy(sb->buf + sb->len, data, n);
    sb->len += n;
    sb->buf[sb->len] = 0;
}

void sb_vprintf(StrBuf *sb, const char *fmt, va_list ap) {
    if (!sb_reserve(sb, 64)) return;
    va_list ap2;
    va_copy(ap2, ap);
    int k = vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap2);
    va_end(ap2);
    if (k < 0) { sb->failed = 1; sb->buf[sb->len] = 0; return; }
    if ((size_t)k >= sb->cap - sb->len) {
        if (!sb_reserve(sb, (size_t)k)) { sb->buf[sb->len] = 0; return; }
        vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap);
    }
    sb->len += (size_t)k;
}

void sb_printf(StrBuf *sb, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(sb, fmt, ap);
    va_end(ap);
}

void sb_json_string(StrBuf *sb, const char *s) {
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)u);
    sb_append(sb, "\"", 1);
    size_t run = 0;   /* start of the pending run of bytes copied verbatim */
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        const char *esc = NULL;
        char ubuf[8];
        size_t len = 1;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) { snprintf(ubuf, sizeof ubuf, "\\u%04x", c); esc = ubuf; }
            else if (c >= 0x80) {
                len = utf8_len(u + i, n - i);
                if (!len) { esc = "\\ufffd"; len = 1; }
            }
        }
        if (esc) {
            sb_append(sb, u + run, i - run);
            sb_append(sb, esc, strlen(esc));
            i += len;
            run = i;
        } else {
            i += len;
        }
    }
    sb_append(sb, u + run, n - run);
    sb_append(sb, "\"", 1);
}

void sb_json_double(StrBuf *sb, double v) {
    if (!isfinite(v)) {
        sb_append(sb, "null", 4);
        return;
    }
    char buf[32];   /* the shortest that reads back as v: 0.001, not 0.0010000000000000000208 */
    for (int p = 15; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    sb_printf(sb, "%s", buf);
}

void sb_json_float(StrBuf *sb, float v) {
    if (!isfinite(v)) sb_append(sb, "null", 4);
    else sb_printf(sb, "%.9g", (double)v);
}

void json_write(StrBuf *sb, const Json *j) {
    switch (json_type(j)) {
    case JSON_NULL: sb_append(sb, "null", 4); break;
    case JSON_BOOL: if (j->b) sb_append(sb, "true", 4); else sb_append(sb, "false", 5); break;
    case JSON_NUMBER:
        if (j->is_int) sb_printf(sb, "%lld", (long long)j->u.ival);
        else sb_json_double(sb, j->u.num);
        break;
    case JSON_STRING: sb_json_string(sb, j->u.str); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        sb_append(sb, j->type == JSON_OBJECT ? "{" : "[", 1);
        for (size_t i = 0; i < j->n; i++) {
            if (i) sb_append(sb, ",", 1);
            if (j->type == JSON_OBJECT) { sb_json_string(sb, j->keys[i]); sb_append(sb, ":", 1); }
            json_write(sb, &j->u.items[i]);
        }
        sb_append(sb, j->type == JSON_OBJECT ? "}" : "]", 1);
        break;
    }
}

void sb_free(StrBuf *sb) {
    moelm_free(sb->buf);
    sb->buf = NULL;
    sb->len = sb->cap = 0;
    sb->failed = 0;
}
