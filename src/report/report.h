/* report.h: `moelm report`: one self-contained HTML page about one or more training runs.
 *
 * Reads, per run directory: metrics.jsonl (every logged step and every eval record), the latest
 * checkpoint's config.json (labels), and the newest routing/step-N.json (routing.h). Writes one HTML
 * file with inline SVG (svg.h), inline CSS and a few lines of inline JS (a self-check that counts the
 * rendered plots; no network, no outside files). See docs/REPORT.md for what each section shows.
 *
 * A run without metrics.jsonl is an error (MOELM_ERR_IO, naming the directory); a torn or malformed
 * metrics line is skipped and counted in the page; a missing routing dump or config only leaves
 * out the sections that need it. JSON null values (a skipped non-finite step) are gaps in the curves.
 * Not here: reading checkpoints' weights, anything that needs the model.
 */
#ifndef MOELM_REPORT_REPORT_H
#define MOELM_REPORT_REPORT_H

#include "io/json.h"

/* Appends the whole HTML page for runs[n] to sb. */
moelm_status report_build(StrBuf *sb, const char *const *runs, int n);

/* Builds the page and writes it to out_path atomically; *bytes (may be NULL) gets its size. */
moelm_status report_write(const char *const *runs, int n, const char *out_path, size_t *bytes);

/* The records of run/metrics.jsonl (JSON objects, in file order; torn or malformed lines skipped and
 * counted in *bad_lines). MOELM_ERR_IO naming the directory when it has no metrics.jsonl. Free with
 * report_free_records. */
moelm_status report_read_records(const char *run, Json ***recs, size_t *nr, int *bad_lines);
void report_free_records(Json **recs, size_t nr);

/* Where an lm's sparse layers are, for its summary: "in every block", "in block 1 of 4", "in blocks
 * 1, 3 (2 of 4)" (block i sparse when step == 1 or i % step == 1), into buf[cap]. */
void report_sparse_blocks(char *buf, size_t cap, int L, int step);

/* `moelm report --csv`: run/metrics.jsonl as CSV into sb (csv.c): one row per record, in file order;
 * the header holds every key of any record, nested ones flattened with dots (moe.0.load.3), in
 * first-seen order; a key a record lacks, and JSON null, is an empty field. *bad_lines gets the
 * malformed lines skipped. */
moelm_status report_csv(StrBuf *sb, const char *run, int *bad_lines);

#endif
