/* checksum.c: writing and verifying a directory's CHECKSUMS file. See checksum.h. */
#include "io/checksum.h"
#include "io/fileio.h"
#include "io/json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECKSUMS_MAGIC "# moelm CHECKSUMS v1: crc32 size name"
#define CHUNK (1u << 20)

moelm_status file_crc32(const char *path, uint32_t *crc, uint64_t *size, uint64_t max_bytes) {
    *crc = 0;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block the open */
    if (fd < 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return moelm_fail(MOELM_ERR_FORMAT, "%s: not a regular file", path);
    }
    unsigned char *buf = moelm_malloc(CHUNK);
    if (!buf) { close(fd); return moelm_fail_context(MOELM_ERR_NOMEM, "%s: checksumming", path); }
    uint32_t c = 0;
    uint64_t total = 0;
    moelm_status st = MOELM_OK;
    for (;;) {
        ssize_t k = read(fd, buf, CHUNK);
        if (k < 0) {
            if (errno == EINTR) continue;
            st = moelm_fail(MOELM_ERR_IO, "%s: read error: %s", path, strerror(errno));
            break;
        }
        if (k == 0) break;
        c = crc32_update(c, buf, (size_t)k);
        total += (uint64_t)k;
        if (total > max_bytes) {
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: more than the %llu bytes expected (the file is growing?)", path,
                            (unsigned long long)max_bytes);
            break;
        }
    }
    moelm_free(buf);
    close(fd);
    if (!st) { *crc = c; *size = total; }
    return st;
}

/* A listed name must stay inside the directory and fit on one line. */
static int name_ok(const char *name) {
    if (!name[0] || name[0] == '/' || strchr(name, '\n') || strchr(name, '\r')) return 0;
    const char *p = name;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || (len == 2 && p[0] == '.' && p[1] == '.')) return 0;
        p += len;
        if (*p == '/') p++;
    }
    return 1;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *s = moelm_malloc(n);
    if (s) snprintf(s, n, "%s/%s", dir, name);
    return s;
}

moelm_status checksums_write(const char *dir, const char *const *files, int n) {
    StrBuf sb = { 0 };
    sb_printf(&sb, "%s\n", CHECKSUMS_MAGIC);
    moelm_status st = MOELM_OK;
    for (int i = 0; i < n && !st; i++) {
        if (!name_ok(files[i])) {
            st = moelm_fail(MOELM_ERR_ARG, "%s: cannot list \"%s\" in %s (names must be relative, without "
                            "\"..\" or newlines)", dir, files[i], CHECKSUMS_NAME);
            break;
        }
        char *path = join(dir, files[i]);
        if (!path) { st = moelm_fail_context(MOELM_ERR_NOMEM, "%s: checksums", dir); break; }
        uint32_t crc;
        uint64_t size;
        st = file_crc32(path, &crc, &size, UINT64_MAX);
        moelm_free(path);
        if (!st) sb_printf(&sb, "%08x %llu %s\n", crc, (unsigned long long)size, files[i]);
    }
    if (!st && sb.failed) st = moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory writing %s", dir, CHECKSUMS_NAME);
    if (!st) {
        char *path = join(dir, CHECKSUMS_NAME);
        if (!path) st = moelm_fail_context(MOELM_ERR_NOMEM, "%s: checksums", dir);
        else { st = file_write_atomic(path, sb.buf, sb.len); moelm_free(path); }
    }
    sb_free(&sb);
    return st;
}

/* MOELM_OK and *size when path is a regular file (a symbolic link is not followed), else a message. */
static moelm_status lstat_regular(const char *path, int listed, uint64_t *size) {
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        if (errno == ENOENT) return moelm_fail(MOELM_ERR_IO, "%s: %s", path, listed ? "listed in " CHECKSUMS_NAME " but missing" : "missing");
        return moelm_fail(MOELM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (S_ISLNK(sb.st_mode))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: is a symbolic link (a checkpoint holds regular files only)", path);
    if (!S_ISREG(sb.st_mode))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: not a regular file (a FIFO, device or directory)", path);
    *size = (uint64_t)sb.st_size;
    return MOELM_OK;
}

moelm_status checksums_verify(const char *dir, const char *const *required, int nreq) {
    char *cpath = join(dir, CHECKSUMS_NAME);
    if (!cpath) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: checksums", dir);
    char *text = NULL;
    size_t n = 0;
    uint64_t csize;
    moelm_status st = lstat_regular(cpath, 0, &csize);
    if (!st) st = file_read_all_limit(cpath, &text, &n, 16u << 20);
    if (st) { moelm_free(cpath); return st; }
    size_t mlen = strlen(CHECKSUMS_MAGIC);
    if (n < mlen + 1 || memcmp(text, CHECKSUMS_MAGIC, mlen) != 0 || text[mlen] != '\n') {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: not a moelm CHECKSUMS file (first line must be \"%s\")", cpath,
                        CHECKSUMS_MAGIC);
        goto done;
    }
    if (n == 0 || text[n - 1] != '\n') {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: last line is not terminated (truncated file?)", cpath);
        goto done;
    }
    if (memchr(text, 0, n)) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: contains a NUL byte", cpath);
        goto done;
    }
    /* every required file is listed: a line left out would let that file's bytes through unchecked */
    for (int r = 0; r < nreq && !st; r++) {
        size_t rl = strlen(required[r]);
        int found = 0;
        for (const char *p = text + mlen + 1; !found && p < text + n;) {
            const char *nl = memchr(p, '\n', (size_t)(text + n - p));
            const char *sp = memrchr(p, ' ', (size_t)(nl - p));
            found = sp && (size_t)(nl - sp - 1) == rl && !memcmp(sp + 1, required[r], rl);
            p = nl + 1;
        }
        if (!found) st = moelm_fail(MOELM_ERR_FORMAT, "%s: does not list %s (every file of a checkpoint must be)", cpath,
                                    required[r]);
    }
    size_t pos = mlen + 1;
    int line = 1;
    while (pos < n && !st) {
        line++;
        char *ln = text + pos;
        char *nl = memchr(ln, '\n', n - pos);   /* exists: the text ends with '\n' */
        *nl = 0;
        pos = (size_t)(nl - text) + 1;
        /* "xxxxxxxx <size> <name>" */
        char *p = ln;
        uint32_t want_crc = 0;
        int ok = 1;
        for (int i = 0; i < 8 && ok; i++) {
            char c = p[i];
            unsigned v = (c >= '0' && c <= '9') ? (unsigned)(c - '0') : (c >= 'a' && c <= 'f') ? (unsigned)(c - 'a' + 10) : 16;
            if (v == 16) ok = 0;
            else want_crc = (want_crc << 4) | v;
        }
        if (ok && p[8] != ' ') ok = 0;
        uint64_t want_size = 0;
        char *q = p + 9;
        if (ok && !(*q >= '0' && *q <= '9')) ok = 0;
        while (ok && *q >= '0' && *q <= '9') {
            if (want_size > (UINT64_MAX - 9) / 10) { ok = 0; break; }
            want_size = want_size * 10 + (uint64_t)(*q - '0');
            q++;
        }
        if (ok && *q != ' ') ok = 0;
        const char *name = ok ? q + 1 : "";
        if (ok && !name_ok(name)) ok = 0;
        if (!ok) {
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: line %d is malformed (expected \"crc32hex size name\")", cpath,
                            line);
            break;
        }
        char *fpath = join(dir, name);
        if (!fpath) { st = moelm_fail_context(MOELM_ERR_NOMEM, "%s: checksums", dir); break; }
        uint32_t crc;
        uint64_t size;
        if ((st = lstat_regular(fpath, 1, &size)) == MOELM_OK) {
            /* the size first, from lstat: a replaced file is refused without reading it */
            if (size == want_size) st = file_crc32(fpath, &crc, &size, want_size);
            if (!st && size != want_size)
                st = moelm_fail(MOELM_ERR_FORMAT, "%s: size is %llu bytes, %s says %llu (truncated or replaced)",
                                fpath, (unsigned long long)size, CHECKSUMS_NAME, (unsigned long long)want_size);
            else if (!st && crc != want_crc)
                st = moelm_fail(MOELM_ERR_FORMAT, "%s: checksum mismatch (crc32 %08x, %s says %08x): the file is "
                                "corrupt", fpath, crc, CHECKSUMS_NAME, want_crc);
        }
        moelm_free(fpath);
    }
done:
    moelm_free(text);
    moelm_free(cpath);
    return st;
}
