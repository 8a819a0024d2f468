/* Shared by every kernel family through _common.pxi: OpenMP's thread count, the build's flags,
 * the AVX-512 tests and the exported thread-count controls (threadpoolctl). */
#ifndef FO_COMMON_H
#define FO_COMMON_H

#ifdef _OPENMP
#include <omp.h>
static int fo_max_threads(void) { return omp_get_max_threads(); }
#else
static int fo_max_threads(void) { return 1; }
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
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

/* Whether 512-bit vectors beat 256-bit ones in the optimizer steps: on AMD Zen 5 (family 0x1A)
 * and later, whose divider and square root are 512 bits wide (Adam 1e5 float32, one thread:
 * 0.25 against 0.32 ns/element; RMSprop 0.17 against 0.29), and on Zen 4 (family 0x19, whose
 * AVX-512 CPUs are all Zen 4): it splits each 512-bit operation in two, yet the 256-bit build,
 * with part of its roots on the FMA units (FO_ROOT_ON_FMA, for Intel's divider), ran slowest
 * of the three there. `python bench/builds.py` on an EPYC Zen 4 VM (2026-12-06, model 0x11),
 * float32, medians of 7 rounds, ns/element, 512-bit / 256-bit / AVX2 build, one thread, 1e5:
 * Adam 0.387 / 0.416 / 0.445, RMSprop 0.333 / 0.364 / 0.364, Adagrad 0.304 / 0.362 / 0.311,
 * Adadelta 0.507 / 0.638 / 0.501, NAdam 0.366 / 0.522 / 0.369, RAdam 0.320 / 0.441 / 0.336,
 * SGD 0.166 / 0.163 / 0.164; 1e6: Adam 0.541 / 0.609 / 0.624, Adadelta 0.489 / 0.704 / 0.538;
 * two threads, 1e5: Adam 0.206 / 0.231 / 0.245, NAdam 0.231 / 0.375 / 0.281; arrays 0-48
 * bytes past a line (--offsets, NumPy's) the same order. (An earlier Zen 4 VM's 512-bit steps
 * had run 1.2-2.7x slower than its 256-bit ones, on NumPy's unaligned arrays, before the
 * optimizers placed their state on lines and the 256-bit build took roots on the FMA units.)
 * Not on an Intel Xeon with AVX-512 (family 6, model 207): the steps bound by division and
 * square root ran at the same speed per element either way (0.97-1.04x; Adam 1e5 0.56
 * ns/element). Other CPUs keep the 256-bit build too, which matches the AVX2 one. */
static int fo_cpu_prefers_512bit_steps(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    unsigned int eax, ebx, ecx, edx, family;
    if (!fo_cpu_has_avx512() || !__get_cpuid(0, &eax, &ebx, &ecx, &edx)
            || !(ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163)   /* AuthenticAMD */
            || !__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    family = (eax >> 8) & 0xf;
    if (family == 0xf)
        family += (eax >> 20) & 0xff;
    return family >= 0x19;
#else
    return 0;
#endif
}

/* Whether the element-wise driver's software prefetches pay (_elementwise.pxi): on Intel CPUs,
 * where they were measured to (an Intel Xeon VM, Adam float32 1e7, 2 threads: 4.5 -> 3.4 ms),
 * and not elsewhere: on an EPYC Zen 4 VM (2026-12-06) its hardware prefetchers kept up and the
 * prefetches cost (Adam float32, one thread, ns/element, with / without: 1e6 0.395-0.399 /
 * 0.287-0.338, 1e7 0.636-0.673 / 0.556-0.559; SGD 1e6 0.123-0.129 / 0.085-0.108; two threads
 * 1e6 0.226-0.237 / 0.149-0.162; fastopt.torch bfloat16 Adam 1e7, ms, one thread 8.6-9.9 /
 * 7.9, two threads mixed: 5e6 2.4-2.7 / 3.3-4.1, 1e7 7.0-7.3 / 5.9-6.2). Not measured on
 * other AMD CPUs: they go without, as Zen 4. */
static int fo_cpu_wants_software_prefetch(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid(0, &eax, &ebx, &ecx, &edx)
        && ebx == 0x756e6547 && edx == 0x49656e69 && ecx == 0x6c65746e;   /* GenuineIntel */
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
