/* corpus.h: the three text splits (train, valid, test) a run trains and evaluates on.
 *
 * A corpus spec is one of:
 *   NULL or "builtin"  the built-in corpus (builtin.h): train ~2 MB, valid and test ~100 KB each.
 *   a directory        holding ptb.train.txt, ptb.valid.txt, ptb.test.txt (checked first) or
 *                      train.txt, valid.txt, test.txt. When the train file of one naming exists, the
 *                      other two files of that naming must exist too.
 *   a single file      split by lines: the first 90% of lines train, the next 5% valid, the last 5%
 *                      test (valid and test get floor(lines/20) lines each, at least 1 each when the
 *                      file has 3 or more lines; a file of 1 or 2 lines is all train).
 * Every text is checked to be UTF-8 without NUL bytes; a leading UTF-8 byte order mark is dropped.
 * A file is a regular file or a pipe (a device such as /dev/zero is refused before reading) of at
 * most CORPUS_MAX_BYTES (2 GiB: the text, its tokens and the token cache are held in memory; a larger
 * file is refused with its size, a pipe once it has given that much).
 * Errors name the file and the problem: missing or unreadable file (MOELM_ERR_IO), invalid UTF-8 or
 * a NUL byte with its byte offset and line (MOELM_ERR_FORMAT), a train split (or a valid/test file
 * of a directory) with nothing but whitespace ("<path>: corpus is empty", MOELM_ERR_DATA).
 *
 * Not here: tokenization, caching of token files.
 */
#ifndef MOELM_DATA_CORPUS_H
#define MOELM_DATA_CORPUS_H

#include <stddef.h>
#include "moelm.h"

enum { CORPUS_TRAIN = 0, CORPUS_VALID = 1, CORPUS_TEST = 2 };
#define CORPUS_MAX_BYTES (2ull << 30)

typedef struct {
    char *text[3];        /* train, valid, test texts [len[i] + 1] (NUL-terminated, moelm_malloc'ed) */
    size_t len[3];        /* bytes, not counting the NUL */
    char name[3][512];    /* where each came from, for messages: the file path, "builtin:train", or for a
                             single split file "<path>:train" */
} Corpus;

moelm_status corpus_load(Corpus *c, const char *spec);
void corpus_free(Corpus *c);   /* safe on a zeroed or already freed Corpus */

/* "train", "valid", "test". */
const char *corpus_split_name(int split);

/* Reads a whole text file (e.g. for `moelm eval --data file`), with the same checks as corpus_load
 * (regular file, UTF-8, no NUL; a leading BOM dropped), but without the emptiness check.
 * *text is moelm_malloc'ed and NUL-terminated. */
moelm_status corpus_read_file(const char *path, char **text, size_t *len);

/* Checks that s[n] is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF) and has
 * no NUL byte. Returns 1 if so; otherwise 0 with *bad_offset set to the offset of the first bad byte. */
int utf8_check(const char *s, size_t n, size_t *bad_offset);

#endif
