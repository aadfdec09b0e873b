/* util.c: errors, counted allocation, RNG, CRC-32. See util.h. */
#define _POSIX_C_SOURCE 200809L
#include "util.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* ---- errors ---------------------------------------------------------------------------------- */

static _Thread_local char g_err[1024];

const char *moelm_last_error(void) { return g_err[0] ? g_err : "no error"; }

/* A message stays one line whatever it quotes (a JSON key may hold an escaped newline): control
 * characters become '?'. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

moelm_status moelm_fail(moelm_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    one_line(g_err);
    return st;
}

moelm_status moelm_fail_context(moelm_status st, const char *fmt, ...) {
    char prefix[512], old[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    size_t pl = strlen(prefix), ol = strlen(old);
    if (pl > sizeof g_err - 3) pl = sizeof g_err - 3;
    if (ol > sizeof g_err - 3 - pl) ol = sizeof g_err - 3 - pl;
    memcpy(g_err, prefix, pl);
    memcpy(g_err + pl, ": ", 2);
    memcpy(g_err + pl + 2, old, ol);
    g_err[pl + 2 + ol] = '\0';
    one_line(g_err);
    return st;
}

void moelm_check_failed(const char *expr, const char *file, int line) {
    fprintf(stderr, "moelm: internal check failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

/* ---- memory ---------------------------------------------------------------------------------- */

/* A 64-byte header in front of every block records its size, so live bytes can be counted and
 * the user pointer stays 64-byte aligned. */
#define HDR 64
/* Blocks of HUGE_MIN bytes and more (the parameter, gradient, optimizer and activation arenas) start on
 * a 2 MiB boundary and ask for transparent huge pages before their first touch: a token of generation
 * streams every weight (tens of MB: thousands of 4 KiB pages, more than the TLB holds), a training step
 * every arena, and the Zen 5 VM's page faults were slow (PERF-NOTES: 11 us per 4 KiB page).
 * MOELM_HUGE_PAGES=0 asks for none (and refuses them where THP is "always"). Where the host takes back
 * the memory a guest frees (free page reporting), a huge page's first touch can cost ~15x what 4 KiB
 * pages cost (bench/RESULTS.md: 8.7 against 0.5 ms a MB on the AMD EPYC VM, 0.1 where the memory is
 * still backed): short runs there (the tests, an eval) start faster without them, while a long run
 * steps 3-5% faster with them. */
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_MIN ((size_t)4 << 20)
static size_t g_live;

static int huge_pages_wanted(void) {
    const char *e = getenv("MOELM_HUGE_PAGES");   /* asked for blocks of HUGE_MIN and more only */
    return !(e && !strcmp(e, "0"));
}
static long g_fail_after;

size_t moelm_alloc_live_bytes(void) { return g_live; }
void moelm_alloc_fail_after(long n) { g_fail_after = n; }

void *moelm_malloc(size_t bytes) {
    if (g_fail_after > 0 && --g_fail_after == 0) {
        moelm_fail(MOELM_ERR_NOMEM, "out of memory (injected failure) allocating %zu bytes", bytes);
        return NULL;
    }
    void *p = NULL;
    int big = bytes >= HUGE_MIN, huge = big && huge_pages_wanted();
    size_t align = huge ? HUGE_PAGE : big ? 4096 : 64;   /* madvise takes a page boundary */
    if (bytes > SIZE_MAX - HUGE_PAGE || posix_memalign(&p, align, bytes + HDR) != 0) {
        moelm_fail(MOELM_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    if (big) madvise(p, bytes + HDR, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);   /* a hint, not a promise */
#endif
    *(size_t *)p = bytes;
#pragma omp atomic
    g_live += bytes;
    return (char *)p + HDR;
}

void *moelm_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) {
        moelm_fail(MOELM_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = moelm_malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void *moelm_realloc(void *p, size_t bytes) {
    if (!p) return moelm_malloc(bytes);
    size_t old = *(size_t *)((char *)p - HDR);
    void *q = moelm_malloc(bytes);
    if (!q) return NULL;
    memcpy(q, p, old < bytes ? old : bytes);
    moelm_free(p);
    return q;
}

void moelm_free(void *p) {
    if (!p) return;
    char *base = (char *)p - HDR;
#pragma omp atomic
    g_live -= *(size_t *)base;
    free(base);
}

char *moelm_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = moelm_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- random numbers ---------------------------------------------------------------------------- */

void rng_seed(Rng *r, uint64_t seed) { r->s = seed ^ 0x9E3779B97F4A7C15ull; }

uint64_t rng_u64(Rng *r) {
    /* splitmix64 (Steele, Lea, Flood 2014): a Weyl sequence passed through a bijective mixer */
    return rng_mix64(r->s += 0x9E3779B97F4A7C15ull);
}

uint32_t rng_u32(Rng *r) { return (uint32_t)(rng_u64(r) >> 32); }

float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

float rng_normal(Rng *r) {
    float u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

uint32_t rng_below(Rng *r, uint32_t n) {
    CHECK(n > 0);
    /* Lemire's multiply-shift with rejection of the biased low range */
    uint64_t m = (uint64_t)rng_u32(r) * n;
    uint32_t lo = (uint32_t)m;
    if (lo < n) {
        uint32_t t = (uint32_t)(-n) % n;
        while (lo < t) { m = (uint64_t)rng_u32(r) * n; lo = (uint32_t)m; }
    }
    return (uint32_t)(m >> 32);
}

/* ---- small helpers ----------------------------------------------------------------------------- */

double time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CRC-32 tables: crc_table[0] is the bytewise one; crc_table[k][b] is the CRC of byte b followed by
 * k zero bytes, so that eight bytes fold in with eight lookups (slicing-by-8, ~5x the bytewise loop). */
static uint32_t crc_table[8][256];
static int crc_ready;

static void crc_tables_init(void) {   /* benign race: every thread writes the same values */
    if (crc_ready) return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++) crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xFF];
    crc_ready = 1;
}

uint32_t crc32_update_ref(uint32_t crc, const void *data, size_t n) {
    crc_tables_init();
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc_table[0][(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint32_t crc32_update(uint32_t crc, const void *data, size_t n) {
    crc_tables_init();
    const unsigned char *p = data;
    crc = ~crc;
    for (; n >= 8; p += 8, n -= 8) {   /* the bytes read as little-endian words whatever the host */
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
              crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
              crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    }
    for (; n > 0; p++, n--) crc = crc_table[0][(crc ^ *p) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint64_t hash_fnv1a64(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}

int str_edit_distance(const char *a, const char *b) {
    int d[64][64], m = (int)strlen(a), n = (int)strlen(b);
    if (m > 63) m = 63;
    if (n > 63) n = 63;
    for (int i = 0; i <= m; i++) d[i][0] = i;
    for (int j = 0; j <= n; j++) d[0][j] = j;
    for (int i = 1; i <= m; i++) {
        for (int j = 1; j <= n; j++) {
            int x = tolower((unsigned char)a[i - 1]), y = tolower((unsigned char)b[j - 1]);
            int best = d[i - 1][j - 1] + (x != y);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && x == tolower((unsigned char)b[j - 2]) && tolower((unsigned char)a[i - 2]) == y &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;   /* two neighbours swapped: one typo */
            d[i][j] = best;
        }
    }
    return d[m][n];
}

void str_nearer(const char *s, const char *candidate, const char **best, int *dist) {
    int d = str_edit_distance(s, candidate);
    if (d < *dist) {
        *dist = d;
        *best = candidate;
    }
}

int str_near_miss(const char *s, int d) {
    int len = (int)strlen(s), limit = len / 3 > 1 ? len / 3 : 1;
    return d <= limit;
}

const char *str_nearest(const char *s, const char *const *names) {
    const char *best = NULL;
    int dist = 1 << 30;
    for (int i = 0; names[i]; i++) str_nearer(s, names[i], &best, &dist);
    return best && str_near_miss(s, dist) ? best : NULL;
}
