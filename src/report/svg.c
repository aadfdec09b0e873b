/* svg.c: line charts and heatmaps as inline SVG (see svg.h). Coordinates are written with one
 * decimal (0.1 px is below what a screen shows); every string is escaped. */
#include "report/svg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- scales ------------------------------------------------------------------------------------- */

double svg_scale_map(const SvgScale *s, double v) {
    double lo = s->lo, hi = s->hi;
    if (s->log) { v = log10(v); lo = log10(lo); hi = log10(hi); }
    return s->p0 + (v - lo) / (hi - lo) * (s->p1 - s->p0);
}

static int usable(double v, int log) { return isfinite(v) && (!log || v > 0); }

void svg_scale_fit(SvgScale *s, const double *v, int n, int log) {
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        if (usable(v[i], log)) {
            if (v[i] < lo) lo = v[i];
            if (v[i] > hi) hi = v[i];
        }
    s->log = log;
    if (lo > hi) { lo = log ? 1 : 0; hi = log ? 10 : 1; }
    if (log) {
        if (hi <= lo * 1.0001) { lo /= 1.5; hi *= 1.5; }
        else { double pad = pow(hi / lo, 0.03); lo /= pad; hi *= pad; }
    } else {
        if (hi - lo <= 1e-12 * (fabs(lo) + fabs(hi)) || hi == lo) {
            double d = lo != 0 ? fabs(lo) * 0.1 : 1;
            lo = lo >= 0 && lo - d < 0 ? 0 : lo - d;   /* a constant count of 0 shows as [0, 1], not [-1, 1] */
            hi += d;
        } else {
            double pad = (hi - lo) * 0.03;
            /* a non-negative quantity keeps 0 as its floor rather than a padded negative one */
            lo = lo >= 0 && lo - pad < 0 ? 0 : lo - pad;
            hi += pad;
        }
    }
    s->lo = lo;
    s->hi = hi;
}

static double nice_step(double range, int max_ticks) {
    double raw = range / (max_ticks > 1 ? max_ticks - 1 : 1);
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

int svg_ticks(const SvgScale *s, double *ticks, int cap) {
    int n = 0;
    if (cap <= 0) return 0;
    if (s->log && s->hi / s->lo >= 5) {
        static const double m125[3] = {1, 2, 5};
        int k0 = (int)floor(log10(s->lo)), k1 = (int)ceil(log10(s->hi));
        int only_decades = (k1 - k0) * 3 > cap;
        for (int k = k0; k <= k1; k++)
            for (int j = 0; j < (only_decades ? 1 : 3); j++) {
                double t = m125[j] * pow(10, k);
                if (t >= s->lo && t <= s->hi && n < cap) ticks[n++] = t;
            }
        if (n >= 2) return n;
        n = 0;
    }
    double step = nice_step(s->hi - s->lo, cap < 6 ? cap : 6);
    for (double t = ceil(s->lo / step) * step; t <= s->hi + step * 1e-9 && n < cap; t += step)
        ticks[n++] = fabs(t) < step * 1e-9 ? 0 : t;
    return n;
}

/* ---- text and colour ---------------------------------------------------------------------------- */

void svg_escape(StrBuf *sb, const char *s) {
    if (!s) return;
    const char *run = s;
    for (; *s; s++) {
        const char *rep = NULL;
        switch (*s) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: break;
        }
        if (rep) {
            sb_append(sb, run, (size_t)(s - run));
            sb_printf(sb, "%s", rep);
            run = s + 1;
        }
    }
    sb_append(sb, run, (size_t)(s - run));
}

const char *svg_palette(int i) {
    static const char *const pal[10] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                        "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
    if (i < 0) i = -i;
    return pal[i % 10];
}

/* the stroke-dasharray attribute of SvgSeries.dashed */
static const char *dash_attr(int dashed) {
    return dashed == 2 ? " stroke-dasharray=\"1.5 3\"" : dashed ? " stroke-dasharray=\"5 3\"" : "";
}

void svg_ramp(double t, char out[8]) {
    /* piecewise-linear through light yellow, green-teal, blue, dark navy (a YlGnBu-like ramp) */
    static const double stops[5][3] = {{255, 255, 217}, {161, 218, 180}, {65, 182, 196}, {34, 94, 168}, {8, 29, 88}};
    if (!isfinite(t)) t = 0;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double f = t * 4;
    int i = (int)f;
    if (i > 3) i = 3;
    f -= i;
    int c[3];
    for (int k = 0; k < 3; k++) c[k] = (int)lround(stops[i][k] + (stops[i + 1][k] - stops[i][k]) * f);
    snprintf(out, 8, "#%02x%02x%02x", c[0], c[1], c[2]);
}

/* A tick or tooltip number: 4 significant digits, thousands as k and millions as M. */
static void fmt_num(char *buf, size_t cap, double v) {
    double a = fabs(v);
    if (a >= 1e6) snprintf(buf, cap, "%.3gM", v / 1e6);
    else if (a >= 1e4) snprintf(buf, cap, "%.3gk", v / 1e3);
    else snprintf(buf, cap, "%.4g", v);
}

/* A tick label of a linear axis with tick spacing step: as many decimals as the step needs, so
 * that neighbouring ticks never print the same (1.3862, 1.3864 rather than 1.386, 1.386). */
static void fmt_tick(char *buf, size_t cap, double v, double step) {
    if (fabs(v) >= 1e4 || !(step > 0)) { fmt_num(buf, cap, v); return; }
    int dec = (int)ceil(-log10(step) - 1e-9);
    dec = dec < 0 ? 0 : dec > 9 ? 9 : dec;
    snprintf(buf, cap, "%.*f", dec, v);
}

static void text_el(StrBuf *sb, double x, double y, const char *anchor, const char *cls, const char *s) {
    sb_printf(sb, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" class=\"%s\">", x, y, anchor, cls);
    svg_escape(sb, s);
    sb_printf(sb, "</text>");
}

static void open_svg(StrBuf *sb, const char *id, const char *cls, int w, int h) {
    sb_printf(sb, "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"%s\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\"",
              cls, w, h, w, h);
    if (id) {
        sb_printf(sb, " id=\"");
        svg_escape(sb, id);
        sb_printf(sb, "\"");
    }
    sb_printf(sb, ">");
}

/* ---- line chart --------------------------------------------------------------------------------- */

enum { ML = 66, MR = 14, MT = 24, MB = 38 };

int svg_line_chart(StrBuf *sb, const SvgChart *c, const SvgSeries *s, int ns) {
    int W = c->width > 0 ? c->width : 440, H0 = c->height > 0 ? c->height : 270;
    /* legend: entries laid out left to right in rows below the x label */
    int legend_rows = 0, lx = ML;
    for (int i = 0; i < ns; i++) {
        if (!s[i].name) continue;
        int w = 26 + 7 * (int)strlen(s[i].name);
        if (legend_rows == 0 || lx + w > W - MR) { legend_rows++; lx = ML; }
        lx += w + 10;
    }
    int H = H0 + legend_rows * 16;
    double px0 = ML, px1 = W - MR, py0 = H0 - MB, py1 = MT;

    /* ranges over the points that will be drawn */
    SvgScale xs = {.p0 = px0, .p1 = px1}, ys = {.p0 = py0, .p1 = py1};
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    int total = 0;
    for (int i = 0; i < ns; i++)
        for (int j = 0; j < s[i].n; j++) {
            double x = s[i].x[j], y = s[i].y[j];
            if (!isfinite(x) || !usable(y, c->logy)) continue;
            total++;
            if (x < xlo) xlo = x;
            if (x > xhi) xhi = x;
            if (y < ylo) ylo = y;
            if (y > yhi) yhi = y;
        }
    if (total && c->yinclude && !c->logy) {
        if (c->ylo < ylo) ylo = c->ylo;
        if (c->yhi > yhi) yhi = c->yhi;
    }
    double xr[2] = {xlo, xhi}, yr[2] = {ylo, yhi};
    svg_scale_fit(&xs, xr, total ? 2 : 0, 0);
    svg_scale_fit(&ys, yr, total ? 2 : 0, c->logy);
    xs.p0 = px0; xs.p1 = px1; ys.p0 = py0; ys.p1 = py1;

    open_svg(sb, c->id, total ? "plot" : "plot empty", W, H);
    if (c->title) text_el(sb, W / 2.0, 15, "middle", "title", c->title);
    sb_printf(sb, "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>", px0, py1, px1 - px0, py0 - py1);
    if (c->xlabel) text_el(sb, (px0 + px1) / 2, H0 - 6, "middle", "axis", c->xlabel);
    if (c->ylabel) {
        sb_printf(sb, "<g transform=\"translate(12 %.1f) rotate(-90)\">", (py0 + py1) / 2);
        text_el(sb, 0, 0, "middle", "axis", c->ylabel);
        sb_printf(sb, "</g>");
    }
    if (!total) {
        text_el(sb, (px0 + px1) / 2, (py0 + py1) / 2, "middle", "nodata", "no data");
        sb_printf(sb, "</svg>");
        return 0;
    }
    double ticks[32];
    char num[32];
    int nt = svg_ticks(&xs, ticks, 8);
    sb_printf(sb, "<g class=\"ticks\">");
    for (int i = 0; i < nt; i++) {
        double p = svg_scale_map(&xs, ticks[i]);
        sb_printf(sb, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", p, py0, p, py1);
        fmt_tick(num, sizeof num, ticks[i], nt > 1 ? ticks[1] - ticks[0] : 0);
        text_el(sb, p, py0 + 13, "middle", "tick", num);
    }
    nt = svg_ticks(&ys, ticks, c->logy ? 12 : 6);
    for (int i = 0; i < nt; i++) {
        double p = svg_scale_map(&ys, ticks[i]);
        sb_printf(sb, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", px0, p, px1, p);
        if (c->logy) fmt_num(num, sizeof num, ticks[i]);
        else fmt_tick(num, sizeof num, ticks[i], nt > 1 ? ticks[1] - ticks[0] : 0);
        text_el(sb, px0 - 4, p + 3.5, "end", "tick", num);
    }
    sb_printf(sb, "</g><g class=\"data\">");
    for (int i = 0; i < ns; i++) {
        const char *col = s[i].color ? s[i].color : svg_palette(i);
        int pen = 0, any = 0;
        for (int j = 0; j < s[i].n; j++) {
            double x = s[i].x[j], y = s[i].y[j];
            if (!isfinite(x) || !usable(y, c->logy)) { pen = 0; continue; }
            if (c->points) break;
            if (!any) {
                sb_printf(sb, "<path class=\"series\" fill=\"none\" stroke=\"%s\"%s d=\"", col, dash_attr(s[i].dashed));
                any = 1;
            }
            sb_printf(sb, "%s%.1f %.1f", pen ? " L" : any == 1 ? "M" : " M", svg_scale_map(&xs, x), svg_scale_map(&ys, y));
            pen = 1;
            any = 2;
        }
        if (any) {
            sb_printf(sb, "\"><title>");
            svg_escape(sb, s[i].name ? s[i].name : "");
            sb_printf(sb, "</title></path>");
        }
        int nfin = 0;
        for (int j = 0; j < s[i].n; j++) nfin += isfinite(s[i].x[j]) && usable(s[i].y[j], c->logy);
        if (!s[i].markers && !c->points && nfin != 1) continue;   /* a lone point gets a marker: its path has no extent */
        for (int j = 0; j < s[i].n; j++) {
            double x = s[i].x[j], y = s[i].y[j];
            if (!isfinite(x) || !usable(y, c->logy)) continue;
            sb_printf(sb, "<circle r=\"2.5\" fill=\"%s\" cx=\"%.1f\" cy=\"%.1f\"><title>", col, svg_scale_map(&xs, x),
                      svg_scale_map(&ys, y));
            svg_escape(sb, s[i].name ? s[i].name : "");
            char xb[32], yb[32];
            fmt_num(xb, sizeof xb, x);
            snprintf(yb, sizeof yb, "%.5g", y);
            sb_printf(sb, ": %s, %s</title></circle>", xb, yb);
        }
    }
    sb_printf(sb, "</g>");
    /* legend */
    int row = 0;
    lx = ML;
    for (int i = 0; i < ns; i++) {
        if (!s[i].name) continue;
        int w = 26 + 7 * (int)strlen(s[i].name);
        if (row == 0 || lx + w > W - MR) { row++; lx = ML; }
        double y = H0 + (row - 1) * 16 + 4;
        sb_printf(sb, "<line class=\"key\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\"%s/>", lx, y, lx + 20, y,
                  s[i].color ? s[i].color : svg_palette(i), dash_attr(s[i].dashed));
        text_el(sb, lx + 24, y + 4, "start", "legend", s[i].name);
        lx += w + 10;
    }
    sb_printf(sb, "</svg>");
    return total;
}

/* ---- heatmap ------------------------------------------------------------------------------------ */

int svg_heatmap(StrBuf *sb, const SvgHeatmap *h, const double *v, int rows, int cols) {
    if (rows <= 0 || cols <= 0) {
        open_svg(sb, h->id, "plot heatmap empty", 300, 60);
        if (h->title) text_el(sb, 150, 15, "middle", "title", h->title);
        text_el(sb, 150, 40, "middle", "nodata", "no data");
        sb_printf(sb, "</svg>");
        return 0;
    }
    double vmin = h->vmin, vmax = h->vmax;
    if (!(vmin < vmax)) {
        vmin = INFINITY; vmax = -INFINITY;
        for (int i = 0; i < rows * cols; i++)
            if (isfinite(v[i])) {
                if (v[i] < vmin) vmin = v[i];
                if (v[i] > vmax) vmax = v[i];
            }
        if (vmin > vmax) { vmin = 0; vmax = 1; }
        if (vmin == vmax) vmax = vmin + 1;
    }
    double cw = h->cell > 0 ? h->cell : fmin(40, fmax(3, 440.0 / cols));
    double ch = h->cell > 0 ? h->cell : fmin(22, fmax(3, 260.0 / rows));
    int maxrl = 1, maxcl = 1;
    char lab[32];
    for (int r = 0; r < rows; r++) {
        int l = h->row_labels ? (int)strlen(h->row_labels[r]) : snprintf(lab, sizeof lab, "%d", r);
        if (l > maxrl) maxrl = l;
    }
    for (int c = 0; c < cols; c++) {
        int l = h->col_labels ? (int)strlen(h->col_labels[c]) : snprintf(lab, sizeof lab, "%d", c);
        if (l > maxcl) maxcl = l;
    }
    double left = 16 + fmin(150, 6.5 * maxrl) + 6, top = 26;
    double gw = cw * cols, gh = ch * rows;
    int W = (int)(left + gw + 70), H = (int)(top + fmax(gh, 40) + 44);
    if (h->title && W < 7 * (int)strlen(h->title) + 20) W = 7 * (int)strlen(h->title) + 20;
    open_svg(sb, h->id, "plot heatmap", W, H);
    if (h->title) text_el(sb, W / 2.0, 15, "middle", "title", h->title);
    const char *fmt = h->fmt ? h->fmt : "%.3g";
    sb_printf(sb, "<g class=\"data cells\">");
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double x = v[(size_t)r * cols + c];
            char col[8], val[48];
            int nan = !isfinite(x);
            if (nan) snprintf(col, sizeof col, "#cccccc");
            else svg_ramp((x - vmin) / (vmax - vmin), col);
            sb_printf(sb, "<rect%s x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>", nan ? " class=\"nan\"" : "",
                      left + c * cw, top + r * ch, cw, ch, col);
            if (h->row_labels) svg_escape(sb, h->row_labels[r]); else sb_printf(sb, "%d", r);
            sb_printf(sb, ", ");
            if (h->col_labels) svg_escape(sb, h->col_labels[c]); else sb_printf(sb, "%d", c);
            if (nan) snprintf(val, sizeof val, "n/a");
            else snprintf(val, sizeof val, fmt, x);
            sb_printf(sb, ": %s</title></rect>", val);
        }
    sb_printf(sb, "</g>");
    if (h->values && cw >= 28 && ch >= 16) {   /* the numbers themselves, where a cell has room for them */
        sb_printf(sb, "<g class=\"values\">");
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                double x = v[(size_t)r * cols + c];
                if (!isfinite(x)) continue;
                char val[48];
                snprintf(val, sizeof val, fmt, x);
                double t = (x - vmin) / (vmax - vmin);
                sb_printf(sb, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" class=\"cellv\" style=\"fill:%s\">",
                          left + (c + 0.5) * cw, top + (r + 0.5) * ch + 3.5, t > 0.55 ? "#fff" : "#222");
                svg_escape(sb, val);
                sb_printf(sb, "</text>");
            }
        sb_printf(sb, "</g>");
    }
    /* labels: every row when the rows are tall enough, otherwise every k-th; same for columns */
    int rk = ch >= 10 ? 1 : (int)ceil(10 / ch), ck = (int)ceil((6.5 * maxcl + 4) / cw);
    if (ck < 1) ck = 1;
    for (int r = 0; r < rows; r += rk) {
        if (h->row_labels) text_el(sb, left - 4, top + (r + 0.5) * ch + 3.5, "end", "tick", h->row_labels[r]);
        else { snprintf(lab, sizeof lab, "%d", r); text_el(sb, left - 4, top + (r + 0.5) * ch + 3.5, "end", "tick", lab); }
    }
    for (int c = 0; c < cols; c += ck) {
        const char *l = h->col_labels ? h->col_labels[c] : (snprintf(lab, sizeof lab, "%d", c), lab);
        text_el(sb, left + (c + 0.5) * cw, top + gh + 12, "middle", "tick", l);
    }
    if (h->xlabel) text_el(sb, left + gw / 2, top + gh + 30, "middle", "axis", h->xlabel);
    if (h->ylabel) {
        sb_printf(sb, "<g transform=\"translate(11 %.1f) rotate(-90)\">", top + gh / 2);
        text_el(sb, 0, 0, "middle", "axis", h->ylabel);
        sb_printf(sb, "</g>");
    }
    /* colour bar */
    double bx = left + gw + 12, bh = fmax(gh, 40);
    for (int i = 0; i < 16; i++) {
        char col[8];
        svg_ramp(1 - i / 15.0, col);
        sb_printf(sb, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"%.1f\" fill=\"%s\"/>", bx, top + i * bh / 16,
                  bh / 16 + 0.5, col);
    }
    char num[32];
    fmt_num(num, sizeof num, vmax);
    text_el(sb, bx + 13, top + 8, "start", "tick", num);
    fmt_num(num, sizeof num, vmin);
    text_el(sb, bx + 13, top + bh, "start", "tick", num);
    sb_printf(sb, "</svg>");
    return rows * cols;
}
