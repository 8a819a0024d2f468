# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Cython optimizer kernels: one fused sweep per step (read p, g and the state once, write them
once), scalars folded once per call in double and cast to the data's precision, OpenMP over
contiguous chunks above PARALLEL_MIN. Each element is computed independently, so the result is
bit-identical for any thread count. Formulas and signatures: fastopt/reference/optim.py.

The options (maximize, weight decay, optional state) are loop-invariant branches: setup.py lets
GCC unswitch them all, so every combination gets its own vectorized loop.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

from .._layout import via_contiguous

include "_common.pxi"


cdef inline floating root(floating x) noexcept nogil:
    # sqrt() on a float would promote to double and keep the float loop scalar
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating max_nan(floating a, floating b) noexcept nogil:
    """np.maximum: NaN in either operand gives NaN."""
    return a if (a >= b) | (a != a) else b   # no short-circuit: keeps the loop branch-free


# ----------------------------------------------------------------------------------- ewa
cdef void ewa_span(floating* avg, const floating* x, Py_ssize_t n, double beta) noexcept nogil:
    cdef floating b = <floating>beta, c = <floating>(1.0 - beta)
    cdef Py_ssize_t i
    for i in range(n):
        avg[i] = b * avg[i] + c * x[i]


cdef void ewa_run(floating* avg, const floating* x, Py_ssize_t n, double beta) noexcept nogil:
    cdef int nt = threads_for(n)
    cdef Py_ssize_t c, lo, chunk = chunk_for(n, nt)
    if nt == 1:  # entering an OpenMP region costs ~0.6 us even with one thread
        ewa_span(avg, x, n, beta)
        return
    for c in prange(nt, schedule="static", num_threads=nt, nogil=True):
        lo = c * chunk
        if lo < n:
            ewa_span(avg + lo, x + lo, min(chunk, n - lo), beta)


def ewa(cnp.ndarray avg, cnp.ndarray x, double beta):
    check_param("avg", avg)
    check_like("x", x, "avg", avg, False)
    if not all_flat(avg, x):
        return via_contiguous(ewa, (avg, x), beta)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(avg)
    if cnp.PyArray_TYPE(avg) == cnp.NPY_FLOAT:
        ewa_run(<float*>data(avg), <float*>data(x), n, beta)
    else:
        ewa_run(<double*>data(avg), <double*>data(x), n, beta)


# ----------------------------------------------------------------------------------- sgd
cdef void sgd_span(floating* p, const floating* g, floating* buf, Py_ssize_t n, double lr,
                   double weight_decay, double momentum, double dampening, bint nesterov,
                   bint maximize, bint first_step) noexcept nogil:
    cdef floating lr_ = <floating>lr, wd = <floating>weight_decay, mom = <floating>momentum
    cdef floating keep = <floating>(1.0 - dampening), gi
    cdef Py_ssize_t i
    for i in range(n):
        gi = -g[i] if maximize else g[i]
        if weight_decay != 0:
            gi = gi + wd * p[i]
        if buf != NULL:
            buf[i] = gi if first_step else mom * buf[i] + keep * gi
            gi = gi + mom * buf[i] if nesterov else buf[i]
        p[i] = p[i] - lr_ * gi


cdef void sgd_run(floating* p, const floating* g, floating* buf, Py_ssize_t n, double lr,
                  double weight_decay, double momentum, double dampening, bint nesterov,
                  bint maximize, bint first_step) noexcept nogil:
    cdef int nt = threads_for(n)
    cdef Py_ssize_t c, lo, chunk = chunk_for(n, nt)
    if nt == 1:  # entering an OpenMP region costs ~0.6 us even with one thread
        sgd_span(p, g, buf, n, lr, weight_decay, momentum, dampening, nesterov, maximize,
                 first_step)
        return
    for c in prange(nt, schedule="static", num_threads=nt, nogil=True):
        lo = c * chunk
        if lo < n:
            sgd_span(p + lo, g + lo, NULL if buf == NULL else buf + lo, min(chunk, n - lo),
                     lr, weight_decay, momentum, dampening, nesterov, maximize, first_step)


def sgd(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray momentum_buffer, double lr,
        double weight_decay, double momentum, double dampening, bint nesterov, bint maximize,
        bint first_step):
    check_param("param", param)
    check_like("momentum_buffer", momentum_buffer, "param", param, True)
    check_like("grad", grad, "param", param, False)
    if not all_flat(param, grad, momentum_buffer):
        return via_contiguous(sgd, (param, grad, momentum_buffer), lr, weight_decay,
                              momentum, dampening, nesterov, maximize, first_step)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    if cnp.PyArray_TYPE(param) == cnp.NPY_FLOAT:
        sgd_run(<float*>data(param), <float*>data(grad), <float*>data(momentum_buffer), n, lr,
                weight_decay, momentum, dampening, nesterov, maximize, first_step)
    else:
        sgd_run(<double*>data(param), <double*>data(grad), <double*>data(momentum_buffer), n,
                lr, weight_decay, momentum, dampening, nesterov, maximize, first_step)


# ------------------------------------------------------------------------------ momentum
cdef void momentum_span(floating* p, const floating* g, floating* vel, Py_ssize_t n, double lr,
                        double beta) noexcept nogil:
    cdef floating lr_ = <floating>lr, b = <floating>beta, c = <floating>(1.0 - beta)
    cdef Py_ssize_t i
    for i in range(n):
        vel[i] = b * vel[i] + c * g[i]
        p[i] = p[i] - lr_ * vel[i]


cdef void momentum_run(floating* p, const floating* g, floating* vel, Py_ssize_t n, double lr,
                       double beta) noexcept nogil:
    cdef int nt = threads_for(n)
    cdef Py_ssize_t c, lo, chunk = chunk_for(n, nt)
    if nt == 1:  # entering an OpenMP region costs ~0.6 us even with one thread
        momentum_span(p, g, vel, n, lr, beta)
        return
    for c in prange(nt, schedule="static", num_threads=nt, nogil=True):
        lo = c * chunk
        if lo < n:
            momentum_span(p + lo, g + lo, vel + lo, min(chunk, n - lo), lr, beta)


def momentum(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray velocity, double lr,
             double beta):
    check_param("param", param)
    check_like("velocity", velocity, "param", param, True)
    check_like("grad", grad, "param", param, False)
    if velocity is None:
        raise TypeError("velocity must be a numpy.ndarray, got NoneType")
    if not all_flat(param, grad, velocity):
        return via_contiguous(momentum, (param, grad, velocity), lr, beta)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    if cnp.PyArray_TYPE(param) == cnp.NPY_FLOAT:
        momentum_run(<float*>data(param), <float*>data(grad), <float*>data(velocity), n, lr,
                     beta)
    else:
        momentum_run(<double*>data(param), <double*>data(grad), <double*>data(velocity), n, lr,
                     beta)


# ------------------------------------------------------------------------------- rmsprop
cdef void rmsprop_span(floating* p, const floating* g, floating* sq, floating* gavg,
                       floating* buf, Py_ssize_t n, double lr, double alpha, double eps,
                       double weight_decay, double momentum, bint maximize,
                       bint eps_inside_sqrt) noexcept nogil:
    cdef floating lr_ = <floating>lr, a = <floating>alpha, c = <floating>(1.0 - alpha)
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, mom = <floating>momentum
    cdef floating gi, s, avg
    cdef Py_ssize_t i
    for i in range(n):
        gi = -g[i] if maximize else g[i]
        if weight_decay != 0:
            gi = gi + wd * p[i]
        sq[i] = a * sq[i] + c * (gi * gi)
        s = sq[i]
        if gavg != NULL:
            gavg[i] = gavg[i] + c * (gi - gavg[i])
            s = sq[i] - gavg[i] * gavg[i]
        avg = root(s + eps_) if eps_inside_sqrt else root(s) + eps_
        if buf != NULL:
            buf[i] = mom * buf[i] + gi / avg
            p[i] = p[i] - lr_ * buf[i]
        else:
            p[i] = p[i] - lr_ * (gi / avg)


cdef void rmsprop_run(floating* p, const floating* g, floating* sq, floating* gavg,
                      floating* buf, Py_ssize_t n, double lr, double alpha, double eps,
                      double weight_decay, double momentum, bint maximize,
                      bint eps_inside_sqrt) noexcept nogil:
    cdef int nt = threads_for(n)
    cdef Py_ssize_t c, lo, chunk = chunk_for(n, nt)
    if nt == 1:  # entering an OpenMP region costs ~0.6 us even with one thread
        rmsprop_span(p, g, sq, gavg, buf, n, lr, alpha, eps, weight_decay, momentum, maximize,
                     eps_inside_sqrt)
        return
    for c in prange(nt, schedule="static", num_threads=nt, nogil=True):
        lo = c * chunk
        if lo < n:
            rmsprop_span(p + lo, g + lo, sq + lo, NULL if gavg == NULL else gavg + lo,
                         NULL if buf == NULL else buf + lo, min(chunk, n - lo), lr, alpha, eps,
                         weight_decay, momentum, maximize, eps_inside_sqrt)


def rmsprop(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray square_avg, cnp.ndarray grad_avg,
            cnp.ndarray momentum_buffer, double lr, double alpha, double eps,
            double weight_decay, double momentum, bint maximize, bint eps_inside_sqrt):
    check_param("param", param)
    check_like("square_avg", square_avg, "param", param, True)
    check_like("grad_avg", grad_avg, "param", param, True)
    check_like("momentum_buffer", momentum_buffer, "param", param, True)
    check_like("grad", grad, "param", param, False)
    if square_avg is None:
        raise TypeError("square_avg must be a numpy.ndarray, got NoneType")
    if not all_flat(param, grad, square_avg, grad_avg, momentum_buffer):
        return via_contiguous(rmsprop, (param, grad, square_avg, grad_avg, momentum_buffer), lr,
                              alpha, eps, weight_decay, momentum, maximize, eps_inside_sqrt)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    if cnp.PyArray_TYPE(param) == cnp.NPY_FLOAT:
        rmsprop_run(<float*>data(param), <float*>data(grad), <float*>data(square_avg),
                    <float*>data(grad_avg), <float*>data(momentum_buffer), n, lr, alpha, eps,
                    weight_decay, momentum, maximize, eps_inside_sqrt)
    else:
        rmsprop_run(<double*>data(param), <double*>data(grad), <double*>data(square_avg),
                    <double*>data(grad_avg), <double*>data(momentum_buffer), n, lr, alpha, eps,
                    weight_decay, momentum, maximize, eps_inside_sqrt)


# ------------------------------------------------------------------------------- adagrad
cdef void adagrad_span(floating* p, const floating* g, floating* ssum, Py_ssize_t n, double clr,
                       double eps, double weight_decay, bint maximize) noexcept nogil:
    cdef floating clr_ = <floating>clr, eps_ = <floating>eps, wd = <floating>weight_decay, gi
    cdef Py_ssize_t i
    for i in range(n):
        gi = -g[i] if maximize else g[i]
        if weight_decay != 0:
            gi = gi + wd * p[i]
        ssum[i] = ssum[i] + gi * gi
        p[i] = p[i] - clr_ * (gi / (root(ssum[i]) + eps_))


cdef void adagrad_run(floating* p, const floating* g, floating* ssum, Py_ssize_t n, double clr,
                      double eps, double weight_decay, bint maximize) noexcept nogil:
    cdef int nt = threads_for(n)
    cdef Py_ssize_t c, lo, chunk = chunk_for(n, nt)
    if nt == 1:  # entering an OpenMP region costs ~0.6 us even with one thread
        adagrad_span(p, g, ssum, n, clr, eps, weight_decay, maximize)
        return
    for c in prange(nt, schedule="static", num_threads=nt, nogil=True):
        lo = c * chunk
        if lo < n:
            adagrad_span(p + lo, g + lo, ssum + lo, min(chunk, n - lo), clr, eps, weight_decay,
                         maximize)


def adagrad(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray state_sum, double clr, double eps,
            double weight_decay, bint maximize):
    check_param("param", param)
    check_like("state_sum", state_sum, "param", param, True)
    check_like("grad", grad, "param", param, False)
    if state_sum is None:
        raise TypeError("state_sum must be a numpy.ndarray, got NoneType")
    if not all_flat(param, grad, state_sum):
        return via_contiguous(adagrad, (param, grad, state_sum), clr, eps, weight_decay,
                              maximize)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    if cnp.PyArray_TYPE(param) == cnp.NPY_FLOAT:
        adagrad_run(<float*>data(param), <float*>data(grad), <float*>data(state_sum), n, clr,
                    eps, weight_decay, maximize)
    else:
        adagrad_run(<double*>data(param), <double*>data(grad), <double*>data(state_sum), n, clr,
                    eps, weight_decay, maximize)


# ---------------------------------------------------------------------------------- adam
cdef void adam_span(floating* p, const floating* g, floating* m, floating* v, floating* vmax,
                    Py_ssize_t n, double lr, double beta1, double beta2, double eps,
                    double weight_decay, double step_size, double bias_correction2,
                    bint decoupled, bint maximize, bint eps_inside_sqrt) noexcept nogil:
    cdef floating c1 = <floating>(1.0 - beta1), b2 = <floating>beta2
    cdef floating c2 = <floating>(1.0 - beta2), eps_ = <floating>eps
    cdef floating step = <floating>step_size, bc2 = <floating>bias_correction2
    cdef floating bc2_sqrt = <floating>sqrt(bias_correction2)
    cdef floating wd = <floating>weight_decay, decay = <floating>(1.0 - lr * weight_decay)
    cdef bint coupled = weight_decay != 0 and not decoupled
    cdef bint shrink = weight_decay != 0 and decoupled
    cdef floating gi, vi, denom
    cdef Py_ssize_t i
    for i in range(n):
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
            denom = root(vi / bc2 + eps_)
        else:
            denom = root(vi) / bc2_sqrt + eps_
        p[i] = p[i] - step * (m[i] / denom)


cdef void adam_run(floating* p, const floating* g, floating* m, floating* v, floating* vmax,
                   Py_ssize_t n, double lr, double beta1, double beta2, double eps,
                   double weight_decay, double step_size, double bias_correction2,
                   bint decoupled, bint maximize, bint eps_inside_sqrt) noexcept nogil:
    cdef int nt = threads_for(n)
    cdef Py_ssize_t c, lo, chunk = chunk_for(n, nt)
    if nt == 1:  # entering an OpenMP region costs ~0.6 us even with one thread
        adam_span(p, g, m, v, vmax, n, lr, beta1, beta2, eps, weight_decay, step_size,
                  bias_correction2, decoupled, maximize, eps_inside_sqrt)
        return
    for c in prange(nt, schedule="static", num_threads=nt, nogil=True):
        lo = c * chunk
        if lo < n:
            adam_span(p + lo, g + lo, m + lo, v + lo, NULL if vmax == NULL else vmax + lo,
                      min(chunk, n - lo), lr, beta1, beta2, eps, weight_decay, step_size,
                      bias_correction2, decoupled, maximize, eps_inside_sqrt)


def adam(cnp.ndarray param, cnp.ndarray grad, cnp.ndarray exp_avg, cnp.ndarray exp_avg_sq,
         cnp.ndarray max_exp_avg_sq, double lr, double beta1, double beta2, double eps,
         double weight_decay, double step_size, double bias_correction2, bint decoupled,
         bint maximize, bint eps_inside_sqrt):
    check_param("param", param)
    check_like("exp_avg", exp_avg, "param", param, True)
    check_like("exp_avg_sq", exp_avg_sq, "param", param, True)
    check_like("max_exp_avg_sq", max_exp_avg_sq, "param", param, True)
    check_like("grad", grad, "param", param, False)
    if exp_avg is None or exp_avg_sq is None:
        raise TypeError("exp_avg and exp_avg_sq must be numpy.ndarray, got NoneType")
    if not all_flat(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
        return via_contiguous(adam, (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq), lr,
                              beta1, beta2, eps, weight_decay, step_size, bias_correction2,
                              decoupled, maximize, eps_inside_sqrt)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(param)
    if cnp.PyArray_TYPE(param) == cnp.NPY_FLOAT:
        adam_run(<float*>data(param), <float*>data(grad), <float*>data(exp_avg),
                 <float*>data(exp_avg_sq), <float*>data(max_exp_avg_sq), n, lr, beta1, beta2,
                 eps, weight_decay, step_size, bias_correction2, decoupled, maximize,
                 eps_inside_sqrt)
    else:
        adam_run(<double*>data(param), <double*>data(grad), <double*>data(exp_avg),
                 <double*>data(exp_avg_sq), <double*>data(max_exp_avg_sq), n, lr, beta1, beta2,
                 eps, weight_decay, step_size, bias_correction2, decoupled, maximize,
                 eps_inside_sqrt)
