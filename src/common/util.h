/* util.h: the few things every moelm module shares.
 *
 * - Status codes and the last-error message (environmental failures: I/O, bad files, bad config).
 * - CHECK(): an always-on check for broken programmer contracts (shape mismatch, index out of range);
 *   it prints the expression, file and line and aborts. It never validates file contents: readers
 *   return a status instead.
 * - One allocation function, so tests can count bytes and make the Nth allocation fail.
 * - A small, serialisable random number generator (splitmix64 state, one uint64).
 *
 * Not here: anything that knows about tensors or models.
 */
#ifndef MOELM_UTIL_H
#define MOELM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include "moelm.h"

/* ---- errors ---------------------------------------------------------------------------------- */

/* Sets the thread's last-error message (printf-style) and returns st, so callers write
 *     return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));      */
moelm_status moelm_fail(moelm_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the current last-error message with a context, e.g. the file being loaded. */
moelm_status moelm_fail_context(moelm_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void moelm_check_failed(const char *expr, const char *file, int line) __attribute__((noreturn));
#define CHECK(cond) do { if (!(cond)) moelm_check_failed(#cond, __FILE__, __LINE__); } while (0)

/* ---- memory ---------------------------------------------------------------------------------- */

/* All heap memory of the library goes through these. moelm_malloc returns NULL (and sets the last
 * error) on failure; it never aborts. Memory is 64-byte aligned. */
void *moelm_malloc(size_t bytes);
void *moelm_calloc(size_t count, size_t size);
void *moelm_realloc(void *p, size_t bytes);
void moelm_free(void *p);
char *moelm_strdup(const char *s);

/* Test hooks: bytes currently allocated, and make the n-th allocation from now fail (0 = off). */
size_t moelm_alloc_live_bytes(void);
void moelm_alloc_fail_after(long n);

/* ---- random numbers ---------------------------------------------------------------------------- */

typedef struct { uint64_t s; } Rng;   /* splitmix64; the whole state is s, saved in checkpoints */

void rng_seed(Rng *r, uint64_t seed);
uint64_t rng_u64(Rng *r);
uint32_t rng_u32(Rng *r);
float rng_uniform(Rng *r);                 /* [0, 1) with 24 random bits */
float rng_normal(Rng *r);                  /* standard normal, Box-Muller */
uint32_t rng_below(Rng *r, uint32_t n);    /* uniform in [0, n), n > 0, no modulo bias */

/* Counter-based draws: value i of the stream `key` is a hash of (key, i), so any value is computed
 * alone, in any order, by any thread or rank. Training draws these keyed by where a value is used
 * (the forward pass, the site in the model, the global row and element), never by who draws it:
 * one process and any split over ranks or threads draw the same values (docs/SCALING.md).
 * rng_at(key, i) = mix(key ^ mix((i + 1) G)), mix splitmix64's finaliser (a bijection): the inner hash
 * makes neighbouring counters differ in about half their bits before the key enters, so streams of
 * different keys do not overlap shifted (as splitmix64 streams of keys a multiple of G apart do). */
static inline uint64_t rng_mix64(uint64_t z) {   /* splitmix64's finaliser: every input bit reaches every output bit */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t rng_at(uint64_t key, uint64_t i) {
    return rng_mix64(key ^ rng_mix64((i + 1) * 0x9E3779B97F4A7C15ull));
}
/* [0, 1) with the top 24 bits of rng_at */
static inline float rng_at_uniform(uint64_t key, uint64_t i) {
    return (float)(rng_at(key, i) >> 40) * (1.0f / 16777216.0f);
}
/* the key of a sub-stream (site `site` of a pass keyed `key`) */
static inline uint64_t rng_key(uint64_t key, uint64_t site) { return rng_at(key, site); }

/* ---- small helpers ----------------------------------------------------------------------------- */

double time_now(void);                      /* monotonic seconds */
uint32_t crc32_update(uint32_t crc, const void *data, size_t n);   /* IEEE CRC-32 (zlib's), 8 bytes a step */
uint32_t crc32_update_ref(uint32_t crc, const void *data, size_t n);   /* the same, a byte a step */
uint64_t hash_fnv1a64(const void *data, size_t n);

/* "Did you mean": the edit distance of a and b (insertions, deletions, substitutions and swaps of
 * two neighbours, each one edit: Damerau's, restricted), letters compared case-blind (names are
 * short: at most 63 characters count); str_nearer keeps in *best the candidate nearest to s so far
 * (*dist its distance; start it at 1 << 30); str_near_miss says whether a distance d from s is a
 * typo rather than another word: at most a third of s's letters, and 1 for short names. */
int str_edit_distance(const char *a, const char *b);
void str_nearer(const char *s, const char *candidate, const char **best, int *dist);
int str_near_miss(const char *s, int d);
/* The name of the NULL-terminated list nearest to s when it is a near miss (str_near_miss), else NULL. */
const char *str_nearest(const char *s, const char *const *names);

#endif
