/* Software prefetches, shared by the element-wise driver (_elementwise.pxi) and the softmax
 * family's exp pass (fo_vexp.h). */
#ifndef FO_PREFETCH_H
#define FO_PREFETCH_H
#include <stddef.h>
#include <stdint.h>

/* fetch the line holding base + offset into every cache level */
static inline void fo_prefetch_at(const void* base, size_t offset) {
#if defined(__GNUC__)      /* the address in integers: it may lie beyond base's array */
    __builtin_prefetch((const void*)((uintptr_t)base + offset), 0, 3);
#else
    (void)base, (void)offset;
#endif
}
/* the same for a line about to be written */
static inline void fo_prefetchw_at(const void* base, size_t offset) {
#if defined(__GNUC__)
    __builtin_prefetch((const void*)((uintptr_t)base + offset), 1, 3);
#else
    (void)base, (void)offset;
#endif
}
/* the same into L2 (and L3), not L1 */
static inline void fo_prefetch_l2_at(const void* base, size_t offset) {
#if defined(__GNUC__)
    __builtin_prefetch((const void*)((uintptr_t)base + offset), 0, 2);
#else
    (void)base, (void)offset;
#endif
}

#endif /* FO_PREFETCH_H */
