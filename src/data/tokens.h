/* tokens.h: binary token files, the cached output of a tokenizer over a corpus split.
 *
 * Layout (all integers little-endian, no padding, 36-byte header):
 *   offset  0  char[8]  magic "MOELMTOK"
 *   offset  8  u32      version (TOKENS_VERSION)
 *   offset 12  u32      vocab_size V
 *   offset 16  u64      tokenizer hash (identifies the tokenizer that produced the ids)
 *   offset 24  u64      count N
 *   offset 32  u32      CRC-32 (IEEE, zlib's) of the N*4 id bytes as stored
 *   offset 36  i32[N]   token ids, each in [0, V)
 *
 * Status classes returned by tokens_read: MOELM_ERR_IO (cannot open/read), MOELM_ERR_FORMAT (not a
 * token file, or corrupt: bad magic, version, size, CRC), MOELM_ERR_DATA (a valid file that does not
 * belong to this tokenizer: vocab size or hash mismatch, or an id out of range). A cache owner should
 * rebuild the file on FORMAT or DATA.
 */
#ifndef MOELM_DATA_TOKENS_H
#define MOELM_DATA_TOKENS_H

#include <stddef.h>
#include <stdint.h>
#include "moelm.h"

#define TOKENS_MAGIC "MOELMTOK"
#define TOKENS_VERSION 1u
#define TOKENS_HEADER_BYTES 36

/* Writes ids[count] atomically: path.tmp, fflush, fsync, rename, fsync of the directory.
 * Refuses (MOELM_ERR_DATA) ids outside [0, vocab_size). */
moelm_status tokens_write(const char *path, const int *ids, size_t count, int vocab_size, uint64_t tok_hash);

/* Reads and validates a token file: magic, version, vocab_size == expected, hash == expected, count
 * consistent with the file size (checked before allocating), CRC, every id in [0, vocab_size).
 * On success *ids is moelm_malloc'ed (never NULL, even for count 0) and the caller frees it. */
moelm_status tokens_read(const char *path, int **ids, size_t *count, int vocab_size, uint64_t tok_hash);

/* The key a token cache is stored under (in the header's hash field): the tokenizer that made it
 * (tok_hash), the bytes of the text it was made from, and the revision of the encoders
 * (TOKENS_ENCODER_REV, raised when an encoder's output changes). A cache of other data, even with
 * the same path or name, or from an older encoder, no longer matches and is rebuilt. */
#define TOKENS_ENCODER_REV 2u
uint64_t tokens_cache_key(uint64_t tok_hash, const char *text, size_t n);

/* MOELM_ERR_DATA with "<what>: token id 10007 at position 55 out of range [0, 10000)" on the first bad id. */
moelm_status tokens_check_range(const int *ids, size_t count, int vocab_size, const char *what);

#endif
