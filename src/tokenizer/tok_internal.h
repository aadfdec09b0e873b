/* tok_internal.h: the Tokenizer struct and the functions the tokenizer's files share.
 * Not part of moelm's interface: only src/tokenizer/, src/cli/cmd_tokenizer.c and the tests use it.
 *
 * Dimensions: V vocabulary size (pieces).
 */
#ifndef MOELM_TOK_INTERNAL_H
#define MOELM_TOK_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include "tokenizer/tokenizer.h"

/* SentencePiece piece types (ModelProto.SentencePiece.Type) */
enum { SPM_NORMAL = 1, SPM_UNKNOWN = 2, SPM_CONTROL = 3, SPM_USER_DEFINED = 4, SPM_UNUSED = 5, SPM_BYTE = 6 };

/* A byte trie over pieces, edges sorted by label. Node 0 is the root. */
typedef struct {
    int32_t *first;     /* [nodes+1] index of a node's first edge in label/child */
    uint8_t *label;     /* [edges] */
    int32_t *child;     /* [edges] */
    int32_t *value;     /* [nodes] piece id ending at this node, -1 if none */
    int32_t root[256];  /* root's children by byte (fast path), -1 if none */
    int nodes;
} PieceTrie;

/* A SentencePiece NormalizerSpec, plus the parsed precompiled charsmap. */
typedef struct {
    char *name;                 /* "identity", "nmt_nfkc", ... (moelm_malloc'ed, never NULL) */
    uint8_t *charsmap;          /* precompiled_charsmap bytes as stored, NULL if empty */
    size_t charsmap_len;
    const uint32_t *trie;       /* into a copy: double-array units (little-endian host assumed) */
    uint32_t *trie_copy;        /* aligned copy of the units */
    size_t trie_units;
    const char *normalized;     /* into charsmap: NUL-separated replacement strings */
    size_t normalized_len;
    int add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
    int has_add_dummy_prefix, has_remove_extra_whitespaces, has_escape_whitespaces;
    char *rule_tsv;             /* normalization_rule_tsv, NULL if absent */
} SpmNormSpec;

struct Tokenizer {
    TokenizerKind kind;
    int V;
    char **piece;        /* [V] NUL-terminated (pieces never contain NUL) */
    uint32_t *plen;      /* [V] byte length */
    float *score;        /* [V] */
    uint8_t *type;       /* [V] SPM_* (word/char: SPM_NORMAL, <unk> SPM_UNKNOWN) */
    int32_t *map;        /* open-addressing table piece -> id, -1 empty; size map_cap (power of 2) */
    size_t map_cap;
    int unk_id, bos_id, eos_id, pad_id;
    uint64_t hash;

    /* SentencePiece only */
    SpmNormSpec norm;
    SpmNormSpec denorm;          /* denormalizer_spec (kept for saving; not applied) */
    int has_denorm;
    uint8_t *trainer_raw;        /* serialized TrainerSpec, written back unchanged */
    size_t trainer_raw_len;
    uint8_t *extra_raw;          /* other top-level fields (self_test_data, unknown), written back */
    size_t extra_raw_len;
    char *unk_surface;           /* trainer_spec.unk_surface, decoded for <unk> (" \u2047 ") */
    int byte_fallback;
    int treat_ws_as_suffix;
    int byte_id[256];            /* id of <0xNN>, -1 if absent */
    float min_score, max_score;  /* over NORMAL pieces (unigram unknown penalty, user-defined bonus) */
    PieceTrie trie;              /* NORMAL, USER_DEFINED, UNUSED pieces (sentencepiece's pieces_) */
    PieceTrie user_trie;         /* USER_DEFINED pieces only (prefix matcher), nodes==0 if none */

    /* T5's sentinels (sentinels.c): ids V .. V + n_sent - 1 after the pieces, "<extra_id_k>" at id
     * V + n_sent - 1 - k (Hugging Face's order); not part of the saved model file */
    int n_sent;
    char **sent;                 /* [n_sent] the text of id V + i */
};

/* ---- shared helpers (tokenizer.c) ---- */
Tokenizer *tok_alloc(TokenizerKind kind, int V);
moelm_status tok_set_piece(Tokenizer *t, int id, const char *s, size_t len, float score, int type);
moelm_status tok_finish(Tokenizer *t, const char *what);   /* builds map, ids, hash; checks dups */
int tok_lookup(const Tokenizer *t, const char *s, size_t len);
uint64_t tok_compute_hash(const Tokenizer *t);
moelm_status tok_write_atomic(const char *path, const void *data, size_t n);
moelm_status tok_read_file(const char *path, uint8_t **data, size_t *n);

/* UTF-8 as sentencepiece decodes it: returns the code point, *mblen bytes consumed (1 on error),
 * and 0xFFFD for malformed input. */
uint32_t tok_utf8_decode(const char *s, size_t n, size_t *mblen);
int tok_utf8_valid_prefix(const char *s, size_t n, size_t *mblen);   /* sentencepiece's IsValidDecodeUTF8 */
static inline int tok_onechar_len(uint8_t c) { static const uint8_t L[16] = {1,1,1,1,1,1,1,1,1,1,1,1,2,2,3,4}; return L[c >> 4]; }

/* ---- sentinels (sentinels.c) ---- */
moelm_status tok_encode_plain(const Tokenizer *t, const char *text, size_t n, int **ids, size_t *count);
moelm_status tok_decode_plain(const Tokenizer *t, const int *ids, size_t count, char **text);
moelm_status tok_encode_sentinels(const Tokenizer *t, const char *text, size_t n, int **ids, size_t *count);
moelm_status tok_decode_sentinels(const Tokenizer *t, const int *ids, size_t count, char **text);
int tok_sentinel_lookup(const Tokenizer *t, const char *s, size_t len);   /* id of "<extra_id_k>", -1 if none */

/* ---- SentencePiece (spm_*.c) ---- */
typedef struct SpmTrainOptions SpmTrainOptions;
moelm_status spm_parse_model(Tokenizer **out, const uint8_t *buf, size_t n, const char *path);
moelm_status spm_serialize_model(const Tokenizer *t, uint8_t **buf, size_t *n);
moelm_status spm_prepare(Tokenizer *t, const char *path);   /* tries, byte ids, scores; after parse/train */
void spm_free_fields(Tokenizer *t);
moelm_status spm_build_trainer_spec(const SpmTrainOptions *op, uint8_t **buf, size_t *n);
void trie_free(PieceTrie *tr);
moelm_status trie_build(PieceTrie *tr, const Tokenizer *t, unsigned type_mask);   /* bit k: include type k */
int trie_next(const PieceTrie *tr, int node, uint8_t c);   /* child of node by byte c, -1 if none */

/* Normalizes one line as sentencepiece's Normalizer::Normalize. *out is moelm_malloc'ed. */
moelm_status spm_normalize(const Tokenizer *t, const SpmNormSpec *ns, const char *in, size_t n, char **out, size_t *outn);
moelm_status spm_norm_parse_charsmap(SpmNormSpec *ns, const char *what);

/* Training options: sentencepiece's TrainerSpec names and defaults. */
struct SpmTrainOptions {
    TokenizerKind model_type;
    int vocab_size;                 /* 8000 */
    double character_coverage;      /* 0.9995 */
    char normalization_rule_name[32];   /* "nmt_nfkc" in sentencepiece; moelm trains "identity" unless a
                                       * charsmap is supplied (see docs) */
    int byte_fallback;
    char *user_defined_symbols;     /* comma separated, may be NULL */
    char *control_symbols;
    int max_sentence_length;        /* 4192 bytes */
    int split_digits;
    int hard_vocab_limit;           /* 1 */
    int unk_id, bos_id, eos_id, pad_id;   /* 0, 1, 2, -1 */
    long input_sentence_size;       /* 0 = all */
    int max_sentencepiece_length;   /* 16 */
    int num_sub_iterations;         /* 2 */
    double shrinking_factor;        /* 0.75 */
    int seed_sentencepiece_size;    /* 1000000 */
    int add_dummy_prefix, remove_extra_whitespaces;   /* 1, 1 */
    int split_by_whitespace, split_by_unicode_script, split_by_number;  /* 1, 1, 1 */
    int treat_whitespace_as_suffix; /* 0 */
    int num_threads;                /* 16 */
    const uint8_t *charsmap;        /* precompiled charsmap to embed (NULL: identity) */
    size_t charsmap_len;
};

void spm_train_options_default(SpmTrainOptions *o);
/* Trains on a list of texts (each a whole corpus, lines split at '\n'). */
moelm_status spm_train(Tokenizer **out, const char *const *texts, const size_t *lens, int ntexts, const SpmTrainOptions *o);

#endif
