# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Cython optimizer kernels: one fused sweep per step (read p, g and the state once, write them
once), scalars folded once per call in double and cast to the data's precision, threads over
chunks of the total element count (_elementwise.pxi, fo_pool.h). Formulas and signatures:
fastopt/reference/optim.py; ``<name>_multi`` takes lists of arrays (one call for a whole
parameter group) with the same scalars.

Each kernel is a span function over ``a = (param, grad, state...)`` and a ``<name>_consts``
function folding its arguments into ``k``/flags, shared by the single and multi entry points.
The options are loop-invariant branches: setup.py lets GCC unswitch them all, so every
combination gets its own vectorized loop.
"""
from libc.math cimport fabs, fabsf, sqrt, sqrtf

from .._multi import LISTS

include "_common.pxi"
include "_elementwise.pxi"


cdef inline floating root(floating x) noexcept nogil:
    # sqrt() on a float would promote to double and keep the float loop scalar
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating max_nan(floating a, floating b) noexcept nogil:
    """np.maximum: NaN in either operand gives NaN."""
    return a if (a >= b) | (a != a) else b   # no short-circuit: keeps the loop branch-free


cdef enum:
    MAXIMIZE = 1
    WEIGHT_DECAY = 2      # coupled: g += weight_decay * param
    DECOUPLED = 4         # AdamW: param *= 1 - lr * weight_decay
    NESTEROV = 8
    FIRST_STEP = 16
    EPS_INSIDE_SQRT = 32
    RECTIFIED = 64        # RAdam: rho_t > 5


cdef inline int option(bint on, int flag) noexcept:
    return flag if on else 0


# ----------------------------------------------------------------------------------- ewa
cdef void ewa_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                   int flags) noexcept nogil:
    cdef floating* avg = a[0]
    cdef const floating* x = a[1]
    cdef floating b = <floating>k[0], c = <floating>(1.0 - k[0])
    cdef Py_ssize_t i
    for i in range(lo, hi):
        avg[i] = b * avg[i] + c * x[i]


cdef Kernel EWA = Kernel(2, 2, ewa_span[float], ewa_span[double])
EWA_NAMES = ("avg", "x")
EWA_LISTS = LISTS["ewa"][0]


def ewa(avg, x, double beta):
    cdef double k[MAX_CONSTS]
    k[0] = beta
    if step1(&EWA, EWA_NAMES, (avg, x), k, 0):
        via_contiguous(ewa, (avg, x), beta)


def ewa_multi(avgs, xs, double beta):
    cdef double k[MAX_CONSTS]
    k[0] = beta
    lists = (avgs, xs)
    _fallback(ewa, lists, step_many(&EWA, EWA_LISTS, lists, k, 0), beta)


# ----------------------------------------------------------------------------------- sgd
cdef void sgd_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                   int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* buf = a[2]
    cdef floating lr = <floating>k[0], wd = <floating>k[1], mom = <floating>k[2]
    cdef floating keep = <floating>(1.0 - k[3]), gi
    cdef bint maximize = flags & MAXIMIZE, has_wd = flags & WEIGHT_DECAY
    cdef bint nesterov = flags & NESTEROV, first_step = flags & FIRST_STEP
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        if buf != NULL:
            buf[i] = gi if first_step else mom * buf[i] + keep * gi
            gi = gi + mom * buf[i] if nesterov else buf[i]
        p[i] = p[i] - lr * gi


cdef Kernel SGD = Kernel(3, 2, sgd_span[float], sgd_span[double])
SGD_NAMES = ("param", "grad", "momentum_buffer")
SGD_LISTS = LISTS["sgd"][0]


cdef int sgd_consts(double* k, double lr, double weight_decay, double momentum,
                    double dampening, bint nesterov, bint maximize, bint first_step) noexcept:
    k[0], k[1], k[2], k[3] = lr, weight_decay, momentum, dampening
    return (option(maximize, MAXIMIZE) | option(weight_decay != 0, WEIGHT_DECAY)
            | option(nesterov, NESTEROV) | option(first_step, FIRST_STEP))


def sgd(param, grad, momentum_buffer, double lr, double weight_decay, double momentum,
        double dampening, bint nesterov, bint maximize, bint first_step):
    cdef double k[MAX_CONSTS]
    cdef int flags = sgd_consts(k, lr, weight_decay, momentum, dampening, nesterov, maximize,
                                first_step)
    arrays = (param, grad, momentum_buffer)
    if step1(&SGD, SGD_NAMES, arrays, k, flags):
        via_contiguous(sgd, arrays, lr, weight_decay, momentum, dampening, nesterov, maximize,
                       first_step)


def sgd_multi(params, grads, momentum_buffers, double lr, double weight_decay,
              double momentum, double dampening, bint nesterov, bint maximize,
              bint first_step):
    cdef double k[MAX_CONSTS]
    cdef int flags = sgd_consts(k, lr, weight_decay, momentum, dampening, nesterov, maximize,
                                first_step)
    lists = (params, grads, momentum_buffers)
    _fallback(sgd, lists, step_many(&SGD, SGD_LISTS, lists, k, flags), lr, weight_decay,
              momentum, dampening, nesterov, maximize, first_step)


# ------------------------------------------------------------------------------ momentum
cdef void momentum_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                        int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* vel = a[2]
    cdef floating lr = <floating>k[0], b = <floating>k[1], c = <floating>(1.0 - k[1])
    cdef Py_ssize_t i
    for i in range(lo, hi):
        vel[i] = b * vel[i] + c * g[i]
        p[i] = p[i] - lr * vel[i]


cdef Kernel MOMENTUM = Kernel(3, 3, momentum_span[float], momentum_span[double])
MOMENTUM_NAMES = ("param", "grad", "velocity")
MOMENTUM_LISTS = LISTS["momentum"][0]


def momentum(param, grad, velocity, double lr, double beta):
    cdef double k[MAX_CONSTS]
    k[0], k[1] = lr, beta
    arrays = (param, grad, velocity)
    if step1(&MOMENTUM, MOMENTUM_NAMES, arrays, k, 0):
        via_contiguous(momentum, arrays, lr, beta)


def momentum_multi(params, grads, velocities, double lr, double beta):
    cdef double k[MAX_CONSTS]
    k[0], k[1] = lr, beta
    lists = (params, grads, velocities)
    _fallback(momentum, lists, step_many(&MOMENTUM, MOMENTUM_LISTS, lists, k, 0), lr, beta)


# ------------------------------------------------------------------------------- rmsprop
cdef void rmsprop_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                       int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* sq = a[2]
    cdef floating* gavg = a[3]
    cdef floating* buf = a[4]
    cdef floating lr = <floating>k[0], al = <floating>k[1], c = <floating>(1.0 - k[1])
    cdef floating eps = <floating>k[2], wd = <floating>k[3], mom = <floating>k[4]
    cdef bint maximize = flags & MAXIMIZE, has_wd = flags & WEIGHT_DECAY
    cdef bint eps_inside_sqrt = flags & EPS_INSIDE_SQRT
    cdef floating gi, s, avg
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = al * sq[i] + c * (gi * gi)
        s = sq[i]
        if gavg != NULL:
            gavg[i] = gavg[i] + c * (gi - gavg[i])
            s = sq[i] - gavg[i] * gavg[i]
        avg = root(s + eps) if eps_inside_sqrt else root(s) + eps
        if buf != NULL:
            buf[i] = mom * buf[i] + gi / avg
            p[i] = p[i] - lr * buf[i]
        else:
            p[i] = p[i] - lr * (gi / avg)


cdef Kernel RMSPROP = Kernel(5, 3, rmsprop_span[float], rmsprop_span[double])
RMSPROP_NAMES = ("param", "grad", "square_avg", "grad_avg", "momentum_buffer")
RMSPROP_LISTS = LISTS["rmsprop"][0]


cdef int rmsprop_consts(double* k, double lr, double alpha, double eps, double weight_decay,
                        double momentum, bint maximize, bint eps_inside_sqrt) noexcept:
    k[0], k[1], k[2], k[3], k[4] = lr, alpha, eps, weight_decay, momentum
    return (option(maximize, MAXIMIZE) | option(weight_decay != 0, WEIGHT_DECAY)
            | option(eps_inside_sqrt, EPS_INSIDE_SQRT))


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, double lr, double alpha,
            double eps, double weight_decay, double momentum, bint maximize,
            bint eps_inside_sqrt):
    cdef double k[MAX_CONSTS]
    cdef int flags = rmsprop_consts(k, lr, alpha, eps, weight_decay, momentum, maximize,
                                    eps_inside_sqrt)
    arrays = (param, grad, square_avg, grad_avg, momentum_buffer)
    if step1(&RMSPROP, RMSPROP_NAMES, arrays, k, flags):
        via_contiguous(rmsprop, arrays, lr, alpha, eps, weight_decay, momentum, maximize,
                       eps_inside_sqrt)


def rmsprop_multi(params, grads, square_avgs, grad_avgs, momentum_buffers, double lr,
                  double alpha, double eps, double weight_decay, double momentum,
                  bint maximize, bint eps_inside_sqrt):
    cdef double k[MAX_CONSTS]
    cdef int flags = rmsprop_consts(k, lr, alpha, eps, weight_decay, momentum, maximize,
                                    eps_inside_sqrt)
    lists = (params, grads, square_avgs, grad_avgs, momentum_buffers)
    _fallback(rmsprop, lists, step_many(&RMSPROP, RMSPROP_LISTS, lists, k, flags), lr, alpha,
              eps, weight_decay, momentum, maximize, eps_inside_sqrt)


# ------------------------------------------------------------------------------- adagrad
cdef void adagrad_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                       int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* ssum = a[2]
    cdef floating clr = <floating>k[0], eps = <floating>k[1], wd = <floating>k[2], gi
    cdef bint maximize = flags & MAXIMIZE, has_wd = flags & WEIGHT_DECAY
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        ssum[i] = ssum[i] + gi * gi
        p[i] = p[i] - clr * (gi / (root(ssum[i]) + eps))


cdef Kernel ADAGRAD = Kernel(3, 3, adagrad_span[float], adagrad_span[double])
ADAGRAD_NAMES = ("param", "grad", "state_sum")
ADAGRAD_LISTS = LISTS["adagrad"][0]


cdef int adagrad_consts(double* k, double clr, double eps, double weight_decay,
                        bint maximize) noexcept:
    k[0], k[1], k[2] = clr, eps, weight_decay
    return option(maximize, MAXIMIZE) | option(weight_decay != 0, WEIGHT_DECAY)


def adagrad(param, grad, state_sum, double clr, double eps, double weight_decay,
            bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = adagrad_consts(k, clr, eps, weight_decay, maximize)
    arrays = (param, grad, state_sum)
    if step1(&ADAGRAD, ADAGRAD_NAMES, arrays, k, flags):
        via_contiguous(adagrad, arrays, clr, eps, weight_decay, maximize)


def adagrad_multi(params, grads, state_sums, double clr, double eps, double weight_decay,
                  bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = adagrad_consts(k, clr, eps, weight_decay, maximize)
    lists = (params, grads, state_sums)
    _fallback(adagrad, lists, step_many(&ADAGRAD, ADAGRAD_LISTS, lists, k, flags), clr, eps,
              weight_decay, maximize)


# ---------------------------------------------------------------------------------- adam
# The loop's shape, per 8 floats (AVX2): 4 loads, 3 stores, one vsqrtps and one vdivps and a
# few multiplies and adds, as DeepSpeed's AVX2 path. Its floor in cache is the divider: a loop of
# sqrt + div alone runs 0.36 ns/element on one Zen 3 core, this one ~0.6 at 1e5 elements
# (streaming from L3); beyond cache, memory bandwidth. A reciprocal estimate instead of the
# division would round differently from the reference, and results must be bit-identical.
cdef void adam_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                    int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* v = a[3]
    cdef floating* vmax = a[4]
    # k: lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2
    cdef floating c1 = <floating>(1.0 - k[1]), b2 = <floating>k[2]
    cdef floating c2 = <floating>(1.0 - k[2]), eps = <floating>k[3], wd = <floating>k[4]
    cdef floating step = <floating>k[5], inv_bc2 = <floating>(1.0 / k[6])
    cdef floating inv_bc2_sqrt = <floating>(1.0 / sqrt(k[6]))
    cdef floating decay = <floating>(1.0 - k[0] * k[4])
    cdef bint maximize = flags & MAXIMIZE, coupled = flags & WEIGHT_DECAY
    cdef bint shrink = flags & DECOUPLED, eps_inside_sqrt = flags & EPS_INSIDE_SQRT
    cdef floating gi, vi, denom
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if shrink:
            p[i] = p[i] * decay
        if coupled:
            gi = gi + wd * p[i]
        m[i] = m[i] + c1 * (gi - m[i])
        v[i] = b2 * v[i] + c2 * (gi * gi)
        vi = v[i]
        if vmax != NULL:
            vmax[i] = max_nan(vmax[i], vi)
            vi = vmax[i]
        if eps_inside_sqrt:
            denom = root(vi * inv_bc2 + eps)
        else:
            denom = root(vi) * inv_bc2_sqrt + eps
        p[i] = p[i] - step * (m[i] / denom)


cdef Kernel ADAM = Kernel(5, 4, adam_span[float], adam_span[double])
ADAM_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
ADAM_LISTS = LISTS["adam"][0]


cdef int adam_consts(double* k, double lr, double beta1, double beta2, double eps,
                     double weight_decay, double step_size, double bias_correction2,
                     bint decoupled, bint maximize, bint eps_inside_sqrt) noexcept:
    k[0], k[1], k[2], k[3], k[4] = lr, beta1, beta2, eps, weight_decay
    k[5], k[6] = step_size, bias_correction2
    return (option(maximize, MAXIMIZE) | option(eps_inside_sqrt, EPS_INSIDE_SQRT)
            | option(weight_decay != 0 and not decoupled, WEIGHT_DECAY)
            | option(weight_decay != 0 and decoupled, DECOUPLED))


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, double lr, double beta1,
         double beta2, double eps, double weight_decay, double step_size,
         double bias_correction2, bint decoupled, bint maximize, bint eps_inside_sqrt):
    cdef double k[MAX_CONSTS]
    cdef int flags = adam_consts(k, lr, beta1, beta2, eps, weight_decay, step_size,
                                 bias_correction2, decoupled, maximize, eps_inside_sqrt)
    arrays = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    if step1(&ADAM, ADAM_NAMES, arrays, k, flags):
        via_contiguous(adam, arrays, lr, beta1, beta2, eps, weight_decay, step_size,
                       bias_correction2, decoupled, maximize, eps_inside_sqrt)


def adam_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, double lr,
               double beta1, double beta2, double eps, double weight_decay, double step_size,
               double bias_correction2, bint decoupled, bint maximize, bint eps_inside_sqrt):
    cdef double k[MAX_CONSTS]
    cdef int flags = adam_consts(k, lr, beta1, beta2, eps, weight_decay, step_size,
                                 bias_correction2, decoupled, maximize, eps_inside_sqrt)
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs)
    _fallback(adam, lists, step_many(&ADAM, ADAM_LISTS, lists, k, flags), lr, beta1, beta2,
              eps, weight_decay, step_size, bias_correction2, decoupled, maximize,
              eps_inside_sqrt)


# ------------------------------------------------------------------------------ adadelta
cdef void adadelta_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                        int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* sq = a[2]
    cdef floating* acc = a[3]
    cdef floating lr = <floating>k[0], rho = <floating>k[1], c = <floating>(1.0 - k[1])
    cdef floating eps = <floating>k[2], wd = <floating>k[3], gi, delta
    cdef bint maximize = flags & MAXIMIZE, has_wd = flags & WEIGHT_DECAY
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        sq[i] = rho * sq[i] + c * (gi * gi)
        delta = root(acc[i] + eps) / root(sq[i] + eps) * gi
        acc[i] = rho * acc[i] + c * (delta * delta)
        p[i] = p[i] - lr * delta


cdef Kernel ADADELTA = Kernel(4, 4, adadelta_span[float], adadelta_span[double])
ADADELTA_NAMES = ("param", "grad", "square_avg", "acc_delta")
ADADELTA_LISTS = LISTS["adadelta"][0]


cdef int adadelta_consts(double* k, double lr, double rho, double eps, double weight_decay,
                         bint maximize) noexcept:
    k[0], k[1], k[2], k[3] = lr, rho, eps, weight_decay
    return option(maximize, MAXIMIZE) | option(weight_decay != 0, WEIGHT_DECAY)


def adadelta(param, grad, square_avg, acc_delta, double lr, double rho, double eps,
             double weight_decay, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = adadelta_consts(k, lr, rho, eps, weight_decay, maximize)
    arrays = (param, grad, square_avg, acc_delta)
    if step1(&ADADELTA, ADADELTA_NAMES, arrays, k, flags):
        via_contiguous(adadelta, arrays, lr, rho, eps, weight_decay, maximize)


def adadelta_multi(params, grads, square_avgs, acc_deltas, double lr, double rho, double eps,
                   double weight_decay, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = adadelta_consts(k, lr, rho, eps, weight_decay, maximize)
    lists = (params, grads, square_avgs, acc_deltas)
    _fallback(adadelta, lists, step_many(&ADADELTA, ADADELTA_LISTS, lists, k, flags), lr, rho,
              eps, weight_decay, maximize)


# -------------------------------------------------------------------------------- adamax
cdef inline floating absolute(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef void adamax_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                      int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* u = a[3]
    cdef floating c1 = <floating>(1.0 - k[0]), b2 = <floating>k[1], eps = <floating>k[2]
    cdef floating wd = <floating>k[3], clr = <floating>k[4], gi
    cdef bint maximize = flags & MAXIMIZE, has_wd = flags & WEIGHT_DECAY
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if has_wd:
            gi = gi + wd * p[i]
        m[i] = m[i] + c1 * (gi - m[i])
        u[i] = max_nan(b2 * u[i], absolute(gi) + eps)
        p[i] = p[i] - clr * (m[i] / u[i])


cdef Kernel ADAMAX = Kernel(4, 4, adamax_span[float], adamax_span[double])
ADAMAX_NAMES = ("param", "grad", "exp_avg", "exp_inf")
ADAMAX_LISTS = LISTS["adamax"][0]


cdef int adamax_consts(double* k, double beta1, double beta2, double eps, double weight_decay,
                       double clr, bint maximize) noexcept:
    k[0], k[1], k[2], k[3], k[4] = beta1, beta2, eps, weight_decay, clr
    return option(maximize, MAXIMIZE) | option(weight_decay != 0, WEIGHT_DECAY)


def adamax(param, grad, exp_avg, exp_inf, double beta1, double beta2, double eps,
           double weight_decay, double clr, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = adamax_consts(k, beta1, beta2, eps, weight_decay, clr, maximize)
    arrays = (param, grad, exp_avg, exp_inf)
    if step1(&ADAMAX, ADAMAX_NAMES, arrays, k, flags):
        via_contiguous(adamax, arrays, beta1, beta2, eps, weight_decay, clr, maximize)


def adamax_multi(params, grads, exp_avgs, exp_infs, double beta1, double beta2, double eps,
                 double weight_decay, double clr, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = adamax_consts(k, beta1, beta2, eps, weight_decay, clr, maximize)
    lists = (params, grads, exp_avgs, exp_infs)
    _fallback(adamax, lists, step_many(&ADAMAX, ADAMAX_LISTS, lists, k, flags), beta1, beta2,
              eps, weight_decay, clr, maximize)


# --------------------------------------------------------------------------------- nadam
cdef void nadam_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                     int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* v = a[3]
    # k: lr, beta1, beta2, eps, weight_decay, bias_correction2, grad_coef, avg_coef
    cdef floating c1 = <floating>(1.0 - k[1]), b2 = <floating>k[2]
    cdef floating c2 = <floating>(1.0 - k[2]), eps = <floating>k[3], wd = <floating>k[4]
    cdef floating inv_bc2 = <floating>(1.0 / k[5]), cg = <floating>k[6], cm = <floating>k[7]
    cdef floating decay = <floating>(1.0 - k[0] * k[4]), one = 1, gi, r
    cdef bint maximize = flags & MAXIMIZE, coupled = flags & WEIGHT_DECAY
    cdef bint shrink = flags & DECOUPLED
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if shrink:
            p[i] = p[i] * decay
        if coupled:
            gi = gi + wd * p[i]
        m[i] = m[i] + c1 * (gi - m[i])
        v[i] = b2 * v[i] + c2 * (gi * gi)
        r = one / (root(v[i] * inv_bc2) + eps)
        p[i] = p[i] + cg * (gi * r)
        p[i] = p[i] + cm * (m[i] * r)


cdef Kernel NADAM = Kernel(4, 4, nadam_span[float], nadam_span[double])
NADAM_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq")
NADAM_LISTS = LISTS["nadam"][0]


cdef int nadam_consts(double* k, double lr, double beta1, double beta2, double eps,
                      double weight_decay, double bias_correction2, double grad_coef,
                      double avg_coef, bint decoupled, bint maximize) noexcept:
    k[0], k[1], k[2], k[3], k[4] = lr, beta1, beta2, eps, weight_decay
    k[5], k[6], k[7] = bias_correction2, grad_coef, avg_coef
    return (option(maximize, MAXIMIZE)
            | option(weight_decay != 0 and not decoupled, WEIGHT_DECAY)
            | option(weight_decay != 0 and decoupled, DECOUPLED))


def nadam(param, grad, exp_avg, exp_avg_sq, double lr, double beta1, double beta2, double eps,
          double weight_decay, double bias_correction2, double grad_coef, double avg_coef,
          bint decoupled, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = nadam_consts(k, lr, beta1, beta2, eps, weight_decay, bias_correction2,
                                  grad_coef, avg_coef, decoupled, maximize)
    arrays = (param, grad, exp_avg, exp_avg_sq)
    if step1(&NADAM, NADAM_NAMES, arrays, k, flags):
        via_contiguous(nadam, arrays, lr, beta1, beta2, eps, weight_decay, bias_correction2,
                       grad_coef, avg_coef, decoupled, maximize)


def nadam_multi(params, grads, exp_avgs, exp_avg_sqs, double lr, double beta1, double beta2,
                double eps, double weight_decay, double bias_correction2, double grad_coef,
                double avg_coef, bint decoupled, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = nadam_consts(k, lr, beta1, beta2, eps, weight_decay, bias_correction2,
                                  grad_coef, avg_coef, decoupled, maximize)
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    _fallback(nadam, lists, step_many(&NADAM, NADAM_LISTS, lists, k, flags), lr, beta1, beta2,
              eps, weight_decay, bias_correction2, grad_coef, avg_coef, decoupled, maximize)


# --------------------------------------------------------------------------------- radam
cdef void radam_span(floating** a, Py_ssize_t lo, Py_ssize_t hi, const double* k,
                     int flags) noexcept nogil:
    cdef floating* p = a[0]
    cdef const floating* g = a[1]
    cdef floating* m = a[2]
    cdef floating* v = a[3]
    # k: lr, beta1, beta2, eps, weight_decay, step_size
    cdef floating c1 = <floating>(1.0 - k[1]), b2 = <floating>k[2]
    cdef floating c2 = <floating>(1.0 - k[2]), eps = <floating>k[3], wd = <floating>k[4]
    cdef floating step = <floating>k[5], decay = <floating>(1.0 - k[0] * k[4]), gi
    cdef bint maximize = flags & MAXIMIZE, coupled = flags & WEIGHT_DECAY
    cdef bint shrink = flags & DECOUPLED, rectified = flags & RECTIFIED
    cdef Py_ssize_t i
    for i in range(lo, hi):
        gi = -g[i] if maximize else g[i]
        if shrink:
            p[i] = p[i] * decay
        if coupled:
            gi = gi + wd * p[i]
        m[i] = m[i] + c1 * (gi - m[i])
        v[i] = b2 * v[i] + c2 * (gi * gi)
        if rectified:
            p[i] = p[i] - step * (m[i] / (root(v[i]) + eps))
        else:
            p[i] = p[i] - step * m[i]


cdef Kernel RADAM = Kernel(4, 4, radam_span[float], radam_span[double])
RADAM_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq")
RADAM_LISTS = LISTS["radam"][0]


cdef int radam_consts(double* k, double lr, double beta1, double beta2, double eps,
                      double weight_decay, double step_size, bint rectified, bint decoupled,
                      bint maximize) noexcept:
    k[0], k[1], k[2], k[3], k[4], k[5] = lr, beta1, beta2, eps, weight_decay, step_size
    return (option(maximize, MAXIMIZE) | option(rectified, RECTIFIED)
            | option(weight_decay != 0 and not decoupled, WEIGHT_DECAY)
            | option(weight_decay != 0 and decoupled, DECOUPLED))


def radam(param, grad, exp_avg, exp_avg_sq, double lr, double beta1, double beta2, double eps,
          double weight_decay, double step_size, bint rectified, bint decoupled,
          bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = radam_consts(k, lr, beta1, beta2, eps, weight_decay, step_size, rectified,
                                  decoupled, maximize)
    arrays = (param, grad, exp_avg, exp_avg_sq)
    if step1(&RADAM, RADAM_NAMES, arrays, k, flags):
        via_contiguous(radam, arrays, lr, beta1, beta2, eps, weight_decay, step_size, rectified,
                       decoupled, maximize)


def radam_multi(params, grads, exp_avgs, exp_avg_sqs, double lr, double beta1, double beta2,
                double eps, double weight_decay, double step_size, bint rectified,
                bint decoupled, bint maximize):
    cdef double k[MAX_CONSTS]
    cdef int flags = radam_consts(k, lr, beta1, beta2, eps, weight_decay, step_size, rectified,
                                  decoupled, maximize)
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    _fallback(radam, lists, step_many(&RADAM, RADAM_LISTS, lists, k, flags), lr, beta1, beta2,
              eps, weight_decay, step_size, rectified, decoupled, maximize)
