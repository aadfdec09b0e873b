/* checksum.h: a CHECKSUMS file for a directory of files (a checkpoint), and its verification.
 *
 * Format (text, one line each, written atomically):
 *     # moelm CHECKSUMS v1: crc32 size name
 *     1a2b3c4d 1048576 model.safetensors
 *     ...
 * crc32 is IEEE CRC-32 (zlib's) as 8 lowercase hex digits, size is decimal bytes, name is the file
 * name relative to the directory (no '/' at the start, no ".." component, no newline).
 * Files are read in 1 MiB chunks, so checkpoint size does not matter.
 */
#ifndef MOELM_CHECKSUM_H
#define MOELM_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

#define CHECKSUMS_NAME "CHECKSUMS"

/* Computes crc32 and size of dir/files[i] for each i and writes dir/CHECKSUMS atomically. */
moelm_status checksums_write(const char *dir, const char *const *files, int n);
/* Checks that every name in required[0..n) is listed, then recomputes every listed file; the first
 * unlisted, missing, mismatched or irregular one is reported by name (MOELM_ERR_FORMAT for a
 * mismatch, an unlisted required file or a malformed CHECKSUMS, MOELM_ERR_IO for a missing file).
 * CHECKSUMS and the files it lists must be regular files, not symbolic links, FIFOs or devices:
 * nothing is opened before lstat says so, and no file is read past its listed size. */
moelm_status checksums_verify(const char *dir, const char *const *required, int n);
/* crc32 and size of one regular file (anything else is refused without blocking); reading stops
 * with MOELM_ERR_FORMAT past max_bytes. */
moelm_status file_crc32(const char *path, uint32_t *crc, uint64_t *size, uint64_t max_bytes);

#endif
