/* forward_file.h: `moelm forward`, a model's outputs for the cases of an inputs file, written as
 * Hugging Face names them, for comparing moelm with another implementation tensor by tensor.
 *
 * The inputs file (safetensors) holds, for every case prefix P, int32 tensors [B, T]:
 *   P.input_ids (required), P.attention_mask, P.decoder_input_ids, P.labels (each optional).
 * The outputs file gets fp32 tensors, the forward in eval mode (no dropout, no jitter):
 *   switch_transformers: P.logits [B, Td, V], P.encoder_last_hidden_state [B, Te, C],
 *     P.decoder_last_hidden_state [B, Td, C] (the decoder's output before the tied head's scaling),
 *     P.encoder.block.N.router_logits and P.decoder.block.N.router_logits [B, T, E] per sparse block N,
 *     P.encoder_z_loss, P.encoder_aux_loss, P.decoder_z_loss, P.decoder_aux_loss, and with labels
 *     P.lm_loss and P.loss (scalars): SwitchTransformersForConditionalGeneration's outputs;
 *   lm and seed (decoder-only): P.logits [B, T, V] and P.loss, the mean next-token cross-entropy
 *     (input_ids[t + 1] as the target of position t).
 */
#ifndef MOELM_FORWARD_FILE_H
#define MOELM_FORWARD_FILE_H

#include "common/util.h"

/* Reads the model directory (config.json and weights, model_load_dir) and in_path, writes out_path
 * atomically. note gets the config's ignored keys ("" when none). Errors name the case and tensor. */
moelm_status forward_file_run(const char *model_dir, const char *in_path, const char *out_path, char *note,
                              size_t note_cap);

#endif
