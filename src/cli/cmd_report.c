/* cmd_report.c: `moelm report RUN_DIR [RUN_DIR...] [-o report.html]`. */
#include <stdio.h>
#include <string.h>
#include "args.h"
#include "common/util.h"
#include "io/fileio.h"
#include "report/report.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moelm report RUN_DIR [RUN_DIR...] [-o FILE]\n"
            "       moelm report --csv RUN_DIR [-o FILE]\n\n"
            "Writes one self-contained HTML page (inline SVG, no network) about the runs: loss and perplexity\n"
            "against step and wall-clock, learning rate, tokens/s, auxiliary and z losses, expert load over\n"
            "training, dropped tokens, router entropy and confidence, dead experts, validation text coloured\n"
            "by expert, domain x expert shares (built-in corpus) and each expert's most frequent tokens.\n"
            "Several runs are overlaid, one colour per run.\n\n"
            "  -o, --output FILE   the HTML file (default: RUN_DIR/report.html for one run, report.html for several)\n"
            "  --csv               instead, the run's metrics.jsonl as CSV (pandas.read_csv, spreadsheets): a row per\n"
            "                      record (training and evaluation), a column per key, nested keys with dots\n"
            "                      (moe.0.dropped, moe.0.load.3), empty where a record lacks the key;\n"
            "                      to -o FILE (default RUN_DIR/metrics.csv; - for stdout)\n\n"
            "examples:\n"
            "  %s report runs/tiny                      # writes runs/tiny/report.html\n"
            "  %s report --csv runs/tiny -o tiny.csv\n", cli_prog, cli_prog);
}

static int report_csv_cmd(const char *const *runs, int n, const char *out) {
    if (n != 1) { moelm_fail(MOELM_ERR_ARG, "report --csv: give one run directory (got %d)", n); return cli_error(2); }
    char def[4096];
    if (!out) {
        if (strlen(runs[0]) > 4000) { moelm_fail(MOELM_ERR_ARG, "report: run path too long"); return cli_error(2); }
        snprintf(def, sizeof def, "%s/metrics.csv", runs[0]);
        out = def;
    }
    StrBuf sb = {0};
    int bad = 0;
    moelm_status st = report_csv(&sb, runs[0], &bad);
    if (!st && !strcmp(out, "-")) {
        if (fwrite(sb.buf, 1, sb.len, stdout) != sb.len) st = moelm_fail(MOELM_ERR_IO, "report --csv: writing stdout failed");
    } else if (!st) {
        st = file_write_atomic(out, sb.buf, sb.len);
    }
    sb_free(&sb);
    if (st) return cli_error(1);
    if (bad) fprintf(stderr, "warning: %s/metrics.jsonl: %d malformed line(s) skipped\n", runs[0], bad);
    if (strcmp(out, "-")) printf("wrote %s\n", out);
    return 0;
}

int cmd_report(int argc, char **argv) {
    const char *out = NULL;
    const char *runs[64];
    int n = 0, csv = 0;
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        if (arg_flag(argv, i, "-h|--help")) { usage(stdout); return 0; }
        else if (arg_match(argc, argv, &i, "-o|--output", &val)) { if (!val) return cli_error(2); out = val; }
        else if (arg_flag(argv, i, "--csv")) csv = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            arg_unknown("report", argv[i]);
            return cli_error(2);
        } else {
            if (n >= 64) { moelm_fail(MOELM_ERR_ARG, "report: at most 64 run directories"); return cli_error(2); }
            runs[n++] = argv[i];
        }
    }
    if (!n) { moelm_fail(MOELM_ERR_ARG, "report: give at least one run directory (moelm report RUN_DIR [-o FILE])"); return cli_error(2); }
    if (csv) return report_csv_cmd(runs, n, out);
    char def[4096];
    if (!out) {
        if (n == 1) {
            if (strlen(runs[0]) > 4000) { moelm_fail(MOELM_ERR_ARG, "report: run path too long"); return cli_error(2); }
            snprintf(def, sizeof def, "%s/report.html", runs[0]);
        } else {
            snprintf(def, sizeof def, "report.html");
        }
        out = def;
    }
    size_t bytes = 0;
    if (report_write(runs, n, out, &bytes)) return cli_error(1);
    printf("wrote %s (%.0f KB)\n", out, bytes / 1024.0);
    return 0;
}
