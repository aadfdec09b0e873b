/* fuzz_checksums.c: libFuzzer target for a checkpoint's CHECKSUMS (checksums_verify).
 *
 * The input is CHECKSUMS in a directory that also holds a.bin ("hello") and b.json ("{}"), both
 * required. Properties: no crash, no hang, no leak; a failure has a one-line message naming the
 * directory's CHECKSUMS or a file in it; a success means both required files were listed with their
 * true CRC-32 and size (the input contains both lines).
 */
#include <stdint.h>
#include "io/checksum.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_file("a.bin", (const uint8_t *)"hello", 5);
    fuzz_file("b.json", (const uint8_t *)"{}", 2);
    fuzz_file("CHECKSUMS", data, size);
    static const char *const req[] = { "a.bin", "b.json" };
    if (checksums_verify(g_fuzz_dir, req, 2) != MOELM_OK) {
        fuzz_check_message(g_fuzz_dir);
    } else {
        char *s = malloc(size + 1);
        if (!s) abort();
        memcpy(s, data, size);
        s[size] = 0;
        if (!strstr(s, "3610a686 5 a.bin\n") || !strstr(s, "a3a6bf43 2 b.json\n")) abort();
        free(s);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
