/* test_report.c: the report's SVG writers, routing choice, progress formatting and the HTML page.
 *
 * Checked: scales map data to pixels exactly (linear and log), ranges and ticks are sane; a line
 * chart has one coordinate per finite point (NaN breaks the line), markers when asked and for a
 * lone point; a heatmap has rows x cols cells, NaN cells marked; empty or all-NaN data gives an
 * "empty" plot and no marks; every label is escaped (&, <, >, quotes); the expert of a token is
 * its kept slot with the largest gate; ETA formatting; and report_build on a synthetic run (torn
 * metrics line, JSON nulls, routing dump with hostile pieces) writes the expected plots and token
 * spans, overlays two runs, thins a 5001-step run to at most 2000 points per curve, and fails with a
 * clear error for a directory without metrics.
 * Pixel tolerances are 0.05 px: coordinates are written with one decimal.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "test.h"
#include "io/fileio.h"
#include "train/progress.h"
#include "report/report.h"
#include "io/fileio.h"
#include "train/routing.h"
#include "report/svg.h"
#include "tiny_models.h"
#include "train/train.h"

static int count(const char *hay, const char *needle) {
    int n = 0;
    size_t l = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)); p += l) n++;
    return n;
}

/* Occurrences of needle between the first `from` and the next `to` after it. */
static int count_between(const char *hay, const char *from, const char *to, const char *needle) {
    const char *a = strstr(hay, from);
    if (!a) return -1;
    const char *b = strstr(a, to);
    if (!b) return -1;
    int n = 0;
    size_t l = strlen(needle);
    for (const char *p = a; (p = strstr(p, needle)) && p < b; p += l) n++;
    return n;
}

/* Training's routing dump records its evaluation's own forward passes (routing_begin, evaluate_routed,
 * routing_finish): byte for byte the file routing_dump writes from forward passes of its own, on a
 * switch lm whose routing varies (weights scaled up), with a batch limit below the stream's batches */
TEST(routing_from_evaluation_equals_dump) {
    const char *text = "the cat sat on the mat\na dog ran to the cat\nthe mat was red and the dog was blue\n";
    Tokenizer *tok = NULL;
    EXPECT(tokenizer_build_word(&tok, text, strlen(text), 100) == MOELM_OK);
    ModelConfig c;
    tiny_lm(&c, tokenizer_vocab_size(tok), 0.0f);
    c.num_experts = 4;
    c.sparse_step = 1;
    Model m;
    EXPECT(model_create(&m, &c, 2, 8, 5) == MOELM_OK);
    scale_params(&m, 10.0f, 1);
    int ids[300];
    for (int i = 0; i < 300; i++) ids[i] = (i * 7 + i / 5) % c.vocab_size;
    dir_make("build/tmp/test_report/ra");
    dir_make("build/tmp/test_report/rb");
    EXPECT(routing_dump("build/tmp/test_report/ra", 7, &m, tok, ids, 300, 5, "x") == MOELM_OK);
    RoutingRec rec;
    EvalResult ev;
    EXPECT(routing_begin(&rec, &m, 300, 5) == MOELM_OK);
    EXPECT(rec.L == 2 && rec.nb == 5);
    EXPECT(evaluate_routed(&m, ids, 300, 0, 0, &ev, &rec) == MOELM_OK);   /* all batches; records the first 5 */
    EXPECT(rec.cnt == 5 * 2 * 8);
    EXPECT(routing_finish(&rec, "build/tmp/test_report/rb", 7, &m, tok, ids, 300, "x") == MOELM_OK);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    EXPECT(file_read_all("build/tmp/test_report/ra/routing/step-7.json", &a, &na) == MOELM_OK);
    EXPECT(file_read_all("build/tmp/test_report/rb/routing/step-7.json", &b, &nb) == MOELM_OK);
    EXPECT(a && b && na == nb && memcmp(a, b, na) == 0);
    EXPECT(a && strstr(a, "\"tokens_counted\": 80,") != NULL);
    /* the routing varies: the first layer's expert counts are not all in one expert */
    EXPECT(a && !strstr(a, "\"expert_tokens\": [[80,") && !strstr(a, ", 80, ") && !strstr(a, "[0, 0, 0, 80]"));
    moelm_free(a);
    moelm_free(b);
    model_free(&m);
    tokenizer_free(tok);
}

TEST(scale_linear_and_log) {
    SvgScale s = {.lo = 0, .hi = 10, .p0 = 50, .p1 = 150, .log = 0};
    EXPECT_NEAR(svg_scale_map(&s, 0), 50, 1e-12);
    EXPECT_NEAR(svg_scale_map(&s, 5), 100, 1e-12);
    EXPECT_NEAR(svg_scale_map(&s, 10), 150, 1e-12);
    SvgScale y = {.lo = 0, .hi = 4, .p0 = 200, .p1 = 0};   /* y axes grow upwards */
    EXPECT_NEAR(svg_scale_map(&y, 1), 150, 1e-12);
    SvgScale g = {.lo = 1, .hi = 1000, .p0 = 0, .p1 = 300, .log = 1};
    EXPECT_NEAR(svg_scale_map(&g, 10), 100, 1e-9);
    EXPECT_NEAR(svg_scale_map(&g, 100), 200, 1e-9);
}

TEST(scale_fit) {
    SvgScale s;
    double v[4] = {2, NAN, 4, INFINITY};
    svg_scale_fit(&s, v, 4, 0);
    EXPECT(s.lo <= 2 && s.hi >= 4 && s.lo >= 0 && s.hi < 4.5);
    double z[3] = {0, 0, 0};
    svg_scale_fit(&s, z, 3, 0);
    EXPECT(s.lo == 0 && s.hi == 1);   /* a constant zero count: [0, 1], not [-1, 1] */
    double neg[2] = {-3, -1};
    svg_scale_fit(&s, neg, 2, 0);
    EXPECT(s.lo < -3 && s.hi > -1);
    double lg[4] = {-1, 0, 10, 1000};   /* log: non-positive values are ignored */
    svg_scale_fit(&s, lg, 4, 1);
    EXPECT(s.log && s.lo > 0 && s.lo <= 10 && s.hi >= 1000);
    svg_scale_fit(&s, NULL, 0, 0);
    EXPECT(s.lo < s.hi);
}

TEST(ticks) {
    SvgScale s = {.lo = 0, .hi = 1, .p0 = 0, .p1 = 1};
    double t[32];
    int n = svg_ticks(&s, t, 8);
    EXPECT(n == 6);
    for (int i = 0; i < n; i++) EXPECT_NEAR(t[i], 0.2 * i, 1e-12);
    SvgScale g = {.lo = 1, .hi = 1000, .p0 = 0, .p1 = 1, .log = 1};
    n = svg_ticks(&g, t, 12);
    int decades = 0;
    for (int i = 0; i < n; i++) {
        EXPECT(t[i] >= 1 && t[i] <= 1000);
        if (i) EXPECT(t[i] > t[i - 1]);
        decades += t[i] == 1 || t[i] == 10 || t[i] == 100 || t[i] == 1000;
    }
    EXPECT(decades == 4);
    SvgScale narrow = {.lo = 1.38620, .hi = 1.38630, .p0 = 0, .p1 = 1};
    n = svg_ticks(&narrow, t, 6);
    EXPECT(n >= 2);
    for (int i = 1; i < n; i++) EXPECT(t[i] > t[i - 1]);
}

TEST(escape) {
    StrBuf sb = {0};
    svg_escape(&sb, "<a href='x'>\"&\" \xc3\xa9");
    EXPECT(sb.buf && !strcmp(sb.buf, "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot; \xc3\xa9"));
    sb_free(&sb);
    StrBuf e = {0};
    svg_escape(&e, "");
    svg_escape(&e, NULL);
    EXPECT(e.len == 0);
    sb_free(&e);
}

TEST(line_chart_points) {
    double x[5] = {0, 1, 2, 3, 4}, y[5] = {1, 2, 3, 2, 1};
    SvgSeries s = {.x = x, .y = y, .n = 5, .name = "train"};
    SvgChart c = {.id = "c1", .title = "loss <vs> step & \"more\"", .xlabel = "step", .ylabel = "loss"};
    StrBuf sb = {0};
    int pts = svg_line_chart(&sb, &c, &s, 1);
    EXPECT(pts == 5);
    EXPECT(count(sb.buf, "<path class=\"series\"") == 1);
    /* the d attribute: "M x y L x y L ..." with one pair per point */
    const char *d = strstr(sb.buf, " d=\"");
    EXPECT(d != NULL);
    if (d) {
        const char *end = strchr(d + 4, '"');
        int m = 0, l = 0;
        for (const char *p = d + 4; p < end; p++) { m += *p == 'M'; l += *p == 'L'; }
        EXPECT(m == 1 && l == 4);
        /* the first point: x = 0 at the left edge of the plot area (58 px), the largest y at the top
         * padded by 3% of the range */
        double px, py;
        EXPECT(sscanf(d + 4, "M%lf %lf", &px, &py) == 2);
        EXPECT_NEAR(px, 66, 0.05);
    }
    EXPECT(count(sb.buf, "<circle") == 0);
    EXPECT(strstr(sb.buf, "loss &lt;vs&gt; step &amp; &quot;more&quot;") != NULL);
    EXPECT(strstr(sb.buf, "<vs>") == NULL);
    EXPECT(strstr(sb.buf, "class=\"plot\"") != NULL);
    sb_free(&sb);
}

TEST(line_chart_gaps_markers_log) {
    double x[6] = {0, 1, 2, 3, 4, 5}, y[6] = {10, 100, NAN, 1000, -1, 10};
    SvgSeries s[2] = {{.x = x, .y = y, .n = 6, .name = "val", .markers = 1, .dashed = 1},
                      {.x = x, .y = y, .n = 2, .name = NULL}};
    SvgChart c = {.title = "ppl", .logy = 1};
    StrBuf sb = {0};
    int pts = svg_line_chart(&sb, &c, s, 2);
    EXPECT(pts == 4 + 2);   /* NaN and the non-positive value are not plotted on a log axis */
    EXPECT(count(sb.buf, "<circle") == 4);
    EXPECT(count(sb.buf, "stroke-dasharray") >= 1);
    const char *d = strstr(sb.buf, " d=\"");
    if (d) {
        const char *end = strchr(d + 4, '"');
        int m = 0, l = 0;
        for (const char *p = d + 4; p < end; p++) { m += *p == 'M'; l += *p == 'L'; }
        EXPECT(m == 3 && l == 1);   /* [10, 100] L, gap, [1000] M, gap, [10] M */
    }
    sb_free(&sb);
    /* a single point gets a marker even without markers */
    double x1 = 3, y1 = 4;
    SvgSeries one = {.x = &x1, .y = &y1, .n = 1, .name = "one"};
    StrBuf sb1 = {0};
    EXPECT(svg_line_chart(&sb1, &(SvgChart){0}, &one, 1) == 1);
    EXPECT(count(sb1.buf, "<circle") == 1);
    sb_free(&sb1);
}

TEST(line_chart_empty) {
    double x[3] = {0, 1, 2}, y[3] = {NAN, NAN, INFINITY};
    SvgSeries s = {.x = x, .y = y, .n = 3, .name = "nothing"};
    StrBuf sb = {0};
    EXPECT(svg_line_chart(&sb, &(SvgChart){.title = "t"}, &s, 1) == 0);
    EXPECT(strstr(sb.buf, "plot empty") != NULL && strstr(sb.buf, "no data") != NULL);
    EXPECT(count(sb.buf, "class=\"series\"") == 0);
    EXPECT(count(sb.buf, "<svg") == 1 && count(sb.buf, "</svg>") == 1);
    sb_free(&sb);
    StrBuf sb2 = {0};
    EXPECT(svg_line_chart(&sb2, &(SvgChart){0}, NULL, 0) == 0);
    EXPECT(strstr(sb2.buf, "plot empty") != NULL);
    sb_free(&sb2);
}

TEST(heatmap_cells) {
    double v[12] = {0, 0.1, 0.2, 0.3, 0.4, NAN, 0.6, 0.7, 0.8, 0.9, 1.0, 0.5};
    const char *rows[3] = {"a<1>", "b", "c"}, *cols[4] = {"e0", "e1", "e2", "e'3"};
    SvgHeatmap h = {.id = "h1", .title = "load", .row_labels = rows, .col_labels = cols, .vmin = 0, .vmax = 1};
    StrBuf sb = {0};
    EXPECT(svg_heatmap(&sb, &h, v, 3, 4) == 12);
    EXPECT(count_between(sb.buf, "<g class=\"data cells\">", "</g>", "<rect") == 12);
    EXPECT(count(sb.buf, "class=\"nan\"") == 1);
    EXPECT(strstr(sb.buf, "a&lt;1&gt;") != NULL && strstr(sb.buf, "e&#39;3") != NULL);
    /* colours: the smallest and the largest value get the ends of the ramp */
    char lo[8], hi[8];
    svg_ramp(0, lo);
    svg_ramp(1, hi);
    EXPECT(strcmp(lo, hi) != 0);
    char buf[64];
    snprintf(buf, sizeof buf, "fill=\"%s\"><title>a&lt;1&gt;, e0", lo);
    EXPECT(strstr(sb.buf, buf) != NULL);
    snprintf(buf, sizeof buf, "fill=\"%s\"><title>c, e2", hi);
    EXPECT(strstr(sb.buf, buf) != NULL);
    sb_free(&sb);
    StrBuf e = {0};
    EXPECT(svg_heatmap(&e, &h, v, 0, 4) == 0);
    EXPECT(strstr(e.buf, "empty") != NULL);
    sb_free(&e);
    char c[8];
    svg_ramp(NAN, c);
    EXPECT(c[0] == '#' && strlen(c) == 7);
}

TEST(token_expert) {
    /* 2 tokens x KS 2: token 0 keeps both slots (gates 0.3, 0.7), token 1 keeps none */
    int expert[4] = {1, 3, 2, 0}, slot_row[4] = {0, 1, -1, -1};
    float gate[4] = {0.3f, 0.7f, 0.9f, 0.1f};
    MoEActs a;
    memset(&a, 0, sizeof a);
    a.KS = 2;
    a.expert = expert;
    a.slot_row = slot_row;
    a.gate = gate;
    EXPECT(routing_token_expert(&a, 0) == 3);
    EXPECT(routing_token_expert(&a, 1) == -1);
}

TEST(eta_format) {
    char b[32];
    progress_fmt_eta(b, sizeof b, 42.2);
    EXPECT(!strcmp(b, "42s"));
    progress_fmt_eta(b, sizeof b, 185);
    EXPECT(!strcmp(b, "3m05s"));
    progress_fmt_eta(b, sizeof b, 7620);
    EXPECT(!strcmp(b, "2h07m"));
    progress_fmt_eta(b, sizeof b, NAN);
    EXPECT(!strcmp(b, "?"));
    /* not a terminal (tests run with stderr captured): every call is a no-op */
    Progress p;
    progress_begin(&p, "t", 0, 10, 1);
    if (!progress_enabled(1)) EXPECT(p.on == 0);
    progress_begin(&p, "t", 0, 10, 0);
    EXPECT(p.on == 0);
}

static void write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "w");
    if (f) { fputs(s, f); fclose(f); }
}

TEST(report_page) {
    const char *dir = "build/tmp/test_report";
    dir_remove_tree(dir);
    dir_make("build/tmp/test_report/a/routing");
    dir_make("build/tmp/test_report/b");
    write_file("build/tmp/test_report/a/metrics.jsonl",
               "{\"step\": 1, \"loss\": 6.9, \"aux_loss\": 0.02, \"lr\": 0.001, \"grad_norm\": 2.0, \"tokens_per_s\": 900, \"time_s\": 0.1, \"tokens\": 64}\n"
               "{\"step\": 2, \"loss\": null, \"aux_loss\": null, \"lr\": 0.001, \"grad_norm\": null, \"tokens_per_s\": 950, \"time_s\": 0.2, \"tokens\": 128}\n"
               "{\"step\": 3, \"loss\": 5.9, \"aux_loss\": 0.02, \"lr\": 0.0009, \"grad_norm\": 1.5, \"tokens_per_s\": 1000, \"time_s\": 0.3, \"tokens\": 192, "
               "\"val_loss\": 6.0, \"val_ppl\": 403.4, \"val_word_ppl\": 403.4, \"moe\": [{\"layer\": 0, \"dropped\": 0.1, \"entropy\": 1.3, "
               "\"top1\": 0.3, \"dead\": 0, \"aux\": 1.01, \"z\": 0.8, \"load\": [0.25, 0.25, 0.3, 0.2]}]}\n"
               "{\"step\": 4, \"loss\": 5.5, \"aux_loss\": 0.02, \"lr\": 0.0008, \"grad_norm\": 1.2, \"tokens_per_s\": 1000, \"time_s\": 0.4, \"tokens\": 256}\n"
               "{\"step\": 6, \"val_loss\": 5.2, \"val_ppl\": 181.3, \"val_word_ppl\": 181.3, \"moe\": [{\"layer\": 0, \"dropped\": 0.05, "
               "\"entropy\": 1.2, \"top1\": 0.4, \"dead\": 1, \"aux\": 1.02, \"z\": 0.7, \"load\": [0.4, 0.0, 0.3, 0.3]}]}\n"
               "{\"step\": 7, \"loss\": 5.");   /* a torn last line */
    write_file("build/tmp/test_report/a/routing/step-3.json", "{\"step\": 3}\n");
    write_file("build/tmp/test_report/a/routing/step-9.json", "{\"step\": 9}\n");   /* past the metrics: stale */
    write_file("build/tmp/test_report/a/routing/step-6.json",
               "{\"format\": \"moelm-routing\", \"version\": 1, \"step\": 6, \"router\": \"switch\", \"num_experts\": 4, \"k\": 1, "
               "\"word_level\": true, \"layers\": [\"block 1\"], \"tokens_counted\": 5, "
               "\"sample\": {\"pieces\": [\"\\n\", \"if\", \"x\", \"<b>\", \"&\"], \"experts\": [[0, 1, -1, 3, 2]]}, "
               "\"expert_tokens\": [[1, 1, 1, 1]], \"domains\": [\"arithmetic\", \"dates\", \"grammar\", \"code\"], "
               "\"domain_counts\": [[[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]], "
               "\"top_tokens\": [[[[\"<eos>\", 1]], [[\"if\", 1]], [[\"&\", 1]], [[\"<b>\", 1]]]]}\n");
    write_file("build/tmp/test_report/b/metrics.jsonl",
               "{\"step\": 1, \"loss\": 6.8, \"aux_loss\": 0, \"lr\": 0.001, \"grad_norm\": 2.0, \"tokens_per_s\": 1900, \"time_s\": 0.05, \"tokens\": 64}\n"
               "{\"step\": 3, \"loss\": 6.0, \"aux_loss\": 0, \"lr\": 0.0009, \"grad_norm\": 1.4, \"tokens_per_s\": 2000, \"time_s\": 0.15, \"tokens\": 192, "
               "\"val_loss\": 6.1, \"val_ppl\": 445.9, \"val_word_ppl\": 445.9}\n");

    const char *one[1] = {"build/tmp/test_report/a/"};
    StrBuf sb = {0};
    EXPECT(report_build(&sb, one, 1) == MOELM_OK);
    if (sb.buf) {
        /* 4 loss/ppl charts, lr, throughput, grad norm, aux term, aux, z, dropped, entropy, confidence, dead,
         * the load heatmap and one domain heatmap */
        EXPECT_MSG(count(sb.buf, "<svg ") == 16, "%d svg", count(sb.buf, "<svg "));
        EXPECT(count(sb.buf, "plot empty") == 0);
        EXPECT(count(sb.buf, "<span class=\"tok") == 5);
        EXPECT(count(sb.buf, "class=\"tok drop\"") == 1);
        EXPECT(strstr(sb.buf, ">&lt;b&gt;</span>") != NULL && strstr(sb.buf, ">&amp;</span>") != NULL);
        EXPECT(strstr(sb.buf, "<b>") == NULL);
        EXPECT(strstr(sb.buf, "1 malformed line") != NULL);
        EXPECT(strstr(sb.buf, "id=\"load-0\"") != NULL && strstr(sb.buf, "id=\"domain-0-0\"") != NULL);
        /* the load heatmap: 1 layer x 4 experts x 2 evals */
        EXPECT(count_between(sb.buf, "id=\"load-0\"", "</g>", "<rect") == 8);
        EXPECT(strstr(sb.buf, "most frequent words") != NULL);
        EXPECT(strstr(sb.buf, "http://") == NULL || count(sb.buf, "http://") == count(sb.buf, "xmlns=\"http://www.w3.org/2000/svg\""));
        EXPECT(strstr(sb.buf, "src=") == NULL);   /* self-contained: no outside scripts or images */
    }
    sb_free(&sb);

    const char *two[2] = {"build/tmp/test_report/a", "build/tmp/test_report/b"};
    StrBuf sb2 = {0};
    EXPECT(report_build(&sb2, two, 2) == MOELM_OK);
    if (sb2.buf) {
        /* the loss vs step chart holds both runs: train and val for each */
        EXPECT(count_between(sb2.buf, "id=\"chart-1\"", "</svg>", "<path class=\"series\"") == 4);
        EXPECT(strstr(sb2.buf, ">a train<") != NULL && strstr(sb2.buf, ">b val<") != NULL);
    }
    sb_free(&sb2);

    /* a long run is thinned to at most 2000 points per curve, keeping the first and the last */
    dir_make("build/tmp/test_report/long");
    FILE *f = fopen("build/tmp/test_report/long/metrics.jsonl", "w");
    if (f) {
        for (int i = 1; i <= 5001; i++)
            fprintf(f, "{\"step\": %d, \"loss\": %g, \"aux_loss\": 0, \"lr\": 0.001, \"grad_norm\": 1, \"tokens_per_s\": 100, "
                       "\"time_s\": %d, \"tokens\": %d}\n", i, 7.0 - i * 1e-3, i, 64 * i);
        fclose(f);
    }
    const char *lng[1] = {"build/tmp/test_report/long"};
    StrBuf sb4 = {0};
    EXPECT(report_build(&sb4, lng, 1) == MOELM_OK);
    if (sb4.buf) {
        int pts = count_between(sb4.buf, "id=\"chart-1\"", "</path>", " L") + 1;
        EXPECT_MSG(pts >= 1000 && pts <= 2001, "%d points", pts);
        EXPECT(strstr(sb4.buf, "<title>long train</title>") != NULL);
    }
    sb_free(&sb4);

    const char *none[1] = {"build/tmp/test_report/missing"};
    StrBuf sb3 = {0};
    EXPECT(report_build(&sb3, none, 1) == MOELM_ERR_IO);
    EXPECT(strstr(moelm_last_error(), "missing") && strstr(moelm_last_error(), "metrics.jsonl"));
    sb_free(&sb3);
    EXPECT(report_write(one, 1, "build/tmp/test_report/r.html", NULL) == MOELM_OK);
    EXPECT(path_exists("build/tmp/test_report/r.html"));
}

/* Every string a report shows comes from a file (metrics, routing dump, config.json, the run's own
 * directory name) and is escaped: a payload planted in each field stays text. Before the fix the
 * layer names of a routing dump went into the "What each expert receives" headings unescaped, so
 * `"layers": ["<script>alert(1)</script>"]` put a live script into report.html. */
TEST(report_escapes_every_file_string) {
#define PJ "<script>alert(1)<\\/script>"
    const char *run = "build/tmp/test_report/x<img src=x onerror=alert(2)>";
    dir_remove_tree(run);
    char path[512];
    snprintf(path, sizeof path, "%s/routing", run);
    dir_make(path);
    snprintf(path, sizeof path, "%s/latest", run);
    dir_make(path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    write_file(path,
               "{\"step\": 1, \"loss\": 6.9, \"aux_loss\": 0.02, \"lr\": 0.001, \"grad_norm\": 2.0, \"tokens_per_s\": 900, \"time_s\": 0.1, \"tokens\": 64, "
               "\"val_loss\": 6.0, \"val_ppl\": 403.4, \"val_word_ppl\": 403.4, \"moe\": [{\"layer\": 0, \"dropped\": 0.1, \"entropy\": 1.3, "
               "\"top1\": 0.3, \"dead\": 0, \"aux\": 1.01, \"z\": 0.8, \"load\": [0.25, 0.25, 0.3, 0.2]}]}\n"
               "{\"step\": 2, \"loss\": 6.0, \"aux_loss\": 0.02, \"lr\": 0.001, \"grad_norm\": 2.0, \"tokens_per_s\": 900, \"time_s\": 0.2, \"tokens\": 128, "
               "\"val_loss\": 5.0, \"val_ppl\": 148.4, \"val_word_ppl\": 148.4, \"moe\": [{\"layer\": 0, \"dropped\": 0.1, \"entropy\": 1.3, "
               "\"top1\": 0.3, \"dead\": 0, \"aux\": 1.01, \"z\": 0.8, \"load\": [0.25, 0.25, 0.3, 0.2]}]}\n");
    snprintf(path, sizeof path, "%s/routing/step-2.json", run);
    write_file(path,
               "{\"format\": \"" PJ "\", \"version\": 1, \"step\": 2, \"router\": \"" PJ "\", \"num_experts\": 4, \"k\": 1, "
               "\"word_level\": true, \"layers\": [\"" PJ "\"], \"tokens_counted\": 5, "
               "\"sample\": {\"pieces\": [\"" PJ "\", \"if\", \"" PJ "\", \"x\", \"&\"], \"experts\": [[0, 1, -1, 3, 2]]}, "
               "\"expert_tokens\": [[1, 1, 1, 1]], \"domains\": [\"" PJ "\", \"dates\", \"grammar\", \"" PJ "\"], "
               "\"domain_counts\": [[[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]], "
               "\"top_tokens\": [[[[\"" PJ "\", 1]], [[\"if\", 1]], [[\"&\", 1]], [[\"" PJ "\", 1]]]]}\n");
    snprintf(path, sizeof path, "%s/latest/config.json", run);
    write_file(path, "{\"model_type\": \"" PJ "\", \"router_type\": \"" PJ "\", \"num_experts\": 4, \"num_layers\": 2, "
                     "\"d_model\": 8, \"sparse_step\": 2, \"num_experts_per_tok\": 1}\n");
    const char *one[1] = {run};
    StrBuf sb = {0};
    EXPECT(report_build(&sb, one, 1) == MOELM_OK);
    if (sb.buf) {
        EXPECT_MSG(count(sb.buf, "<script") == 2, "%d <script", count(sb.buf, "<script"));   /* the page's own two */
        EXPECT(strstr(sb.buf, "<script>alert") == NULL && strstr(sb.buf, "<img") == NULL);
        EXPECT(count(sb.buf, "&lt;script&gt;alert(1)&lt;/script&gt;") >= 6);   /* the payloads are shown, as text */
    }
    sb_free(&sb);
#undef PJ
}

/* Issue 24's report fixes, on synthetic runs: the summary names the blocks that hold experts (not
 * "every 2nd block" for one sparse layer in block 1 of 4); router charts of two evaluations are points
 * on an axis spanning the metric's natural range; the wall-clock is the checkpoint's (moelm info's)
 * unless the log went past it; runs with different tokenizers are compared by word-level perplexity;
 * a collapsed router (the trainer's criterion) is flagged, a random router's unused experts are not. */
static void write_run(const char *dir, const char *cfg, const char *state, const char *evals) {
    char path[512], buf[4096];
    snprintf(path, sizeof path, "%s/latest", dir);
    dir_make(path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    snprintf(buf, sizeof buf,
             "{\"step\": 1, \"loss\": 6.9, \"aux_loss\": 0.02, \"lr\": 0.001, \"grad_norm\": 2.0, \"tokens_per_s\": 900, \"time_s\": 0.1, \"tokens\": 64}\n"
             "{\"step\": 4, \"loss\": 5.5, \"aux_loss\": 0.02, \"lr\": 0.0008, \"grad_norm\": 1.2, \"tokens_per_s\": 1000, \"time_s\": 0.4, \"tokens\": 256}\n"
             "%s", evals);
    write_file(path, buf);
    snprintf(path, sizeof path, "%s/latest/config.json", dir);
    write_file(path, cfg);
    if (state) {
        snprintf(path, sizeof path, "%s/latest/state.json", dir);
        write_file(path, state);
    }
}

#define EVAL(step, drop, dead) "{\"step\": " #step ", \"val_loss\": 5.2, \"val_ppl\": 181.3, \"val_word_ppl\": 250.5, \"moe\": " \
    "[{\"layer\": 0, \"dropped\": " #drop ", \"entropy\": 1.2, \"top1\": 0.4, \"dead\": " #dead ", \"aux\": 1.0501, " \
    "\"z\": 0.7, \"load\": [0.4, 0.1, 0.2, 0.3]}]}\n"
#define CFG(router, L, step) "{\"model_type\": \"lm\", \"router_type\": \"" router "\", \"num_experts\": 4, \"num_layers\": " \
    #L ", \"d_model\": 8, \"sparse_step\": " #step ", \"num_experts_per_tok\": 1}\n"

TEST(report_issue24) {
    char b[160];
    report_sparse_blocks(b, sizeof b, 4, 4);
    EXPECT_MSG(!strcmp(b, "in block 1 of 4"), "%s", b);
    report_sparse_blocks(b, sizeof b, 2, 1);
    EXPECT_MSG(!strcmp(b, "in every block"), "%s", b);
    report_sparse_blocks(b, sizeof b, 4, 2);
    EXPECT_MSG(!strcmp(b, "in blocks 1, 3 (2 of 4)"), "%s", b);
    report_sparse_blocks(b, sizeof b, 24, 2);
    EXPECT_MSG(!strcmp(b, "in blocks 1, 3, 5, 7, 9, 11, 13, 15, ... (12 of 24)"), "%s", b);

    const char *root = "build/tmp/test_report24";
    dir_remove_tree(root);
    const char *st_a = "{\"step\": 6, \"elapsed_s\": 12.5, \"tokenizer_hash\": \"111\"}\n";
    write_run("build/tmp/test_report24/a", CFG("switch", 4, 4), st_a, EVAL(3, 0.1, 0) EVAL(6, 0.1001, 0));
    const char *a[1] = {"build/tmp/test_report24/a"};
    StrBuf sb = {0};
    EXPECT(report_build(&sb, a, 1) == MOELM_OK);
    if (sb.buf) {
        EXPECT(strstr(sb.buf, "switch, 4 experts in block 1 of 4, 4 layers") != NULL);
        EXPECT(strstr(sb.buf, "every 2nd") == NULL);
        /* two evaluations: points, no line; the dropped share on an axis up to 100 %, the balance loss
         * (1.0501, 1.0501) on one from 0 */
        EXPECT(count_between(sb.buf, ">dropped token-slots<", "</svg>", "<path class=\"series\"") == 0);
        EXPECT(count_between(sb.buf, ">dropped token-slots<", "</svg>", "<circle") == 2);
        EXPECT(count_between(sb.buf, ">dropped token-slots<", "</svg>", ">100<") == 1);
        EXPECT(count_between(sb.buf, ">load-balancing loss per layer<", "</svg>", ">0.0<") == 1);
        EXPECT(count_between(sb.buf, ">router confidence<", "</svg>", ">1.0<") == 1);
        /* the wall-clock of the checkpoint, as moelm info says, not the last logged step's 0.4 s */
        EXPECT(strstr(sb.buf, ">12.5 s<") != NULL && strstr(sb.buf, ">0.4 s<") == NULL);
        EXPECT(strstr(sb.buf, "has collapsed") == NULL);
    }
    sb_free(&sb);

    /* the log went past the checkpoint (stopped before its next one): the log's wall-clock */
    write_run("build/tmp/test_report24/past", CFG("switch", 2, 1), "{\"step\": 2, \"elapsed_s\": 0.25}\n", EVAL(3, 0.1, 0));
    const char *past[1] = {"build/tmp/test_report24/past"};
    StrBuf sp = {0};
    EXPECT(report_build(&sp, past, 1) == MOELM_OK);
    if (sp.buf) {
        EXPECT(strstr(sp.buf, ">0.4 s<") != NULL);
        EXPECT(strstr(sp.buf, "switch, 4 experts in every block, 2 layers") != NULL);
    }
    sb_free(&sp);

    /* a collapsed switch router (94% dropped at the last evaluation) is flagged; 3 of 4 dead too; a
     * random router's experts no batch drew are not */
    write_run("build/tmp/test_report24/drop", CFG("switch", 2, 2), NULL, EVAL(3, 0.1, 0) EVAL(6, 0.9375, 1));
    write_run("build/tmp/test_report24/dead", CFG("topk", 2, 2), NULL, EVAL(6, 0.0, 3));
    write_run("build/tmp/test_report24/rnd", CFG("random", 2, 2), NULL, EVAL(6, 0.0, 3));
    write_run("build/tmp/test_report24/early", CFG("switch", 2, 2), NULL, EVAL(3, 0.9, 3) EVAL(6, 0.1, 0));
    const char *four[4] = {"build/tmp/test_report24/drop", "build/tmp/test_report24/dead", "build/tmp/test_report24/rnd",
                           "build/tmp/test_report24/early"};
    StrBuf sc = {0};
    EXPECT(report_build(&sc, four, 4) == MOELM_OK);
    if (sc.buf) {
        EXPECT_MSG(count(sc.buf, "has collapsed") == 2, "%d", count(sc.buf, "has collapsed"));
        EXPECT(strstr(sc.buf, "has collapsed</b> at step 6 (94% of the token-slots dropped, 1 of 4") != NULL);
        EXPECT(strstr(sc.buf, "has collapsed</b> at step 6 (0% of the token-slots dropped, 3 of 4") != NULL);
        /* four runs, with the trainer's criterion: the first flag is the first run's row */
        EXPECT(strstr(sc.buf, ">drop<") < strstr(sc.buf, "94% of the token-slots"));
    }
    sb_free(&sc);

    /* tokenizers: a and b differ (hashes 111, 222): word-level perplexity only; a and c agree: per token */
    write_run("build/tmp/test_report24/b", CFG("switch", 4, 4), "{\"step\": 6, \"elapsed_s\": 3, \"tokenizer_hash\": \"222\"}\n",
              EVAL(3, 0.1, 0) EVAL(6, 0.1, 0));
    write_run("build/tmp/test_report24/c", CFG("switch", 4, 4), st_a, EVAL(3, 0.1, 0) EVAL(6, 0.1, 0));
    const char *ab[2] = {"build/tmp/test_report24/a", "build/tmp/test_report24/b"};
    StrBuf sd = {0};
    EXPECT(report_build(&sd, ab, 2) == MOELM_OK);
    if (sd.buf) {
        EXPECT(strstr(sd.buf, ">word-level perplexity vs step<") != NULL && strstr(sd.buf, ">perplexity vs step<") == NULL);
        EXPECT(count_between(sd.buf, ">word-level perplexity vs step<", "</svg>", ">a val (word)<") == 2);   /* its path's title and its legend */
        EXPECT(count_between(sd.buf, ">word-level perplexity vs step<", "</svg>", " train<") == 0);
        EXPECT(strstr(sd.buf, "use different tokenizers") != NULL);
    }
    sb_free(&sd);
    const char *ac[2] = {"build/tmp/test_report24/a", "build/tmp/test_report24/c"};
    StrBuf se = {0};
    EXPECT(report_build(&se, ac, 2) == MOELM_OK);
    if (se.buf) {
        EXPECT(strstr(se.buf, ">perplexity vs step<") != NULL && strstr(se.buf, "word-level perplexity") == NULL);
        EXPECT(count_between(se.buf, ">perplexity vs step<", "</svg>", ">a train<") == 2);
    }
    sb_free(&se);
}
#undef EVAL
#undef CFG

/* Issue 28: a dense and a switch run overlaid, the switch run's averaged weights (val_loss_ema, val_ppl_ema,
 * written with --set ema_decay=D) as a line of their own beside its raw weights' validation curve, at the
 * right points (each marker's title holds its step and value; the evaluation without an average is a
 * gap), and none for the run that kept no average. */
TEST(report_ema_overlay) {
    const char *dir = "build/tmp/test_report_ema";
    dir_remove_tree(dir);
    dir_make("build/tmp/test_report_ema/dense");
    dir_make("build/tmp/test_report_ema/switch");
    write_file("build/tmp/test_report_ema/dense/metrics.jsonl",
               "{\"step\": 1, \"loss\": 6.9, \"aux_loss\": 0, \"lr\": 0.001, \"grad_norm\": 2, \"tokens_per_s\": 900, \"time_s\": 1, \"tokens\": 64}\n"
               "{\"step\": 3, \"val_loss\": 6.2, \"val_ppl\": 492.7, \"val_word_ppl\": 492.7}\n"
               "{\"step\": 6, \"val_loss\": 5.6, \"val_ppl\": 270.4, \"val_word_ppl\": 270.4}\n");
    write_file("build/tmp/test_report_ema/switch/metrics.jsonl",
               "{\"step\": 1, \"loss\": 6.8, \"aux_loss\": 0.01, \"lr\": 0.001, \"grad_norm\": 2, \"tokens_per_s\": 800, \"time_s\": 1, \"tokens\": 64}\n"
               "{\"step\": 3, \"val_loss\": 6.0, \"val_ppl\": 403.4, \"val_word_ppl\": 403.4, "
               "\"val_loss_ema\": 5.8, \"val_ppl_ema\": 330.3, \"val_word_ppl_ema\": 330.3}\n"
               "{\"step\": 6, \"val_loss\": 5.2, \"val_ppl\": 181.3, \"val_word_ppl\": 181.3}\n"
               "{\"step\": 9, \"val_loss\": 5.1, \"val_ppl\": 164.0, \"val_word_ppl\": 164.0, "
               "\"val_loss_ema\": 4.6, \"val_ppl_ema\": 99.48, \"val_word_ppl_ema\": 99.48}\n");
    const char *two[2] = {"build/tmp/test_report_ema/dense", "build/tmp/test_report_ema/switch"};
    StrBuf sb = {0};
    EXPECT(report_build(&sb, two, 2) == MOELM_OK);
    if (sb.buf) {
        /* loss vs step: both runs' train and val, and the switch run's average */
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", "<path class=\"series\"") == 5);
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", ">dense val<") == 2);
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", ">switch val<") == 2);
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", "<title>switch val, averaged weights: 3, 5.8</title>") == 1);
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", "<title>switch val, averaged weights: 9, 4.6</title>") == 1);
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", "<title>switch val, averaged weights: 6,") == 0);
        /* a dotted line: its own style, not the raw weights' dashes */
        EXPECT(count_between(sb.buf, "id=\"chart-1\"", "</svg>", "stroke-dasharray=\"1.5 3\"") == 2);   /* path, key */
        /* perplexity vs step (chart 3): the average's perplexities */
        EXPECT(count_between(sb.buf, "id=\"chart-3\"", "</svg>", "<title>switch val, averaged weights: 3, 330.3</title>") == 1);
        EXPECT(count_between(sb.buf, "id=\"chart-3\"", "</svg>", "<title>switch val, averaged weights: 9, 99.48</title>") == 1);
        /* against wall-clock too (charts 2 and 4), and never for the dense run */
        EXPECT(count_between(sb.buf, "id=\"chart-2\"", "</svg>", ">switch val, averaged weights<") == 2);   /* path title, key */
        EXPECT(count_between(sb.buf, "id=\"chart-4\"", "</svg>", ">switch val, averaged weights<") == 2);   /* path title, key */
        EXPECT(count(sb.buf, "dense val, averaged") == 0);
    }
    sb_free(&sb);
}

int main(void) {
    test_one_thread();
    RUN(scale_linear_and_log);
    RUN(scale_fit);
    RUN(ticks);
    RUN(escape);
    RUN(line_chart_points);
    RUN(line_chart_gaps_markers_log);
    RUN(line_chart_empty);
    RUN(heatmap_cells);
    RUN(token_expert);
    RUN(eta_format);
    RUN(report_page);
    RUN(report_escapes_every_file_string);
    RUN(report_issue24);
    RUN(report_ema_overlay);
    RUN(routing_from_evaluation_equals_dump);
    return test_summary("report");
}
