/* fileio.c: whole-file reads, atomic writes, directory helpers, injectable failures. See fileio.h.
 *
 * Every system call that tests may want to fail goes through one of the h_* wrappers below.
 */
#include "io/fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- fault injection -------------------------------------------------------------------------- */

enum { OP_OPEN, OP_READ, OP_WRITE, OP_SHORT_WRITE, OP_FSYNC, OP_RENAME, OP_SYMLINK, OP_COUNT };
static const char *const g_op_names[OP_COUNT] = { "open", "read", "write", "short_write", "fsync", "rename", "symlink" };
static const int g_op_errno[OP_COUNT] = { EACCES, EIO, ENOSPC, 0, EIO, EIO, EIO };
static int g_countdown[OP_COUNT];

void fileio_fail_at(const char *op, int nth) {
    for (int i = 0; i < OP_COUNT; i++)
        if (strcmp(op, g_op_names[i]) == 0) { g_countdown[i] = nth; return; }
    CHECK(!"fileio_fail_at: unknown operation");
}

void fileio_fail_reset(void) { memset(g_countdown, 0, sizeof g_countdown); }

/* 1 when this call of op is the one to fail (errno is set). */
static int injected(int op) {
    if (g_countdown[op] > 0 && --g_countdown[op] == 0) {
        errno = g_op_errno[op];
        return 1;
    }
    return 0;
}

static int h_open(const char *path, int flags, mode_t mode) {
    if (injected(OP_OPEN)) return -1;
    return open(path, flags | O_CLOEXEC, mode);
}

static ssize_t h_read(int fd, void *buf, size_t n) {
    if (injected(OP_READ)) return -1;
    return read(fd, buf, n);
}

static ssize_t h_write(int fd, const void *buf, size_t n) {
    if (injected(OP_WRITE)) return -1;
    if (n > 1 && injected(OP_SHORT_WRITE)) n /= 2;
    return write(fd, buf, n);
}

static int h_fsync(int fd) {
    if (injected(OP_FSYNC)) return -1;
    return fsync(fd);
}

static int h_rename(const char *from, const char *to) {
    if (injected(OP_RENAME)) return -1;
    return rename(from, to);
}

/* ---- reading ---------------------------------------------------------------------------------- */

moelm_status file_read_all_limit(const char *path, char **data, size_t *n, size_t max_bytes) {
    *data = NULL;
    *n = 0;
    /* O_NONBLOCK: opening a FIFO nobody writes to would block forever; it is cleared again at
     * once, so a pipe with a writer is read normally (and one without gives end of file) */
    int fd = h_open(path, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return moelm_fail(MOELM_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        return moelm_fail(MOELM_ERR_IO, "%s: is a directory, not a file", path);
    }
    /* Files in /proc report size 0: read those like pipes, growing the buffer. */
    int regular = S_ISREG(sb.st_mode) && sb.st_size > 0;
    size_t cap = regular ? (size_t)sb.st_size : 65536;
    if (regular && (uint64_t)sb.st_size > (uint64_t)max_bytes) {
        close(fd);
        return moelm_fail(MOELM_ERR_FORMAT, "%s: file is %lld bytes, more than the %zu allowed", path,
                          (long long)sb.st_size, max_bytes);
    }
    if (cap > max_bytes) cap = max_bytes;
    char *buf = moelm_malloc(cap + 1);
    if (!buf) { close(fd); return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading", path); }
    size_t len = 0;
    for (;;) {
        if (len == cap) {
            if (regular) break;   /* read exactly the size fstat reported */
            if (cap >= max_bytes) {
                /* one more byte would exceed the limit: probe for EOF */
                char probe;
                ssize_t k = h_read(fd, &probe, 1);
                if (k == 0) break;
                moelm_free(buf);
                close(fd);
                if (k < 0) return moelm_fail(MOELM_ERR_IO, "%s: read error: %s", path, strerror(errno));
                return moelm_fail(MOELM_ERR_FORMAT, "%s: more than the %zu bytes allowed", path, max_bytes);
            }
            size_t nc = cap > max_bytes / 2 ? max_bytes : cap * 2;
            char *nb = moelm_realloc(buf, nc + 1);
            if (!nb) { moelm_free(buf); close(fd); return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading", path); }
            buf = nb;
            cap = nc;
        }
        ssize_t k = h_read(fd, buf + len, cap - len);
        if (k < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            moelm_free(buf);
            close(fd);
            return moelm_fail(MOELM_ERR_IO, "%s: read error: %s", path, strerror(e));
        }
        if (k == 0) {
            if (regular) {
                moelm_free(buf);
                close(fd);
                return moelm_fail(MOELM_ERR_IO, "%s: file shrank while being read (%zu of %zu bytes)", path,
                                  len, cap);
            }
            break;
        }
        len += (size_t)k;
    }
    close(fd);
    buf[len] = 0;
    *data = buf;
    *n = len;
    return MOELM_OK;
}

moelm_status file_read_all(const char *path, char **data, size_t *n) {
    return file_read_all_limit(path, data, n, SIZE_MAX - 1);
}

/* Reads exactly n bytes at offset off; fails on short reads (a file that shrank). */
moelm_status file_pread(int fd, const char *path, void *dst, uint64_t n, uint64_t off, const char *what) {
    char *p = dst;
    while (n > 0) {
        size_t chunk = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        ssize_t k = pread(fd, p, chunk, (off_t)off);
        if (k < 0) {
            if (errno == EINTR) continue;
            return moelm_fail(MOELM_ERR_IO, "%s: read error in %s: %s", path, what, strerror(errno));
        }
        if (k == 0)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: unexpected end of file in %s", path, what);
        p += k;
        n -= (uint64_t)k;
        off += (uint64_t)k;
    }
    return MOELM_OK;
}

/* ---- atomic writes ---------------------------------------------------------------------------- */

char *path_dirname(const char *path, char *buf, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) { snprintf(buf, cap, "."); return buf; }
    size_t len = (size_t)(slash - path);
    if (len == 0) len = 1;   /* "/name" -> "/" */
    if (len >= cap) len = cap - 1;
    memcpy(buf, path, len);
    buf[len] = 0;
    return buf;
}

static void fw_cleanup(FileWriter *w) {
    if (w->fd >= 0) { close(w->fd); w->fd = -1; }
    if (w->tmp) { unlink(w->tmp); moelm_free(w->tmp); w->tmp = NULL; }
    moelm_free(w->path);
    w->path = NULL;
}

/* Records the first error, aborts the write, and returns the error. */
static moelm_status fw_fail(FileWriter *w, moelm_status st) {
    w->st = st;
    fw_cleanup(w);
    return st;
}

moelm_status fw_open(FileWriter *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->fd = -1;
    size_t plen = strlen(path);
    w->path = moelm_strdup(path);
    w->tmp = moelm_malloc(plen + 32);
    if (!w->path || !w->tmp) {
        moelm_free(w->tmp);   /* not yet a file name: nothing to unlink */
        w->tmp = NULL;
        return fw_fail(w, moelm_fail_context(MOELM_ERR_NOMEM, "%s: writing", path));
    }
    snprintf(w->tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    w->fd = h_open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w->fd < 0) {
        moelm_status st = moelm_fail(MOELM_ERR_IO, "%s: cannot create temporary file %s: %s", path, w->tmp,
                                     strerror(errno));
        moelm_free(w->tmp);   /* nothing was created: do not unlink someone else's file */
        w->tmp = NULL;
        return fw_fail(w, st);
    }
    return MOELM_OK;
}

moelm_status fw_write(FileWriter *w, const void *data, size_t n) {
    if (w->st) return w->st;
    const char *p = data;
    while (n > 0) {
        /* write(2) may store fewer bytes than asked (disk full at the boundary, signals, pipes):
         * keep going until everything is stored or a call fails. */
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t k = h_write(w->fd, p, chunk);
        if (k < 0) {
            if (errno == EINTR) continue;
            return fw_fail(w, moelm_fail(MOELM_ERR_IO, "%s: write failed: %s", w->path, strerror(errno)));
        }
        if (k == 0)
            return fw_fail(w, moelm_fail(MOELM_ERR_IO, "%s: write stored no bytes (device full?)", w->path));
        p += k;
        n -= (size_t)k;
    }
    return MOELM_OK;
}

moelm_status fw_commit(FileWriter *w) {
    if (w->st) return w->st;
    if (h_fsync(w->fd) != 0)
        return fw_fail(w, moelm_fail(MOELM_ERR_IO, "%s: fsync failed: %s", w->path, strerror(errno)));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0)
        return fw_fail(w, moelm_fail(MOELM_ERR_IO, "%s: close failed: %s", w->path, strerror(errno)));
    if (h_rename(w->tmp, w->path) != 0)
        return fw_fail(w, moelm_fail(MOELM_ERR_IO, "%s: cannot rename %s into place: %s", w->path, w->tmp,
                                     strerror(errno)));
    moelm_free(w->tmp);   /* renamed: nothing left to remove */
    w->tmp = NULL;
    char dir[4096];
    moelm_status st = dir_sync(path_dirname(w->path, dir, sizeof dir));
    fw_cleanup(w);
    return st;
}

void fw_abort(FileWriter *w) { fw_cleanup(w); }

moelm_status file_write_atomic(const char *path, const void *data, size_t n) {
    FileWriter w;
    moelm_status st = fw_open(&w, path);
    if (!st) st = fw_write(&w, data, n);
    if (!st) st = fw_commit(&w);
    return st;
}

/* ---- directories ------------------------------------------------------------------------------ */

moelm_status file_rename(const char *from, const char *to) {
    if (h_rename(from, to) != 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot rename to %s: %s", from, to, strerror(errno));
    return MOELM_OK;
}

moelm_status file_symlink(const char *target, const char *path) {
    if (injected(OP_SYMLINK) || symlink(target, path) != 0)
        return moelm_fail(MOELM_ERR_IO, "%s: cannot create symlink to %s: %s", path, target, strerror(errno));
    return MOELM_OK;
}

moelm_status dir_sync(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open directory to sync it: %s", dir, strerror(errno));
    int rc = h_fsync(fd);
    int e = errno;
    close(fd);
    /* Some file systems do not support fsync on directories (EINVAL); nothing more can be done. */
    if (rc != 0 && e != EINVAL)
        return moelm_fail(MOELM_ERR_IO, "%s: directory fsync failed: %s", dir, strerror(e));
    return MOELM_OK;
}

int path_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

int path_is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

moelm_status dir_make(const char *path) {
    size_t n = strlen(path);
    if (n == 0) return moelm_fail(MOELM_ERR_IO, "cannot create a directory with an empty name");
    char *buf = moelm_strdup(path);
    if (!buf) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: creating directory", path);
    moelm_status st = MOELM_OK;
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        if (buf[i - 1] == '/') continue;   /* "a//b" */
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0755) != 0) {
            int e = errno;
            if (e != EEXIST) {
                st = moelm_fail(MOELM_ERR_IO, "%s: cannot create directory %s: %s", path, buf, strerror(e));
                break;
            }
            if (!path_is_dir(buf)) {
                st = moelm_fail(MOELM_ERR_IO, "%s: %s exists and is not a directory", path, buf);
                break;
            }
        }
        buf[i] = c;
    }
    moelm_free(buf);
    return st;
}

/* Removes parent/name, recursing into directories without following symbolic links. */
static moelm_status remove_at(int parent, const char *name, const char *top) {
    struct stat sb;
    if (fstatat(parent, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return MOELM_OK;
        return moelm_fail(MOELM_ERR_IO, "%s: cannot stat %s: %s", top, name, strerror(errno));
    }
    if (S_ISDIR(sb.st_mode)) {
        int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open %s: %s", top, name, strerror(errno));
        DIR *d = fdopendir(fd);
        if (!d) {
            int e = errno;
            close(fd);
            return moelm_fail(MOELM_ERR_IO, "%s: cannot list %s: %s", top, name, strerror(e));
        }
        moelm_status st = MOELM_OK;
        struct dirent *ent;
        while (!st && (ent = readdir(d)) != NULL) {
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
            st = remove_at(dirfd(d), ent->d_name, top);
        }
        closedir(d);
        if (st) return st;
        if (unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
            return moelm_fail(MOELM_ERR_IO, "%s: cannot remove directory %s: %s", top, name, strerror(errno));
        return MOELM_OK;
    }
    if (unlinkat(parent, name, 0) != 0 && errno != ENOENT)
        return moelm_fail(MOELM_ERR_IO, "%s: cannot remove %s: %s", top, name, strerror(errno));
    return MOELM_OK;
}

moelm_status dir_remove_tree(const char *path) {
    /* Guard against the obvious disasters: "", "/", ".", "..", "x/." and "x/..". */
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    const char *last = path + n;
    while (last > path && last[-1] != '/') last--;
    size_t ll = (size_t)(path + n - last);
    if (n == 0 || (n == 1 && path[0] == '/') || (ll == 1 && last[0] == '.') ||
        (ll == 2 && last[0] == '.' && last[1] == '.'))
        return moelm_fail(MOELM_ERR_IO, "%s: refusing to remove this path recursively", path);
    return remove_at(AT_FDCWD, path, path);
}
