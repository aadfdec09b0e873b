/* progress.h: a redrawn one-line progress display on stderr, for terminals only.
 *
 *   Progress p; progress_begin(&p, "train", start_step, total_steps, !quiet);
 *   loop { ...; progress_clear(&p); printf(log line); ...; progress_update(&p, step, "loss %.3f", loss); }
 *   progress_end(&p);
 *
 * The line is shown only when enabled, stderr is a terminal and TERM is not "dumb"; otherwise every
 * call does nothing, so logs and pipes get the plain lines only. Nothing ever goes to stdout.
 * Redraws are throttled to 10 per second (the last step always draws). The ETA is the remaining
 * steps at the mean rate since the first progress_update (so set-up time does not count).
 * The cursor is left at the start of the line, so output that does not clear first (an error
 * message) overwrites the line instead of being appended to it.
 * progress_note shows a one-off status ("training tokenizer ...") until the next clear or update.
 */
#ifndef MOELM_TRAIN_PROGRESS_H
#define MOELM_TRAIN_PROGRESS_H

typedef struct {
    int on;            /* drawing at all (enabled and stderr a terminal) */
    int shown;         /* a line is on the screen now */
    long start, total; /* steps done at begin, steps in all */
    long first;        /* steps done at the first update (-1 before it) */
    double t0, t_draw; /* time of the first update, last draw time (s) */
    char label[24];
} Progress;

void progress_begin(Progress *p, const char *label, long start, long total, int enabled);
/* Draws "label [#####.....] done/total  pct% | <extra> | ETA 1m23s". extra may be NULL. */
void progress_update(Progress *p, long done, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void progress_note(Progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void progress_clear(Progress *p);   /* erases the line (before other output to the terminal) */
void progress_end(Progress *p);     /* erases the line; later calls do nothing */

/* Formats seconds as "42s", "3m05s" or "2h07m" into buf. */
void progress_fmt_eta(char *buf, int cap, double s);
/* Whether stderr would show a progress line (enabled, a terminal, TERM not dumb). */
int progress_enabled(int enabled);

#endif
