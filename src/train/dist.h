/* dist.h: data- and expert-parallel training over the groups of src/backend/comm.h.
 *
 * The batch of a step is global: -b B is the whole batch, and with W ranks rank r takes windows
 * r B/W .. (r+1) B/W - 1 of it (every rank draws the same global batch from the same loader, which is
 * cheap: token ids). The MoE routing group is the global batch too (src/moe/moe_dist.h). The loss
 * is the mean cross-entropy over the valid targets of the global batch, so each rank's backward
 * computes the gradient of that global loss through its own tokens, and the sum over ranks of those
 * gradients is the one-process gradient: W ranks with B/W windows each = one process with B, up to
 * the order of float additions.
 *
 * Parameters. With expert parallelism over P ranks (COMM_EP) each rank holds only its E/P experts
 * of every MoE layer (model_create_sharded: the expert tensors are [E/P, ...] in its arena), so their
 * weights, gradients and Adam moments take 1/P of the memory; the other tensors are replicated.
 * Gradients (Model.grads, one arena): the replicated tensors are summed over COMM_WORLD; a held
 * shard of experts only over COMM_DP (its replicas: nobody else computed it). The clip norm adds
 * the shards' squares over COMM_EP (optim.c), so every rank clips by the one-process norm.
 * Checkpoints hold the whole model: dist_save_checkpoint streams the shards to rank 0, and on
 * load each rank reads its own rows (checkpoint.c), so a run resumes at any world size and expert
 * parallelism that divide the batch and the experts. Only rank 0 prints, logs and writes files.
 */
#ifndef MOELM_TRAIN_DIST_H
#define MOELM_TRAIN_DIST_H

#include "model/model.h"
#include "train/checkpoint.h"
#include "train/train.h"

/* Starts the groups (comm_init(ep)); on ranks other than 0 sends stdout to /dev/null. */
moelm_status dist_begin(int ep);
/* Ends the groups. A failure with several ranks prints the error with the rank and aborts the job
 * (the other ranks would wait in a collective forever); otherwise returns st. */
moelm_status dist_end(moelm_status st);

int dist_world(void);
int dist_is_root(void);

/* Checks a run's shape against the world: the batch must split evenly, the experts over COMM_EP. */
moelm_status dist_check(const ModelConfig *cfg, int batch_size);

/* Moves this rank's windows (B/W of the B windows of T tokens) to the front of inputs and targets. */
void dist_take_rows(int *inputs, int *targets, int B, int T);
/* The same for two arrays of B rows of different lengths (an encoder-decoder's inputs and labels; b may
 * be NULL: one array). */
void dist_take_rows2(int *a, int Ta, int *b, int Tb, int B);

/* After model_forward (or encdec_forward): the mean cross-entropy over the global batch's valid targets. Sets m->loss
 * and m->n_valid to the global values, so that model_backward scales by the global count. */
float dist_loss(Model *m);

/* The part of every MoE layer's experts this rank holds: part of parts (0 of 1 without expert
 * parallelism); the arguments of model_create_sharded. */
void dist_expert_shard(int *part, int *parts);

/* After model_backward: every rank holds the gradient of the global loss for what it holds. */
void dist_reduce_grads(Model *m);

/* Writes a checkpoint of the whole model (a collective): rank 0 calls ckpt_save; with sharded
 * experts, ranks 0 .. P-1 stream the shards of the weights and Adam moments to rank 0 one tensor at
 * a time as its writer reaches them (ckpt_save_from), so rank 0 holds its own arenas plus one
 * gathered tensor. Returns rank 0's status (the other ranks return MOELM_OK; pass the result to
 * dist_any_failed). */
moelm_status dist_save_checkpoint(const char *run_dir, const Model *m, const Optimizer *o, const TrainState *s,
                                  const Tokenizer *tok, int keep);

/* Bracket an evaluation's forward passes, so that the all-to-all bytes of the training steps and of
 * the evaluations are reported apart (dist_end's comm line). */
void dist_eval_begin(void);
void dist_eval_end(void);

/* After evaluating this rank's share of every batch: sums the counts over ranks. */
void dist_reduce_eval(EvalResult *r);

/* 1 when any rank's st is a failure (a collective). */
int dist_any_failed(moelm_status st);

/* Rank 0's v on every rank (a collective): the wall-clock of a time budget, so that every rank
 * computes the same learning rate and stops at the same step. */
double dist_root_value(double v);

/* Ranks other than 0 wait here until rank 0 calls dist_serial_end (for a step that writes shared
 * files, such as the token cache). */
void dist_serial_begin(void);
void dist_serial_end(void);

#endif
