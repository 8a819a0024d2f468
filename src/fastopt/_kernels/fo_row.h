/* A softmax row's passes on whole vectors: its max, with NaN propagation or without, and its
   exps and their sum, which take the next row's max and finish the previous row on the way;
   included by layers.pyx. */
#ifndef FO_ROW_H
#define FO_ROW_H
#include "fo_vexp.h"

/* max of a row with NaN propagation (NANS 1), written with GCC vector extensions: the
   max instruction, whose a > b ? a : b keeps the running max where v is NaN, and a mask of
   the NaN lanes (GCC does not vectorize a NaN-aware max loop by itself). Max is exact, so
   the lane order changes nothing but which of -0 and +0 a row of both with max 0 gives, which
   no result of the softmax family shows (z - max is the same for z != 0, every zero's exp is
   1, and log-softmax's log(s) > 0 with two of them). With NANS 0 the vectors' NaNs are not
   looked for: NaN only if the row has one, else the max of the row's numbers, for a caller whose
   results a NaN in the row makes NaN anyway (the softmax rows' exp sums: tracking the
   NaN lanes took a third of the max pass: a C harness, rows of 1000 float32 in L1, one
   core of an Intel Xeon, 0.063 ns/element with the compares and selects of the first
   version, 0.056 with the max instruction, 0.036 without the NaNs). NAME##_end is the max
   from two chains of vectors over the whole vectors before element i (none if i is 0), their
   NaN lanes and the elements from i on. */
#define FO_ROW_MAX(NAME, T, IT, MAX, NANS)                                           \
typedef T NAME##_vt __attribute__((vector_size(FO_VBYTES)));                         \
typedef IT NAME##_vi __attribute__((vector_size(FO_VBYTES)));                        \
static inline T NAME##_end(NAME##_vt c0, NAME##_vt c1, NAME##_vi nan, const T* z,      \
                           Py_ssize_t i, Py_ssize_t k) {                             \
    enum { LANES = FO_VBYTES / sizeof(T) };                                          \
    T best = z[0]; int any_nan = z[0] != z[0];                                       \
    Py_ssize_t j;                                                                    \
    if (i) {                               /* the chains merged lane by lane */      \
        c0 = MAX(c1, c0);                                                            \
        for (j = 0; j < LANES; j++) {                                                \
            if (c0[j] > best) best = c0[j];                                          \
            any_nan |= nan[j] != 0;                                                  \
        }                                                                            \
    }                                                                                \
    for (; i < k; i++) {                                                             \
        if (z[i] > best) best = z[i];                                                \
        any_nan |= z[i] != z[i];                                                     \
    }                                                                                \
    return any_nan ? (T)NAN : best;                                                  \
}                                                                                    \
static T NAME(const T* z, Py_ssize_t k) {                                           \
    enum { LANES = FO_VBYTES / sizeof(T), ACC = 4 };  /* 4 chains hide the latency */ \
    NAME##_vt acc[ACC], v, first = {0}; NAME##_vi nan = {0};                         \
    Py_ssize_t i = 0, j, a;                                                          \
    /* rows shorter than a vector take the scalar loop alone: setting up and reducing \
       the accumulators' lanes cost (10,) float32 rows 3x the scalar loop on AVX-512 */ \
    if (k < LANES)                                                                   \
        return NAME##_end(first, first, nan, z, 0, k);                               \
    for (j = 0; j < LANES; j++) first[j] = z[0];                                     \
    for (a = 0; a < ACC; a++) acc[a] = first;                                        \
    for (; i + ACC * LANES <= k; i += ACC * LANES) {                                 \
        for (a = 0; a < ACC; a++) {                                                  \
            memcpy(&v, z + i + a * LANES, sizeof v);                                 \
            acc[a] = MAX(v, acc[a]);                                                 \
            if (NANS) nan |= v != v;                                                 \
        }                                                                            \
    }                                                                                \
    for (; i + LANES <= k; i += LANES) {      /* then whole vectors into the first */ \
        memcpy(&v, z + i, sizeof v);                                                 \
        acc[0] = MAX(v, acc[0]);                                                     \
        if (NANS) nan |= v != v;                                                     \
    }                                                                                \
    return NAME##_end(MAX(acc[2], acc[0]), MAX(acc[3], acc[1]), nan, z, i, k);       \
}
FO_ROW_MAX(fo_row_max_f, float, int, FO_MAXF, 1)
FO_ROW_MAX(fo_row_max_d, double, long long, FO_MAXD, 1)
FO_ROW_MAX(fo_row_max_numbers_f, float, int, FO_MAXF, 0)
FO_ROW_MAX(fo_row_max_numbers_d, double, long long, FO_MAXD, 0)

/* e[i] = exp(z[i] - m) for i < n (m the row's max: z[i] <= m, or NaN), returning sum(e) in
   float64 summed as layers.pyx's row_sum sums a row (eight interleaved partial sums, the one of
   lane j taking the e[i] with i % 8 == j in order, then a fixed pairwise combine), for any vector
   width. Meanwhile the lines of [next, next + n) are prefetched, one per 64 bytes of z,
   FO_NEXT_AHEAD bytes ahead (long rows as FO_LONG_ROW_BYTES says): a caller stepping through
   rows passes the next row, which then
   arrives from memory while this one's exps are computed (its max pass had waited for it:
   (4096, 1000) and (256, 32000) float32 softmax, 2 threads, a C harness: 16% and 20% less
   time; rows in cache as before), and the lines of e's
   next row [e + n, e + 2n) are fetched for writing, which its exp pass then finds in cache (the
   callers' rows of e are contiguous too: (4096, 1000) float32, one thread, nine alternated pairs
   of processes on a Zen 2 VM, medians: softmax 3.59 -> 3.48 ms, log-softmax 3.63 -> 3.42,
   cross-entropy 3.69 -> 3.56, faster in 8, 9 and 9 of the pairs). next and e + n may point past
   the end of their arrays: a prefetch does not fault. An exp pass over the row, then a sum pass
   over e (in L1 or L2 by then): taking the sums from the exp's vectors in registers, in the one
   loop, cost more (bench/exp_floor.c, rows of 1000 float32, one core, ns/element, one loop
   against two passes: AVX2 build on Zen 2 0.82 against 0.66 in cache, 0.86 against 0.76 streamed;
   AVX-512 on Zen 5 0.24 against 0.19 in cache, 0.23-0.24 either way streamed), and the two passes
   need no conversion of the exp's lanes to float64 in registers. With AVX-512 the sum pass's
   loads and additions run inside the exp loop, FO_SUM_LAG elements behind it (below). */
typedef float fo_v4f __attribute__((vector_size(16)));
typedef double fo_v4d __attribute__((vector_size(32)));
/* four values of p as float64 */
static inline fo_v4d fo_load4d_f(const float* p) {
#if defined(__AVX__)
    return (fo_v4d)_mm256_cvtps_pd(_mm_loadu_ps(p));   /* GCC 12 converts the generic */
#else                                                  /* vector two lanes at a time */
    fo_v4f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fo_v4d);
#endif
}
static inline fo_v4d fo_load4d_d(const double* p) {
    fo_v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}
/* The eight partial sums: with AVX-512 one vector of eight float64 lanes, which takes eight
   floats in one conversion; else two of four. The same additions in the same order either
   way. FO_SUMS_LOAD adds eight values from memory. */
#if defined(__AVX512F__)
typedef double fo_v8d __attribute__((vector_size(64)));
static inline fo_v8d fo_load8_f(const float* p) {
    return (fo_v8d)_mm512_cvtps_pd(_mm256_loadu_ps(p));
}
static inline fo_v8d fo_load8_d(const double* p) { return (fo_v8d)_mm512_loadu_pd(p); }
#define FO_SUMS fo_v8d sums = {0}
#define FO_SUMS_LOAD(S, p) (sums += fo_load8_##S(p))
#define FO_SUMS_LANE(j) sums[j]
#else
#define FO_SUMS fo_v4d lo = {0}, hi = {0}
#define FO_SUMS_LOAD(S, p) (lo += fo_load4d_##S(p), hi += fo_load4d_##S((p) + 4))
#define FO_SUMS_LANE(j) ((j) < 4 ? lo[j] : hi[(j) - 4])
#endif
/* With AVX-512 the exp loop takes the sums of the exps it stored FO_SUM_LAG elements and more
   before (from L1), in the same order (the same bits): the sums' chain of dependent additions
   then runs beside the exps' arithmetic instead of after it. One core of an Intel Xeon
   (bench/exp_floor.c, rows of 1000 float32 in cache): 0.262 -> 0.236 ns/element; in-process,
   (4096, 1000) float32, alternated processes, medians: two threads softmax 954-996 -> 855-871
   us, log-softmax 1002-1155 -> 897-919, cross-entropy 1031-1045 -> 931-955; one thread
   1833-1847 -> 1641-1670 us. The AVX2 build on the same core went 1030-1031 -> 1052-1058 us
   (softmax, two threads), so it keeps its sum pass after the exps. */
#if defined(__AVX512F__)
#define FO_SUM_LAG 64
#else
#define FO_SUM_LAG PTRDIFF_MAX
#endif
/* Rows of more than FO_LONG_ROW_BYTES prefetch differently: the next row's z into L2 only (in
   L1 it evicted this row's lines of z and e: the two rows' z and e, 512 KB at 32000 floats,
   against L1's 32-48 KB), and e's lines FO_ROW_AHEAD bytes on in this row, not the next
   row's (their first store then finds them fetched for writing). In-process, 2 threads,
   float32, alternated processes, medians of three x the roofline, the old prefetches -> these:
   (256, 32000) softmax 1.63 -> 1.50, log-softmax 1.75 -> 1.65, cross-entropy 1.65 -> 1.54
   (1.60-1.61 fetching this row's own z lines ahead instead of the next row's); (1024, 4096) and
   (512, 8192) level or better (log-softmax 1.55 -> 1.43 at the first); shorter rows as before. */
#define FO_LONG_ROW_BYTES 8192
#define FO_ROW_AHEAD 2048
/* The exp loop loads the next row's line at ``at`` for that row's max (FO_EXP_SUM), so it
   prefetches the next row FO_NEXT_AHEAD bytes further on. Before, the next row's max pass ran
   on its own after this row, reading lines the exp loop had prefetched at ``at``. In-process,
   2 threads, float32, an Intel Xeon (AVX-512), three alternated processes, medians x the
   roofline, the old passes -> the max in the exp loop: (4096, 1000) softmax 1.30 -> 1.23,
   log-softmax 1.31 -> 1.26, cross-entropy 1.38 -> 1.31 (one thread 1.31 -> 1.13); (1024, 4096)
   1.28 -> 1.17, 1.37 -> 1.25, 1.36 -> 1.24; (256, 32000) 1.51 -> 1.33, 1.66 -> 1.53, 1.54 ->
   1.40 (with layers.pyx's chunks of 8 long rows). 2 KiB ahead: (1024, 4096) softmax 1.21 against
   1.16 at 4 KiB; 1 KiB 1.21; 8 KiB 1.20 against 1.17. The AVX2 build: level. */
#define FO_NEXT_AHEAD 4096
/* the exp pass's prefetches for the line at byte ``at`` of its row: the next row's line
   FO_NEXT_AHEAD bytes on (into L2 only for a long row) and e's line ``e_ahead`` bytes on, for
   writing */
static inline void fo_exp_prefetch(const void* next, const void* e, size_t at, size_t e_ahead,
                                   int long_row) {
    if (long_row)
        fo_prefetch_l2_at(next, at + FO_NEXT_AHEAD);
    else
        fo_prefetch_at(next, at + FO_NEXT_AHEAD);
    fo_prefetchw_at(e, e_ahead + at);
}
/* The rest of a row's softmax, its finish: out = out * a (softmax, a = 1 / s), (z - a) - b
   (log-softmax, a = max, b = log(s)), or (out * a) * b (cross-entropy's gradient but at the
   label: a = 1 / s, b = 1 / m), out holding exp(z - max); in the data's dtype, one rounding an
   operation (as the reference). FO_FINISH_SPAN finishes [i, n) of a row, FO_FINISH_ROW a whole
   row. The exp loop of FO_EXP_SUM finishes the previous row (kind not FO_FINISH_NONE) beside
   its exps, whose chain of dependent operations leaves the loads and stores room; a pass of its
   own had taken a fifth of log-softmax's time at (256, 32000). In-process, 2 threads, float32,
   an Intel Xeon (AVX-512), three alternated processes, medians x the roofline, a pass of its
   own -> in the next row's loop: (256, 32000) softmax 1.36 -> 1.18, log-softmax 1.53 -> 1.26,
   cross-entropy 1.40 -> 1.25; (1024, 4096) 1.21 -> 1.12, 1.31 -> 1.20, 1.29 -> 1.18; one thread
   (2048, 512) 1.24 -> 1.08, 1.30 -> 1.15, 1.38 -> 1.22; (4096, 1000) 1.18 -> 1.15, 1.22 ->
   1.22, 1.27 -> 1.31, where it depends on where out lies against z: 4-8% slower at the same
   offset in a 4 KiB page (rows of 4000 bytes: the loads of a row then share their low address
   bits with the stores of the rows around it), 3-5% faster 2000 bytes on. */
enum { FO_FINISH_NONE, FO_FINISH_SCALE, FO_FINISH_LOG, FO_FINISH_SCALE2 };
#define FO_FINISH_OP(KIND, o, zz, a, b)                                              \
    ((KIND) == FO_FINISH_LOG ? ((zz) - (a)) - (b)                                    \
     : (KIND) == FO_FINISH_SCALE2 ? ((o) * (a)) * (b) : (o) * (a))
#define FO_FINISH_VECTOR(KIND, VT, z, out, at, av, bv) do {                           \
    VT o_, z_;                                                                       \
    memcpy(&o_, (out) + (at), sizeof o_);                                            \
    memcpy(&z_, (z) + (at), sizeof z_);                                              \
    o_ = FO_FINISH_OP(KIND, o_, z_, av, bv);                                         \
    memcpy((out) + (at), &o_, sizeof o_);                                            \
} while (0)
/* [i, n) of a row, in a plain loop that GCC vectorizes, the rest in smaller vectors (whole
   vectors of our own and a scalar rest had taken (52428, 10) float32 log-softmax a third more
   time) */
#define FO_FINISH_SPAN(KIND, z, out, i, n, a, b) do {                                  \
    for (; (i) < (n); (i)++)                                                         \
        (out)[i] = FO_FINISH_OP(KIND, (out)[i], (z)[i], a, b);                       \
} while (0)
#define FO_FINISH_ROW(NAME, T)                                                        \
static inline void NAME(int kind, const T* z, T* out, Py_ssize_t n, T a, T b) {     \
    Py_ssize_t i = 0;                                                                \
    if (kind == FO_FINISH_LOG)                                                       \
        FO_FINISH_SPAN(FO_FINISH_LOG, z, out, i, n, a, b);                           \
    else if (kind == FO_FINISH_SCALE2)                                               \
        FO_FINISH_SPAN(FO_FINISH_SCALE2, z, out, i, n, a, b);                        \
    else if (kind == FO_FINISH_SCALE)                                                \
        FO_FINISH_SPAN(FO_FINISH_SCALE, z, out, i, n, a, b);                         \
}
FO_FINISH_ROW(fo_finish_row_f, float)
FO_FINISH_ROW(fo_finish_row_d, double)
/* the finish of one element */
static inline float fo_finish_one_f(int kind, float o, float z, float a, float b) {
    return FO_FINISH_OP(kind, o, z, a, b);
}
static inline double fo_finish_one_d(int kind, double o, double z, double a, double b) {
    return FO_FINISH_OP(kind, o, z, a, b);
}

/* e = exp(z - m) and its sum as described above, with two more jobs in its loop: *y_max =
   YMAX(y, n), the max of another row of n elements (the next row, or z itself for a chunk's
   last row), and the finish of the previous row (pz, pout) of n elements, of kind KIND.
   Not inlined: inlined into softmax's row loop (layers.pyx's row_stats), (4096, 1000) float32
   on two threads took 796-824 us against 729-750 (Intel Xeon, AVX-512, alternated processes).
   NAME dispatches on the kind. */
#define FO_EXP_SUM_KIND(NAME, KIND, T, S, VT, VEXP, VEXP2, REST, MAX, YMAX)             \
__attribute__((noinline)) static double                                             \
NAME##_##KIND(const T* z, T m, T* e, Py_ssize_t n, const T* next, const T* y,       \
              T* y_max, const T* pz, T* pout, T a, T b) {                           \
    enum { LANES = FO_VBYTES / sizeof(T), PAIR = 2 * FO_VBYTES };                    \
    VT v, w, s, c0 = {0}, c1, av, bv;                                                \
    YMAX##_vi no_nan = {0};                                                          \
    FO_SUMS;                                                                         \
    double acc[8];                                                                   \
    Py_ssize_t i = 0, j, n8 = n - n % 8, summed = 0;                                 \
    size_t at, e_ahead = n * sizeof(T);                                              \
    int long_row = n * sizeof(T) > FO_LONG_ROW_BYTES;                                \
    if (long_row)                                                                    \
        e_ahead = FO_ROW_AHEAD;                                                      \
    for (j = 0; j < LANES; j++) {                                                    \
        s[j] = m;                                                                    \
        c0[j] = y[0];                                                                \
        av[j] = a;                                                                   \
        bv[j] = b;                                                                   \
    }                                                                                \
    c1 = c0;                                                                         \
    for (; i + 2 * LANES <= n; i += 2 * LANES) {   /* two vectors, one range test */ \
        for (at = i * sizeof(T); at < i * sizeof(T) + PAIR; at += 64)                \
            fo_exp_prefetch(next, e, at, e_ahead, long_row);                         \
        memcpy(&v, z + i, sizeof v);                                                 \
        memcpy(&w, z + i + LANES, sizeof w);                                         \
        v -= s;                                                                      \
        w -= s;                                                                      \
        VEXP2(&v, &w);                                                               \
        memcpy(e + i, &v, sizeof v);                                                 \
        memcpy(e + i + LANES, &w, sizeof w);                                         \
        if (i >= FO_SUM_LAG) {             /* the sums of exps made a while ago */   \
            for (j = 0; j + 8 <= 2 * LANES; j += 8)                                  \
                FO_SUMS_LOAD(S, e + summed + j);                                     \
            summed += 2 * LANES;         /* (a multiple of 8 with AVX-512) */        \
        }                                                                            \
        memcpy(&v, y + i, sizeof v);                                                 \
        memcpy(&w, y + i + LANES, sizeof w);                                         \
        c0 = MAX(v, c0);                                                             \
        c1 = MAX(w, c1);                                                             \
        if (KIND != FO_FINISH_NONE) {                                                \
            FO_FINISH_VECTOR(KIND, VT, pz, pout, i, av, bv);                         \
            FO_FINISH_VECTOR(KIND, VT, pz, pout, i + LANES, av, bv);                 \
        }                                                                            \
    }                                                                                \
    for (; i + LANES <= n; i += LANES) {                                             \
        if (!((i * sizeof(T)) & 63))                                                 \
            fo_exp_prefetch(next, e, i * sizeof(T), e_ahead, long_row);              \
        memcpy(&v, z + i, sizeof v);                                                 \
        v = VEXP(v - s);                                                             \
        memcpy(e + i, &v, sizeof v);                                                 \
        memcpy(&v, y + i, sizeof v);                                                 \
        c0 = MAX(v, c0);                                                             \
    }                                                                                \
    *y_max = YMAX##_end(c0, c1, no_nan, y, i, n);                                   \
    if (KIND != FO_FINISH_NONE) {           /* the previous row's rest */            \
        j = i - i % (2 * LANES);                                                     \
        FO_FINISH_SPAN(KIND, pz, pout, j, n, a, b);                                  \
    }                                                                                \
    if (i < n)                                                                       \
        REST(z + i, &m, 0, e + i, n - i);                                            \
    for (i = summed; i < n8; i += 8)                                                 \
        FO_SUMS_LOAD(S, e + i);                                                      \
    for (j = 0; j < 8; j++)                                                          \
        acc[j] = FO_SUMS_LANE(j);                                                    \
    for (; i < n; i++)                                                               \
        acc[i - n8] += e[i];                                                         \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3]))                                    \
           + ((acc[4] + acc[5]) + (acc[6] + acc[7]));                                 \
}
#define FO_EXP_SUM(NAME, T, S, VT, VEXP, VEXP2, REST, MAX, YMAX)                       \
FO_EXP_SUM_KIND(NAME, FO_FINISH_NONE, T, S, VT, VEXP, VEXP2, REST, MAX, YMAX)          \
FO_EXP_SUM_KIND(NAME, FO_FINISH_SCALE, T, S, VT, VEXP, VEXP2, REST, MAX, YMAX)         \
FO_EXP_SUM_KIND(NAME, FO_FINISH_LOG, T, S, VT, VEXP, VEXP2, REST, MAX, YMAX)           \
FO_EXP_SUM_KIND(NAME, FO_FINISH_SCALE2, T, S, VT, VEXP, VEXP2, REST, MAX, YMAX)        \
static inline double NAME(const T* z, T m, T* e, Py_ssize_t n, const T* next,        \
                          const T* y, T* y_max, int kind, const T* pz, T* pout, T a, \
                          T b) {                                                     \
    switch (kind) {                                                                  \
    case FO_FINISH_SCALE:                                                            \
        return NAME##_FO_FINISH_SCALE(z, m, e, n, next, y, y_max, pz, pout, a, b);   \
    case FO_FINISH_LOG:                                                              \
        return NAME##_FO_FINISH_LOG(z, m, e, n, next, y, y_max, pz, pout, a, b);     \
    case FO_FINISH_SCALE2:                                                           \
        return NAME##_FO_FINISH_SCALE2(z, m, e, n, next, y, y_max, pz, pout, a, b);  \
    default:                                                                         \
        return NAME##_FO_FINISH_NONE(z, m, e, n, next, y, y_max, pz, pout, a, b);    \
    }                                                                                \
}
FO_EXP_SUM(fo_exp_sum_f, float, f, fo_vf, fo_vexpf_nonpos, fo_vexpf_nonpos2,
           fo_exp_shifted_f, FO_MAXF, fo_row_max_numbers_f)
FO_EXP_SUM(fo_exp_sum_d, double, d, fo_vd, fo_vexp_nonpos, fo_vexp_nonpos2,
           fo_exp_shifted_d, FO_MAXD, fo_row_max_numbers_d)

#endif /* FO_ROW_H */
