# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# optim.pyx compiled for x86-64-v4 with 512-bit vectors (optim_avx512 prefers 256-bit ones):
# fastopt._kernels imports it on AMD Zen 4 and later (fo_common.h): on Zen 5, whose divider is
# 512 bits wide, the sqrt/division-bound steps run ~1.7x faster than in optim_avx512; on Zen 4
# 1.07-1.43x.
include "optim.pyx"
