# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# optim.pyx compiled a second time for x86-64-v4 (AVX-512): the same source, wider vectors.
# fastopt._kernels imports it instead of `optim` when the CPU has AVX-512 (twice the speed of
# the AVX2 build on the sqrt/division-bound steps between 1e4 and 1e6 elements here).
include "optim.pyx"
