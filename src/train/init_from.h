/* init_from.h: a new run started from another model's weights (`moelm train --init-from SRC`).
 *
 * SRC is a moelm run or checkpoint directory, or a Hugging Face model directory (config.json and
 * model.safetensors or shards, F32/F16/BF16): mixtral / llama as `moelm export --format hf` writes
 * them, or switch_transformers. The run takes SRC's model config and tokenizer and SRC's weights;
 * its optimizer, step and schedule start afresh (train.c). */
#ifndef MOELM_INIT_FROM_H
#define MOELM_INIT_FROM_H

#include <stddef.h>
#include "model/model.h"

typedef struct {
    char dir[4096];             /* SRC resolved: a checkpoint directory or the HF directory */
    int is_ckpt;                /* 1: a moelm checkpoint (CHECKSUMS, state.json) */
    char tokenizer[4096];       /* SRC's tokenizer.model or spiece.model; "" when it has none */
    ModelConfig cfg;            /* SRC's model config */
} InitSource;

/* Resolves src and reads its config (a checkpoint's CHECKSUMS verified); one-line errors for a
 * missing SRC, a directory with no weights or no config.json, an invalid config. */
moelm_status init_from_open(InitSource *s, const char *src);

/* Loads SRC's weights into m, a model built from SRC's config (with --set overrides that keep the
 * shapes; this rank's shard of the experts under expert parallelism). A tensor whose shape differs,
 * or that one side has and the other lacks, is refused with a message naming it. */
moelm_status init_from_load(const InitSource *s, Model *m);

#endif
