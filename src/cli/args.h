/* args.h: flag parsing shared by the subcommands. Every value is checked; a bad one sets the
 * last error and returns non-zero, and the subcommand prints it on one line. */
#ifndef MOELM_ARGS_H
#define MOELM_ARGS_H

#include <stdint.h>

/* Matches argv[*i] against a flag (names separated by '|', e.g. "-b|--batch-size"); accepts
 * "--flag value" and "--flag=value". On a match sets *val (NULL for a missing value: an error
 * is already set) and advances *i past the value. Underscores and dashes are interchangeable. */
int arg_match(int argc, char **argv, int *i, const char *names, const char **val);
int arg_flag(char **argv, int i, const char *names);   /* a flag without a value */

int arg_int(const char *flag, const char *v, long lo, long hi, long *out);
int arg_float(const char *flag, const char *v, double lo, double hi, double *out);

/* Appends a --set KEY=VALUE to sets[cap - 1] (kept NULL-terminated); non-zero when val is NULL
 * (a missing value) or the list is full, with the last error set. */
int arg_add_set(const char *val, const char **sets, int *n, int cap);

/* Sets the last error for an unknown argument of command cmd: the nearest of the flags the parse
 * loop tried on it ("did you mean"), else the other command it belongs to, else a pointer to
 * --help. Returns MOELM_ERR_ARG. Call it from the loop's last else, right after the tries. */
int arg_unknown(const char *cmd, const char *arg);

/* The name moelm was started by (argv[0], e.g. ./moelm), for examples in --help that run as printed. */
extern const char *cli_prog;

/* Prints "moelm: <last error>" and returns 2 (usage) or 1. */
int cli_error(int code);

#endif
