/* test.h: the tiny test harness every tests/test_*.c uses.
 *
 *   TEST(name) { ... EXPECT(cond); EXPECT_NEAR(a, b, tol); ... }
 *   int main(void) { RUN(name); ...; return test_summary("module"); }
 *
 * Each failed expectation prints file:line and the values. test_summary prints
 * "module: N passed, N failed" and returns non-zero when anything failed; tests/run.sh adds the
 * counts of all binaries and prints the suite's closing line.
 */
#ifndef MOELM_TEST_H
#define MOELM_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "backend/runtime.h"
#include "common/util.h"

static int t_passed, t_failed, t_cur_failed;

#define TEST(name) static void name(void)
/* A test that took 0.25 s or more of wall time says so after its name (where the suite's time goes). */
#define RUN(name) do { \
        t_cur_failed = 0; double _t0 = time_now(); name(); double _dt = time_now() - _t0; \
        if (t_cur_failed) { t_failed++; printf("FAIL %s", #name); } \
        else { t_passed++; printf("ok   %s", #name); } \
        if (_dt >= 0.25) printf(" (%.2f s)", _dt); \
        printf("\n"); fflush(stdout); \
    } while (0)
#define EXPECT(cond) do { if (!(cond)) { t_cur_failed = 1; \
        printf("  %s:%d: expected %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define EXPECT_MSG(cond, ...) do { if (!(cond)) { t_cur_failed = 1; \
        printf("  %s:%d: expected %s: ", __FILE__, __LINE__, #cond); printf(__VA_ARGS__); printf("\n"); } } while (0)
#define EXPECT_NEAR(a, b, tol) do { double _a = (a), _b = (b); \
        if (!(fabs(_a - _b) <= (tol)) ) { t_cur_failed = 1; \
        printf("  %s:%d: %s = %.9g, %s = %.9g, |diff| %.3g > %.3g\n", __FILE__, __LINE__, #a, _a, #b, _b, \
               fabs(_a - _b), (double)(tol)); } } while (0)

/* Every test binary starts at one thread (test_one_thread() first in main): tiny shapes gain nothing
 * from a second thread, and its waits at every parallel region's barrier cost whole seconds when the
 * cores are shared (test_model: ~70 s at two threads, 0.3 s at one). The tests of threaded paths set
 * their own counts (backend_set_threads, omp_set_num_threads) around what they compare. */
static void test_one_thread(void) { backend_set_threads(1); }

/* Writes a test's fixture file: n bytes of data to path (a failure to write it stops the binary). */
static inline void test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f);
    if (n) CHECK(fwrite(data, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

static int test_summary(const char *module) {
    printf("%s: %d passed, %d failed\n", module, t_passed, t_failed);
    return t_failed ? 1 : 0;
}

#endif
