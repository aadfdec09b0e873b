/* llama_hf.h: the Llama / Mixtral family's tensors as Hugging Face's files hold them (one tensor per
 * expert and matrix), and HF model directories of the family (config.json + model.safetensors or shards,
 * F32 / F16 / BF16) read and written. */
#ifndef MOELM_LLAMA_HF_H
#define MOELM_LLAMA_HF_H

#include <stdint.h>
#include "io/weights.h"
#include "model/model.h"

typedef struct {
    char name[128];           /* HF's name ("model.layers.0.block_sparse_moe.experts.3.w1.weight", ...) */
    size_t off;               /* its first value in the arena (params or grads: the same offsets) */
    int ndim;                 /* 1 or 2 */
    int64_t shape[2];         /* HF's shape */
    size_t count;             /* floats, contiguous from off */
} LlamaHfTensor;

/* The file tensors of a whole (not expert-sharded) llama / mixtral model, in the arena's order, into
 * out[0..max); returns how many there are. The experts' slabs give E tensors each (w1 and w3 from the
 * fused slab). llama_hf_tensors_alloc: all of them, moelm_malloc'ed (NULL: no memory). */
int llama_hf_tensors(const Model *m, LlamaHfTensor *out, int max);
LlamaHfTensor *llama_hf_tensors_alloc(const Model *m, int *n);

/* Reads every file tensor of m from ws (shapes must match); a tensor of ws with no place in m is an
 * error naming it (except HF's lm_head copy of a tied model). */
moelm_status llama_read_hf(Model *m, const WeightSet *ws, const char *dir);
/* Writes dir/config.json (HF's) and the weights as dtype (0 F32, 1 F16, 2 BF16), sharded past
 * max_shard_bytes (0: one model.safetensors). */
moelm_status llama_write_hf(const Model *m, const char *dir, int dtype, uint64_t max_shard_bytes);
/* model_create from dir/config.json (a llama or mixtral config) for batches B x T, then the weights. */
moelm_status llama_load_hf_dir(Model *m, const char *dir, int B, int T);

#endif
