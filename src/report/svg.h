/* svg.h: the inline-SVG chart writers of the HTML report (line charts and heatmaps).
 *
 * Each writer appends one <svg class="plot"> element to a StrBuf. Data marks live in one
 * <g class="data"> group, so a reader (the C tests, the browser test) can count them:
 *   line chart  one <path class="series"> per series with at least one finite point, whose "d" holds
 *               exactly one coordinate pair (an M or L command) per finite point; a NaN or infinite
 *               x or y (or y <= 0 on a log axis) breaks the line (the next point starts with M).
 *               Series with markers, and any series with exactly one finite point, also get one
 *               <circle> per finite point, with a <title> tooltip.
 *   heatmap     one <rect> per cell, rows x cols, in row-major order, each with a <title>; a NaN cell
 *               is grey with class "nan".
 * A chart with no finite data writes its frame, the text "no data" and class "plot empty", and
 * returns 0. All text goes through svg_escape, so labels may hold any UTF-8 (<, &, quotes).
 * Not here: reading runs, page layout (report.c).
 */
#ifndef MOELM_REPORT_SVG_H
#define MOELM_REPORT_SVG_H

#include "io/json.h"

/* A linear or log10 map from data [lo, hi] to pixels [p0, p1] (p1 < p0 for a y axis). */
typedef struct {
    double lo, hi;   /* data range, lo < hi (svg_scale_fit guarantees it) */
    double p0, p1;   /* pixel range */
    int log;         /* 1: log10 (lo > 0) */
} SvgScale;

double svg_scale_map(const SvgScale *s, double v);
/* Data range of v[n] (finite values; > 0 only when log), padded so lo < hi; [0, 1] when none. */
void svg_scale_fit(SvgScale *s, const double *v, int n, int log);
/* Up to cap "nice" ticks (1, 2, 5 x 10^k steps, or decades on a wide log axis) inside [lo, hi];
 * returns how many. */
int svg_ticks(const SvgScale *s, double *ticks, int cap);

/* s with &, <, >, " and ' replaced by entities (safe in text and in attribute values). */
void svg_escape(StrBuf *sb, const char *s);

/* The i-th colour of a categorical palette (10 colours, cycling): "#rrggbb". */
const char *svg_palette(int i);
/* t in [0, 1] to a sequential colour (light yellow -> dark blue), into out[8] "#rrggbb". */
void svg_ramp(double t, char out[8]);

typedef struct {
    const double *x, *y;  /* [n] */
    int n;
    const char *name;     /* legend label (NULL: no legend entry) */
    const char *color;    /* CSS colour (NULL: palette by index) */
    int dashed;           /* 1: dashed stroke, 2: dotted */
    int markers;          /* 1: a circle at each point */
} SvgSeries;

typedef struct {
    const char *id;       /* element id (NULL: none) */
    const char *title;    /* above the chart */
    const char *xlabel, *ylabel;
    int width, height;    /* pixels (0: 440 x 270; the legend adds rows below) */
    int logy;             /* log10 y axis */
    int yinclude;         /* 1: the y axis covers at least [ylo, yhi] (a quantity's natural range: two
                           * nearly equal values are not blown up to fill the chart) */
    double ylo, yhi;
    int points;           /* 1: markers only, no connecting lines (a few evaluations) */
} SvgChart;

/* Appends a line chart; returns the number of finite points plotted. */
int svg_line_chart(StrBuf *sb, const SvgChart *c, const SvgSeries *s, int ns);

typedef struct {
    const char *id, *title;
    const char *xlabel, *ylabel;
    const char *const *row_labels;  /* [rows] (NULL: indices) */
    const char *const *col_labels;  /* [cols] (NULL: indices) */
    double vmin, vmax;              /* colour range; vmin >= vmax: the data's finite range */
    int cell;                       /* cell size in pixels (0: fit to about 440 x 260) */
    const char *fmt;                /* printf format of a value in tooltips (NULL: "%.3g") */
    int values;                     /* 1: also print each value in its cell when the cell is large enough */
} SvgHeatmap;

/* Appends a heatmap of v[rows, cols] (row-major); returns the number of cells (rows * cols), 0 when
 * rows or cols is 0. */
int svg_heatmap(StrBuf *sb, const SvgHeatmap *h, const double *v, int rows, int cols);

#endif
