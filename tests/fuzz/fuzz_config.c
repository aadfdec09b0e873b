/* fuzz_config.c: libFuzzer target for config.json (config_load).
 *
 * Properties: no crash, no leak; a failure has a one-line message naming the file; a success is a
 * config that config_check accepts (with the vocabulary filled in as training does, which leaves out
 * cutoffs past it) and whose
 * config_to_json loads back to the same JSON.
 */
#include <stdint.h>
#include "model/config.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("config.json", data, size);
    ModelConfig c;
    if (config_load(&c, path) != MOELM_OK) {
        fuzz_check_message(path);
    } else {
        char dropped[96];
        if (c.vocab_size == 0) config_take_vocab(&c, 7, dropped, sizeof dropped);
        if (config_check(&c) != MOELM_OK) abort();
        char *a = config_to_json(&c);
        if (!a) abort();
        const char *p2 = fuzz_file("again.json", (const uint8_t *)a, strlen(a));
        ModelConfig d;
        if (config_load(&d, p2) != MOELM_OK) abort();
        char *b = config_to_json(&d);
        if (!b || strcmp(a, b) != 0) abort();
        moelm_free(a);
        moelm_free(b);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
