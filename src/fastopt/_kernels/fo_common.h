/* Shared by every kernel family through _common.pxi: OpenMP's thread count, the build's flags,
 * the AVX-512 test and the exported thread-count controls (threadpoolctl). */
#ifndef FO_COMMON_H
#define FO_COMMON_H

#ifdef _OPENMP
#include <omp.h>
static int fo_max_threads(void) { return omp_get_max_threads(); }
#else
static int fo_max_threads(void) { return 1; }
#endif

#ifndef FASTOPT_BUILD_FLAGS
#define FASTOPT_BUILD_FLAGS "unknown"
#endif

static int fo_cpu_has_avx512(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512cd");
#else
    return 0;
#endif
}

/* The thread count of this family's kernels, exported (not static) so that threadpoolctl
 * can read and limit it through the controller fastopt registers (fastopt._threads). */
static int fo_num_threads = 1;
/* at most the pool's 255 helpers and the caller (fastopt.set_num_threads refuses more; an
   OpenMP team of a million threads had crashed a step) */
enum { FO_MAX_THREADS = 256 };
int fastopt_get_num_threads(void) { return fo_num_threads; }
void fastopt_set_num_threads(int n) {
    fo_num_threads = n < 1 ? 1 : n > FO_MAX_THREADS ? FO_MAX_THREADS : n;
}

#endif /* FO_COMMON_H */
