/* csv.c: `moelm report --csv`, a run's metrics.jsonl as one CSV table (report.h), for pandas,
 * spreadsheets and plotting tools that do not read JSON lines.
 *
 * Two passes over the records: the first collects the columns (every leaf key path, nested objects and
 * arrays flattened with dots: "moe.0.load.3"), in first-seen order; the second writes a row per record.
 * Numbers as "%.9g" (whole numbers in full), booleans true/false, strings quoted when they hold a comma,
 * quote or line break (RFC 4180), a missing key or JSON null an empty field.
 */
#include "report/report.h"

#include <stdio.h>
#include <string.h>
#include "common/util.h"

typedef struct {
    char **name;      /* [n] column names (moelm_malloc'ed) */
    int n, cap;
    int next;         /* where the previous lookup ended: records repeat their keys' order */
} Columns;

/* The index of column `name`, added when absent (-1: out of memory). */
static int column_index(Columns *c, const char *name) {
    for (int k = 0; k < c->n; k++) {
        int i = (c->next + k) % c->n;
        if (!strcmp(c->name[i], name)) { c->next = i + 1; return i; }
    }
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        char **nn = moelm_realloc(c->name, sizeof(char *) * (size_t)cap);
        if (!nn) return -1;
        c->name = nn;
        c->cap = cap;
    }
    size_t len = strlen(name);
    char *copy = moelm_malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, name, len + 1);
    c->name[c->n] = copy;
    c->next = c->n + 1;
    return c->n++;
}

/* Walks j under the key path prefix[0..plen): each leaf's column is looked up (added in pass 1) and,
 * when vals is not NULL, vals[column] set to the leaf. Returns -1 on out of memory. */
static int flatten(const Json *j, char *prefix, size_t plen, size_t pcap, Columns *c, const Json **vals) {
    JsonType t = json_type(j);
    if (t == JSON_OBJECT || t == JSON_ARRAY) {
        for (size_t i = 0; i < json_len(j); i++) {
            char idx[24];
            const char *key = t == JSON_OBJECT ? json_key_at(j, i) : (snprintf(idx, sizeof idx, "%zu", i), idx);
            int w = snprintf(prefix + plen, pcap - plen, "%s%s", plen ? "." : "", key);
            if (w < 0 || (size_t)w >= pcap - plen) continue;   /* a path past 1 KB: left out */
            if (flatten(json_at(j, i), prefix, plen + (size_t)w, pcap, c, vals)) return -1;
            prefix[plen] = 0;
        }
        return 0;
    }
    int k = column_index(c, prefix);
    if (k < 0) return -1;
    if (vals) vals[k] = j;
    return 0;
}

static void csv_field(StrBuf *sb, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) { sb_append(sb, s, strlen(s)); return; }
    sb_append(sb, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"') sb_append(sb, "\"\"", 2);   /* a quote is doubled */
        else sb_append(sb, p, 1);
    }
    sb_append(sb, "\"", 1);
}

static void csv_value(StrBuf *sb, const Json *v) {
    char buf[64];
    switch (json_type(v)) {
    case JSON_NUMBER: sb_printf(sb, "%s", json_number_text(json_number(v), buf)); break;
    case JSON_BOOL: sb_printf(sb, "%s", json_bool(v) ? "true" : "false"); break;
    case JSON_STRING: csv_field(sb, json_string(v)); break;
    default: break;   /* null, missing: empty */
    }
}

moelm_status report_csv(StrBuf *sb, const char *run, int *bad_lines) {
    Json **recs = NULL;
    size_t nr = 0;
    moelm_status st = report_read_records(run, &recs, &nr, bad_lines);
    if (st) return st;
    Columns c = {0};
    char prefix[1024];
    for (size_t i = 0; i < nr && !st; i++) {
        prefix[0] = 0;
        if (flatten(recs[i], prefix, 0, sizeof prefix, &c, NULL)) st = moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory", run);
    }
    const Json **vals = st ? NULL : moelm_calloc((size_t)(c.n ? c.n : 1), sizeof(const Json *));
    if (!st && !vals) st = moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory", run);
    for (int k = 0; k < c.n && !st; k++) {
        if (k) sb_append(sb, ",", 1);
        csv_field(sb, c.name[k]);
    }
    if (!st) sb_append(sb, "\n", 1);
    for (size_t i = 0; i < nr && !st; i++) {
        memset(vals, 0, sizeof(const Json *) * (size_t)c.n);
        prefix[0] = 0;
        flatten(recs[i], prefix, 0, sizeof prefix, &c, vals);   /* every column exists: no allocation */
        for (int k = 0; k < c.n; k++) {
            if (k) sb_append(sb, ",", 1);
            csv_value(sb, vals[k]);
        }
        sb_append(sb, "\n", 1);
    }
    for (int k = 0; k < c.n; k++) moelm_free(c.name[k]);
    moelm_free(c.name);
    moelm_free(vals);
    report_free_records(recs, nr);
    return st;
}
