/* tokenizer.h: the one tokenizer interface the rest of moelm uses.
 *
 * Four kinds behind one opaque handle:
 *   TOK_WORD     whitespace vocabulary (PTB convention: every line end is the token "<eos>").
 *                Ids: 0 = "<unk>", 1 = "<eos>", then words by count descending, ties bytewise ascending.
 *   TOK_CHAR     one id per distinct UTF-8 code point. Ids: 0 = "<unk>", then code points ascending.
 *                Newline is an ordinary character; there is no <eos> (tokenizer_eos_id() = -1).
 *   TOK_UNIGRAM  SentencePiece unigram model, read from / written to SentencePiece .model files,
 *   TOK_BPE      SentencePiece BPE model; both encode exactly as the sentencepiece library does.
 *
 * Word and char vocabularies are saved in moelm's own binary format (magic "MOELMVOC", version,
 * kind, pieces, CRC-32); SentencePiece kinds are saved as .model protobufs. tokenizer_load tells the
 * two apart by content. See docs/TOKENIZER.md.
 *
 * Not here: token files and batching (src/data/).
 */
#ifndef MOELM_TOKENIZER_H
#define MOELM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

typedef struct Tokenizer Tokenizer;   /* opaque */
typedef enum { TOK_WORD = 0, TOK_CHAR, TOK_UNIGRAM, TOK_BPE } TokenizerKind;

/* Word vocabulary: "<unk>", "<eos>" and the max_vocab-2 most frequent other words of text
 * (fewer if the text has fewer). A word spelled "<unk>" in the text maps to <unk>, "<eos>" to <eos>.
 * max_vocab >= 2. */
moelm_status tokenizer_build_word(Tokenizer **out, const char *text, size_t n, int max_vocab);
/* Char vocabulary: "<unk>" plus every distinct valid UTF-8 code point of text, ascending.
 * Bytes that are not valid UTF-8 encode to <unk>. */
moelm_status tokenizer_build_char(Tokenizer **out, const char *text, size_t n);
/* Trains a SentencePiece unigram or bpe model in memory on text with default options (the same
 * as `moelm tokenizer train --model_type unigram|bpe --vocab_size N`). */
moelm_status tokenizer_train_spm(Tokenizer **out, const char *text, size_t n, TokenizerKind kind, int vocab_size);
/* Loads a SentencePiece .model file or a moelm word/char vocabulary file (detected by content);
 * files over TOK_MAX_MODEL_BYTES (and endless devices) are refused. */
#define TOK_MAX_MODEL_BYTES (256u << 20)
moelm_status tokenizer_load(Tokenizer **out, const char *path);
/* Saves atomically (path.tmp, fflush, fsync, rename, fsync of the directory). */
moelm_status tokenizer_save(const Tokenizer *t, const char *path);
void tokenizer_free(Tokenizer *t);

TokenizerKind tokenizer_kind(const Tokenizer *t);
int tokenizer_vocab_size(const Tokenizer *t);
/* Content hash (pieces, scores, types, normalisation): validates cached token files. */
uint64_t tokenizer_hash(const Tokenizer *t);

/* Encodes a whole corpus. Word: words and one <eos> per line end (a last line without '\n' also
 * gets one). Char: one id per code point, newlines included. SentencePiece kinds: each line is
 * encoded as spm_encode does, then the model's eos id (if it has one) is appended per line.
 * *ids is moelm_malloc'ed (caller moelm_free's); *count its length. */
moelm_status tokenizer_encode(const Tokenizer *t, const char *text, size_t n, int **ids, size_t *count);
/* Decodes ids to a moelm_malloc'ed NUL-terminated string. Word: words joined by spaces, <eos> ->
 * "\n". Char: concatenation. SentencePiece: as spm_decode (eos ids -> "\n"). */
moelm_status tokenizer_decode(const Tokenizer *t, const int *ids, size_t count, char **text);
/* The text one token contributes inside running text, for streaming generation: SentencePiece
 * U+2581 -> ' ' (the leading space is kept), control pieces -> "", <unk> -> " \u2047 ", a byte
 * piece -> its raw byte (concatenate the outputs: multi-byte characters come out whole); word:
 * the word (no separator), <eos> -> "\n"; char: the character. moelm_malloc'ed. */
moelm_status tokenizer_decode_piece(const Tokenizer *t, int id, char **text);
/* The piece of id, or NULL when id is out of range. */
const char *tokenizer_piece(const Tokenizer *t, int id);
/* The id of piece, or -1 when it is not in the vocabulary. */
int tokenizer_piece_id(const Tokenizer *t, const char *piece);
int tokenizer_eos_id(const Tokenizer *t);   /* -1 if none */
int tokenizer_bos_id(const Tokenizer *t);   /* -1 if none */
/* A piece's score and SentencePiece type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
 * 6 byte: the numbers of sentencepiece's model and of GGUF's tokenizer.ggml.token_type); id in range. */
float tokenizer_piece_score(const Tokenizer *t, int id);
int tokenizer_piece_type(const Tokenizer *t, int id);
/* SentencePiece's normalizer flags: a space is added in front of the text (add_dummy_prefix); byte
 * fallback (unknown characters become <0xNN> pieces). 0 for word and char tokenizers. */
int tokenizer_adds_space_prefix(const Tokenizer *t);
int tokenizer_byte_fallback(const Tokenizer *t);
/* SentencePiece's remove_extra_whitespaces (leading, trailing and repeated spaces dropped); 0 for word
 * and char tokenizers. */
int tokenizer_removes_extra_spaces(const Tokenizer *t);

/* A SentencePiece vocabulary from its parts, as a GGUF file's tokenizer.ggml.* keys hold them. */
typedef struct {
    TokenizerKind kind;            /* TOK_BPE or TOK_UNIGRAM */
    int n;                         /* pieces */
    const char *const *piece;      /* [n] UTF-8, len[i] bytes each (no NUL needed) */
    const uint64_t *len;           /* [n] */
    const float *score;            /* [n] */
    const int32_t *type;           /* [n] 1..6, tokenizer_piece_type's numbers */
    int bos_id, eos_id;            /* -1: none; else a control piece's id */
    int add_dummy_prefix, remove_extra_whitespaces;
} TokenizerVocab;
/* The tokenizer of v: an identity normalizer (no character map) with v's whitespace flags, byte
 * fallback when v has byte pieces; checked as a .model file is (valid UTF-8, known types, one unknown
 * piece, all 256 byte pieces or none, finite scores, no duplicates), errors naming `what`. */
moelm_status tokenizer_from_vocab(Tokenizer **out, const TokenizerVocab *v, const char *what);
/* tokenizer_train_spm with sentencepiece's --byte_fallback: the 256 byte pieces <0x00>..<0xFF> join the
 * vocabulary and encode any character outside the pieces (llama.cpp's tokenizer needs them). */
moelm_status tokenizer_train_spm_bytes(Tokenizer **out, const char *text, size_t n, TokenizerKind kind, int vocab_size);
int tokenizer_unk_id(const Tokenizer *t);   /* -1 if none */

/* T5's sentinels, as Hugging Face's T5Tokenizer adds them (extra_ids): n pieces after the vocabulary,
 * "<extra_id_k>" at id V + n - 1 - k (so <extra_id_0> is the last id). tokenizer_vocab_size counts
 * them; encoding splits the text at them (the text between encodes as a line fragment: no eos before
 * a sentinel); decoding writes them back; they are not saved with the model file (spiece.model stays
 * the one T5Tokenizer reads, which adds them again). MOELM_ERR_FORMAT when the vocabulary already has
 * such a piece (the ids would be ambiguous), MOELM_ERR_CONFIG when it already has sentinels or n is
 * outside [1, 10000]. */
moelm_status tokenizer_add_sentinels(Tokenizer *t, int n);
int tokenizer_sentinel_count(const Tokenizer *t);
/* The id of <extra_id_k>, or -1 when k is not in [0, count). */
int tokenizer_sentinel_id(const Tokenizer *t, int k);

/* Number of "words" in text as PTB word-level perplexity counts them: whitespace-separated words
 * plus one per line end (a last line without '\n' counts one too). */
size_t text_count_words(const char *text, size_t n);

/* ---- SentencePiece line-level API (used by the CLI and the tests) ---------------------------- */

/* Encodes one line (no '\n') exactly as sentencepiece's SentencePieceProcessor::Encode: no bos/eos.
 * *ids is moelm_malloc'ed. Only for TOK_UNIGRAM / TOK_BPE. */
moelm_status tokenizer_encode_line(const Tokenizer *t, const char *line, size_t n, int **ids, size_t *count);
/* Decodes ids as SentencePieceProcessor::Decode (control pieces vanish, bytes are reassembled,
 * U+2581 becomes a space, the leading dummy space is dropped). *text is moelm_malloc'ed. */
moelm_status tokenizer_decode_line(const Tokenizer *t, const int *ids, size_t count, char **text);

#endif
