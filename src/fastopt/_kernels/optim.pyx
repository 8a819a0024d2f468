# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Cython optimizer kernels: one fused sweep per step (read p, g and the state once, write them
once), scalars folded once per call in double and cast to the data's precision, threads over
chunks of the total element count (_elementwise.pxi, fo_pool.h). Formulas and signatures:
fastopt/reference/optim.py; ``<name>_multi`` takes lists of arrays (one call for a whole
parameter group) with the same scalars.

Each kernel here is its loop: ``<name>_span(a, lo, hi, s)`` over ``a = (param, grad,
state...)`` with ``s`` a struct holding the call's scalars and options by name. The rest is
generated from the registry (fastopt/_registry.py) by setup.py into ``_glue.pxi`` (template
``_glue.pxi.tp``): that struct, ``<name>_scalars``, and the ``<name>`` and ``<name>_multi``
entry points, and those of the 16-bit forms (``<name>_half``), which run the float32 span
through _half.pxi. The options are loop-invariant branches: setup.py lets GCC unswitch them
all, so every combination gets its own vectorized loop. Every span reads its scalars into
locals before the loop (as far as the compiler knows, the struct may alias the arrays).
"""
from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport copysign, copysignf, fabs, fabsf, sqrt, sqrtf

include "_common.pxi"
include "_elementwise.pxi"
include "_glue.pxi"

cdef extern from "fo_root.h":
    # float32 loops taking part of their square roots on the FMA units (optim_avx512 only;
    # elsewhere FO_ROOT_LOOPS is 0 and they take nothing): each returns how many elements
    # from the span's start it took (all of them, or none in a directed rounding mode)
    bint FO_ROOT_LOOPS
    Py_ssize_t fo_adam_f32(float* p, const float* g, float* m, float* v, Py_ssize_t n,
                           float c1, int from_end, float b2, float c2, float eps, float decay,
                           int shrink, float step, float inv_bc2_sqrt) noexcept nogil
    Py_ssize_t fo_nadam_f32(float* p, const float* g, float* m, float* v, Py_ssize_t n,
                            float c1, int from_end, float b2, float c2, float eps, float decay,
                            int shrink, float inv_bc2, float grad_coef,
                            float avg_coef) noexcept nogil
    Py_ssize_t fo_radam_f32(float* p, const float* g, float* m, float* v, Py_ssize_t n,
                            float c1, int from_end, float b2, float c2, float eps, float step,
                            float scale) noexcept nogil
    Py_ssize_t fo_adadelta_f32(float* p, const float* g, float* sq, float* acc, Py_ssize_t n,
                               float lr, float rho, float c, float eps) noexcept nogil
    Py_ssize_t fo_squares_f32(float* p, const float* g, float* sq, Py_ssize_t n, float lr,
                              float decay, float c, float eps, int sum) noexcept nogil

# whether this build takes part of its float32 square roots on the FMA units (the tests ask)
ROOT_LOOPS = bool(FO_ROOT_LOOPS)


cdef inline floating root(floating x) noexcept nogil:
    # sqrt() on a float would promote to double and keep the float loop scalar
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating max_nan(floating a, floating b) noexcept nogil:
    """np.maximum: NaN in either operand gives NaN."""
    return a if (a >= b) | (a != a) else b   # no short-circuit: keeps the loop branch-free


cdef inline floating lerp_coef(floating w) noexcept nogil:
    """torch.lerp's coefficient for a weight ``w`` in (0, 1]: ``w`` below 0.5 (the lerp starts
    from its start), else ``w - 1`` (exact; <= 0: it starts from its end)."""
    return w if w < <floating>0.5 else w - <floating>1


cdef inline floating lerp(floating start, floating end, floating k) noexcept nogil:
    """torch.lerp(start, end, w) with ``k = lerp_coef(w)``: ``start + w * (end - start)`` for
    w < 0.5, else ``end - (end - start) * (1 - w)``, as torch's CPU kernel (so an infinite end
    gives NaN when w >= 0.5, as torch's)."""
    return (end if k <= 0 else start) + k * (end - start)


cdef inline floating copy_sign(floating x, floating y) noexcept nogil:
    if floating is float:
        return copysignf(x, y)
    else:
        return copysign(x, y)


cdef inline floating absolute(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


# ----------------------------------------------------------------------------------- ewa
cdef void ewa_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                   const ewa_scalars* s) noexcept nogil:
    cdef floating* avg = a[0]
    cdef const floating* x = a[1]
    cdef floating b = <floating>s.beta, c = <floating>(1.0 - s.beta)
    cdef Py_ssize_t i
    for i in range(lo, hi):
        avg[i] = b * avg[i] + c * x[i]


# ----------------------------------------------------------------------------------- sgd
cdef void sgd_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                   const sgd_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* buf = a[2]
    cdef floating lr = <floating>s.lr, wd = <floating>s.weight_decay
    cdef floating mom = <floating>s.momentum, keep = <floating>(1.0 - s.dampening), gi
    cdef bint maximize = s.maximize, has_wd = s.weight_decay != 0
    cdef bint nesterov = s.nesterov, first_step = s.first_step
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        if buf != NULL:
            buf[i] = gi if first_step else mom * buf[i] + keep * gi
            gi = gi + mom * buf[i] if nesterov else buf[i]
        p[i] = p[i] - lr * gi


# ------------------------------------------------------------------------------ momentum
cdef void momentum_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                        const momentum_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* vel = a[2]
    cdef floating lr = <floating>s.lr, b = <floating>s.beta, c = <floating>(1.0 - s.beta)
    cdef Py_ssize_t i
    for i in range(lo, hi):
        vel[i] = b * vel[i] + c * g[i]
        p[i] = p[i] - lr * vel[i]


# ------------------------------------------------------------------------------- rmsprop
cdef void rmsprop_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                       const rmsprop_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* sq = a[2]
    cdef floating* gavg = a[3]
    cdef floating* buf = a[4]
    cdef floating lr = <floating>s.lr, al = <floating>s.alpha, c = <floating>(1.0 - s.alpha)
    cdef floating eps = <floating>s.eps, wd = <floating>s.weight_decay
    cdef floating mom = <floating>s.momentum, kc = lerp_coef(c)
    # alpha >= 1 (torch takes any alpha >= 0) makes the weight c <= 0, outside lerp's (0, 1]:
    # its lerp starts from grad_avg (c < 0.5) though kc <= 0 would make lerp() start from g
    cdef bint from_end = c >= <floating>0.5
    cdef bint maximize = s.maximize, has_wd = s.weight_decay != 0
    cdef bint eps_inside_sqrt = s.eps_inside_sqrt
    cdef floating gi, sv, avg
    cdef Py_ssize_t i
    if floating is float:
        if (FO_ROOT_LOOPS and gavg == NULL and buf == NULL
                and not (maximize or has_wd or eps_inside_sqrt)):
            lo += fo_squares_f32(p + lo, g + lo, sq + lo, hi - lo, lr, al, c, eps, 0)
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = al * sq[i] + (c * gi) * gi
        sv = sq[i]
        if gavg != NULL:
            gavg[i] = (gi if from_end else gavg[i]) + kc * (gi - gavg[i])
            sv = sq[i] - gavg[i] * gavg[i]
        avg = root(sv + eps) if eps_inside_sqrt else root(sv) + eps
        if buf != NULL:
            buf[i] = mom * buf[i] + gi / avg
            p[i] = p[i] - lr * buf[i]
        else:
            p[i] = p[i] - (lr * gi) / avg


# ------------------------------------------------------------------------------- adagrad
cdef void adagrad_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                       const adagrad_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* ssum = a[2]
    cdef floating clr = <floating>s.clr, eps = <floating>s.eps
    cdef floating wd = <floating>s.weight_decay, gi
    cdef bint maximize = s.maximize, has_wd = s.weight_decay != 0
    cdef Py_ssize_t i
    if floating is float:
        if FO_ROOT_LOOPS and not (maximize or has_wd):
            lo += fo_squares_f32(p + lo, g + lo, ssum + lo, hi - lo, clr, 1, 0, eps, 1)
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        ssum[i] = ssum[i] + gi * gi
        p[i] = p[i] - (clr * gi) / (root(ssum[i]) + eps)


# ---------------------------------------------------------------------------------- adam
# The loop's shape, per 8 floats (AVX2): 4 loads, 3 stores, one vsqrtps and one vdivps and a
# few multiplies and adds, as DeepSpeed's AVX2 path. Its floor in cache is the divider: on one
# Zen 4 core, at 1e5 elements, a C loop with Adam's loads and stores and only its sqrt and
# division runs 0.31 ns/element, the same loop with the whole formula 0.32, this one 0.34-0.40
# (a stream of the same bytes: 0.27); beyond cache, memory bandwidth. A reciprocal estimate
# instead of the division would round differently from the reference, and results must be
# bit-identical; a square root can be had bit for bit on the FMA units, which the 256-bit
# AVX-512 build does for part of its float32 roots (fo_root.h).
cdef inline floating adam_moments(floating* pi, floating* mi, floating* vi,
                                  floating* m, floating* v, Py_ssize_t i,
                                  floating gi, floating c1, floating b2, floating c2,
                                  floating wd, floating decay, bint coupled,
                                  bint shrink) noexcept nogil:
    """The Adam family's start of element ``i``: weight decay (decoupled: the param ``pi[0]``
    shrinks; coupled: added to the grad), then the moments, stored in m and v and left in
    ``mi[0]`` and ``vi[0]``. Returns the grad the step uses. The caller keeps the param and
    the moments in registers: read back from memory after the stores (which GCC must assume
    may alias), Adam ran ~15% slower than the same loop on restrict pointers."""
    if shrink:
        pi[0] = pi[0] * decay
    if coupled:
        gi = gi + wd * pi[0]
    mi[0] = lerp(m[i], gi, c1)
    vi[0] = b2 * v[i] + (c2 * gi) * gi
    m[i] = mi[0]
    v[i] = vi[0]
    return gi


cdef inline void adam_elem(floating* p, floating* m, floating* v, floating* vmax,
                           Py_ssize_t i, floating gi, floating c1, floating b2, floating c2,
                           floating eps, floating wd, floating step, floating inv_bc2,
                           floating inv_bc2_sqrt, floating decay, bint coupled, bint shrink,
                           bint eps_inside_sqrt) noexcept nogil:
    """Element ``i`` of an Adam step with grad ``gi`` (scaled and negated already)."""
    cdef floating pi = p[i], mi, vi, denom
    adam_moments(&pi, &mi, &vi, m, v, i, gi, c1, b2, c2, wd, decay, coupled, shrink)
    if vmax != NULL:
        vi = max_nan(vmax[i], vi)
        vmax[i] = vi
    if eps_inside_sqrt:
        denom = root(vi * inv_bc2 + eps)
    else:
        denom = root(vi) * inv_bc2_sqrt + eps
    p[i] = pi - (step * mi) / denom


cdef void adam_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                    const adam_scalars* s) noexcept nogil:
    adam_sweep(a, lo, hi, s, NULL, NULL, 1, 0)


cdef bint adam_span16(void** a, Py_ssize_t lo, Py_ssize_t hi, const void* hs,
                      bint bfloat16) noexcept nogil:
    """adam_half's span (Kernel.f16) for Adam and AdamW without other options: the grad widened
    and the param rounded in Adam's own loop, where the conversions overlap the divider-bound
    arithmetic, not in loops of their own around it a block at a time (_half.pxi). bfloat16,
    one thread, this Intel VM, in one process against the blocks: 0.71-0.73 against 0.84-0.87
    ns/element at 1e5, 1.47-1.53 against 1.77-1.80 at 1e7 (float32 Adam: 0.53-0.58 and
    1.42-1.58); float16's conversions cost as much either way."""
    cdef const HalfScalars* h = <const HalfScalars*>hs
    cdef const adam_scalars* s = <const adam_scalars*>h.base
    if (s.maximize or s.eps_inside_sqrt or a[5] != NULL
            or (s.weight_decay != 0 and not s.decoupled)):
        return False
    cdef float* b[MAX_ARRAYS]       # adam_span's arrays: the master, no float32 grad, state
    b[0], b[1], b[2], b[3], b[4] = <float*>a[2], NULL, <float*>a[3], <float*>a[4], NULL
    adam_sweep(b, lo, hi, s, <uint16_t*>a[0], <const uint16_t*>a[1], h.grad_scale,
               HALF_BFLOAT16 if bfloat16 else HALF_FLOAT16)
    return True


cdef inline void adam_half_loop(float* p, float* m, float* v, uint16_t* p16,
                                const uint16_t* g16, Py_ssize_t lo, Py_ssize_t hi, float c1,
                                float b2, float c2, float eps, float step, float inv_bc2,
                                float inv_bc2_sqrt, float decay, double grad_scale, bint bf16,
                                bint shrink) noexcept nogil:
    """Adam (``shrink``: AdamW) on the master ``p`` of the 16-bit param ``p16``: each grad
    widened from ``g16`` (times ``grad_scale`` unless 1, as widen_block), each new master
    rounded into p16 (as narrow_block)."""
    cdef Py_ssize_t i
    cdef float gi, scale = <float>grad_scale
    cdef bint scaled = grad_scale != 1
    for i in range(lo, hi):
        gi = bfloat16_to_float(g16[i]) if bf16 else float16_to_float(g16[i])
        if scaled:
            gi = gi * scale
        adam_elem(p, m, v, NULL, i, gi, c1, b2, c2, eps, 0, step, inv_bc2, inv_bc2_sqrt,
                  decay, False, shrink, False)
        p16[i] = float_to_bfloat16(p[i]) if bf16 else float_to_float16(p[i])


cdef inline void adam_sweep(floating** a, Py_ssize_t lo, Py_ssize_t hi, const adam_scalars* s,
                            uint16_t* p16, const uint16_t* g16, double g16_scale,
                            int half) noexcept nogil:
    """adam_span's loops; ``half`` (a 16-bit format, from adam_span16): a[0] is the master of
    ``p16``, whose grad ``g16`` is widened in the loop (times ``g16_scale``)."""
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* v = a[3]
    cdef floating* vmax = a[4]
    cdef floating c1 = lerp_coef(<floating>(1.0 - s.beta1)), b2 = <floating>s.beta2
    cdef floating c2 = <floating>(1.0 - s.beta2), eps = <floating>s.eps
    cdef floating wd = <floating>s.weight_decay, step = <floating>s.step_size
    cdef floating inv_bc2 = <floating>(1.0 / s.bias_correction2)
    cdef floating inv_bc2_sqrt = <floating>(1.0 / sqrt(s.bias_correction2))
    cdef floating decay = <floating>(1.0 - s.lr * s.weight_decay)
    cdef floating scale = <floating>s.grad_scale
    cdef bint maximize = s.maximize, eps_inside_sqrt = s.eps_inside_sqrt
    cdef bint scaled = s.grad_scale != 1
    cdef bint coupled = s.weight_decay != 0 and not s.decoupled
    cdef bint shrink = s.weight_decay != 0 and s.decoupled
    cdef floating gi
    cdef Py_ssize_t i
    if floating is float:
        if half:        # adam_span16 takes only the options of these loops
            if half == HALF_BFLOAT16:
                if shrink:
                    adam_half_loop(p, m, v, p16, g16, lo, hi, c1, b2, c2, eps, step, inv_bc2,
                                   inv_bc2_sqrt, decay, g16_scale, True, True)
                else:
                    adam_half_loop(p, m, v, p16, g16, lo, hi, c1, b2, c2, eps, step, inv_bc2,
                                   inv_bc2_sqrt, decay, g16_scale, True, False)
            elif shrink:
                adam_half_loop(p, m, v, p16, g16, lo, hi, c1, b2, c2, eps, step, inv_bc2,
                               inv_bc2_sqrt, decay, g16_scale, False, True)
            else:
                adam_half_loop(p, m, v, p16, g16, lo, hi, c1, b2, c2, eps, step, inv_bc2,
                               inv_bc2_sqrt, decay, g16_scale, False, False)
            return
    # Adam and AdamW with no other option get loops of their own, the options constants there.
    # In the general loop GCC makes the weight-decay tests selects, not separate loops (they
    # are conditional stores and sums): two blends, two multiplies and a store of p per vector
    # that plain Adam does not need (Adam 1e5 float32, one thread: 0.62-0.74 -> 0.47-0.59
    # ns/element).
    if not (scaled or maximize or coupled or eps_inside_sqrt or vmax != NULL):
        if floating is float:
            if FO_ROOT_LOOPS:
                lo += fo_adam_f32(p + lo, g + lo, m + lo, v + lo, hi - lo, c1, c1 <= 0, b2,
                                  c2, eps, decay, shrink, step, inv_bc2_sqrt)
        if shrink:
            for i in range(lo, hi):
                adam_elem(p, m, v, NULL, i, g[i], c1, b2, c2, eps, wd, step, inv_bc2,
                          inv_bc2_sqrt, decay, False, True, False)
        else:
            for i in range(lo, hi):
                adam_elem(p, m, v, NULL, i, g[i], c1, b2, c2, eps, wd, step, inv_bc2,
                          inv_bc2_sqrt, decay, False, False, False)
        return
    for i in range(lo, hi):
        gi = g[i] * scale if scaled else g[i]
        gi = -gi if maximize else gi
        adam_elem(p, m, v, vmax, i, gi, c1, b2, c2, eps, wd, step, inv_bc2, inv_bc2_sqrt,
                  decay, coupled, shrink, eps_inside_sqrt)


# the Adam family's 16-bit forms run adam_span16 (it declines other options: then blocks)
ADAM_HALF_BF16.f16 = adam_span16
ADAM_HALF_F16.f16 = adam_span16


# ------------------------------------------------------------------------------ adadelta
cdef void adadelta_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                        const adadelta_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* sq = a[2]
    cdef floating* acc = a[3]
    cdef floating lr = <floating>s.lr, rho = <floating>s.rho, c = <floating>(1.0 - s.rho)
    cdef floating eps = <floating>s.eps, wd = <floating>s.weight_decay, gi, delta
    cdef bint maximize = s.maximize, has_wd = s.weight_decay != 0
    cdef Py_ssize_t i
    if floating is float:
        if FO_ROOT_LOOPS and not (maximize or has_wd):
            lo += fo_adadelta_f32(p + lo, g + lo, sq + lo, acc + lo, hi - lo, lr, rho, c, eps)
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = rho * sq[i] + (c * gi) * gi
        delta = root(acc[i] + eps) / root(sq[i] + eps) * gi
        acc[i] = rho * acc[i] + (c * delta) * delta
        p[i] = p[i] - lr * delta


# -------------------------------------------------------------------------------- adamax
cdef void adamax_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                      const adamax_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* u = a[3]
    cdef floating c1 = lerp_coef(<floating>(1.0 - s.beta1)), b2 = <floating>s.beta2
    cdef floating eps = <floating>s.eps, wd = <floating>s.weight_decay
    cdef floating clr = <floating>s.clr, gi, pi, mi, ui
    cdef bint maximize = s.maximize, has_wd = s.weight_decay != 0
    cdef Py_ssize_t i
    for i in range(lo, hi):     # (in locals: see adam_moments)
        gi = -g[i] if maximize else g[i]
        pi = p[i]
        if has_wd:
            gi = gi + wd * pi
        mi = lerp(m[i], gi, c1)
        ui = max_nan(b2 * u[i], absolute(gi) + eps)
        m[i] = mi
        u[i] = ui
        p[i] = pi - (clr * mi) / ui


# --------------------------------------------------------------------------------- nadam
cdef inline void nadam_elem(floating* p, floating* m, floating* v, Py_ssize_t i, floating gi,
                            floating c1, floating b2, floating c2, floating eps, floating wd,
                            floating inv_bc2, floating cg, floating cm, floating decay,
                            bint coupled, bint shrink, bint tiny_eps) noexcept nogil:
    """Element ``i`` of a NAdam step with grad ``gi`` (negated already). One reciprocal of
    the denominator serves both terms; with ``tiny_eps`` (eps below 2 / max, see nadam_span)
    it may overflow, and where it does the terms divide, as torch's addcdiv (0 * inf would
    make NaN where torch leaves the param)."""
    cdef floating one = 1, r, d, pi = p[i], mi, vi
    gi = adam_moments(&pi, &mi, &vi, m, v, i, gi, c1, b2, c2, wd, decay, coupled, shrink)
    d = root(vi * inv_bc2) + eps
    r = one / d
    if tiny_eps and r - r != 0:
        pi = pi + cg * (gi / d)
        p[i] = pi + cm * (mi / d)
    else:
        pi = pi + (cg * gi) * r
        p[i] = pi + (cm * mi) * r


cdef void nadam_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                     const nadam_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* v = a[3]
    cdef floating c1 = lerp_coef(<floating>(1.0 - s.beta1)), b2 = <floating>s.beta2
    cdef floating c2 = <floating>(1.0 - s.beta2), eps = <floating>s.eps
    cdef floating wd = <floating>s.weight_decay
    cdef floating inv_bc2 = <floating>(1.0 / s.bias_correction2)
    cdef floating cg = <floating>s.grad_coef, cm = <floating>s.avg_coef
    cdef floating decay = <floating>(1.0 - s.lr * s.weight_decay), gi
    cdef bint maximize = s.maximize
    cdef bint coupled = s.weight_decay != 0 and not s.decoupled
    cdef bint shrink = s.weight_decay != 0 and s.decoupled
    # the reciprocal 1 / d (d >= eps) can overflow only for an eps below 2 / max (subnormal
    # or 0): only those steps test it per element (the test in every step's loop had cost
    # NAdam at 1e5, one thread, ~20%: 27.3-28.3 -> 32.6-35.3 us)
    cdef double largest = DBL_MAX
    if floating is float:
        largest = FLT_MAX
    cdef bint tiny_eps = not (<double>eps * largest >= 2)
    cdef Py_ssize_t i
    if not (maximize or coupled or tiny_eps):       # loops of their own, as in adam_span
        if floating is float:
            if FO_ROOT_LOOPS:
                lo += fo_nadam_f32(p + lo, g + lo, m + lo, v + lo, hi - lo, c1, c1 <= 0, b2,
                                   c2, eps, decay, shrink, inv_bc2, cg, cm)
        if shrink:
            for i in range(lo, hi):
                nadam_elem(p, m, v, i, g[i], c1, b2, c2, eps, wd, inv_bc2, cg, cm, decay,
                           False, True, False)
        else:
            for i in range(lo, hi):
                nadam_elem(p, m, v, i, g[i], c1, b2, c2, eps, wd, inv_bc2, cg, cm, decay,
                           False, False, False)
        return
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        nadam_elem(p, m, v, i, gi, c1, b2, c2, eps, wd, inv_bc2, cg, cm, decay, coupled,
                   shrink, tiny_eps)


# --------------------------------------------------------------------------------- radam
cdef inline void radam_elem(floating* p, floating* m, floating* v, Py_ssize_t i, floating gi,
                            floating c1, floating b2, floating c2, floating eps, floating wd,
                            floating step, floating scale, floating decay, bint coupled,
                            bint shrink, bint rectified) noexcept nogil:
    """Element ``i`` of a RAdam step with grad ``gi`` (negated already)."""
    cdef floating pi = p[i], mi, vi
    adam_moments(&pi, &mi, &vi, m, v, i, gi, c1, b2, c2, wd, decay, coupled, shrink)
    if rectified:
        p[i] = pi - (step * mi) * (scale / (root(vi) + eps))
    else:
        p[i] = pi - step * mi


cdef void radam_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                     const radam_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* v = a[3]
    cdef floating c1 = lerp_coef(<floating>(1.0 - s.beta1)), b2 = <floating>s.beta2
    cdef floating c2 = <floating>(1.0 - s.beta2), eps = <floating>s.eps
    cdef floating wd = <floating>s.weight_decay, step = <floating>s.step_size
    cdef floating scale = <floating>s.adaptive_scale
    cdef floating decay = <floating>(1.0 - s.lr * s.weight_decay), gi
    cdef bint maximize = s.maximize, rectified = s.rectified
    cdef bint coupled = s.weight_decay != 0 and not s.decoupled
    cdef bint shrink = s.weight_decay != 0 and s.decoupled
    cdef Py_ssize_t i
    if not (maximize or coupled or shrink):     # loops of their own, as in adam_span
        if floating is float:
            if FO_ROOT_LOOPS and rectified:
                lo += fo_radam_f32(p + lo, g + lo, m + lo, v + lo, hi - lo, c1, c1 <= 0, b2,
                                   c2, eps, step, scale)
        if rectified:
            for i in range(lo, hi):
                radam_elem(p, m, v, i, g[i], c1, b2, c2, eps, wd, step, scale, decay, False,
                           False, True)
        else:
            for i in range(lo, hi):
                radam_elem(p, m, v, i, g[i], c1, b2, c2, eps, wd, step, scale, decay, False,
                           False, False)
        return
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        radam_elem(p, m, v, i, gi, c1, b2, c2, eps, wd, step, scale, decay, coupled, shrink,
                   rectified)


# ---------------------------------------------------------------------------------- lion
cdef void lion_span(floating** a, Py_ssize_t lo, Py_ssize_t hi,
                    const lion_scalars* s) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating lr = <floating>s.lr, wd = <floating>s.weight_decay
    cdef floating c1 = <floating>(1.0 - s.beta1), b1 = <floating>s.beta1
    cdef floating c2 = <floating>(1.0 - s.beta2), b2 = <floating>s.beta2
    cdef floating one = 1, zero = 0, gi, c, sign, pi, mi
    cdef bint maximize = s.maximize
    cdef Py_ssize_t i
    for i in range(lo, hi):     # (in locals: see adam_moments)
        gi = -g[i] if maximize else g[i]
        pi = p[i]
        mi = m[i]
        c = c1 * gi + b1 * mi
        # np.sign, branch-free: +-1 where |c| > 0; else c + 0, which is +0 for either zero
        # and NaN for NaN (two selects instead of four)
        sign = copy_sign(one, c) if absolute(c) > zero else c + zero
        m[i] = c2 * gi + b2 * mi
        p[i] = pi - lr * (sign + wd * pi)

