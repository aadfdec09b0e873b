/* fuzz_gguf.c: libFuzzer target for the GGUF reader.
 *
 * Each input goes to a file (the reader works on files) and is opened. Properties: no crash or leak;
 * a rejected file gives a one-line message naming it; an accepted file's metadata can all be read
 * through the getters (every key found again by name, every string array element in bounds), and
 * every tensor of a readable type (F32, F16, BF16, Q8_0) reads as float with the shape its info
 * gives, into a buffer sized by its byte size (which validation bounds by the file size); the other
 * types are refused.
 */
#include "common/util.h"
#include "io/gguf.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("in.gguf", data, size);
    Gguf *g = NULL;
    if (gguf_open(&g, path) != MOELM_OK) {
        if (g != NULL) abort();
        fuzz_check_message(path);
    } else {
        for (int i = 0; i < gguf_kv_count(g); i++) {
            const char *key = gguf_kv_key(g, i), *s;
            if (gguf_find_kv(g, key) != i) abort();
            GgufType t = gguf_kv_type(g, i), elem;
            uint64_t n, len;
            const void *arr;
            int64_t iv;
            double fv;
            unsigned char buf[8];
            if (t == GGUF_TYPE_STRING) { if (gguf_get_string(g, key, &s, &len) || strlen(s) > len) abort(); }
            else if (t == GGUF_TYPE_ARRAY) {
                if (gguf_get_array(g, key, &elem, &n, &arr)) abort();
                for (uint64_t k = 0; elem == GGUF_TYPE_STRING && k < n; k++)
                    if (gguf_get_array_str(g, key, k, &s, &len) || strlen(s) > len) abort();
            } else if (gguf_get(g, key, t, buf)) abort();
            (void)gguf_get_int(g, key, &iv);
            (void)gguf_get_float(g, key, &fv);
        }
        for (int i = 0; i < gguf_tensor_count(g); i++) {
            const GgufTensorInfo *t = gguf_tensor_at(g, i);
            if (gguf_find_tensor(g, t->name) != t || t->nbytes > size) abort();
            uint64_t elems = 1;
            for (int d = 0; d < t->ndim; d++) elems *= (uint64_t)t->shape[d];
            int readable = t->type == GGUF_TENSOR_F32 || t->type == GGUF_TENSOR_F16 || t->type == GGUF_TENSOR_BF16 ||
                           t->type == GGUF_TENSOR_Q8_0;
            if (readable && elems > t->nbytes) abort();   /* at least one byte an element for these */
            float *buf = moelm_malloc((readable ? elems : 0) * sizeof(float) + 1);
            if (!buf) abort();
            if ((gguf_read_tensor_f32(g, t->name, buf, t->ndim, t->shape) == MOELM_OK) != readable) abort();
            moelm_free(buf);
        }
        gguf_close(g);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
