/* fuzz_state.c: libFuzzer target for a checkpoint's state.json (ckpt_read_state).
 *
 * Properties: no crash, no leak; a failure has a one-line message naming the file; a success has
 * the ranges the reader promises (step >= 0, threads >= 1, batch and sequence length >= 1) and
 * NUL-terminated strings.
 */
#include <stdint.h>
#include "train/checkpoint.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("state.json", data, size);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", g_fuzz_dir);
    TrainState s;
    if (ckpt_read_state(dir, &s) != MOELM_OK) {
        fuzz_check_message(path);
    } else {
        if (s.step < 0 || s.threads < 1 || s.batch_size < 1 || s.seq_len < 1) abort();
        if (!memchr(s.data, 0, sizeof s.data) || !memchr(s.train_json, 0, sizeof s.train_json)) abort();
        if (!(s.elapsed_s >= 0) || !(s.tokens_seen >= 0)) abort();
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
