"""Optimizers over the functional kernels, shaped like torch.optim.

``params`` is a dict ``name -> ndarray`` (the course's ``parameters``), a list of ndarrays, or a
list of param-group dicts. ``step(grads)`` takes the grads in the same structure: a dict keyed by
the parameter names or by the course's ``"d" + name``, or a sequence in parameter order. Every
grad is checked before any array is written, so a step that raises changes nothing.
"""
import numbers
import operator

import numpy as np

from . import ops
from ._validate import FLOAT_DTYPES
from .arena import run_of as arena_run
from .arena import stretch as arena_stretch

_NOT_HYPER = ("params", "param_names")
_MISSING = object()


def _check_range(name, value, lo=0.0, hi=None, hi_open=True):
    """Raise ValueError naming ``name`` unless lo <= value (< or <=) hi."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        bound = f"in [{lo}, {hi}{')' if hi_open else ']'}" if hi is not None else f">= {lo}"
        raise ValueError(f"Invalid {name}: {value!r} (must be {bound})")


class _StateList(list):
    """A group's per-parameter state dicts, with their arrays gathered by key on first use
    (rebuilding 1000-item lists every step would cost more than the kernel)."""

    def __init__(self, states):
        super().__init__(states)
        self.columns = {}


def _column(states, key):
    """``[s[key] for s in states]``, cached when ``states`` is a group's cached list."""
    columns = getattr(states, "columns", None)
    if columns is None:
        return [s[key] for s in states]
    col = columns.get(key)
    if col is None:
        col = columns[key] = [s[key] for s in states]
    return col


def _column_or_zeros(states, params, key):
    """:func:`_column`, first giving zeros to parameters whose state lacks ``key`` (state that
    an option switched on later needs, as torch creates it)."""
    columns = getattr(states, "columns", None)
    if columns is None or key not in columns:
        for p, s in zip(params, states):
            if key not in s:
                s[key] = np.zeros(p.shape, p.dtype)
    return _column(states, key)


def _nonneg(name, value):
    _check_range(name, value)


def _beta(name, value):
    _check_range(name, value, 0.0, 1.0)


def _beta_closed(name, value):
    _check_range(name, value, 0.0, 1.0, hi_open=False)


def _betas(name, value):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (must be a pair)")
    _check_range("beta1 (betas[0])", value[0], 0.0, 1.0)
    _check_range("beta2 (betas[1])", value[1], 0.0, 1.0)


_ADAM_BOUNDS = dict(lr=_nonneg, eps=_nonneg, weight_decay=_nonneg, betas=_betas)


class Optimizer:
    """Base class: parameter groups, grad matching and validation, state dicts.

    Subclasses define ``_BOUNDS`` (the check of each hyper-parameter),
    ``_init_state(param, group)`` (state arrays, torch's key names) and
    ``_update(group, params, grads, states, step)``: one multi-tensor kernel call for the
    parameters sharing a step count (``step`` is the new count, or None for optimizers without
    one; the base class stores it after the call succeeds).
    """

    def __init__(self, params, defaults):
        self._check(defaults)
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}          # flat parameter index -> {"step": ..., state arrays}
        self._cache = {}         # group index -> its states as a list (see _step_group)
        self._arena_runs = {}    # group index -> (arena, first, stop) when it tiles an arena
        self._arena_state = {}   # group index -> flat state buffers (see _step_arena)
        self._named = None       # True: params came as a dict; grads may be keyed by name
        if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
            raise TypeError("params must be a dict of arrays, a list of arrays or a list of "
                            f"param-group dicts, got {type(params).__name__}")
        if isinstance(params, dict):
            groups = [{"params": params}]
        else:
            params = list(params)
            if not params:
                raise ValueError("params is an empty parameter list")
            groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------ parameter groups
    def add_param_group(self, group):
        """Add a dict ``{"params": arrays or dict, <hyper-parameter overrides>}``."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a param group must be a dict with a 'params' entry")
        group = dict(group)
        params = group["params"]
        named = isinstance(params, dict)
        if named:
            group["param_names"] = list(params.keys())
            params = list(params.values())
        elif isinstance(params, np.ndarray):
            params = [params]
        else:
            params = list(params)
        if self._named is not None and self._named != named:
            raise ValueError("params: either every group is a dict of named arrays or none is")
        self._named = named
        known = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            label = group["param_names"][i] if named else f"params[{i}]"
            if not isinstance(p, np.ndarray):
                raise TypeError(f"parameter {label} must be a numpy.ndarray, "
                                f"got {type(p).__name__}")
            if p.dtype not in FLOAT_DTYPES:
                raise TypeError(f"parameter {label} must have dtype float32 or float64, "
                                f"got {p.dtype}")
            if not p.flags.writeable:
                raise ValueError(f"parameter {label} is read-only; parameters are updated "
                                 "in place")
            if id(p) in known:
                raise ValueError(f"parameter {label} appears in more than one param group")
            known.add(id(p))
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check(group)
        run = arena_run(params)
        if run is not None:
            self._arena_runs[len(self.param_groups)] = run
        self.param_groups.append(group)

    @property
    def lr(self):
        """The learning rate (a list if the groups differ); setting it sets every group's."""
        lrs = [g["lr"] for g in self.param_groups]
        return lrs[0] if all(lr == lrs[0] for lr in lrs) else lrs

    @lr.setter
    def lr(self, value):
        _check_range("lr", value)
        for g in self.param_groups:
            g["lr"] = value

    def _flat(self):
        """(index, label, name, group, param) for every parameter, in flat order."""
        out, i = [], 0
        for group in self.param_groups:
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = names[j] if names else None
                out.append((i, repr(name) if name else f"{i}", name, group, p))
                i += 1
        return out

    # ------------------------------------------------------------------------------ step
    def _match(self, grads):
        """The grads as one flat list in parameter order (None: that parameter has no grad).
        Checks the structure; the arrays are checked by :meth:`_check_grads` or the kernels."""
        if isinstance(grads, dict):
            if not self._named:
                raise ValueError("grads is a dict but params were not given by name; pass a "
                                 "sequence of grads in parameter order")
            matched = []
            for group in self.param_groups:
                for name in group["param_names"]:
                    g = grads.get(name, _MISSING)
                    if g is _MISSING:
                        g = grads.get("d" + name, _MISSING)
                        if g is _MISSING:
                            raise ValueError(f"grads has no entry for parameter {name!r} "
                                             f"(expected key {name!r} or {'d' + name!r})")
                    matched.append(g)
            return matched
        if isinstance(grads, (list, tuple)):
            count = sum(len(g["params"]) for g in self.param_groups)
            if len(grads) != count:
                raise ValueError(f"grads has {len(grads)} entries, expected {count} "
                                 "(one per parameter, in order)")
            return list(grads)
        raise TypeError(f"grads must be a dict or a sequence of arrays, "
                        f"got {type(grads).__name__}")

    def _check(self, group):
        """Hyper-parameter checks (ValueError naming the value), from ``_BOUNDS``."""
        for name, check in self._BOUNDS.items():
            check(name, group[name])

    def _check_grads(self, grads):
        """Check every grad against its parameter, raising with the parameter's name."""
        for (i, label, _, _, p), g in zip(self._flat(), grads):
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grad for parameter {label} must be a numpy.ndarray, "
                                f"got {type(g).__name__}")
            if g.dtype != p.dtype:
                raise TypeError(f"grad for parameter {label} has dtype {g.dtype}, "
                                f"expected {p.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"grad for parameter {label} has shape {g.shape}, "
                                 f"expected {p.shape}")
            if not p.flags.writeable:
                raise ValueError(f"parameter {label} is read-only")

    def step(self, grads):
        """Update every parameter in place from ``grads`` (see the module docstring).

        One multi-tensor kernel call per parameter group. With one group whose parameters all
        step together, that call's own validation (every array before any write) is the only
        check on the hot path; if it refuses, the grads are checked here for an error naming
        the parameter, or (a None grad) the general path takes over."""
        groups = self.param_groups
        if len(groups) == 1 and self._step_arena(0, groups[0], grads, 0):
            return
        grads = self._match(grads)
        if len(groups) == 1:
            if self._step_arena(0, groups[0], grads, 0):
                return
            if 0 in self._cache:
                try:
                    self._advance(groups[0], groups[0]["params"], grads, self._cache[0])
                    self._arena_state.pop(0, None)
                    return
                except (TypeError, ValueError):
                    pass
        self._check_grads(grads)
        start = 0
        for gi, group in enumerate(groups):
            n = len(group["params"])
            if not self._step_arena(gi, group, grads[start:start + n], start):
                self._step_group(gi, group, grads[start:start + n], start)
            start += n

    def _step_group(self, gi, group, grads, start):
        """Step one group (grads already checked): state is created on first use, parameters
        without a grad sit the step out, and one kernel call runs per distinct step count.
        While every parameter steps together the group's states are cached as a list."""
        self._arena_state.pop(gi, None)   # its flat state is rebuilt when the arena path resumes
        index = range(start, start + len(grads))
        live = [k for k, g in enumerate(grads) if g is not None]
        for k in live:
            if index[k] not in self.state:
                self.state[index[k]] = self._init_state(group["params"][k], group)
        params = [group["params"][k] for k in live]
        grads = [grads[k] for k in live]
        states = [self.state[index[k]] for k in live]
        steps = {s.get("step") for s in states}
        if len(live) == len(index) and len(steps) == 1:
            self._cache[gi] = states = _StateList(states)
        else:
            self._cache.pop(gi, None)
        parts = [[k for k, s in enumerate(states) if s.get("step") == step] for step in steps]
        for part in parts:          # partitioned first: advancing one changes its steps
            self._advance(group, [params[k] for k in part], [grads[k] for k in part],
                          [states[k] for k in part])

    def _step_arena(self, gi, group, grads, start):
        """The arena path: one kernel call over the group's stretch of a ParameterArena, when
        the group's parameters tile it and ``grads`` is the arena's grad dict or a list of its
        grad views (so they need no check). The state lives in flat buffers too; each
        parameter's state entries are views of them, so state dicts stay per parameter.
        Returns False if it does not apply (the multi-tensor path gives the same result)."""
        run = self._arena_runs.get(gi)
        if run is None:
            return False
        arena, first, stop = run
        views = arena._views[first:stop]
        if grads is not arena.grads and not (
                isinstance(grads, list) and len(grads) == len(views)
                and all(map(operator.is_, grads, [v[1] for v in views]))):
            return False
        flat = self._arena_state.get(gi)
        if flat is None:
            flat = self._arena_state[gi] = self._flatten_state(group, start, run)
            self._cache.pop(gi, None)      # its cached columns hold the replaced arrays
            if flat is None:
                return False
        lo, hi = arena_stretch(arena, first, stop)
        self._advance(group, [arena._param_buf[lo:hi]], [arena._grad_buf[lo:hi]], [flat])
        states = [self.state[i] for i in range(start, start + len(views))]
        for key, value in flat.items():
            if not isinstance(value, np.ndarray):          # the step, NAdam's mu_product
                for s in states:
                    s[key] = value
            elif key not in states[0]:     # state the step created (e.g. a momentum buffer)
                for s, (p, _, off) in zip(states, views):
                    s[key] = value[off - lo:off - lo + p.size].reshape(p.shape)
        return True

    def _flatten_state(self, group, start, run):
        """Move the group's per-parameter state into flat buffers (per-parameter entries
        become views of them); None if the parameters' states differ in keys or step."""
        arena, first, stop = run
        views = arena._views[first:stop]
        lo, hi = arena_stretch(arena, first, stop)
        index = range(start, start + len(views))
        for i, (p, _, _) in zip(index, views):
            if i not in self.state:
                self.state[i] = self._init_state(p, group)
        states = [self.state[i] for i in index]
        keys = set(states[0])
        if any(set(s) != keys for s in states):
            return None
        flat = {}
        for key in keys:
            if not isinstance(states[0][key], np.ndarray):    # the step, NAdam's mu_product
                if len({s[key] for s in states}) > 1:
                    return None
                flat[key] = states[0][key]
                continue
            buf = np.empty(hi - lo, arena.dtype)
            for s, (p, _, off) in zip(states, views):
                part = buf[off - lo:off - lo + p.size]
                part[...] = s[key].ravel()
                s[key] = part.reshape(p.shape)
            flat[key] = buf
        return flat

    def _advance(self, group, params, grads, states):
        """One kernel call for parameters whose states share one step count."""
        if "step" in states[0]:
            step = states[0]["step"] + 1
            self._update(group, params, grads, states, step)
            for s in states:          # only after the kernel succeeded: a refused call
                s["step"] = step      # changes nothing
        else:
            self._update(group, params, grads, states, None)

    def zero_grad(self):
        """Nothing to do: grads are passed to ``step``; kept for torch-shaped loops."""

    # ------------------------------------------------------------------------ state dicts
    def state_dict(self):
        """torch.optim's layout, holding copies of the NumPy state arrays."""
        groups, start = [], 0
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(g)
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    _BOUNDS = {}    # hyper-parameter -> its check (_nonneg, _beta, _betas, ...)
    _RENAMED = {}   # torch's hyper-parameter name -> ours, where they differ
    _scalar_state = ()   # state entries that are numbers, not arrays (besides "step")

    def load_state_dict(self, state_dict):
        """Load a state dict from ``state_dict()`` or from torch (tensors turned into arrays).

        Everything is checked before anything changes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, "
                             f"expected {len(self.param_groups)}")
        flat = self._flat()
        index = {}
        for mine, saved in zip(self.param_groups, groups):
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"a param group in state_dict has {len(saved['params'])} "
                                 f"params, expected {len(mine['params'])}")
            start = len(index)
            for k, pid in enumerate(saved["params"]):
                index[pid] = start + k
        new_state = {}
        for pid, saved in state_dict["state"].items():
            if pid not in index:
                raise ValueError(f"state_dict has state for unknown parameter {pid!r}")
            i = index[pid]
            p = flat[i][4]
            entry = {}
            for key, value in saved.items():
                if key == "step":
                    entry[key] = int(round(float(np.asarray(value))))
                elif key in self._scalar_state:
                    entry[key] = float(np.asarray(value))
                elif value is None:
                    continue
                else:
                    a = np.array(value, dtype=p.dtype, copy=True, order="C")
                    if a.shape != p.shape:
                        raise ValueError(f"state_dict['state'][{pid!r}][{key!r}] has shape "
                                         f"{a.shape}, expected {p.shape}")
                    entry[key] = a
            new_state[i] = entry
        new_hyper = []
        for mine, saved in zip(self.param_groups, groups):
            hyper = {}
            for key, value in saved.items():
                key = self._RENAMED.get(key, key)
                if key in self.defaults:
                    hyper[key] = tuple(value) if isinstance(value, list) else value
            self._check({**mine, **hyper})
            new_hyper.append(hyper)
        for mine, hyper in zip(self.param_groups, new_hyper):
            mine.update(hyper)
        self.state = new_state
        self._cache = {}
        self._arena_state = {}

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{key}={v!r}" for key, v in group.items() if key not in _NOT_HYPER)
            lines.append(f"  group {k}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """torch.optim.SGD: ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the
    first step), ``param -= lr * (g + momentum * buf if nesterov else buf)``, with
    ``g = ±grad + weight_decay * param``."""

    _BOUNDS = dict(lr=_nonneg, momentum=_nonneg, dampening=_nonneg, weight_decay=_nonneg)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay,
                                      maximize=maximize))

    def _check(self, group):
        super()._check(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov=True: Nesterov momentum requires a momentum > 0 "
                             f"and zero dampening (momentum={group['momentum']!r}, "
                             f"dampening={group['dampening']!r})")

    def _init_state(self, param, group):
        return {}

    def _update(self, group, params, grads, states, step):
        bufs = None
        first = False
        if group["momentum"] != 0:
            # torch's first step: the buffer starts as the grad (states of one call agree)
            first = "momentum_buffer" not in states[0]
            if first:
                for p, s in zip(params, states):
                    s["momentum_buffer"] = np.empty(p.shape, p.dtype)
            bufs = _column(states, "momentum_buffer")
        ops.foreach_sgd_step_(params, grads, bufs, lr=group["lr"],
                              momentum=group["momentum"], dampening=group["dampening"],
                              nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                              maximize=group["maximize"], first_step=first)


class Momentum(Optimizer):
    """The course's gradient descent with momentum: ``v = beta * v + (1 - beta) * g``
    (v starts at zero), ``param -= lr * v``. State key: ``momentum_buffer``."""

    _BOUNDS = dict(lr=_nonneg, beta=_beta)

    def __init__(self, params, lr, beta=0.9):
        super().__init__(params, dict(lr=lr, beta=beta))

    def _init_state(self, param, group):
        return {"momentum_buffer": np.zeros(param.shape, param.dtype)}

    def _update(self, group, params, grads, states, step):
        ops.foreach_momentum_step_(params, grads, _column(states, "momentum_buffer"),
                                   lr=group["lr"], beta=group["beta"])


class RMSprop(Optimizer):
    """torch.optim.RMSprop with ``alpha`` named ``beta`` (torch's ``alpha=`` is accepted too);
    ``eps_inside_sqrt=True`` divides by ``sqrt(s + eps)``, the course's form."""

    _RENAMED = {"alpha": "beta"}

    _BOUNDS = dict(lr=_nonneg, beta=_beta, eps=_nonneg, weight_decay=_nonneg, momentum=_nonneg)

    def __init__(self, params, lr=0.01, beta=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, eps_inside_sqrt=False, maximize=False, *, alpha=None):
        beta = beta if alpha is None else alpha
        super().__init__(params, dict(lr=lr, beta=beta, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      eps_inside_sqrt=eps_inside_sqrt, maximize=maximize))

    def _init_state(self, param, group):
        return {"step": 0, "square_avg": np.zeros(param.shape, param.dtype)}

    def _update(self, group, params, grads, states, step):
        bufs = grad_avgs = None
        if group["momentum"] > 0:
            bufs = _column_or_zeros(states, params, "momentum_buffer")
        if group["centered"]:
            grad_avgs = _column_or_zeros(states, params, "grad_avg")
        ops.foreach_rmsprop_step_(params, grads, _column(states, "square_avg"),
                                  lr=group["lr"], beta=group["beta"], eps=group["eps"],
                                  weight_decay=group["weight_decay"], momentum_buffers=bufs,
                                  momentum=group["momentum"], grad_avgs=grad_avgs,
                                  maximize=group["maximize"],
                                  eps_inside_sqrt=group["eps_inside_sqrt"])


class Adagrad(Optimizer):
    """torch.optim.Adagrad: ``sum += g**2``,
    ``param -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)``."""

    _BOUNDS = dict(lr=_nonneg, lr_decay=_nonneg, weight_decay=_nonneg,
                   initial_accumulator_value=_nonneg, eps=_nonneg)

    def __init__(self, params, lr=0.01, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))
        # as torch: the accumulator exists (and is in the state dict) before the first step
        for i, _, _, group, p in self._flat():
            self.state[i] = self._init_state(p, group)

    def _init_state(self, param, group):
        return {"step": 0,
                "sum": np.full(param.shape, group["initial_accumulator_value"], param.dtype)}

    def _update(self, group, params, grads, states, step):
        ops.foreach_adagrad_step_(params, grads, _column(states, "sum"), step,
                                  lr=group["lr"], lr_decay=group["lr_decay"],
                                  weight_decay=group["weight_decay"], eps=group["eps"],
                                  maximize=group["maximize"])


class Adam(Optimizer):
    """torch.optim.Adam (bias correction always on); ``eps_inside_sqrt=True`` gives the
    course's ``param -= lr * m_hat / sqrt(v_hat + eps)``."""

    _decoupled = False

    _BOUNDS = _ADAM_BOUNDS

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, eps_inside_sqrt=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, eps_inside_sqrt=eps_inside_sqrt))

    def _init_state(self, param, group):
        state = {"step": 0, "exp_avg": np.zeros(param.shape, param.dtype),
                 "exp_avg_sq": np.zeros(param.shape, param.dtype)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = np.zeros(param.shape, param.dtype)
        return state

    def _update(self, group, params, grads, states, step):
        vmaxes = None
        if group["amsgrad"]:
            vmaxes = _column_or_zeros(states, params, "max_exp_avg_sq")
        ops.foreach_adam_step_(params, grads, _column(states, "exp_avg"),
                               _column(states, "exp_avg_sq"), step, lr=group["lr"],
                               betas=group["betas"], eps=group["eps"],
                               weight_decay=group["weight_decay"], max_exp_avg_sqs=vmaxes,
                               maximize=group["maximize"],
                               decoupled_weight_decay=self._decoupled,
                               eps_inside_sqrt=group.get("eps_inside_sqrt", False))


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, ``param *= 1 - lr * weight_decay``
    before the Adam update."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        Optimizer.__init__(self, params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                              weight_decay=weight_decay, amsgrad=amsgrad,
                                              maximize=maximize))


class Adadelta(Optimizer):
    """torch.optim.Adadelta. One step, with ``g = ±grad + weight_decay * param``::

        square_avg = rho * square_avg + (1 - rho) * g**2
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta**2
        param -= lr * delta

    Parameters
    ----------
    params : dict of arrays, list of arrays, or list of param-group dicts
    lr : float, default 1.0
    rho : float in [0, 1], default 0.9
        Decay of both running averages.
    eps : float, default 1e-6
    weight_decay : float, default 0.0
    maximize : bool, default False
        Ascend: ``g = -grad``.

    State per parameter (torch's keys): ``step``, ``square_avg``, ``acc_delta``.
    """

    _BOUNDS = dict(lr=_nonneg, rho=_beta_closed, eps=_nonneg, weight_decay=_nonneg)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _init_state(self, param, group):
        return {"step": 0, "square_avg": np.zeros(param.shape, param.dtype),
                "acc_delta": np.zeros(param.shape, param.dtype)}

    def _update(self, group, params, grads, states, step):
        ops.foreach_adadelta_step_(params, grads, _column(states, "square_avg"),
                                   _column(states, "acc_delta"), lr=group["lr"],
                                   rho=group["rho"], eps=group["eps"],
                                   weight_decay=group["weight_decay"],
                                   maximize=group["maximize"])


class Adamax(Optimizer):
    """torch.optim.Adamax (Adam with the infinity norm). Step ``t``, with
    ``g = ±grad + weight_decay * param``::

        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_inf = max(beta2 * exp_inf, |g| + eps)      # eps inside the max; NaN propagates
        param -= lr / (1 - beta1**t) * exp_avg / exp_inf

    Parameters
    ----------
    params : dict of arrays, list of arrays, or list of param-group dicts
    lr : float, default 2e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0.0
    maximize : bool, default False

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_inf``.
    """

    _BOUNDS = _ADAM_BOUNDS

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, maximize=maximize))

    def _init_state(self, param, group):
        return {"step": 0, "exp_avg": np.zeros(param.shape, param.dtype),
                "exp_inf": np.zeros(param.shape, param.dtype)}

    def _update(self, group, params, grads, states, step):
        ops.foreach_adamax_step_(params, grads, _column(states, "exp_avg"),
                                 _column(states, "exp_inf"), step, lr=group["lr"],
                                 betas=group["betas"], eps=group["eps"],
                                 weight_decay=group["weight_decay"], maximize=group["maximize"])


class NAdam(Optimizer):
    """torch.optim.NAdam: Adam with Nesterov momentum on a schedule. Step ``t``::

        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay));   P_t = mu_1 * ... * mu_t
        param *= 1 - lr * weight_decay     (decoupled_weight_decay)
        g = ±grad (+ weight_decay * param  otherwise)
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        d = sqrt(exp_avg_sq / (1 - beta2**t)) + eps
        param -= lr * (1 - mu_t) / (1 - P_t) * g / d
                 + lr * mu_{t+1} / (1 - P_t * mu_{t+1}) * exp_avg / d

    Parameters
    ----------
    params : dict of arrays, list of arrays, or list of param-group dicts
    lr : float, default 2e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0.0
    momentum_decay : float, default 4e-3
    decoupled_weight_decay : bool, default False
        AdamW-style decay (NAdamW) instead of adding it to the grad.
    maximize : bool, default False

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_avg_sq`` and
    ``mu_product`` (``P_t``, a float; as in torch it is multiplied in float32, so
    trajectories match torch's; a torch state dict's 0-d array loads as well).
    """

    _scalar_state = ("mu_product",)

    _BOUNDS = dict(_ADAM_BOUNDS, momentum_decay=_nonneg)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    def _init_state(self, param, group):
        return {"step": 0, "mu_product": 1.0, "exp_avg": np.zeros(param.shape, param.dtype),
                "exp_avg_sq": np.zeros(param.shape, param.dtype)}

    def _update(self, group, params, grads, states, step):
        # parameters stepped together share their step count, so their mu products agree
        mu_product = ops.foreach_nadam_step_(
            params, grads, _column(states, "exp_avg"), _column(states, "exp_avg_sq"), step,
            states[0]["mu_product"], lr=group["lr"], betas=group["betas"], eps=group["eps"],
            weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"])
        for s in states:
            s["mu_product"] = mu_product


class RAdam(Optimizer):
    """torch.optim.RAdam: SGD with bias-corrected momentum while the variance estimate is
    unreliable, the rectified Adam step after. Step ``t``::

        param *= 1 - lr * weight_decay     (decoupled_weight_decay)
        g = ±grad (+ weight_decay * param  otherwise)
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1;   rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
        rho_t > 5:   rect = sqrt((rho_t-4) (rho_t-2) rho_inf / ((rho_inf-4) (rho_inf-2) rho_t))
                     param -= lr / (1 - beta1**t) * rect * sqrt(1 - beta2**t)
                              * exp_avg / (sqrt(exp_avg_sq) + eps)
        otherwise:   param -= lr / (1 - beta1**t) * exp_avg

    Parameters
    ----------
    params : dict of arrays, list of arrays, or list of param-group dicts
    lr : float, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0.0
    decoupled_weight_decay : bool, default False
    maximize : bool, default False

    State per parameter (torch's keys): ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    _BOUNDS = _ADAM_BOUNDS

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    def _init_state(self, param, group):
        return {"step": 0, "exp_avg": np.zeros(param.shape, param.dtype),
                "exp_avg_sq": np.zeros(param.shape, param.dtype)}

    def _update(self, group, params, grads, states, step):
        ops.foreach_radam_step_(params, grads, _column(states, "exp_avg"),
                                _column(states, "exp_avg_sq"), step, lr=group["lr"],
                                betas=group["betas"], eps=group["eps"],
                                weight_decay=group["weight_decay"],
                                decoupled_weight_decay=group["decoupled_weight_decay"],
                                maximize=group["maximize"])


__all__ = ["Optimizer", "SGD", "Momentum", "RMSprop", "Adagrad", "Adam", "AdamW", "Adadelta",
           "Adamax", "NAdam", "RAdam"]
