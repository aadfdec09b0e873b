/* progress.c: the terminal progress line (see progress.h). Writes only to stderr. */
#include "train/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common/util.h"

int progress_enabled(int enabled) {
    const char *term = getenv("TERM");
    return enabled && isatty(fileno(stderr)) && !(term && !strcmp(term, "dumb"));
}

void progress_begin(Progress *p, const char *label, long start, long total, int enabled) {
    memset(p, 0, sizeof *p);
    p->on = progress_enabled(enabled);
    p->start = start;
    p->total = total;
    p->first = -1;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
}

void progress_fmt_eta(char *buf, int cap, double s) {
    if (!(s >= 0) || s > 1e8) { snprintf(buf, (size_t)cap, "?"); return; }
    long t = (long)(s + 0.5);
    if (t < 60) snprintf(buf, (size_t)cap, "%lds", t);
    else if (t < 3600) snprintf(buf, (size_t)cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, (size_t)cap, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
}

void progress_update(Progress *p, long done, const char *fmt, ...) {
    if (!p->on) return;
    double now = time_now();
    if (p->first < 0) { p->first = done; p->t0 = now; }
    if (p->shown && now - p->t_draw < 0.1 && done < p->total) return;
    p->t_draw = now;
    double frac = p->total > 0 ? (double)done / p->total : 0;
    if (frac > 1) frac = 1;
    enum { BAR = 24 };
    char bar[BAR + 1], extra[96] = "", eta[32] = "?";
    int fill = (int)(frac * BAR);
    for (int i = 0; i < BAR; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(extra, sizeof extra, fmt, ap);
        va_end(ap);
    }
    long did = done - p->first;
    if (did > 0) progress_fmt_eta(eta, sizeof eta, (now - p->t0) / did * (double)(p->total - done));
    fprintf(stderr, "\r\033[K%s [%s] %ld/%ld %3.0f%%%s%s | ETA %s\r", p->label, bar, done, p->total, 100 * frac,
            extra[0] ? " | " : "", extra, eta);
    fflush(stderr);
    p->shown = 1;
}

void progress_note(Progress *p, const char *fmt, ...) {
    if (!p->on) return;
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\r\033[K%s\r", msg);
    fflush(stderr);
    p->shown = 1;
}

void progress_clear(Progress *p) {
    if (!p->on || !p->shown) return;
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
    p->shown = 0;
}

void progress_end(Progress *p) {
    progress_clear(p);
    p->on = 0;
}
