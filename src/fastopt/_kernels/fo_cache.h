/* The per-core L2 cache size, which sets the block sizes of the batch-norm sweeps (layers.pyx);
 * included by layers.pyx. */
#ifndef FO_CACHE_H
#define FO_CACHE_H
#include <unistd.h>

/* Bytes of L2 cache per core: sysconf where glibc knows it (it reads CPUID), else 512 KiB (the
   smallest L2 of the x86-64 cores of the last ten years, and a common Arm one). */
static long fo_l2_bytes(void) {
    long bytes = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return bytes >= 64 * 1024 ? bytes : 512 * 1024;
}

#endif /* FO_CACHE_H */
