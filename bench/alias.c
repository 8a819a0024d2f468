/* What the distance between two arrays' places within a 4 KiB page costs a step (4K aliasing).
 * A load whose address matches, in its low 12 bits, a store the core has not yet retired waits
 * for that store, though the two touch different memory. In a loop over several arrays, a load
 * from array L at a place D bytes from array S's place (D = L's offset in its page less S's,
 * modulo 4096) matches the store made to S's element |D| / itemsize before it: for D a little
 * below 0, a store of one of the last few vectors, still in flight. Float32 Adam (the kernels'
 * loop: sqrt, division, no FMA) on one core, n = 1e5 (1.6 MB, in L2), best of 15 rounds of 10
 * steps, ns/element, for each pair (L read, S written) of its arrays at distance D, the others
 * 1 KiB apart; "rev" walks the vectors from the end (a loop over 16-element blocks from the
 * last, each block forward: no permutes), as a kernel could where the forward walk is hit.
 * Build and run:
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=512 -ffp-contract=off -fno-trapping-math \
 *       -fno-math-errno -o /tmp/alias bench/alias.c -lm && taskset -c 1 /tmp/alias
 * Measured on the AMD EPYC (Zen 4) VM, 2026-12-06:
 *   D      -2048 -1024 -512 -256 -192 -128  -64  -32  -16    0   16   32   64  128  256  512
 *   g<-p fwd .279 .279 .279 .286 .293 .309 .355 .279 .279 .279 .278 .279 .279 .278 .279 .278
 *   g<-p rev .287 .288 .287 .288 .288 .287 .287 .288 .339 .289 .329 .289 .384 .322 .294 .286
 *   v<-p fwd .279 .279 .278 .282 .288 .297 .329 .279 .280 .279 .279 .279 .289 .280 .279 .279
 *   v<-m fwd .279 .279 .279 .280 .284 .291 .305 .280 .278 .279 .280 .279 .316 .290 .280 .278
 *   m<-v fwd .279 .279 .278 .280 .283 .291 .315 .280 .280 .280 .282 .280 .305 .292 .281 .280
 *   g<-p bnc .322 .319 .320 .321 .321 .320 .321 .321 .324 .321 .320 .320 .320 .320 .320 .319
 * (an earlier run: g<-p fwd at -64 .356, -128 .310; rev .288-.290 away from its own window).
 * "bnc" copies the grad 512 elements at a time into a buffer 2 KiB from the param's place and
 * steps on that (a driver could do it for every kernel, with no backward loops): it costs more
 * than the window it escapes (.320 everywhere, 2026-12-06 stop 68: not taken).
 * Forward, a pair 64-256 bytes apart the wrong way costs up to 1.27x (the grad below the param:
 * the param's store waits on the division, so every later load of the grad waits with it; two
 * written arrays also 64-128 bytes the other way); multiples of 512 bytes apart, and equal
 * places, nothing. In process the loss was larger (fo.ops.adam_step_, 1e5, one thread: 29.6 us
 * at places 1 KiB apart, 40.6 with the grad 64 bytes below the param; SGD with momentum 14.1 /
 * 19.4). Walking backward moves the window to the other side and costs 3% where nothing
 * aliases, so it would pay only as a per-call choice from the arrays' places (not done: every
 * kernel's loops would need a backward form). What fastopt does instead: the arrays it makes
 * (state, a ParameterArena's grads) lie multiples of 512 bytes from their param's place
 * (fastopt._layout.like_lines), so only the caller's own arrays (param and grad) can meet in
 * the window.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef long ll;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define ADAM(P, G, M, V, i)                                                           \
    do {                                                                              \
        float gi = G[i], mi = M[i] + c1 * (gi - M[i]), vi = b2 * V[i] + (c2 * gi) * gi; \
        M[i] = mi;                                                                    \
        V[i] = vi;                                                                    \
        P[i] = P[i] - (step * mi) / (sqrtf(vi) * ibc + eps);                          \
    } while (0)
/* the step's scalars as arguments, as the kernels take them (constants GCC could fold) */
#define ARGS float *restrict p, const float *restrict g, float *restrict m, \
             float *restrict v, ll n, float c1, float b2, float c2, float step, float ibc, \
             float eps

__attribute__((noinline)) static void forward(ARGS) {
    for (ll i = 0; i < n; i++)
        ADAM(p, g, m, v, i);
}

__attribute__((noinline)) static void backward(ARGS) {
    for (ll b = n / 16 - 1; b >= 0; b--) {      /* blocks from the last, each forward */
        float *restrict pb = p + 16 * b, *restrict mb = m + 16 * b, *restrict vb = v + 16 * b;
        const float *restrict gb = g + 16 * b;
        for (int j = 0; j < 16; j++)
            ADAM(pb, gb, mb, vb, j);
    }
    for (ll i = n / 16 * 16; i < n; i++)
        ADAM(p, g, m, v, i);
}

/* the grad copied BOUNCE elements at a time into a buffer 2 KiB from the param's place */
enum { BOUNCE = 512 };
static float bounce_buf[2 * 1024 + BOUNCE] __attribute__((aligned(4096)));
__attribute__((noinline)) static void bounce(ARGS) {
    float *buf = (float *)((char *)bounce_buf + ((size_t)p + 2048) % 4096);
    for (ll b = 0; b < n; b += BOUNCE) {
        ll e = b + BOUNCE < n ? b + BOUNCE : n;
        for (ll i = b; i < e; i++)
            buf[i - b] = g[i];
        forward(p + b, buf, m + b, v + b, e - b, c1, b2, c2, step, ibc, eps);
    }
}

static double time_step(void (*fn)(ARGS), char *mem, ll n, const int *places) {
    float *a[4];
    char *base = mem;
    for (int k = 0; k < 4; k++) {       /* each array on pages of its own, at its place */
        a[k] = (float *)(base + places[k]);
        base += (n * 4 / 4096 + 100) * 4096;
    }
    for (ll i = 0; i < n; i++) {
        a[0][i] = 1;
        a[1][i] = 0.5f;
        a[2][i] = a[3][i] = 0;
    }
    double best = 1e9;
    for (int r = 0; r < 15; r++) {
        double t0 = now();
        for (int k = 0; k < 10; k++)
            fn(a[0], a[1], a[2], a[3], n, 0.1f, 0.999f, 0.001f, 1e-3f, 1.0f, 1e-8f);
        double t = (now() - t0) / 10;
        best = t < best ? t : best;
    }
    return best / n * 1e9;
}

int main(void) {
    const ll n = 100000;
    char *mem = aligned_alloc(4096, 64 << 20);
    static const int pairs[][2] = {{1, 0}, {3, 0}, {3, 2}, {2, 3}};   /* (read, written) */
    static const int ds[] = {-2048, -1024, -512, -256, -192, -128, -64, -32, -16,
                             0, 16, 32, 64, 128, 256, 512};
    const int nd = sizeof ds / sizeof ds[0];
    const char *names = "pgmv";
    printf("D       ");
    for (int d = 0; d < nd; d++)
        printf("%6d", ds[d]);
    printf("\n");
    for (int q = 0; q < 4; q++)
        for (int back = 0; back < (q ? 2 : 3); back++) {   /* bnc: the grad's pair only */
            printf("%c<-%c %s", names[pairs[q][0]], names[pairs[q][1]],
                   back == 2 ? "bnc" : back ? "rev" : "fwd");
            for (int d = 0; d < nd; d++) {
                int places[4] = {0, 1024, 2048, 3072};
                places[pairs[q][0]] = (places[pairs[q][1]] + ds[d] + 4096) % 4096;
                printf("%6.3f", time_step(back == 2 ? bounce : back ? backward : forward, mem,
                                          n, places));
                fflush(stdout);
            }
            printf("\n");
        }
    free(mem);
    return 0;
}
