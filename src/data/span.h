/* span.h: the encoder-decoder's training examples: T5's span corruption over a token stream, and plain
 * sequence-to-sequence pairs from a TSV file (input<TAB>target a line).
 *
 * Dimensions: B batch, L raw tokens of a window, Te encoder and Td decoder tokens of an example.
 *
 * Span corruption (T5, Raffel et al. 2020, random_spans_noise_mask): of L tokens, round(L * density)
 * (at least 1, at most L - 1) are noise, in round(noise / mean_span) spans (at least 1); the noise and
 * the non-noise tokens are each cut into that many non-empty segments uniformly at random and
 * interleaved, non-noise first (so the window starts with a kept token and ends with noise). The
 * encoder gets the kept tokens with each noise span replaced by the next sentinel (<extra_id_0>,
 * <extra_id_1>, ...) and EOS; the decoder's labels are each noise span after its sentinel, and EOS.
 * T5's rounding is round-half-even (tf.round, np.round). A window's lengths depend on L alone, so a
 * raw length chosen by span_lengths gives every example the same Te and Td: batches need no padding.
 * The noise of a window is drawn from (seed, epoch, window): resuming reproduces it exactly.
 */
#ifndef MOELM_DATA_SPAN_H
#define MOELM_DATA_SPAN_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"
#include "data/dataloader.h"

typedef struct {
    int raw;        /* L: tokens a window takes from the stream */
    int inputs;     /* Te: its corrupted input, EOS included */
    int targets;    /* Td: its labels, EOS included */
    int spans;      /* noise spans (sentinels used) */
} SpanLengths;

/* The lengths of a window of L raw tokens. */
SpanLengths span_lengths_of(int L, float density, float mean_span);
/* HF's compute_input_and_target_lengths: the longest raw window whose corrupted input has at most
 * inputs_length tokens. */
SpanLengths span_lengths(int inputs_length, float density, float mean_span);

/* mask[L] = 1 at noise tokens (random_spans_noise_mask), drawn from rng; scratch [3L] ints. L >= 2. */
void span_noise_mask(uint8_t *mask, int L, float density, float mean_span, Rng *rng, int *scratch);

/* Corrupts tokens[L] by mask: inputs[n_in], labels[n_lab] as above (lengths those of span_lengths_of);
 * sentinel k is the id sent0 - k (Hugging Face's order: <extra_id_0> is the last id), n_sent of them. */
void span_corrupt(int *inputs, int *n_in, int *labels, int *n_lab, const int *tokens, const uint8_t *mask, int L,
                  int sent0, int n_sent, int eos);

/* Training batches of span-corrupted windows over a token stream: windows of raw tokens, B a batch,
 * shuffled per epoch as DataLoader's (whose state, epoch and pos, is the whole loader's). */
typedef struct {
    DataLoader dl;              /* over idx: the order of the windows (window w: stream[w raw .. (w + 1) raw)) */
    const int *stream;          /* the token stream (not owned) */
    int *idx;                   /* [windows + 1] 0, 1, 2, ... */
    SpanLengths len;
    float density, mean_span;
    int sent0, n_sent, eos;
    uint64_t seed;
    int *win, *tgt, *scratch;   /* [raw], [2B], [3 raw] */
    uint8_t *mask;              /* [raw] */
} SpanLoader;

/* MOELM_ERR_CONFIG when inputs_length leaves no room (or needs more sentinels than n_sent), MOELM_ERR_DATA
 * when the stream is shorter than one window. */
moelm_status span_loader_init(SpanLoader *sl, const int *ids, size_t n, int B, int inputs_length, float density,
                              float mean_span, int sent0, int n_sent, int eos, uint64_t seed);
void span_loader_free(SpanLoader *sl);
/* input_ids[B, Te], labels[B, Td] of the next batch (every row full: no padding). */
void span_loader_next(SpanLoader *sl, int *input_ids, int *labels);

/* Evaluation: every window of the stream once, in order, windows w = batch B + b, each with the noise
 * of (seed, w) (the same split scores the same every time). span_eval_batches: how many batches;
 * span_eval_batch fills input_ids[rows, Te] and labels[rows, Td] of one and returns rows (B, fewer in
 * the last). scratch [3L], tokens [L] ints, mask [L]. */
size_t span_eval_batches(size_t n, SpanLengths len, int B);
int span_eval_batch(const int *ids, size_t n, SpanLengths len, float density, float mean_span, int B, size_t batch,
                    uint64_t seed, int sent0, int n_sent, int eos, int *input_ids, int *labels, int *tokens,
                    uint8_t *mask, int *scratch);

/* Sequence-to-sequence pairs. */
typedef struct {
    int n;                      /* pairs */
    int *in_off, *tg_off;       /* [n + 1] offsets into in_ids, tg_ids */
    int *in_ids, *tg_ids;       /* each side's ids, EOS-terminated, truncated to Te / Td */
    int Te, Td, pad;
    DataLoader dl;              /* over idx: the pairs' order, epoch by epoch */
    int *idx;                   /* [n + 1] 0, 1, 2, ... */
} Seq2SeqData;

struct Tokenizer;
/* Reads "input<TAB>target" lines (empty lines skipped; a line without a tab is an error naming it),
 * each side tokenized and ended with eos (the tokenizer's line end), truncated to Te and Td tokens (EOS
 * kept last). MOELM_ERR_DATA for no pairs. */
moelm_status seq2seq_load_tsv(Seq2SeqData *d, const char *path, const struct Tokenizer *tok, int Te, int Td, int pad,
                              uint64_t seed);
/* The same from a text already read (a corpus split); path names it in errors. */
moelm_status seq2seq_load_text(Seq2SeqData *d, const char *text, size_t n, const char *path,
                               const struct Tokenizer *tok, int Te, int Td, int pad, uint64_t seed);
void seq2seq_free(Seq2SeqData *d);
/* Evaluation: every pair once, in order, B a batch: how many batches, and batch `batch` into rows
 * (returned: B, fewer in the last) of input_ids, attention_mask [rows, Te] and labels [rows, Td]. */
size_t seq2seq_eval_batches(const Seq2SeqData *d, int B);
int seq2seq_eval_batch(const Seq2SeqData *d, int B, size_t batch, int *input_ids, int *attention_mask, int *labels);
/* The next B pairs (epochs reshuffled as DataLoader's), padded: input_ids and attention_mask [B, Te]
 * (pad ids, mask 0 past the input), labels [B, Td] (-100 past the target). */
void seq2seq_next(Seq2SeqData *d, int B, int *input_ids, int *attention_mask, int *labels);

#endif
