/* json.h: a small, strict JSON (RFC 8259) DOM parser and a string builder for writing JSON.
 *
 * Parsing is strict, because configs, run state and safetensors headers come from disk:
 *   - nesting deeper than JSON_MAX_DEPTH, duplicate object keys, invalid UTF-8 (overlong forms,
 *     surrogates, code points above U+10FFFF), bad escapes, lone surrogate escapes, raw control
 *     characters in strings, leading zeros, numbers that overflow to +-inf, a byte order mark and
 *     trailing garbage are all rejected with "what: line L, column C: problem".
 *   - "\u0000" is rejected too: strings are handed out as NUL-terminated C strings.
 * Not here: streaming, comments, NaN/Infinity literals, any leniency.
 *
 * The whole tree is one allocation owned by the root returned from json_parse; json_free(root)
 * releases it. Memory is a small constant times the input (see json.c), never more.
 * Accessors are total: a wrong type or a NULL node gives NULL / 0 / "" rather than a crash, so
 * readers check json_type() where they need a specific type and report the error themselves.
 */
#ifndef MOELM_JSON_H
#define MOELM_JSON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

#define JSON_MAX_DEPTH 64
#define JSON_MAX_FILE (256u << 20)   /* json_parse_file refuses larger files (and endless devices) */

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct Json Json;

/* Parses text[0..n) (need not be NUL-terminated). `what` names the source (a file name) in errors.
 * On success *out is the root (free with json_free); on failure *out is NULL and the status is
 * MOELM_ERR_FORMAT (or MOELM_ERR_NOMEM). */
moelm_status json_parse(Json **out, const char *text, size_t n, const char *what);
/* Reads the whole file and parses it; errors name the file. */
moelm_status json_parse_file(Json **out, const char *path);
void json_free(Json *j);   /* a root from json_parse (the whole tree is one block); NULL is fine */

JsonType json_type(const Json *j);                     /* JSON_NULL for a NULL pointer */
const Json *json_get(const Json *obj, const char *key);/* NULL if absent or obj not an object */
size_t json_len(const Json *arr_or_obj);               /* element / member count; 0 otherwise */
const Json *json_at(const Json *arr_or_obj, size_t i); /* i-th element (array) or value (object) */
const char *json_key_at(const Json *obj, size_t i);    /* i-th key in file order; NULL otherwise */
double json_number(const Json *j);                     /* 0 if not a number */
/* A number as text for a key=value setter, into buf[64]: whole numbers in full ("%.0f": "%.9g" wrote
 * 1000000000 as 1e+09, which no integer parser takes), others "%.9g". Returns buf. */
const char *json_number_text(double x, char *buf);
int json_bool(const Json *j);                          /* 0 if not a bool */
const char *json_string(const Json *j);                /* NULL if not a string */
/* 1 and *v set when j is a number written as an integer literal (no fraction or exponent) that
 * fits in int64_t, exactly (doubles lose integers above 2^53); 0 otherwise. */
int json_int64(const Json *j, int64_t *v);

/* s for an error message: control characters become '?', and at most cap-1 bytes are kept (a
 * truncated string ends in "..."), so the message stays on one line. cap >= 4. Returns buf. */
const char *json_display(const char *s, char *buf, size_t cap);

/* ---- writing ---------------------------------------------------------------------------------- */

/* A growable string builder. Zero-initialise it ({0}). An allocation failure sets `failed`, after
 * which appends are ignored; check `failed` once at the end. buf is always NUL-terminated once
 * anything has been appended. */
typedef struct { char *buf; size_t len, cap; int failed; } StrBuf;

void sb_printf(StrBuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_vprintf(StrBuf *sb, const char *fmt, va_list ap);
void sb_append(StrBuf *sb, const void *data, size_t n);
/* s as a quoted JSON string: ", \ and control characters escaped; invalid UTF-8 bytes become
 * \ufffd so the output is always valid JSON. */
void sb_json_string(StrBuf *sb, const char *s);
/* A number: "%.17g" (round-trips a double) / "%.9g" (round-trips a float). NaN and +-Inf are
 * not JSON: they are written as null; callers that care check isfinite() first. */
void sb_json_double(StrBuf *sb, double v);
void sb_json_float(StrBuf *sb, float v);
/* Writes the tree compactly (no whitespace); keys in stored order. */
void json_write(StrBuf *sb, const Json *j);
void sb_free(StrBuf *sb);

#endif
