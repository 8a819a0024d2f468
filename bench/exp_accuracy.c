/* fo_vexp.h's float32 vector exp against expl: the largest error in ulps over every float32
 * input in [-104, 89] (below, the result is 0 or the clamp's; above, inf), and the count of
 * results not correctly rounded. Build and run (bench/README.md):
 *   gcc -O3 -march=x86-64-v4 -ffp-contract=off -fno-trapping-math -fno-math-errno \
 *       -I src/fastopt/_kernels -o /tmp/exp_accuracy bench/exp_accuracy.c -lm \
 *       && /tmp/exp_accuracy
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef ptrdiff_t Py_ssize_t;
#include "fo_vexp.h"

int main(void) {
    enum { L = FO_VBYTES / 4 };
    double worst = 0;
    float worst_x = 0;
    long long not_rounded = 0, n = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += L) {
        fo_vf v;
        for (int j = 0; j < L; j++) {
            uint32_t b = (uint32_t)(u + j);
            memcpy(&v[j], &b, 4);
        }
        fo_vf e = fo_vexpf(v);
        for (int j = 0; j < L; j++) {
            float x = v[j];
            if (!(x >= -104.0f && x <= 89.0f))
                continue;
            long double want = expl((long double)x);
            float r = (float)want;                 /* correctly rounded (subnormals too) */
            float ulp = nextafterf(r, INFINITY) - r;
            if (ulp == 0 || !isfinite(ulp))
                ulp = r - nextafterf(r, 0);
            double err = fabs((double)((long double)e[j] - want)) / ulp;
            n++;
            not_rounded += e[j] != r;
            if (err > worst) {
                worst = err;
                worst_x = x;
            }
        }
    }
    printf("float32: %lld inputs, max error %.3f ulp (at x = %a), %lld not correctly rounded\n",
           n, worst, worst_x, not_rounded);
    return 0;
}
