/* fuzz_json.c: libFuzzer target for the JSON parser and writer.
 *
 * Properties: parsing never crashes or leaks; a failure leaves *out NULL with a message naming the
 * source; a successful parse, written and parsed again, writes the same text (write is a fixed
 * point after one round).
 */
#include "common/util.h"
#include "io/json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Json *j = NULL;
    moelm_status st = json_parse(&j, (const char *)data, size, "fuzz.json");
    if (st != MOELM_OK) {
        if (j != NULL || strncmp(moelm_last_error(), "fuzz.json", 9) != 0) abort();
        if (strchr(moelm_last_error(), '\n')) abort();   /* messages are one line */
    } else {
        StrBuf a = { 0 }, b = { 0 };
        json_write(&a, j);
        Json *k = NULL;
        if (a.failed || json_parse(&k, a.buf, a.len, "rewrite") != MOELM_OK) abort();
        json_write(&b, k);
        if (b.failed || a.len != b.len || memcmp(a.buf, b.buf, a.len) != 0) abort();
        json_free(k);
        sb_free(&a);
        sb_free(&b);
        json_free(j);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
