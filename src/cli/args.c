/* args.c: see args.h. */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/util.h"

static int same_flag(const char *a, const char *b, size_t n) {
    for (size_t k = 0; k < n; k++) {
        char x = a[k] == '_' ? '-' : a[k], y = b[k] == '_' ? '-' : b[k];
        if (x != y) return 0;
    }
    return 1;
}

static int matches(const char *arg, const char *names, size_t *arglen) {
    size_t al = strcspn(arg, "=");
    const char *p = names;
    while (*p) {
        size_t nl = strcspn(p, "|");
        if (nl == al && same_flag(arg, p, nl)) {
            *arglen = al;
            return 1;
        }
        p += nl;
        if (*p == '|') p++;
    }
    return 0;
}

int arg_match(int argc, char **argv, int *i, const char *names, const char **val) {
    size_t al;
    if (!matches(argv[*i], names, &al)) return 0;
    if (argv[*i][al] == '=') {
        *val = argv[*i] + al + 1;
    } else if (*i + 1 < argc) {
        *val = argv[++*i];
    } else {
        moelm_fail(MOELM_ERR_ARG, "%s needs a value", argv[*i]);
        *val = NULL;
    }
    return 1;
}

int arg_flag(char **argv, int i, const char *names) {
    size_t al;
    return matches(argv[i], names, &al) && argv[i][al] == '\0';
}

int arg_int(const char *flag, const char *v, long lo, long hi, long *out) {
    if (!v) return 1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) {
        moelm_fail(MOELM_ERR_ARG, "%s: '%s' is not an integer", flag, v);
        return 1;
    }
    if (x < lo || x > hi) {
        moelm_fail(MOELM_ERR_ARG, "%s: %ld is out of range [%ld, %ld]", flag, x, lo, hi);
        return 1;
    }
    *out = x;
    return 0;
}

int arg_float(const char *flag, const char *v, double lo, double hi, double *out) {
    if (!v) return 1;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
        moelm_fail(MOELM_ERR_ARG, "%s: '%s' is not a finite number", flag, v);
        return 1;
    }
    if (x < lo || x > hi) {
        moelm_fail(MOELM_ERR_ARG, "%s: %g is out of range [%g, %g]", flag, x, lo, hi);
        return 1;
    }
    *out = x;
    return 0;
}

int cli_error(int code) {
    fprintf(stderr, "moelm: %s\n", moelm_last_error());
    return code;
}

int arg_add_set(const char *val, const char **sets, int *n, int cap) {
    if (!val) return 1;
    if (*n >= cap - 1) {
        moelm_fail(MOELM_ERR_ARG, "too many --set (at most %d)", cap - 1);
        return 1;
    }
    sets[(*n)++] = val;
    sets[*n] = NULL;
    return 0;
}
