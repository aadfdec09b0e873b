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

#endif
