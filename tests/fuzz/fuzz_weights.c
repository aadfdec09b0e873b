/* fuzz_weights.c: libFuzzer target for a Hugging Face weight set's index.
 *
 * The input is model.safetensors.index.json in a directory that also holds two valid shards,
 * s1.safetensors ("a" [4], "b" [2]) and s2.safetensors ("c" [3]), written once. Properties: no
 * crash or leak; a rejected set gives a one-line message naming a file of the directory; an
 * accepted set holds some of the shards' three tensors (an index may name only part of them, and
 * only the shards it names are opened), each readable with the shape ws_info gives.
 */
#include "common/util.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("model.safetensors.index.json", data, size);
    static int shards;
    if (!shards) {
        static float v[4] = { 1, 2, 3, 4 };
        StTensor s1[2] = { { "a", v, 1, { 4 } }, { "b", v, 1, { 2 } } }, s2[1] = { { "c", v, 1, { 3 } } };
        char p[600];
        snprintf(p, sizeof p, "%s/s1.safetensors", g_fuzz_dir);
        if (st_write(p, s1, 2, NULL)) abort();
        snprintf(p, sizeof p, "%s/s2.safetensors", g_fuzz_dir);
        if (st_write(p, s2, 1, NULL)) abort();
        shards = 1;
    }
    WeightSet *ws = NULL;
    if (ws_open(&ws, g_fuzz_dir) != MOELM_OK) {
        if (ws != NULL) abort();
        fuzz_check_message(g_fuzz_dir);
    } else {
        if (ws_count(ws) < 0 || ws_count(ws) > 3) abort();
        for (int i = 0; i < ws_count(ws); i++) {
            int nd;
            int64_t shape[ST_MAX_DIMS];
            float buf[4];
            if (!ws_info(ws, ws_name(ws, i), NULL, &nd, shape) || ws_read_f32(ws, ws_name(ws, i), buf, nd, shape)) abort();
        }
        ws_close(ws);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
