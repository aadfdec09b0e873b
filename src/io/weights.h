/* weights.h: a Hugging Face weight set: the safetensors weights of a model directory, one file or
 * sharded, read by tensor name; and the writer that shards them the way Hugging Face does.
 *
 * A directory holds either `model.safetensors`, or `model.safetensors.index.json`
 *     {"metadata": {"total_size": N, ...}, "weight_map": {"tensor name": "model-00001-of-00002.safetensors", ...}}
 * and the shards it names. Like transformers, ws_open takes model.safetensors when both are there.
 *
 * Opening validates everything before any tensor is read: the index is strict JSON (at most
 * WS_MAX_INDEX bytes) with a non-empty "weight_map" object of strings, "metadata" (if present) an
 * object whose "total_size" (if present) is a non-negative integer; every shard name is a plain file
 * name (no '/', '\', control characters, and not starting with '.', so no "..": a shard cannot
 * name a file outside the directory); every shard opens as a safetensors file (st_open: a regular
 * file, followed through symlinks as the Hugging Face cache uses them; a FIFO or a device is
 * refused without blocking) with its whole header validated; every tensor of the index is in the
 * shard the index names, and every tensor of every shard is listed in the index for that shard (so
 * none is missing, and none is in two shards). Errors are one line naming the file and the tensor.
 *
 * Writing (ws_write) packs the tensors in the order given into shards of at most max_shard_bytes of
 * tensor data (a tensor larger than that gets a shard of its own; 0: no limit), named
 * `model-00001-of-0000n.safetensors`, then writes the index (total_size = the sum of the tensors'
 * data bytes, as transformers counts it) last; a single shard is written as `model.safetensors`
 * without an index. Each file is written atomically (fileio.h); the files of the other layout and
 * shards `model-*-of-*.safetensors` of an earlier set that the new one does not have are removed
 * after the new set is complete. Overwriting a sharded set with another one whose shards have the
 * same names is not atomic as a whole (a crash in between leaves shards of both): write into a new
 * directory and rename it where that matters, as checkpoints do.
 */
#ifndef MOELM_WEIGHTS_H
#define MOELM_WEIGHTS_H

#include <stdint.h>
#include "common/util.h"
#include "io/safetensors.h"

#define WS_MAX_INDEX (64u << 20)
#define WS_SINGLE "model.safetensors"
#define WS_INDEX "model.safetensors.index.json"

typedef struct WeightSet WeightSet;

moelm_status ws_open(WeightSet **out, const char *dir);
void ws_close(WeightSet *ws);

int ws_count(const WeightSet *ws);                   /* tensors in all shards */
const char *ws_name(const WeightSet *ws, int i);     /* i-th tensor by name (strcmp order); NULL if out of range */
int ws_shard_count(const WeightSet *ws);             /* 1 for model.safetensors */
/* Looks a tensor up: 1 and dtype ("F32", "BF16", ...), ndim and shape[ST_MAX_DIMS] (any may be NULL)
 * filled, or 0 when absent. */
int ws_info(const WeightSet *ws, const char *name, const char **dtype, int *ndim, int64_t *shape);
/* The path of the file that holds the tensor (for messages), or NULL when absent. */
const char *ws_file(const WeightSet *ws, const char *name);
/* st_read_f32 / st_read_f32_part on the shard that holds the tensor (F32, F16 and BF16 read as
 * float); a missing tensor's error names the directory. */
moelm_status ws_read_f32(const WeightSet *ws, const char *name, float *dst, int ndim, const int64_t *shape);
moelm_status ws_read_f32_part(const WeightSet *ws, const char *name, float *dst, int ndim, const int64_t *shape,
                              size_t first, size_t count);
/* A "__metadata__" value of the single file, or of the first shard that has the key; NULL if none. */
const char *ws_meta(const WeightSet *ws, const char *key);

/* Writes tensors[0..count) (dtypes as in st_write_as: NULL is all F32) into dir (created if missing)
 * as described above; meta_kv goes into every file's "__metadata__". Names must be unique (CHECK). */
moelm_status ws_write(const char *dir, const StTensor *tensors, const StDtype *dtypes, int count,
                      const char *const *meta_kv, uint64_t max_shard_bytes);

#endif
