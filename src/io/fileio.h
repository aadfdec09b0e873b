/* fileio.h: whole-file reads, crash-safe (atomic) writes, and directory helpers.
 *
 * An atomic write goes to "<path>.tmp.<pid>", is written completely (short writes are retried,
 * EINTR is retried), fsync'ed and closed, then renamed over <path>, and the directory is
 * fsync'ed. A crash or failure at any point leaves either the old file or the new one, never a
 * mix; on failure the temporary file is removed. If only the final directory fsync fails, the new
 * file is already in place (complete) but not known to be durable, and the error is still returned.
 *
 * Fault injection for tests: fileio_fail_at("write", 3) makes the 3rd write(2) from now fail with
 * ENOSPC. Operations and the errno they fail with:
 *   "open" EACCES, "read" EIO, "write" ENOSPC, "short_write" (the write stores only part of its
 *   bytes and reports so; not an error, the writer must retry), "fsync" EIO (file and directory
 *   fsyncs both count), "rename" EIO (file_rename too), "symlink" EIO (file_symlink).
 * Counters are process-global and not thread-safe; fileio_fail_reset() turns all of them off.
 */
#ifndef MOELM_FILEIO_H
#define MOELM_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

/* Reads a whole file into *data (moelm_malloc'ed, with one extra NUL byte after the n bytes).
 * file_read_all_limit fails with MOELM_ERR_FORMAT when the file is larger than max_bytes (a pipe or
 * device is read up to that many bytes, never further). Opening never blocks on a FIFO. */
moelm_status file_read_all(const char *path, char **data, size_t *n);
moelm_status file_read_all_limit(const char *path, char **data, size_t *n, size_t max_bytes);

/* Reads exactly n bytes at offset off of the open fd (pread, EINTR retried); a short read (a file
 * that shrank) is MOELM_ERR_FORMAT "path: unexpected end of file in what". */
moelm_status file_pread(int fd, const char *path, void *dst, uint64_t n, uint64_t off, const char *what);

/* Writes data[0..n) to path atomically (see above). */
moelm_status file_write_atomic(const char *path, const void *data, size_t n);

/* The same protocol, streamed, for files too large to build in memory:
 *     FileWriter w; fw_open(&w, path); fw_write(&w, a, na); fw_write(&w, b, nb); fw_commit(&w);
 * After any failure the writer is already aborted (temporary removed) and later calls return the
 * first error again; fw_abort is only needed to give up without an error. */
typedef struct {
    int fd;          /* -1 once closed */
    char *path;      /* final name */
    char *tmp;       /* "<path>.tmp.<pid>" */
    moelm_status st; /* first error, sticky */
} FileWriter;

moelm_status fw_open(FileWriter *w, const char *path);
moelm_status fw_write(FileWriter *w, const void *data, size_t n);
moelm_status fw_commit(FileWriter *w);
void fw_abort(FileWriter *w);

/* rename(2) and symlink(2) with injectable failures; the message names both paths. */
moelm_status file_rename(const char *from, const char *to);
moelm_status file_symlink(const char *target, const char *path);

moelm_status dir_sync(const char *dir);       /* fsync a directory (its entries become durable) */
moelm_status dir_make(const char *path);      /* mkdir -p; an existing directory is fine */
/* rm -rf without following symlinks; an absent path is fine; "/", ".", ".." and "" are refused. */
moelm_status dir_remove_tree(const char *path);
int path_exists(const char *path);
int path_is_dir(const char *path);

/* The directory part of path ("." when there is none), into buf; returns buf. */
char *path_dirname(const char *path, char *buf, size_t cap);

void fileio_fail_at(const char *op, int nth);
void fileio_fail_reset(void);

#endif
