/* Software prefetches, shared by the element-wise driver (_elementwise.pxi) and the softmax
 * family's exp pass (fo_row.h): the line holding base + offset, fetched into every cache level
 * (fo_prefetch_at), for writing (fo_prefetchw_at), or into L2 and L3 only (fo_prefetch_l2_at).
 * The address is made in integers: it may lie beyond base's array (a prefetch does not fault). */
#ifndef FO_PREFETCH_H
#define FO_PREFETCH_H
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define FO_PREFETCH_FN(NAME, RW, LOCALITY)                                               \
static inline void NAME(const void* base, size_t offset) {                              \
    __builtin_prefetch((const void*)((uintptr_t)base + offset), RW, LOCALITY);          \
}
#else
#define FO_PREFETCH_FN(NAME, RW, LOCALITY)                                               \
static inline void NAME(const void* base, size_t offset) { (void)base, (void)offset; }
#endif
FO_PREFETCH_FN(fo_prefetch_at, 0, 3)
FO_PREFETCH_FN(fo_prefetchw_at, 1, 3)
FO_PREFETCH_FN(fo_prefetch_l2_at, 0, 2)

#endif /* FO_PREFETCH_H */
