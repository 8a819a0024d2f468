# The entry points of the 16-bit kernels (fastopt._registry.HALF_KERNELS; textually included
# after _glue.pxi), run by _elementwise.pxi's driver: a Kernel with f64 NULL. Their param and
# grad are uint16 arrays (bfloat16 bit patterns or float16; int16 views are accepted), their
# master copy and state float32, all of one shape. Their spans are in optim.pyx.
# -------------------------------------------------------------------------------- adam_half
ctypedef struct adam_half_scalars:
    double lr
    double beta1
    double beta2
    double eps
    double weight_decay
    double step_size
    double bias_correction2
    double grad_scale
    bint decoupled
    bint maximize
    bint eps_inside_sqrt
    bint bfloat16

cdef Kernel ADAM_HALF_KERNEL = Kernel(6, 5, <span32>adam_half_span, NULL)
cdef tuple ADAM_HALF_NAMES = ("param", "grad", "master", "exp_avg", "exp_avg_sq",
                              "max_exp_avg_sq")
cdef tuple ADAM_HALF_LISTS = ("params", "grads", "masters", "exp_avgs", "exp_avg_sqs",
                              "max_exp_avg_sqs")


cdef void fill_adam_half(adam_half_scalars* s, double lr, double beta1, double beta2,
                         double eps, double weight_decay, double step_size,
                         double bias_correction2, double grad_scale, bint decoupled,
                         bint maximize, bint eps_inside_sqrt, bint bfloat16) noexcept:
    s.lr, s.beta1, s.beta2, s.eps = lr, beta1, beta2, eps
    s.weight_decay, s.step_size, s.bias_correction2 = weight_decay, step_size, bias_correction2
    s.grad_scale, s.decoupled, s.maximize = grad_scale, decoupled, maximize
    s.eps_inside_sqrt, s.bfloat16 = eps_inside_sqrt, bfloat16


def adam_half(param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq, *, double lr,
              double beta1, double beta2, double eps, double weight_decay, double step_size,
              double bias_correction2, double grad_scale, bint decoupled, bint maximize,
              bint eps_inside_sqrt, bint bfloat16):
    """Adam on a 16-bit parameter with a float32 master copy: see fastopt/reference/lowp.py."""
    cdef adam_half_scalars s
    fill_adam_half(&s, lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2,
                   grad_scale, decoupled, maximize, eps_inside_sqrt, bfloat16)
    arrays = (param, grad, master, exp_avg, exp_avg_sq, max_exp_avg_sq)
    if step1(&ADAM_HALF_KERNEL, ADAM_HALF_NAMES, arrays, &s):
        via_contiguous(adam_half, arrays, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, step_size=step_size,
                       bias_correction2=bias_correction2, grad_scale=grad_scale,
                       decoupled=decoupled, maximize=maximize,
                       eps_inside_sqrt=eps_inside_sqrt, bfloat16=bfloat16)


def adam_half_multi(params, grads, masters, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, *,
                    double lr, double beta1, double beta2, double eps, double weight_decay,
                    double step_size, double bias_correction2, double grad_scale,
                    bint decoupled, bint maximize, bint eps_inside_sqrt, bint bfloat16):
    """adam_half over lists of arrays, one sweep."""
    cdef adam_half_scalars s
    fill_adam_half(&s, lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2,
                   grad_scale, decoupled, maximize, eps_inside_sqrt, bfloat16)
    lists = (params, grads, masters, exp_avgs, exp_avg_sqs, max_exp_avg_sqs)
    slow = step_many(&ADAM_HALF_KERNEL, ADAM_HALF_LISTS, lists, &s)
    if slow:
        _fallback(adam_half, lists, slow, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                  weight_decay=weight_decay, step_size=step_size,
                  bias_correction2=bias_correction2, grad_scale=grad_scale,
                  decoupled=decoupled, maximize=maximize, eps_inside_sqrt=eps_inside_sqrt,
                  bfloat16=bfloat16)
