/* spm_model.c: placeholder until the SentencePiece reader lands. */
#include "tokenizer/tok_internal.h"
moelm_status spm_parse_model(Tokenizer **out, const uint8_t *buf, size_t n, const char *path) {
    (void)buf; (void)n; *out = NULL;
    return moelm_fail(MOELM_ERR_FORMAT, "%s: not a moelm vocabulary file (SentencePiece models not yet supported)", path);
}
moelm_status spm_serialize_model(const Tokenizer *t, uint8_t **buf, size_t *n) { (void)t; *buf = NULL; *n = 0; return moelm_fail(MOELM_ERR_CONFIG, "not supported yet"); }
void spm_free_fields(Tokenizer *t) { (void)t; }
moelm_status tokenizer_encode_line(const Tokenizer *t, const char *line, size_t n, int **ids, size_t *count) { (void)t; (void)line; (void)n; *ids = NULL; *count = 0; return moelm_fail(MOELM_ERR_CONFIG, "not supported yet"); }
moelm_status tokenizer_decode_line(const Tokenizer *t, const int *ids, size_t count, char **text) { (void)t; (void)ids; (void)count; *text = NULL; return moelm_fail(MOELM_ERR_CONFIG, "not supported yet"); }
moelm_status tokenizer_train_spm(Tokenizer **out, const char *text, size_t n, TokenizerKind kind, int vocab_size) { (void)text; (void)n; (void)kind; (void)vocab_size; *out = NULL; return moelm_fail(MOELM_ERR_CONFIG, "not supported yet"); }
