/* fuzz_safetensors.c: libFuzzer target for the safetensors reader.
 *
 * Each input is written to a scratch file (the reader works on files) and opened. Properties: no
 * crash or leak; a rejected file gives a message naming it; an accepted file's F32, F16 and BF16
 * tensors can all be read with the shapes st_info reports, into float buffers sized by them (which
 * validation bounds by the file size), and every other dtype is refused by st_read_f32.
 */
#include "common/util.h"
#include "io/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_path[256];

static void remove_scratch(void) { unlink(g_path); }   /* /dev/shm keeps what a run leaves */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_path[0]) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(g_path, sizeof g_path, "%s/fuzz_st.%ld.safetensors", dir, (long)getpid());
        atexit(remove_scratch);
    }
    FILE *f = fopen(g_path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();

    SafeTensors *st = NULL;
    moelm_status s = st_open(&st, g_path);
    if (s != MOELM_OK) {
        if (st != NULL || strncmp(moelm_last_error(), g_path, strlen(g_path)) != 0) abort();
        if (strchr(moelm_last_error(), '\n')) abort();   /* messages are one line */
    } else {
        for (int i = 0; i < st_count(st); i++) {
            const char *name = st_name(st, i), *dtype;
            int ndim;
            int64_t shape[ST_MAX_DIMS];
            if (!name || !st_info(st, name, &dtype, &ndim, shape)) abort();
            int is_float = !strcmp(dtype, "F32") || !strcmp(dtype, "F16") || !strcmp(dtype, "BF16");
            uint64_t elems = 1;
            for (int d = 0; d < ndim; d++) elems *= (uint64_t)shape[d];
            if (elems * 2 > size) { if (is_float) abort(); elems = 0; }
            float *buf = moelm_malloc(elems * sizeof(float) + 1);
            if (!buf) abort();
            moelm_status r = st_read_f32(st, name, buf, ndim, shape);
            if ((r == MOELM_OK) != is_float) abort();
            moelm_free(buf);
        }
        (void)st_meta(st, "format");
        st_close(st);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
