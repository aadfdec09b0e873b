/* args.c: see args.h. */
#include "args.h"

#include <ctype.h>
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

/* The flags the current argument was tried against, for arg_unknown's "did you mean": a command's
 * parse loop tries every flag it knows before it finds an argument unknown. */
static const char *tried[96];
static int n_tried;
static const char *tried_arg;

static int matches(const char *arg, const char *names, size_t *arglen) {
    if (arg != tried_arg) {
        tried_arg = arg;
        n_tried = 0;
    }
    if (n_tried < (int)(sizeof tried / sizeof *tried)) tried[n_tried++] = names;
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
    } else if (*i + 1 < argc && !(argv[*i + 1][0] == '-' && argv[*i + 1][1] == '-' && isalpha((unsigned char)argv[*i + 1][2]))) {
        *val = argv[++*i];
    } else if (*i + 1 < argc) {
        moelm_fail(MOELM_ERR_ARG, "%s needs a value before the next flag %s (write %s=VALUE for a value that starts with --)",
                   argv[*i], argv[*i + 1], argv[*i]);
        *val = NULL;
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

const char *cli_prog = "moelm";

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

/* Flags of each command, for "that is a flag of another command": a hint only (a flag missing here
 * just gets no hint). */
static const struct { const char *cmd, *flags; } other_flags[] = {
    {"train", " --data --config --set --print-config --tokenizer --out --resume --init-from --force --steps --stop-at"
              " --time-budget --grad-accum --batch-size --seq-len --stride --lr --seed --threads --eval-interval"
              " --eval-batches --log-interval --ckpt-interval --keep --skip-nonfinite --bf16 --quiet --expert-parallel "},
    {"eval", " --model --data --batch-size --seq-len --stride --threads --ema --dynamic --dyn-lr --dyn-decay --dyn-rms "},
    {"generate", " --model --prompt --n-predict --interactive --temp --top-k --top-p --seed --threads --bf16 --beams"
                 " --length-penalty --stop-eos --ema "},
    {"export", " --model --format --out --dtype --type --max-shard-size --ema "},
    {"bench", " --config --model --set --threads --steps --warmup --batch-size --seq-len --vocab --gen --bf16"
              " --no-peak --profile --seed "},
    {"forward", " --model --inputs --output --threads "},
    {"report", " --output --csv "},
};

int arg_unknown(const char *cmd, const char *arg) {
    size_t al = strcspn(arg, "=");
    char flag[64];
    snprintf(flag, sizeof flag, "%.*s", (int)(al < 63 ? al : 63), arg);
    for (int k = 0; flag[k]; k++)
        if (flag[k] == '_') flag[k] = '-';
    if (arg[0] != '-')
        return moelm_fail(MOELM_ERR_ARG, "%s: unexpected argument '%s' (flags start with -; see moelm %s --help)",
                          cmd, arg, cmd);
    char padded[68];
    snprintf(padded, sizeof padded, " %s ", flag);
    for (size_t c = 0; c < sizeof other_flags / sizeof *other_flags; c++)
        if (strcmp(other_flags[c].cmd, cmd) && strstr(other_flags[c].flags, padded))
            return moelm_fail(MOELM_ERR_ARG, "%s: '%s' is a flag of moelm %s, not of moelm %s (see moelm %s --help)",
                              cmd, flag, other_flags[c].cmd, cmd, cmd);
    /* the nearest of the flags this argument was tried against (a long flag against long names) */
    const char *near = NULL;
    int dist = 1 << 30;
    char name[64];
    for (int t = 0; arg == tried_arg && t < n_tried; t++) {
        for (const char *p = tried[t]; *p;) {
            size_t n = strcspn(p, "|");
            snprintf(name, sizeof name, "%.*s", (int)n, p);
            p += n + (p[n] == '|');
            if (flag[1] == '-' && name[1] != '-') continue;
            int d = str_edit_distance(flag, name);
            if (d < dist) {
                dist = d;
                near = tried[t];
            }
        }
    }
    if (near && str_near_miss(flag, dist)) {
        const char *longest = strrchr(near, '|');   /* name the long form: --batch-size, not -b */
        longest = longest ? longest + 1 : near;
        return moelm_fail(MOELM_ERR_ARG, "%s: unknown flag '%s' (did you mean %s? see moelm %s --help)",
                          cmd, arg, longest, cmd);
    }
    return moelm_fail(MOELM_ERR_ARG, "%s: unknown flag '%s' (see moelm %s --help)", cmd, arg, cmd);
}
