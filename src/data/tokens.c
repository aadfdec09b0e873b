/* tokens.c: binary token files. See tokens.h for the layout and the error classes.
 *
 * Not here: tokenization itself (src/tokenizer/), deciding when a cache is stale (the caller passes
 * the expected vocab size and tokenizer hash; a mismatch is reported, never silently accepted).
 */
#define _POSIX_C_SOURCE 200809L
#include "data/tokens.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- little-endian helpers ----------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put_u64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

/* Converts n int32 values between host order and little-endian, in place (a no-op on LE hosts). */
static void ids_to_from_le(int *ids, size_t n) {
#if !HOST_LE
    for (size_t i = 0; i < n; i++) {
        unsigned char b[4];
        memcpy(b, &ids[i], 4);
        uint32_t v = get_u32(b);
        memcpy(&ids[i], &v, 4);
    }
#else
    (void)ids; (void)n;
#endif
}

/* ---- cache key -------------------------------------------------------------------------------- */

uint64_t tokens_cache_key(uint64_t tok_hash, const char *text, size_t n) {
    unsigned char b[32];
    put_u64(b, tok_hash);
    put_u64(b + 8, hash_fnv1a64(text, n));
    put_u64(b + 16, (uint64_t)n);
    put_u64(b + 24, TOKENS_ENCODER_REV);
    return hash_fnv1a64(b, sizeof b);
}

/* ---- range check ------------------------------------------------------------------------------ */

moelm_status tokens_check_range(const int *ids, size_t count, int vocab_size, const char *what) {
    for (size_t i = 0; i < count; i++)
        if (ids[i] < 0 || ids[i] >= vocab_size)
            return moelm_fail(MOELM_ERR_DATA, "%s: token id %d at position %zu out of range [0, %d)",
                              what ? what : "tokens", ids[i], i, vocab_size);
    return MOELM_OK;
}

/* ---- write ------------------------------------------------------------------------------------ */

static moelm_status write_all(FILE *f, const void *p, size_t n, const char *tmp) {
    if (n && fwrite(p, 1, n, f) != n)
        return moelm_fail(MOELM_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    return MOELM_OK;
}

/* fsync of the directory holding path, so the rename itself is durable. Best effort on filesystems
 * that refuse to open directories. */
static void fsync_parent_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

moelm_status tokens_write(const char *path, const int *ids, size_t count, int vocab_size, uint64_t tok_hash) {
    if (vocab_size <= 0)
        return moelm_fail(MOELM_ERR_DATA, "%s: cannot write tokens with vocab size %d", path, vocab_size);
    if (count && !ids)
        return moelm_fail(MOELM_ERR_DATA, "%s: no ids given for %zu tokens", path, count);
    moelm_status st = tokens_check_range(ids, count, vocab_size, path);
    if (st) return st;

    size_t plen = strlen(path);
    char *tmp = moelm_malloc(plen + 5);
    if (!tmp) return MOELM_ERR_NOMEM;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    FILE *f = fopen(tmp, "wb");
    if (!f) {
        st = moelm_fail(MOELM_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        moelm_free(tmp);
        return st;
    }

    /* CRC over the ids as stored (little-endian); in chunks so big-endian hosts convert a copy. */
    uint32_t crc = 0;
    int chunk[4096];
    for (size_t i = 0; i < count; i += 4096) {
        size_t m = count - i < 4096 ? count - i : 4096;
        memcpy(chunk, ids + i, m * 4);
        ids_to_from_le(chunk, m);
        crc = crc32_update(crc, chunk, m * 4);
    }

    unsigned char hdr[TOKENS_HEADER_BYTES];
    memcpy(hdr, TOKENS_MAGIC, 8);
    put_u32(hdr + 8, TOKENS_VERSION);
    put_u32(hdr + 12, (uint32_t)vocab_size);
    put_u64(hdr + 16, tok_hash);
    put_u64(hdr + 24, (uint64_t)count);
    put_u32(hdr + 32, crc);

    st = write_all(f, hdr, sizeof hdr, tmp);
    for (size_t i = 0; !st && i < count; i += 4096) {
        size_t m = count - i < 4096 ? count - i : 4096;
        memcpy(chunk, ids + i, m * 4);
        ids_to_from_le(chunk, m);
        st = write_all(f, chunk, m * 4, tmp);
    }
    if (!st && fflush(f) != 0) st = moelm_fail(MOELM_ERR_IO, "%s: flush failed: %s", tmp, strerror(errno));
    if (!st && fsync(fileno(f)) != 0) st = moelm_fail(MOELM_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && !st) st = moelm_fail(MOELM_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (!st && rename(tmp, path) != 0)
        st = moelm_fail(MOELM_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st) remove(tmp);
    else fsync_parent_dir(path);
    moelm_free(tmp);
    return st;
}

/* ---- read ------------------------------------------------------------------------------------- */

moelm_status tokens_read(const char *path, int **ids_out, size_t *count_out, int vocab_size, uint64_t tok_hash) {
    *ids_out = NULL;
    *count_out = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    moelm_status st = MOELM_OK;
    int *ids = NULL;
    uint64_t count = 0;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        st = moelm_fail(MOELM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = moelm_fail(MOELM_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    unsigned char hdr[TOKENS_HEADER_BYTES];
    if (fsize < TOKENS_HEADER_BYTES) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: truncated token file: %llu bytes, shorter than the %d-byte header",
                        path, (unsigned long long)fsize, TOKENS_HEADER_BYTES);
        goto done;
    }
    if (fread(hdr, 1, sizeof hdr, f) != sizeof hdr) {
        st = moelm_fail(MOELM_ERR_IO, "%s: cannot read the header", path);
        goto done;
    }
    if (memcmp(hdr, TOKENS_MAGIC, 8) != 0) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: not a moelm token file (bad magic)", path);
        goto done;
    }
    uint32_t version = get_u32(hdr + 8), fvocab = get_u32(hdr + 12), fcrc = get_u32(hdr + 32);
    uint64_t fhash = get_u64(hdr + 16);
    count = get_u64(hdr + 24);
    if (version != TOKENS_VERSION) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: unsupported token file version %u (this build reads version %u)",
                        path, version, TOKENS_VERSION);
        goto done;
    }
    if (vocab_size <= 0 || fvocab != (uint32_t)vocab_size) {
        st = moelm_fail(MOELM_ERR_DATA, "%s: token file has vocab size %u but the tokenizer has %d; "
                        "it was built with another tokenizer, delete it to rebuild", path, fvocab, vocab_size);
        goto done;
    }
    if (fhash != tok_hash) {
        st = moelm_fail(MOELM_ERR_DATA, "%s: token file was built by a different tokenizer (hash %016llx, "
                        "expected %016llx); delete it to rebuild", path,
                        (unsigned long long)fhash, (unsigned long long)tok_hash);
        goto done;
    }
    uint64_t payload = fsize - TOKENS_HEADER_BYTES;
    if (count > payload / 4 || count * 4 != payload || count > SIZE_MAX / sizeof(int) - 1) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: header says %llu tokens but the file holds %llu bytes of ids "
                        "(truncated or corrupt)", path, (unsigned long long)count, (unsigned long long)payload);
        goto done;
    }
    ids = moelm_malloc((size_t)(count ? count : 1) * sizeof(int));
    if (!ids) {
        st = moelm_fail_context(MOELM_ERR_NOMEM, "%s", path);
        goto done;
    }
    if (count && fread(ids, 4, (size_t)count, f) != (size_t)count) {
        st = moelm_fail(MOELM_ERR_IO, "%s: short read of %llu token ids", path, (unsigned long long)count);
        goto done;
    }
    uint32_t crc = crc32_update(0, ids, (size_t)count * 4);
    if (crc != fcrc) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: token ids fail their checksum (crc32 %08x, header says %08x); "
                        "the file is corrupt, delete it to rebuild", path, crc, fcrc);
        goto done;
    }
    ids_to_from_le(ids, (size_t)count);
    st = tokens_check_range(ids, (size_t)count, vocab_size, path);
done:
    fclose(f);
    if (st) {
        moelm_free(ids);
        return st;
    }
    *ids_out = ids;
    *count_out = (size_t)count;
    return MOELM_OK;
}
