# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
# layers.pyx compiled for x86-64-v4 (AVX-512), chosen at import when the CPU has it.
include "layers.pyx"
