/* report.c: the HTML report of one or more runs (see report.h).
 *
 * Dimensions: R runs, L sparse layers of a run, E experts, S logged steps, V eval records.
 * Every curve is a pair of [S] or [V] arrays per run; NaN marks a value a record did not have
 * (a JSON null, a missing key), which the chart writer turns into a gap.
 */
#include "report/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include "io/fileio.h"
#include "moe/moe.h"
#include "report/svg.h"

#define MAXL 64
#define MAXE 256
#define REPORT_MAX_POINTS 2000   /* per curve; longer series are thinned evenly */
#define REPORT_MAX_METRICS (1u << 30)   /* bytes of metrics.jsonl read at most (a device never ends) */

typedef struct {
    char path[1024];
    char label[256];          /* shown in legends: the directory's last component (or the path when two runs share it) */
    char desc[256];           /* model summary from config.json */
    int S;
    double *step, *loss, *aux, *lr, *gnorm, *tps, *time, *tokens;   /* [S] */
    int V;
    double *estep, *etime, *vloss, *vppl, *vwppl;                    /* [V] */
    double *eloss, *eppl, *ewppl;    /* [V] the averaged weights' (val_loss_ema ...; ema_decay > 0), NaN where absent */
    int has_ema;                     /* some record has val_loss_ema */
    int L, E;                                                        /* sparse layers, experts in the eval records */
    double *dropped, *entropy, *top1, *dead, *laux, *lz;             /* [L, V] */
    double *load;                                                    /* [L, E, V] */
    int bad_lines;
    char lname[MAXL][32];     /* an encoder-decoder's sparse blocks ("encoder block 1"), from metrics.jsonl; "" otherwise */
    Json *routing;            /* newest routing dump, or NULL */
    Json *config;             /* latest/config.json, or NULL */
    double ckpt_step, ckpt_elapsed;   /* latest/state.json's step and elapsed_s (the run's wall-clock, as
                                       * moelm info gives it: evaluations and checkpoints included); NaN if none */
    char tok_hash[32];        /* latest/state.json's tokenizer_hash ("" when unknown) */
} Run;

static double num(const Json *o, const char *key) {
    const Json *v = json_get(o, key);
    return json_type(v) == JSON_NUMBER ? json_number(v) : NAN;
}

/* An integer key of a config (0 when absent or not a number). */
static int inum(const Json *o, const char *key) {
    double v = num(o, key);
    return isfinite(v) && fabs(v) < 1e9 ? (int)v : 0;
}

void report_sparse_blocks(char *buf, size_t cap, int L, int step) {
    /* the lm's rule (config_block_is_sparse): block i is sparse when step == 1 or i % step == 1 */
    int n = 0, first = -1;
    for (int i = 0; i < L; i++) if (step == 1 || i % step == 1) { n++; if (first < 0) first = i; }
    if (n == 0) { snprintf(buf, cap, "in no block of %d", L); return; }
    if (n == L) { snprintf(buf, cap, "in every block"); return; }
    if (n == 1) { snprintf(buf, cap, "in block %d of %d", first, L); return; }
    size_t len = (size_t)snprintf(buf, cap, "in blocks ");
    int shown = 0;
    for (int i = 0; i < L && len < cap; i++) {
        if (!(i % step == 1)) continue;
        if (shown == 8 && n > 9) { len += (size_t)snprintf(buf + len, cap - len, ", ..."); break; }
        len += (size_t)snprintf(buf + len, cap - len, "%s%d", shown ? ", " : "", i);
        shown++;
    }
    if (len < cap) snprintf(buf + len, cap - len, " (%d of %d)", n, L);
}

static double *nan_array(size_t n) {
    double *a = moelm_malloc(sizeof(double) * (n ? n : 1));
    if (a) for (size_t i = 0; i < n; i++) a[i] = NAN;
    return a;
}

static void run_free(Run *r) {
    double **arrs[] = {&r->step, &r->loss, &r->aux, &r->lr, &r->gnorm, &r->tps, &r->time, &r->tokens, &r->estep, &r->etime,
                       &r->vloss, &r->vppl, &r->vwppl, &r->eloss, &r->eppl, &r->ewppl, &r->dropped, &r->entropy, &r->top1, &r->dead, &r->laux, &r->lz, &r->load};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) { moelm_free(*arrs[i]); *arrs[i] = NULL; }
    json_free(r->routing);
    json_free(r->config);
    r->routing = r->config = NULL;
}

/* Wall-clock of an eval record without time_s: linear between the logged steps around it. */
static double time_at_step(const Run *r, double step) {
    double s0 = NAN, t0 = NAN;
    for (int i = 0; i < r->S; i++) {
        if (!isfinite(r->time[i])) continue;
        if (r->step[i] == step) return r->time[i];
        if (r->step[i] < step) { s0 = r->step[i]; t0 = r->time[i]; continue; }
        if (isfinite(t0) && r->step[i] > s0) return t0 + (r->time[i] - t0) * (step - s0) / (r->step[i] - s0);
        return r->time[i];
    }
    return t0;
}

moelm_status report_read_records(const char *run, Json ***recs_out, size_t *nr_out, int *bad_lines) {
    char path[1100];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    *recs_out = NULL;
    *nr_out = 0;
    *bad_lines = 0;
    if (!path_exists(path))
        return moelm_fail(MOELM_ERR_IO, "%s: no metrics.jsonl (is it a run directory written by moelm train?)", run);
    char *data = NULL;
    size_t n = 0;
    moelm_status st = file_read_all_limit(path, &data, &n, REPORT_MAX_METRICS);
    if (st) return st;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += data[i] == '\n';
    Json **recs = moelm_calloc(lines, sizeof(Json *));
    if (!recs) { moelm_free(data); return moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory", path); }
    size_t nr = 0;
    for (size_t i = 0; i < n;) {
        char *nl = memchr(data + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - data) : n;
        size_t a = i;
        while (a < end && (data[a] == ' ' || data[a] == '\r' || data[a] == '\t')) a++;
        if (a < end) {
            Json *j = NULL;
            if (json_parse(&j, data + a, end - a, path) == MOELM_OK && json_type(j) == JSON_OBJECT) recs[nr++] = j;
            else { json_free(j); (*bad_lines)++; }
        }
        i = end + 1;
    }
    moelm_free(data);
    *recs_out = recs;
    *nr_out = nr;
    return MOELM_OK;
}

void report_free_records(Json **recs, size_t nr) {
    for (size_t i = 0; i < nr; i++) json_free(recs[i]);
    moelm_free(recs);
}

static moelm_status read_metrics(Run *r) {
    char path[1100];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->path);
    Json **recs = NULL;
    size_t nr = 0;
    moelm_status st = report_read_records(r->path, &recs, &nr, &r->bad_lines);
    if (st) return st;
    int S = 0, V = 0, L = 0, E = 0;
    for (size_t i = 0; i < nr; i++) {
        if (json_get(recs[i], "loss")) S++;
        if (json_get(recs[i], "val_loss")) {
            V++;
            const Json *moe = json_get(recs[i], "moe");
            int nl = (int)json_len(moe);
            if (nl > L) L = nl > MAXL ? MAXL : nl;
            for (int l = 0; l < nl && l < MAXL; l++) {
                int ne = (int)json_len(json_get(json_at(moe, (size_t)l), "load"));
                if (ne > E) E = ne > MAXE ? MAXE : ne;
            }
        }
    }
    r->S = S; r->V = V; r->L = L; r->E = E;
    double **sa[] = {&r->step, &r->loss, &r->aux, &r->lr, &r->gnorm, &r->tps, &r->time, &r->tokens};
    double **va[] = {&r->estep, &r->etime, &r->vloss, &r->vppl, &r->vwppl, &r->eloss, &r->eppl, &r->ewppl};
    double **la[] = {&r->dropped, &r->entropy, &r->top1, &r->dead, &r->laux, &r->lz};
    for (size_t k = 0; k < 8 && !st; k++) if (!(*sa[k] = nan_array((size_t)S))) st = MOELM_ERR_NOMEM;
    for (size_t k = 0; k < 8 && !st; k++) if (!(*va[k] = nan_array((size_t)V))) st = MOELM_ERR_NOMEM;
    for (size_t k = 0; k < 6 && !st; k++) if (!(*la[k] = nan_array((size_t)L * V))) st = MOELM_ERR_NOMEM;
    if (!st && !(r->load = nan_array((size_t)L * E * V))) st = MOELM_ERR_NOMEM;
    int s = 0, v = 0;
    for (size_t i = 0; i < nr && !st; i++) {
        const Json *o = recs[i];
        if (json_get(o, "loss")) {
            static const char *keys[8] = {"step", "loss", "aux_loss", "lr", "grad_norm", "tokens_per_s", "time_s", "tokens"};
            for (int k = 0; k < 8; k++) (*sa[k])[s] = num(o, keys[k]);
            s++;
        }
        if (json_get(o, "val_loss")) {
            r->estep[v] = num(o, "step");
            r->etime[v] = num(o, "time_s");
            r->vloss[v] = num(o, "val_loss");
            r->vppl[v] = num(o, "val_ppl");
            r->vwppl[v] = num(o, "val_word_ppl");
            r->eloss[v] = num(o, "val_loss_ema");
            r->eppl[v] = num(o, "val_ppl_ema");
            r->ewppl[v] = num(o, "val_word_ppl_ema");
            r->has_ema |= json_get(o, "val_loss_ema") != NULL;
            const Json *moe = json_get(o, "moe");
            for (int l = 0; l < L && l < (int)json_len(moe); l++) {
                const Json *x = json_at(moe, (size_t)l);
                const char *stack = json_string(json_get(x, "stack"));
                if (stack && json_type(json_get(x, "block")) == JSON_NUMBER)
                    snprintf(r->lname[l], sizeof r->lname[l], "%.8s block %d", stack, (int)num(x, "block"));
                static const char *keys[6] = {"dropped", "entropy", "top1", "dead", "aux", "z"};
                for (int k = 0; k < 6; k++) (*la[k])[(size_t)l * V + v] = num(x, keys[k]);
                const Json *load = json_get(x, "load");
                for (int e = 0; e < E && e < (int)json_len(load); e++) {
                    const Json *le = json_at(load, (size_t)e);
                    r->load[((size_t)l * E + e) * V + v] = json_type(le) == JSON_NUMBER ? json_number(le) : NAN;
                }
            }
            v++;
        }
    }
    report_free_records(recs, nr);
    if (st) return moelm_fail(st, "%s: out of memory", path);
    for (int i = 0; i < V; i++)
        if (!isfinite(r->etime[i])) r->etime[i] = time_at_step(r, r->estep[i]);
    return MOELM_OK;
}

/* The newest routing/step-N.json (largest N not past the last step in metrics.jsonl: a dump left by
 * a crashed run beyond its resumed checkpoint is stale), parsed; none is not an error. */
static void read_routing(Run *r) {
    double last = -1;
    for (int i = 0; i < r->S; i++) if (r->step[i] > last) last = r->step[i];
    for (int i = 0; i < r->V; i++) if (r->estep[i] > last) last = r->estep[i];
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/routing", r->path);
    DIR *d = opendir(dir);
    if (!d) return;
    long best = -1;
    struct dirent *de;
    while ((de = readdir(d))) {
        char *end;
        if (strncmp(de->d_name, "step-", 5)) continue;
        long s = strtol(de->d_name + 5, &end, 10);
        if (end != de->d_name + 5 && !strcmp(end, ".json") && s > best && s <= last) best = s;
    }
    closedir(d);
    if (best < 0) return;
    char path[1200];
    snprintf(path, sizeof path, "%s/step-%ld.json", dir, best);
    Json *j = NULL;
    if (json_parse_file(&j, path) == MOELM_OK && json_type(j) == JSON_OBJECT) r->routing = j;
    else json_free(j);
}

static void read_state(Run *r) {
    char path[1100];
    snprintf(path, sizeof path, "%s/latest/state.json", r->path);
    r->ckpt_step = r->ckpt_elapsed = NAN;
    Json *j = NULL;
    if (path_exists(path) && json_parse_file(&j, path) == MOELM_OK && json_type(j) == JSON_OBJECT) {
        r->ckpt_step = num(j, "step");
        r->ckpt_elapsed = num(j, "elapsed_s");
        const char *h = json_string(json_get(j, "tokenizer_hash"));
        if (h) snprintf(r->tok_hash, sizeof r->tok_hash, "%s", h);
    }
    json_free(j);
}

static void read_config(Run *r) {
    read_state(r);
    char path[1100];
    snprintf(path, sizeof path, "%s/latest/config.json", r->path);
    Json *j = NULL;
    if (path_exists(path) && json_parse_file(&j, path) == MOELM_OK && json_type(j) == JSON_OBJECT) r->config = j;
    else json_free(j);
    if (!r->config) { snprintf(r->desc, sizeof r->desc, "%s", r->L ? "sparse" : "dense"); return; }
    const char *mt = json_string(json_get(j, "model_type"));
    const char *router = json_string(json_get(j, "router_type"));
    int E = inum(j, "num_experts"), Lr = inum(j, "num_layers"), C = inum(j, "d_model");
    int K = inum(j, "num_experts_per_tok"), step = inum(j, "sparse_step");
    char kk[24] = "";
    if (router && !strcmp(router, "topk")) snprintf(kk, sizeof kk, ", k %d", K);
    if (mt && !strcmp(mt, "seed")) {
        snprintf(r->desc, sizeof r->desc, "seed model, %s head MoE, %d experts, d_model %d", router ? router : "?", E, C);
    } else if (mt && (!strcmp(mt, "mixtral") || !strcmp(mt, "llama"))) {
        E = inum(j, "num_local_experts");
        if (!strcmp(mt, "mixtral"))
            snprintf(r->desc, sizeof r->desc, "mixtral, %d experts, k %d, in every block, %d layers, d_model %d", E, K,
                     inum(j, "num_hidden_layers"), inum(j, "hidden_size"));
        else snprintf(r->desc, sizeof r->desc, "llama (dense), %d layers, d_model %d", inum(j, "num_hidden_layers"), inum(j, "hidden_size"));
    } else if (mt && !strcmp(mt, "switch_transformers")) {
        snprintf(r->desc, sizeof r->desc, "switch_transformers encoder-decoder, %d experts, %d encoder layers, d_model %d", E, Lr, C);
    } else if (E <= 1 || step <= 0 || Lr < 1) {
        snprintf(r->desc, sizeof r->desc, "dense, %d layers, d_model %d", Lr, C);
    } else {
        char where[160];
        report_sparse_blocks(where, sizeof where, Lr, step);
        snprintf(r->desc, sizeof r->desc, "%s, %d experts%s %s, %d layers, d_model %d", router ? router : "?", E, kk, where,
                 Lr, C);
    }
}

/* ---- page pieces ---------------------------------------------------------------------------------- */

/* Series of one chart; names and derived arrays are owned here and freed by chart(). */
typedef struct {
    SvgSeries s[256];
    char names[256][128];
    double *own[512];
    int n, nown;
} Series;

static double *ser_buf(Series *S, int n) {
    if (S->nown >= 512) return NULL;
    double *a = nan_array((size_t)n);
    if (a) S->own[S->nown++] = a;
    return a;
}

static void ser_add(Series *S, const double *x, const double *y, int n, const char *color, int dashed, int markers,
                    const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static void ser_add(Series *S, const double *x, const double *y, int n, const char *color, int dashed, int markers,
                    const char *fmt, ...) {
    if (S->n >= 256 || !x || !y) return;
    if (n > REPORT_MAX_POINTS) {
        /* a long run: every k-th point and the last one, so a page stays a few MB at most */
        int k = (n + REPORT_MAX_POINTS - 1) / REPORT_MAX_POINTS, m = (n - 1) / k + 1 + ((n - 1) % k != 0);
        double *dx = ser_buf(S, m), *dy = ser_buf(S, m);
        if (!dx || !dy) return;
        int j = 0;
        for (int i = 0; i < n; i += k, j++) { dx[j] = x[i]; dy[j] = y[i]; }
        if ((n - 1) % k) { dx[j] = x[n - 1]; dy[j] = y[n - 1]; j++; }
        x = dx; y = dy; n = j;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(S->names[S->n], sizeof S->names[S->n], fmt, ap);
    va_end(ap);
    S->s[S->n] = (SvgSeries){.x = x, .y = y, .n = n, .name = S->names[S->n], .color = color, .dashed = dashed, .markers = markers};
    S->n++;
}

static int charts_written;

/* Writes the chart c (its id set here) when some series has a finite point (an empty chart is left
 * out), then frees S. */
static void chart_with(StrBuf *sb, Series *S, SvgChart c) {
    int any = 0;
    for (int i = 0; i < S->n && !any; i++)
        for (int j = 0; j < S->s[i].n && !any; j++)
            any = isfinite(S->s[i].x[j]) && isfinite(S->s[i].y[j]) && (!c.logy || S->s[i].y[j] > 0);
    if (any) {
        char id[32];
        snprintf(id, sizeof id, "chart-%d", ++charts_written);
        c.id = id;
        sb_printf(sb, "<figure>");
        svg_line_chart(sb, &c, S->s, S->n);
        sb_printf(sb, "</figure>\n");
    }
    for (int i = 0; i < S->nown; i++) moelm_free(S->own[i]);
    memset(S, 0, sizeof *S);
}

static void chart(StrBuf *sb, Series *S, const char *title, const char *xlabel, const char *ylabel, int logy) {
    chart_with(sb, S, (SvgChart){.title = title, .xlabel = xlabel, .ylabel = ylabel, .logy = logy});
}

/* The colour of run ri's layer l in per-layer charts: by layer for one run, by run for several. */
static const char *layer_color(int R, int ri, int l) { return R == 1 ? svg_palette(l) : svg_palette(ri); }

static const char *layer_name(const Run *r, int l, char *buf, size_t cap) {
    const Json *names = json_get(r->routing, "layers");
    const char *s = json_string(json_at(names, (size_t)l));
    if (s && (int)json_len(names) == r->L) snprintf(buf, cap, "%s", s);
    else if (l < MAXL && r->lname[l][0]) snprintf(buf, cap, "%s", r->lname[l]);
    else snprintf(buf, cap, "moe layer %d", l);
    return buf;
}

/* Light background colour of expert e of E for routed tokens: golden-angle hues stay distinct for
 * neighbouring experts. */
static void expert_color(char *buf, size_t cap, int e, int E) {
    (void)E;
    snprintf(buf, cap, "hsl(%d,75%%,%d%%)", (int)fmod(e * 137.508 + 200, 360), 78 - (e / 10 % 2) * 14);
}

static void html_escape(StrBuf *sb, const char *s) { svg_escape(sb, s); }

static const char *CSS =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1480px;padding:0 16px;color:#222}"
    "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}"
    "h3{font-size:14px;margin:14px 0 4px}p.note{color:#555;margin:2px 0 8px;max-width:1000px}"
    ".grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:4px;padding:2px}"
    "svg text{font:11px system-ui,sans-serif;fill:#333}svg text.cellv{font-size:10px}svg text.title{font-weight:600;font-size:12px}svg text.nodata{fill:#999}"
    "svg .frame{fill:#fcfcfc;stroke:#bbb}svg .grid{stroke:#eee}svg path.series{stroke-width:1.6}svg line.key{stroke-width:2}"
    "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".toks{font:13px/1.9 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;border:1px solid #e4e4e4;padding:6px;"
    "background:#fff;max-width:1400px}.tok{border-radius:3px;padding:1px 0}.tok.drop{background:#eee;color:#999;text-decoration:line-through}"
    ".toks.focus .tok{opacity:.22}.toks.focus .tok.on{opacity:1;outline:1px solid #555}"
    ".chip{display:inline-block;padding:0 6px;margin:0 4px 2px 0;border-radius:3px;font:12px ui-monospace,monospace;cursor:default}"
    ".lname{font-weight:600;margin:8px 0 2px}.words{font:12px ui-monospace,Menlo,monospace}#selfcheck{display:none}";

/* Hover a token or an expert chip: the tokens of that expert in the same layer stand out. */
static const char *JS_HOVER =
    "document.querySelectorAll('.layer').forEach(function(box){var t=box.querySelector('.toks');if(!t)return;"
    "function on(e){t.classList.add('focus');t.querySelectorAll('.tok').forEach(function(x){"
    "x.classList.toggle('on',x.getAttribute('data-e')===e);});}"
    "function off(){t.classList.remove('focus');}"
    "box.querySelectorAll('[data-e]').forEach(function(x){x.addEventListener('mouseenter',function(){on(x.getAttribute('data-e'));});"
    "x.addEventListener('mouseleave',off);});});\n";

/* The page checks itself once it is laid out: every plot has data marks with a non-empty extent.
 * The result goes into #selfcheck and body[data-selfcheck] (the browser test reads them). */
static const char *JS_CHECK =
    "(function(){var plots=document.querySelectorAll('svg.plot'),bad=[],marks=0;"
    "plots.forEach(function(s){var d=s.querySelector('g.data'),n=d?d.querySelectorAll('path,circle,rect').length:0,"
    "b=d&&d.getBBox?d.getBBox():{width:0,height:0};marks+=n;"
    "if(s.classList.contains('empty')||!n||!(b.width>0&&b.height>0))bad.push((s.id||'?')+':'+n);});"
    "var toks=document.querySelectorAll('.toks .tok').length,err=window.__reportErrors||[];"
    "var ok=plots.length>0&&!bad.length&&!err.length;"
    "document.getElementById('selfcheck').textContent='selfcheck '+(ok?'ok':'FAIL')+' plots='+plots.length+' marks='+marks+"
    "' tokens='+toks+' bad=['+bad.join(',')+'] errors=['+err.join(' | ')+']'"
    "+' height='+Math.ceil(document.documentElement.scrollHeight);"
    "document.body.setAttribute('data-selfcheck',ok?'ok':'fail');})();\n";

/* ---- sections ------------------------------------------------------------------------------------- */

static void section_summary(StrBuf *sb, const Run *runs, int R) {
    sb_printf(sb, "<table class=\"runs\"><tr><th>run</th><th>model</th><th>steps</th><th>tokens</th><th>wall-clock</th>"
                  "<th>last train loss</th><th>best val loss</th><th>val ppl</th><th>val word ppl</th></tr>\n");
    for (int i = 0; i < R; i++) {
        const Run *r = &runs[i];
        int bi = -1;
        for (int v = 0; v < r->V; v++)
            if (isfinite(r->vloss[v]) && (bi < 0 || r->vloss[v] < r->vloss[bi])) bi = v;
        double last_loss = NAN, last_step = NAN, last_time = NAN, last_tok = NAN;
        for (int s = 0; s < r->S; s++) {
            if (isfinite(r->loss[s])) last_loss = r->loss[s];
            if (isfinite(r->step[s])) last_step = r->step[s];
            if (isfinite(r->time[s])) last_time = r->time[s];
            if (isfinite(r->tokens[s])) last_tok = r->tokens[s];
        }
        sb_printf(sb, "<tr><td><span class=\"chip\" style=\"background:%s;color:#fff\">&nbsp;</span>", svg_palette(i));
        html_escape(sb, r->label);
        sb_printf(sb, "</td><td>");
        html_escape(sb, r->desc);
        /* the wall-clock of the latest checkpoint (what moelm info says: the final evaluation and checkpoint
         * included) unless the log went on past it (a run stopped before its next checkpoint) */
        if (isfinite(r->ckpt_elapsed) && isfinite(r->ckpt_step) && !(last_step > r->ckpt_step)) last_time = r->ckpt_elapsed;
        sb_printf(sb, "</td><td class=\"n\">%.0f</td><td class=\"n\">%.0f</td><td class=\"n\">%.1f s</td><td class=\"n\">%.4f</td>",
                  last_step, last_tok, last_time, last_loss);
        if (bi >= 0)
            sb_printf(sb, "<td class=\"n\">%.4f (step %.0f)</td><td class=\"n\">%.2f</td><td class=\"n\">%.2f</td></tr>\n",
                      r->vloss[bi], r->estep[bi], r->vppl[bi], r->vwppl[bi]);
        else sb_printf(sb, "<td>-</td><td>-</td><td>-</td></tr>\n");
        if (r->bad_lines) {
            sb_printf(sb, "<tr><td colspan=\"9\" class=\"note\">%d malformed line(s) of ", r->bad_lines);
            html_escape(sb, r->path);
            sb_printf(sb, "/metrics.jsonl skipped</td></tr>\n");
        }
    }
    sb_printf(sb, "</table>\n");
}

static void section_curves(StrBuf *sb, Run *runs, int R) {
    Series S;
    memset(&S, 0, sizeof S);
    double tmax = 0;
    int word_differs = 0;
    for (int i = 0; i < R; i++) {
        for (int s = 0; s < runs[i].S; s++) if (isfinite(runs[i].time[s]) && runs[i].time[s] > tmax) tmax = runs[i].time[s];
        for (int v = 0; v < runs[i].V; v++)
            if (fabs(runs[i].vwppl[v] - runs[i].vppl[v]) > 1e-3 * fabs(runs[i].vppl[v])) word_differs = 1;
    }
    double tdiv = tmax > 600 ? 60 : 1;
    const char *tl = tmax > 600 ? "wall-clock (min)" : "wall-clock (s)";
    /* time arrays in the chosen unit, and train perplexity = exp(loss) */
    double *tt[64] = {0}, *et[64] = {0}, *tppl[64] = {0};
    Series keep;   /* owns the derived arrays across the charts */
    memset(&keep, 0, sizeof keep);
    for (int i = 0; i < R && i < 64; i++) {
        Run *r = &runs[i];
        tt[i] = ser_buf(&keep, r->S);
        et[i] = ser_buf(&keep, r->V);
        tppl[i] = ser_buf(&keep, r->S);
        if (!tt[i] || !et[i] || !tppl[i]) continue;
        for (int s = 0; s < r->S; s++) { tt[i][s] = r->time[s] / tdiv; tppl[i][s] = exp(r->loss[s]); }
        for (int v = 0; v < r->V; v++) et[i][v] = r->etime[v] / tdiv;
    }
    sb_printf(sb, "<h2>Loss and perplexity</h2><p class=\"note\">Training loss at each logged step (solid) and "
                  "validation loss at each evaluation (dashed, dots), against optimizer steps and against wall-clock; a run that "
                  "keeps a moving average of its weights (ema_decay) also shows the average's validation curve (dotted, "
                  "in the run's colour).</p>"
                  "<div class=\"grid\">\n");
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < R && i < 64; i++) {
            Run *r = &runs[i];
            ser_add(&S, pass ? tt[i] : r->step, r->loss, r->S, svg_palette(i), 0, 0, "%s train", r->label);
            ser_add(&S, pass ? et[i] : r->estep, r->vloss, r->V, svg_palette(i), 1, 1, "%s val", r->label);
            if (r->has_ema) ser_add(&S, pass ? et[i] : r->estep, r->eloss, r->V, svg_palette(i), 2, 1, "%s val, averaged weights", r->label);
        }
        chart(sb, &S, pass ? "loss vs wall-clock" : "loss vs step", pass ? tl : "step", "cross-entropy (nats/token)", 0);
    }
    /* runs whose tokenizers differ have incomparable per-token losses: their perplexities are compared
     * per word (val_word_ppl: the validation text's words, whatever the tokens) */
    int tok_differ = 0;
    for (int i = 0; i < R; i++)
        for (int k = 0; k < i; k++)
            if (runs[i].tok_hash[0] && runs[k].tok_hash[0] && strcmp(runs[i].tok_hash, runs[k].tok_hash)) tok_differ = 1;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < R && i < 64; i++) {
            Run *r = &runs[i];
            if (tok_differ) {
                ser_add(&S, pass ? et[i] : r->estep, r->vwppl, r->V, svg_palette(i), 1, 1, "%s val (word)", r->label);
                if (r->has_ema)
                    ser_add(&S, pass ? et[i] : r->estep, r->ewppl, r->V, svg_palette(i), 2, 1, "%s val (word), averaged weights", r->label);
                continue;
            }
            ser_add(&S, pass ? tt[i] : r->step, tppl[i], r->S, svg_palette(i), 0, 0, "%s train", r->label);
            ser_add(&S, pass ? et[i] : r->estep, r->vppl, r->V, svg_palette(i), 1, 1, "%s val", r->label);
            if (r->has_ema) ser_add(&S, pass ? et[i] : r->estep, r->eppl, r->V, svg_palette(i), 2, 1, "%s val, averaged weights", r->label);
            if (word_differs) ser_add(&S, pass ? et[i] : r->estep, r->vwppl, r->V, svg_palette(i + 5), 1, 1, "%s val (word)", r->label);
        }
        if (tok_differ)
            chart(sb, &S, pass ? "word-level perplexity vs wall-clock" : "word-level perplexity vs step", pass ? tl : "step",
                  "validation perplexity per word (log scale)", 1);
        else
            chart(sb, &S, pass ? "perplexity vs wall-clock" : "perplexity vs step", pass ? tl : "step", "perplexity (log scale)", 1);
    }
    if (tok_differ)
        sb_printf(sb, "</div><p class=\"note\">These runs use different tokenizers, so their losses and perplexities per "
                      "token do not compare: the perplexity charts show the validation perplexity per word (the loss of a "
                      "line's tokens over its words), which does.</p><div class=\"grid\">\n");
    sb_printf(sb, "</div>\n<h2>Optimisation</h2><div class=\"grid\">\n");
    for (int i = 0; i < R; i++) ser_add(&S, runs[i].step, runs[i].lr, runs[i].S, svg_palette(i), 0, 0, "%s", runs[i].label);
    chart(sb, &S, "learning rate", "step", "lr", 0);
    for (int i = 0; i < R; i++) ser_add(&S, runs[i].step, runs[i].tps, runs[i].S, svg_palette(i), 0, 0, "%s", runs[i].label);
    chart(sb, &S, "throughput", "step", "tokens/s", 0);
    for (int i = 0; i < R; i++) ser_add(&S, runs[i].step, runs[i].gnorm, runs[i].S, svg_palette(i), 0, 0, "%s", runs[i].label);
    chart(sb, &S, "gradient norm (before clipping)", "step", "global L2 norm", 0);
    sb_printf(sb, "</div>\n");
    for (int i = 0; i < keep.nown; i++) moelm_free(keep.own[i]);
}

/* Per-layer eval metric `which` (0 dropped, 1 entropy, 2 top1, 3 dead, 4 aux, 5 z) of every run. */
static double *layer_metric(const Run *r, int which) {
    double *const a[6] = {r->dropped, r->entropy, r->top1, r->dead, r->laux, r->lz};
    return a[which];
}

/* A per-layer router metric over the evaluations. The y axis spans at least the metric's natural range
 * [0, yhi] (dropped % up to 100, entropy up to ln E, confidence up to 1, dead up to E, balance up to 1):
 * nearly equal values stay nearly level instead of filling the chart; with at most REPORT_FEW_EVALS
 * evaluations the values are points, not a line through two dots. */
#define REPORT_FEW_EVALS 3
static void layer_chart(StrBuf *sb, Run *runs, int R, int which, double scale, const char *title, const char *ylabel) {
    Series S;
    memset(&S, 0, sizeof S);
    char ln[64];
    int maxV = 0, maxE = 1;
    for (int i = 0; i < R; i++) {
        if (runs[i].L && runs[i].V > maxV) maxV = runs[i].V;
        if (runs[i].E > maxE) maxE = runs[i].E;
    }
    const double yhi[6] = {100, log(maxE), 1, maxE, 1, 0};
    for (int i = 0; i < R; i++) {
        Run *r = &runs[i];
        for (int l = 0; l < r->L; l++) {
            double *y = ser_buf(&S, r->V), *src = layer_metric(r, which) + (size_t)l * r->V;
            if (!y) continue;
            for (int v = 0; v < r->V; v++) y[v] = src[v] * scale;
            layer_name(r, l, ln, sizeof ln);
            if (R == 1) ser_add(&S, r->estep, y, r->V, layer_color(R, i, l), 0, 1, "%s", ln);
            else ser_add(&S, r->estep, y, r->V, layer_color(R, i, l), l % 2, 1, "%s %s", r->label, ln);
        }
    }
    chart_with(sb, &S, (SvgChart){.title = title, .xlabel = "step", .ylabel = ylabel, .yinclude = 1, .ylo = 0,
                                  .yhi = yhi[which], .points = maxV <= REPORT_FEW_EVALS});
}

/* A warning for each sparse layer whose router had collapsed at the run's last evaluation, by the
 * trainer's rule (moe_router_collapsed): a learned router with most token-slots dropped or most
 * experts dead. Random, hash and soft routers are left out, as are runs without their config. */
static void router_collapse_flags(StrBuf *sb, const Run *r) {
    const char *rt = r->config ? json_string(json_get(r->config, "router_type")) : NULL;
    int router = rt ? router_from_name(rt) : -1;
    if (router < 0) return;
    char ln[64];
    for (int l = 0; l < r->L; l++) {
        const double *d = r->dropped + (size_t)l * r->V, *dead = r->dead + (size_t)l * r->V;
        int v = r->V - 1;
        while (v >= 0 && isnan(d[v])) v--;
        if (v < 0 || !moe_router_collapsed((RouterType)router, r->E, d[v], (int)dead[v])) continue;
        layer_name(r, l, ln, sizeof ln);
        sb_printf(sb, "<p class=\"note\"><b>warning: ");
        html_escape(sb, r->label);
        sb_printf(sb, " %s's router has collapsed</b> at step %.0f (%.0f%% of the token-slots dropped, %.0f of %d experts "
                      "dead); an aux near 1 with a router entropy near ln E means the router's probabilities are uniform, "
                      "not that the load is balanced (docs/MOE.md).</p>\n", ln, r->estep[v], 100.0 * d[v], dead[v], r->E);
    }
}

static void section_router(StrBuf *sb, Run *runs, int R) {
    int any = 0;
    for (int i = 0; i < R; i++) any |= runs[i].L > 0;
    if (!any) {
        sb_printf(sb, "<h2>Router</h2><p class=\"note\">No sparse layers in %s: nothing routed.</p>\n", R > 1 ? "these runs" : "this run");
        return;
    }
    Series S;
    memset(&S, 0, sizeof S);
    sb_printf(sb, "<h2>Router health</h2><p class=\"note\">Measured on the validation split at each evaluation, per sparse "
                  "layer. aux: the load-balancing loss E&#183;&#931;<sub>e</sub>f<sub>e</sub>P<sub>e</sub> (1 when balanced, "
                  "and also whenever the router's probabilities are uniform: read it with dropped and dead), "
                  "z: the router z-loss (both unweighted); dropped: token-slots over capacity; entropy: of the router's "
                  "softmax (nats; ln E is uniform); confidence: the mean top-1 probability; dead: experts that received "
                  "no token.</p>\n");
    for (int i = 0; i < R; i++) router_collapse_flags(sb, &runs[i]);
    sb_printf(sb, "<div class=\"grid\">\n");
    for (int i = 0; i < R; i++)
        if (runs[i].L) ser_add(&S, runs[i].step, runs[i].aux, runs[i].S, svg_palette(i), 0, 0, "%s", runs[i].label);
    chart(sb, &S, "auxiliary terms in the training loss", "step", "weighted aux + z (all layers)", 0);
    layer_chart(sb, runs, R, 4, 1, "load-balancing loss per layer", "aux (unweighted)");
    layer_chart(sb, runs, R, 5, 1, "router z-loss per layer", "z (unweighted)");
    layer_chart(sb, runs, R, 0, 100, "dropped token-slots", "% of slots over capacity");
    layer_chart(sb, runs, R, 1, 1, "router entropy", "nats");
    layer_chart(sb, runs, R, 2, 1, "router confidence", "mean top-1 probability");
    layer_chart(sb, runs, R, 3, 1, "dead experts", "experts with no token");
    sb_printf(sb, "</div>\n");

    sb_printf(sb, "<h2>Expert load over training</h2><p class=\"note\">Share of the kept token-slots each expert received "
                  "at each evaluation (rows: layer and expert; columns: step). A balanced layer is one flat colour at 1/E.</p>"
                  "<div class=\"grid\">\n");
    for (int i = 0; i < R; i++) {
        Run *r = &runs[i];
        if (!r->L || !r->E || !r->V) continue;
        int rows = r->L * r->E;
        char **rl = moelm_calloc((size_t)rows + r->V, sizeof(char *));
        double *v = nan_array((size_t)rows * r->V);
        char *lab = moelm_malloc((size_t)(rows + r->V) * 48);
        if (rl && v && lab) {
            char ln[64];
            for (int l = 0; l < r->L; l++)
                for (int e = 0; e < r->E; e++) {
                    int row = l * r->E + e;
                    rl[row] = lab + (size_t)row * 48;
                    snprintf(rl[row], 48, "%s \xc2\xb7 e%d", layer_name(r, l, ln, sizeof ln), e);
                    for (int c = 0; c < r->V; c++) v[(size_t)row * r->V + c] = r->load[((size_t)l * r->E + e) * r->V + c];
                }
            for (int c = 0; c < r->V; c++) {
                rl[rows + c] = lab + (size_t)(rows + c) * 48;
                snprintf(rl[rows + c], 48, "%.0f", r->estep[c]);
            }
            char title[300], id[32];
            snprintf(title, sizeof title, "%s: expert load", r->label);
            snprintf(id, sizeof id, "load-%d", i);
            SvgHeatmap h = {.id = id, .title = title, .xlabel = "step", .row_labels = (const char *const *)rl,
                            .col_labels = (const char *const *)(rl + rows), .vmin = 0, .vmax = 0, .fmt = "%.3f"};
            sb_printf(sb, "<figure>");
            svg_heatmap(sb, &h, v, rows, r->V);
            sb_printf(sb, "</figure>\n");
        }
        moelm_free(rl); moelm_free(v); moelm_free(lab);
    }
    sb_printf(sb, "</div>\n");
}

/* The sample of validation text, one line of coloured tokens per sparse layer. */
static void section_tokens(StrBuf *sb, Run *runs, int R) {
    int any = 0;
    for (int i = 0; i < R; i++) any |= runs[i].routing != NULL;
    if (!any) return;
    sb_printf(sb, "<h2>Where the tokens go</h2><p class=\"note\">The start of the validation text, each token coloured by "
                  "the expert it was sent to in each sparse layer (struck out: dropped by capacity), from the newest "
                  "routing dump. Hover a token or an expert to pick out that expert's tokens.</p>\n");
    for (int i = 0; i < R; i++) {
        const Json *j = runs[i].routing;
        if (!j) continue;
        const Json *sample = json_get(j, "sample"), *pieces = json_get(sample, "pieces"), *ex = json_get(sample, "experts");
        const Json *layers = json_get(j, "layers");
        int E = (int)num(j, "num_experts"), word = json_bool(json_get(j, "word_level"));
        if (E < 1 || E > MAXE) continue;
        sb_printf(sb, "<h3>");
        html_escape(sb, runs[i].label);
        sb_printf(sb, " &#8212; step %.0f, router ", num(j, "step"));
        html_escape(sb, json_string(json_get(j, "router")));
        sb_printf(sb, ", %d experts</h3>\n", E);
        for (size_t l = 0; l < json_len(ex); l++) {
            const Json *el = json_at(ex, l);
            sb_printf(sb, "<div class=\"layer\"><div class=\"lname\">");
            html_escape(sb, json_string(json_at(layers, l)) ? json_string(json_at(layers, l)) : "layer");
            sb_printf(sb, " ");
            for (int e = 0; e < E; e++) {
                char col[48];
                expert_color(col, sizeof col, e, E);
                sb_printf(sb, "<span class=\"chip\" data-e=\"%d\" style=\"background:%s\">e%d</span>", e, col, e);
            }
            sb_printf(sb, "</div><div class=\"toks\">");
            for (size_t t = 0; t < json_len(pieces) && t < json_len(el); t++) {
                const char *p = json_string(json_at(pieces, t));
                int e = (int)json_number(json_at(el, t));
                int eol = p && !strcmp(p, "\n");
                if (word && t > 0 && !eol) {
                    const char *prev = json_string(json_at(pieces, t - 1));
                    if (!(prev && !strcmp(prev, "\n"))) sb_printf(sb, " ");
                }
                if (e >= 0 && e < E) {
                    char col[48];
                    expert_color(col, sizeof col, e, E);
                    sb_printf(sb, "<span class=\"tok\" data-e=\"%d\" style=\"background:%s\" title=\"expert %d\">", e, col, e);
                } else {
                    sb_printf(sb, "<span class=\"tok drop\" data-e=\"-1\" title=\"dropped\">");
                }
                if (eol) sb_printf(sb, "&#9166;</span>\n");
                else {
                    html_escape(sb, p ? p : "");
                    sb_printf(sb, "</span>");
                }
            }
            sb_printf(sb, "</div></div>\n");
        }
    }
}

/* Built-in corpus: domain x expert shares; any corpus: the most frequent tokens of each expert. */
static void section_specialisation(StrBuf *sb, Run *runs, int R) {
    int any_dom = 0, any_top = 0;
    for (int i = 0; i < R; i++) {
        any_dom |= json_len(json_get(runs[i].routing, "domain_counts")) > 0;
        any_top |= json_len(json_get(runs[i].routing, "top_tokens")) > 0;
    }
    if (any_dom) {
        sb_printf(sb, "<h2>Domain specialisation</h2><p class=\"note\">Built-in corpus: for each domain of the validation "
                      "text, the share of its tokens each expert received (rows sum to 1). A router that ignores the "
                      "domain gives identical rows.</p><div class=\"grid\">\n");
        for (int i = 0; i < R; i++) {
            const Json *j = runs[i].routing, *dc = json_get(j, "domain_counts"), *dn = json_get(j, "domains");
            int E = (int)num(j, "num_experts"), D = (int)json_len(dn);
            if (E < 1 || E > MAXE || D < 1 || D > 16) continue;
            const char *rows[16];
            char cols[MAXE][8];
            const char *colp[MAXE];
            for (int d = 0; d < D; d++) rows[d] = json_string(json_at(dn, (size_t)d)) ? json_string(json_at(dn, (size_t)d)) : "?";
            for (int e = 0; e < E; e++) { snprintf(cols[e], sizeof cols[e], "e%d", e); colp[e] = cols[e]; }
            for (size_t l = 0; l < json_len(dc); l++) {
                double v[16 * MAXE];
                const Json *m = json_at(dc, l);
                for (int d = 0; d < D; d++) {
                    const Json *row = json_at(m, (size_t)d);
                    double tot = 0;
                    for (int e = 0; e < E; e++) tot += json_number(json_at(row, (size_t)e));
                    for (int e = 0; e < E; e++) v[d * E + e] = tot > 0 ? json_number(json_at(row, (size_t)e)) / tot : NAN;
                }
                char title[320], id[32], ln[64];
                snprintf(title, sizeof title, "%s: %s", runs[i].label, layer_name(&runs[i], (int)l, ln, sizeof ln));
                snprintf(id, sizeof id, "domain-%d-%zu", i, l);
                SvgHeatmap h = {.id = id, .title = title, .xlabel = "expert", .row_labels = rows, .col_labels = colp,
                                .vmin = 0, .vmax = 1, .cell = E <= 12 ? 40 : 0, .fmt = "%.2f", .values = 1};
                sb_printf(sb, "<figure>");
                svg_heatmap(sb, &h, v, D, E);
                sb_printf(sb, "</figure>\n");
            }
        }
        sb_printf(sb, "</div>\n");
    }
    if (!any_top) return;
    sb_printf(sb, "<h2>What each expert receives</h2><p class=\"note\">The most frequent tokens routed to each expert "
                  "over the start of the validation text (the number of tokens counted is under each table), from the "
                  "newest routing dump, with counts.</p>\n");
    for (int i = 0; i < R; i++) {
        const Json *j = runs[i].routing, *top = json_get(j, "top_tokens"), *et = json_get(j, "expert_tokens");
        if (!json_len(top)) continue;
        int word = json_bool(json_get(j, "word_level"));
        for (size_t l = 0; l < json_len(top); l++) {
            char ln[64];
            sb_printf(sb, "<h3>");
            html_escape(sb, runs[i].label);
            sb_printf(sb, " &#8212; ");
            html_escape(sb, layer_name(&runs[i], (int)l, ln, sizeof ln));
            sb_printf(sb, "</h3><table><tr><th>expert</th><th>tokens</th><th>most frequent %s</th></tr>\n",
                      word ? "words" : "tokens");
            const Json *tl = json_at(top, l), *cnt = json_at(et, l);
            double total = 0;
            for (size_t e = 0; e < json_len(cnt); e++) total += json_number(json_at(cnt, e));
            for (size_t e = 0; e < json_len(tl); e++) {
                char col[48];
                expert_color(col, sizeof col, (int)e, (int)json_len(tl));
                double c = json_number(json_at(cnt, e));
                sb_printf(sb, "<tr><td><span class=\"chip\" style=\"background:%s\">e%zu</span></td><td class=\"n\">%.0f (%.1f%%)</td>"
                              "<td class=\"words\">", col, e, c, total > 0 ? 100 * c / total : 0.0);
                const Json *list = json_at(tl, e);
                for (size_t k = 0; k < json_len(list); k++) {
                    const Json *pair = json_at(list, k);
                    sb_printf(sb, "%s", k ? " &#183; " : "");
                    html_escape(sb, json_string(json_at(pair, 0)) ? json_string(json_at(pair, 0)) : "?");
                    sb_printf(sb, " <small>%.0f</small>", json_number(json_at(pair, 1)));
                }
                sb_printf(sb, "</td></tr>\n");
            }
            sb_printf(sb, "</table><p class=\"note\">%.0f tokens counted at step %.0f.</p>\n", num(j, "tokens_counted"),
                      num(j, "step"));
        }
    }
}

/* ---- the page --------------------------------------------------------------------------------------- */

moelm_status report_build(StrBuf *sb, const char *const *paths, int n) {
    if (n < 1) return moelm_fail(MOELM_ERR_ARG, "report: no run directory given");
    if (n > 64) return moelm_fail(MOELM_ERR_ARG, "report: at most 64 runs (got %d)", n);
    Run *runs = moelm_calloc((size_t)n, sizeof(Run));
    if (!runs) return MOELM_ERR_NOMEM;
    moelm_status st = MOELM_OK;
    for (int i = 0; i < n && !st; i++) {
        Run *r = &runs[i];
        size_t len = strlen(paths[i]);
        if (len >= sizeof r->path) { st = moelm_fail(MOELM_ERR_ARG, "report: run path too long"); break; }
        memcpy(r->path, paths[i], len + 1);
        while (len > 1 && r->path[len - 1] == '/') r->path[--len] = '\0';
        const char *base = strrchr(r->path, '/');
        snprintf(r->label, sizeof r->label, "%s", base && base[1] ? base + 1 : r->path);
        st = read_metrics(r);
        if (!st) { read_routing(r); read_config(r); }
    }
    /* two runs with the same last component are told apart by their whole paths */
    for (int i = 0; i < n && !st; i++)
        for (int k = 0; k < n; k++)
            if (k != i && !strcmp(runs[i].label, runs[k].label) && strcmp(runs[i].path, runs[k].path)) {
                snprintf(runs[i].label, sizeof runs[i].label, "%s", runs[i].path);
                break;
            }
    if (!st) {
        charts_written = 0;
        sb_printf(sb, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>moelm report: ");
        for (int i = 0; i < n; i++) { sb_printf(sb, "%s", i ? ", " : ""); html_escape(sb, runs[i].label); }
        sb_printf(sb, "</title>\n<script>window.__reportErrors=[];window.addEventListener('error',function(e){"
                      "window.__reportErrors.push(String(e.message||e));});</script>\n<style>%s</style></head><body>\n", CSS);
        sb_printf(sb, "<h1>moelm report</h1><p class=\"note\">%d run%s. Every figure is inline SVG; hover points and cells "
                      "for values.</p>\n", n, n > 1 ? "s, curves overlaid (one colour per run)" : "");
        section_summary(sb, runs, n);
        section_curves(sb, runs, n);
        section_router(sb, runs, n);
        section_tokens(sb, runs, n);
        section_specialisation(sb, runs, n);
        sb_printf(sb, "<pre id=\"selfcheck\"></pre>\n<script>\n%s%s</script>\n</body></html>\n", JS_HOVER, JS_CHECK);
        if (sb->failed) st = moelm_fail(MOELM_ERR_NOMEM, "report: out of memory");
    }
    for (int i = 0; i < n; i++) run_free(&runs[i]);
    moelm_free(runs);
    return st;
}

moelm_status report_write(const char *const *runs, int n, const char *out_path, size_t *bytes) {
    StrBuf sb = {0};
    moelm_status st = report_build(&sb, runs, n);
    if (!st) st = file_write_atomic(out_path, sb.buf, sb.len);
    if (!st && bytes) *bytes = sb.len;
    sb_free(&sb);
    return st;
}
