/* safetensors.h: read and write the safetensors format (Hugging Face's weight file).
 *
 * Layout: an 8-byte little-endian unsigned header length N, N bytes of a JSON object
 *     {"__metadata__": {"key": "value", ...},
 *      "name": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
 * then the data region; offsets are relative to its start, data are little-endian, row-major.
 *
 * Writing produces F32 tensors (st_write), or F32, F16 and BF16 chosen per tensor (st_write_as:
 * float data rounded to nearest, ties to even, on the way down; overflow gives +-Inf, NaN stays NaN),
 * in the order given, packed with no gaps; the header is padded with spaces to a multiple of 8 bytes
 * as the Python library does, so data stay 8-byte aligned.
 * Files are written atomically (temporary name, fsync, rename, directory fsync) and streamed, so
 * a checkpoint is never held twice in memory.
 *
 * Reading validates the whole header before anything is used, with the rules of the reference
 * implementation: a regular file (a FIFO or device is refused, without blocking); header length below 100 MB and within the file; strict JSON without duplicate
 * keys; every tensor entry has exactly dtype/shape/data_offsets; known dtype; at most 8 dims, each
 * >= 0; shape product * dtype size == end - begin without overflow; tensors tile the data region
 * exactly (sorted by offset they start at 0, each begins where the previous ends, the last ends at
 * the end of the file): no overlaps, no holes, no trailing bytes. __metadata__ maps strings to
 * strings. F32, F16 and BF16 tensors can be read into float memory (F16 and BF16 widened exactly);
 * other dtypes are validated and reported, and reading them is refused.
 * Data are read with pread on demand, so opening a large file costs only its header.
 */
#ifndef MOELM_SAFETENSORS_H
#define MOELM_SAFETENSORS_H

#include <stdint.h>
#include "common/util.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct {
    const char *name;
    const float *data;   /* [shape[0] * ... * shape[ndim-1]] */
    int ndim;            /* 0 (a scalar) .. 4 */
    int64_t shape[4];
} StTensor;

/* Writes tensors[0..count) as F32, in that order. meta_kv is NULL or a NULL-terminated list
 * key, value, key, value, ..., NULL of strings stored in "__metadata__". Names must be unique,
 * non-empty and not "__metadata__" (checked with CHECK: a programming error). */
moelm_status st_write(const char *path, const StTensor *tensors, int count, const char *const *meta_kv);

/* st_write_as whose tensors with data NULL come from source, a piece at a time while streaming:
 * source(ctx, i, off, want, &got) returns elements off .. off + got - 1 of tensor i, 1 <= got <= want
 * (valid until the next call), asked in order of i and off (a writer of a model spread over ranks
 * fetches one piece at a time and never holds the whole). */
typedef const float *(*StSource)(void *ctx, int i, size_t off, size_t want, size_t *got);

/* The dtypes st_write_as can store. */
typedef enum { ST_F32 = 0, ST_F16, ST_BF16 } StDtype;
const char *st_dtype_name(StDtype t);   /* "F32", "F16", "BF16" */
/* st_write with tensor i stored as dtypes[i] (dtypes NULL: all F32, the bytes st_write gives). The
 * data are converted in chunks while streaming (no second copy of a tensor). */
moelm_status st_write_as(const char *path, const StTensor *tensors, const StDtype *dtypes, int count,
                         const char *const *meta_kv);
moelm_status st_write_from(const char *path, const StTensor *tensors, const StDtype *dtypes, int count,
                           const char *const *meta_kv, StSource source, void *ctx);

typedef struct SafeTensors SafeTensors;

moelm_status st_open(SafeTensors **out, const char *path);   /* reads and validates the header */
int st_count(const SafeTensors *st);
const char *st_name(const SafeTensors *st, int i);  /* i-th tensor in data order; NULL if out of range */
/* Looks a tensor up: returns 1 and fills dtype ("F32", ...), ndim and shape[ST_MAX_DIMS] (any may
 * be NULL), or 0 when absent. */
int st_info(const SafeTensors *st, const char *name, const char **dtype, int *ndim, int64_t *shape);
/* Finds the tensor, checks that its dtype is F32, F16 or BF16 and that its shape equals
 * shape[0..ndim) exactly, and copies its data into dst as float (F16/BF16 widened exactly, in place:
 * no other buffer). Errors name the file, the tensor and the mismatch. */
moelm_status st_read_f32(const SafeTensors *st, const char *name, float *dst, int ndim, const int64_t *shape);
/* The same checks, then copies only elements [first, first + count) of the tensor (row-major) into
 * dst[count]: a part of a tensor, such as one rank's shard of the experts. The part must lie inside
 * the shape (CHECKed: the caller computes it from the shape it asked for). */
moelm_status st_read_f32_part(const SafeTensors *st, const char *name, float *dst, int ndim, const int64_t *shape,
                              size_t first, size_t count);
/* The same checks for an I32 tensor (ids, masks: `moelm forward`'s inputs), copied into dst. */
moelm_status st_read_i32(const SafeTensors *st, const char *name, int32_t *dst, int ndim, const int64_t *shape);
const char *st_meta(const SafeTensors *st, const char *key);   /* NULL if absent */
/* MOELM_OK when have[0..have_ndim) equals want[0..ndim), else MOELM_ERR_FORMAT "path: tensor "name"
 * has shape [..], expected [..]" (shared by the weight readers). */
moelm_status st_check_shape(const char *path, const char *name, int have_ndim, const int64_t *have, int ndim,
                            const int64_t *want);
void st_close(SafeTensors *st);

#endif
