"""The kernel registry: every element-wise kernel declared once.

Each :class:`Kernel` names its arrays (in the backends' order: the updated param, the read-only
grad, then state, of which the trailing ones may be optional), its scalars (per-call floats,
already folded in float64 by :mod:`fastopt.ops`) and its options (bools). From this list:

- every backend offers ``<name>(*arrays, *, <scalars>, <options>)`` and
  ``<name>_multi(*lists, *, <scalars>, <options>)``, scalars and options keyword-only, so a
  swapped pair cannot be written; ``fastopt._backend`` builds from this list the namespace
  ``fastopt.ops`` calls (the ``_multi`` form of a backend without its own is
  ``fastopt._multi.foreach``) and refuses a backend that lacks a kernel;
- the Cython glue (``_kernels/optim.pyx.tp``) is generated: one ``struct`` of named fields per
  kernel, and the single and list entry points;
- the tests check every backend against it (tests/test_registry.py) and run their grids over
  it; ``fastopt._bench`` times every kernel.

This module imports nothing from fastopt or NumPy: setup.py loads it by path to generate the
Cython glue.
"""
from dataclasses import dataclass, field
from itertools import product

__all__ = ["Kernel", "KERNELS", "HALF_KERNELS", "LAYERS", "get"]


@dataclass(frozen=True)
class Kernel:
    """One element-wise kernel.

    Attributes
    ----------
    name : str
        The backends' function name; ``<name>_multi`` is its list form.
    arrays : tuple of str
        Argument names of the single form, in order: the param (updated), the grad (read
        only), then state (updated).
    nrequired : int
        The first ``nrequired`` arrays may not be None; the others are optional state, None
        when not in use.
    lists : tuple of str
        Argument names of the list form (``params``, ``grads``, ...), as errors spell them.
    scalars : tuple of str
        The per-call floats, keyword-only.
    options : tuple of str
        The per-call bools, keyword-only.
    ops : str or None
        The :mod:`fastopt.ops` function for one array; ``foreach_<ops>`` takes lists (None:
        the kernel has none, as the 16-bit ones, which fastopt.torch calls).
    examples : dict
        A valid value of every scalar, distinct ones (test grids and benchmarks).
    base : str or None
        A 16-bit form's float32 kernel (:meth:`halved`); None for the others.
    needed_when : tuple of (int, str)
        Optional arrays a scalar needs: ``(i, name)``, array ``i`` may not be None where the
        scalar ``name`` is not 0 (momentum without its buffer would be ignored).
    """

    name: str
    arrays: tuple
    nrequired: int
    lists: tuple
    scalars: tuple
    options: tuple
    ops: str
    examples: dict = field(default_factory=dict)
    base: str | None = None
    needed_when: tuple = ()

    def __post_init__(self):
        assert len(self.lists) == len(self.arrays), self.name
        assert set(self.examples) == set(self.scalars), self.name

    @property
    def multi(self):
        """Name of the list form."""
        return self.name + "_multi"

    @property
    def foreach_ops(self):
        """Name of the :mod:`fastopt.ops` list form."""
        return "foreach_" + self.ops

    @property
    def optional(self):
        """The optional state arrays (None when not in use)."""
        return self.arrays[self.nrequired:]

    @property
    def keywords(self):
        """Every keyword-only argument: the scalars, then the options."""
        return self.scalars + self.options

    def variants(self):
        """Every combination of the options and of the optional arrays in use, as
        ``(options dict, tuple of the optional arrays in use)``."""
        for flags in product((False, True), repeat=len(self.options)):
            for used in product((False, True), repeat=len(self.optional)):
                yield (dict(zip(self.options, flags)),
                       tuple(a for a, u in zip(self.optional, used) if u))

    def halved(self):
        """The 16-bit form of this kernel, ``<name>_half``: its param and grad are 16-bit
        (bfloat16 bit patterns or float16, both as ``uint16``; the option ``bfloat16`` picks
        the format), and it steps a float32 ``master`` copy (inserted after the grad) and
        float32 state. The grad is widened, times ``grad_scale`` (added to the scalars unless
        the kernel has it; then the kernel's own is the one applied), the float32 kernel steps
        the master, and the master rounded to nearest even is written into the param."""
        scalars = self.scalars + (() if "grad_scale" in self.scalars else ("grad_scale",))
        return Kernel(self.name + "_half", ("param", "grad", "master") + self.arrays[2:],
                      self.nrequired + 1, ("params", "grads", "masters") + self.lists[2:],
                      scalars, self.options + ("bfloat16",), None,
                      dict({"grad_scale": 0.75}, **self.examples), base=self.name,
                      # (needed arrays are state, after the grad: one place on, as state)
                      needed_when=tuple((i + 1, name) for i, name in self.needed_when))


# Adam's scalars: ``grad_scale`` multiplies the grad first (a fused gradient clip; 1: none)
_ADAM_SCALARS = ("lr", "beta1", "beta2", "eps", "weight_decay", "step_size", "bias_correction2",
                 "grad_scale")
_ADAM_OPTIONS = ("decoupled", "maximize", "eps_inside_sqrt")
_ADAM_EXAMPLES = dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1,
                      step_size=0.02, bias_correction2=0.03, grad_scale=0.75)

KERNELS = (
    Kernel("ewa", ("avg", "x"), 2, ("avgs", "xs"),
           scalars=("beta",), options=(), ops="ewa_",
           examples=dict(beta=0.9)),
    Kernel("sgd", ("param", "grad", "momentum_buffer"), 2,
           ("params", "grads", "momentum_buffers"),
           scalars=("lr", "weight_decay", "momentum", "dampening"),
           options=("nesterov", "maximize", "first_step"), ops="sgd_step_",
           examples=dict(lr=0.1, weight_decay=0.01, momentum=0.9, dampening=0.25),
           needed_when=((2, "momentum"),)),
    Kernel("momentum", ("param", "grad", "velocity"), 3, ("params", "grads", "velocities"),
           scalars=("lr", "beta"), options=(), ops="momentum_step_",
           examples=dict(lr=0.1, beta=0.9)),
    Kernel("rmsprop", ("param", "grad", "square_avg", "grad_avg", "momentum_buffer"), 3,
           ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"),
           scalars=("lr", "alpha", "eps", "weight_decay", "momentum"),
           options=("maximize", "eps_inside_sqrt"), ops="rmsprop_step_",
           examples=dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.5),
           needed_when=((4, "momentum"),)),
    Kernel("adagrad", ("param", "grad", "state_sum"), 3, ("params", "grads", "state_sums"),
           scalars=("clr", "eps", "weight_decay"), options=("maximize",), ops="adagrad_step_",
           examples=dict(clr=0.1, eps=1e-6, weight_decay=0.05)),
    Kernel("adam", ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), 4,
           ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
           scalars=_ADAM_SCALARS, options=_ADAM_OPTIONS, ops="adam_step_",
           examples=_ADAM_EXAMPLES),
    Kernel("adadelta", ("param", "grad", "square_avg", "acc_delta"), 4,
           ("params", "grads", "square_avgs", "acc_deltas"),
           scalars=("lr", "rho", "eps", "weight_decay"), options=("maximize",),
           ops="adadelta_step_",
           examples=dict(lr=0.5, rho=0.8, eps=1e-6, weight_decay=0.1)),
    Kernel("adamax", ("param", "grad", "exp_avg", "exp_inf"), 4,
           ("params", "grads", "exp_avgs", "exp_infs"),
           scalars=("beta1", "beta2", "eps", "weight_decay", "clr"), options=("maximize",),
           ops="adamax_step_",
           examples=dict(beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, clr=0.02)),
    Kernel("nadam", ("param", "grad", "exp_avg", "exp_avg_sq"), 4,
           ("params", "grads", "exp_avgs", "exp_avg_sqs"),
           scalars=("lr", "beta1", "beta2", "eps", "weight_decay", "bias_correction2",
                    "grad_coef", "avg_coef"),
           options=("decoupled", "maximize"), ops="nadam_step_",
           examples=dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1,
                         bias_correction2=0.03, grad_coef=-0.002, avg_coef=-0.05)),
    Kernel("radam", ("param", "grad", "exp_avg", "exp_avg_sq"), 4,
           ("params", "grads", "exp_avgs", "exp_avg_sqs"),
           scalars=("lr", "beta1", "beta2", "eps", "weight_decay", "step_size",
                    "adaptive_scale"),
           options=("rectified", "decoupled", "maximize"), ops="radam_step_",
           examples=dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1,
                         step_size=0.02, adaptive_scale=0.3)),
    Kernel("lion", ("param", "grad", "exp_avg"), 3, ("params", "grads", "exp_avgs"),
           scalars=("lr", "beta1", "beta2", "weight_decay"), options=("maximize",),
           ops="lion_step_",
           examples=dict(lr=0.01, beta1=0.8, beta2=0.95, weight_decay=0.1)),
)

# The 16-bit forms (Kernel.halved) of the kernels of fastopt.torch's optimizers, which call them
# for bfloat16/float16 parameters: one sweep reads the 16-bit param and grad, steps the float32
# master copy and state and writes the param back rounded (fastopt.reference.lowp defines the
# widening and the rounding). Each backend runs them through the float32 kernel itself.
HALF_KERNELS = tuple(k.halved() for k in KERNELS if k.name in (
    "sgd", "rmsprop", "adagrad", "adam", "adadelta", "adamax", "nadam", "radam"))

_BY_NAME = {k.name: k for k in KERNELS + HALF_KERNELS}


def get(name):
    """The :class:`Kernel` called ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


# the layer kernels (not element-wise: fastopt.layers calls them with their own arguments)
LAYERS = ("batchnorm_forward", "batchnorm_inference", "batchnorm_backward", "softmax",
          "softmax_cross_entropy")
