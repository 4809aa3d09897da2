/* Deterministic synthetic calibration activations shared by the MPI Hessian
 * check program (tests/mpi/mpi_hessian_check.c) and its cmocka driver
 * (tests/integration/test_mpi_hessian.c). Sequence s of the calibration set is a
 * function of (seed, s) only, so any rank can produce any chunk by itself, like
 * a shard of real activations. Outlier channels and every fourth sequence
 * scaled by 2^20 give the float64 sums a dynamic range wider than 53 bits, so
 * the order of additions shows in the bits (float32 chunk partials of similar
 * size would add exactly in any order and prove nothing). */
#ifndef MPI_HESSIAN_DATA_H
#define MPI_HESSIAN_DATA_H

#include <math.h>
#include <stdint.h>

static inline uint64_t mhd_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* X (seq_len, cols) for calibration sequence `seq`. */
static inline void mhd_sequence(uint64_t seed, int64_t seq, int64_t seq_len, int64_t cols, float *X)
{
    uint64_t st = seed ^ ((uint64_t)seq * 0xD1B54A32D192ED03ULL);
    const float scale = seq % 4 == 0 ? 1048576.0f : 1.0f;
    for (int64_t t = 0; t < seq_len; t++)
        for (int64_t j = 0; j < cols; j++) {
            double u = (double)(mhd_next(&st) >> 11) * 0x1.0p-53;
            float v = (float)(2.0 * u - 1.0);
            if (j % 7 == 3)
                v *= 300.0f + (float)(seq % 5) * 77.0f; /* outlier channels */
            X[t * cols + j] = v * scale;
        }
}

#endif
