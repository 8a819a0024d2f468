/* What batch norm's float32 normalization costs in arithmetic alone on an AVX-512 core: the
 * instructions the kernels' loop (fo_bn.h, FO_APPLY_2ROWS) runs for 32 elements, two rows of
 * 16, in registers, with no loads or stores: the float32 -> float64 widenings (vcvtps2pd), the
 * float64 (x - mean) * scale + beta, the narrowings (vcvtpd2ps) and the joins of two halves
 * (vinsertf64x4); cycles per 32 elements, the clock calibrated by a chain of dependent vaddpd
 * (3 cycles each on Zen 4). Then the same with the subtraction and the addition done as
 * fma(a, 1, b) on the FMA pipes (the same bits), which moves them off the add pipes the
 * conversions share. Build and run:
 *   gcc -O2 -march=x86-64-v4 -o /tmp/bn_ports bench/bn_ports.c && taskset -c 1 /tmp/bn_ports
 * Measured on the AMD EPYC (Zen 4) VM, 2026-12-06 (3.61 GHz by the calibration):
 *   widen 5.27, narrow 6.09, both 11.60, both and the joins 13.33, the whole loop 21.11, with
 *   fma(a, 1, b) 16.39; the float64 arithmetic alone 7.91 (11.84 on the FMA pipes).
 * So 13.3 of the loop's 21 cycles go to conversions, which a float32 normalization (torch's:
 * one FMA per element, not rounded from float64) does not pay: 0.18 ns per element at 3.6 GHz,
 * against 0.08 for a stream of x and y in L2. The real loop, in C over (256, 4096) float32 in
 * cache, took 0.20 ns/element either way: the fma(a, 1, b) form gained nothing there (not
 * taken). */
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

enum { ITERS = 20000000 };
#define CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
                 "xmm9", "xmm10", "xmm11", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",    \
                 "xmm21", "xmm22", "xmm23"
#define RUN(name, code)                                                                 \
    do {                                                                                \
        double t0 = now();                                                              \
        for (long i = 0; i < ITERS; i++)                                                \
            __asm__ volatile(code ::: CLOBBERS);                                        \
        printf("%-36s %6.2f cycles per 32 elements\n", name, (now() - t0) / ITERS / ns); \
    } while (0)
/* four vectors of eight float64 each step: 32 elements */
#define WIDEN "vcvtps2pd %%ymm16,%%zmm0\n vcvtps2pd %%ymm17,%%zmm1\n" \
              "vcvtps2pd %%ymm18,%%zmm2\n vcvtps2pd %%ymm19,%%zmm3\n"
#define SUB "vsubpd %%zmm20,%%zmm0,%%zmm4\n vsubpd %%zmm20,%%zmm1,%%zmm5\n" \
            "vsubpd %%zmm20,%%zmm2,%%zmm6\n vsubpd %%zmm20,%%zmm3,%%zmm7\n"
#define SUB_FMA "vfmadd213pd %%zmm20,%%zmm21,%%zmm0\n vfmadd213pd %%zmm20,%%zmm21,%%zmm1\n" \
                "vfmadd213pd %%zmm20,%%zmm21,%%zmm2\n vfmadd213pd %%zmm20,%%zmm21,%%zmm3\n"
#define MUL "vmulpd %%zmm22,%%zmm4,%%zmm8\n vmulpd %%zmm22,%%zmm5,%%zmm9\n" \
            "vmulpd %%zmm22,%%zmm6,%%zmm10\n vmulpd %%zmm22,%%zmm7,%%zmm11\n"
#define ADD "vaddpd %%zmm23,%%zmm8,%%zmm4\n vaddpd %%zmm23,%%zmm9,%%zmm5\n" \
            "vaddpd %%zmm23,%%zmm10,%%zmm6\n vaddpd %%zmm23,%%zmm11,%%zmm7\n"
#define ADD_FMA "vfmadd231pd %%zmm23,%%zmm21,%%zmm8\n vfmadd231pd %%zmm23,%%zmm21,%%zmm9\n" \
                "vfmadd231pd %%zmm23,%%zmm21,%%zmm10\n vfmadd231pd %%zmm23,%%zmm21,%%zmm11\n"
#define NARROW "vcvtpd2ps %%zmm4,%%ymm0\n vcvtpd2ps %%zmm5,%%ymm1\n" \
               "vcvtpd2ps %%zmm6,%%ymm2\n vcvtpd2ps %%zmm7,%%ymm3\n"
#define JOIN "vinsertf64x4 $1,%%ymm1,%%zmm0,%%zmm0\n vinsertf64x4 $1,%%ymm3,%%zmm2,%%zmm2\n"

int main(void) {
    double ns, t0 = now();
    for (long i = 0; i < ITERS; i++)    /* a chain of dependent adds: 3 cycles each */
        __asm__ volatile("vaddpd %%zmm0,%%zmm0,%%zmm0\n vaddpd %%zmm0,%%zmm0,%%zmm0\n"
                         "vaddpd %%zmm0,%%zmm0,%%zmm0\n vaddpd %%zmm0,%%zmm0,%%zmm0" ::: "xmm0");
    ns = (now() - t0) / ITERS / 12;
    printf("clock: %.2f GHz\n", 1 / ns);
    RUN("widen", WIDEN);
    RUN("narrow", NARROW);
    RUN("widen, narrow", WIDEN NARROW);
    RUN("widen, narrow, join", WIDEN NARROW JOIN);
    RUN("the loop", WIDEN SUB MUL ADD NARROW JOIN);
    RUN("the loop, fma(a, 1, b)", WIDEN SUB_FMA MUL ADD_FMA NARROW JOIN);
    RUN("arithmetic only", SUB MUL ADD);
    RUN("arithmetic only, fma(a, 1, b)", SUB_FMA MUL ADD_FMA);
    return 0;
}
