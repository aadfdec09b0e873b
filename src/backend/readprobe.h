/* readprobe.h: the plainest streaming read of memory, the yardstick of `moelm bench`'s bandwidth figures.
 * Implemented in gemm.c.
 */
#ifndef MOELM_READPROBE_H
#define MOELM_READPROBE_H

#include <stddef.h>
#include <stdint.h>

/* The words of a[0..n) (whole blocks of 64) folded by XOR, read front to back with the widest loads:
 * the plainest streaming read, against which `moelm bench` measures generation; on the calling thread. */
uint32_t read_words(const uint32_t *a, size_t n);

#endif
