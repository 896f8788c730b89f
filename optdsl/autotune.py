"""Tune an optimizer's hypers online, from the optimizer's own steps.

:class:`HypergradientLR` is hypergradient descent (Baydin et al., 2018, "Online Learning
Rate Adaptation with Hypergradient Descent") for any compiled optimizer whose update is
affine in its learning rate, which :mod:`optdsl.affine` proves from the spec.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

from . import arrays
from .affine import affine_report
from .errors import NotAffineError, OptdslError, StateDictError
from .runtime import Optimizer
from .sparse import RowSparse

# The step counts whose paths construction proves affine: the first step, the second
# (stdlib SGD's momentum takes another path at t == 1), and one later step.
_PROVEN_STEPS = (1, 2, 3)

# Elements per float64 chunk when a narrower dot product is widened (no temporary the
# size of a parameter).
_CHUNK = 1 << 16

_FORMAT = 1


class HypergradientLR:
    r"""Hypergradient descent on a learning rate, per param group, for any optimizer.

    Before each ``opt.step()``, for each param group,

    .. math::

        h_t = \sum_{p} \langle g_t,\ \partial p_{t-1} / \partial\alpha \rangle, \qquad
        \alpha_t = \mathrm{clip}(\alpha_{t-1} - \beta\, h_t,\ \alpha_{min}, \alpha_{max})

    where :math:`g_t` is the gradient the step is about to use (``p.grad`` as given:
    before ``max_grad_norm`` clips it, the rule adds weight decay or ``maximize`` negates
    it), :math:`\partial p_{t-1}/\partial\alpha` is the derivative of the previous step's
    new parameter by the hyper, with that step's inputs (parameter, state, gradient) held
    fixed, and :math:`\alpha` is the group's ``lr`` (or ``hyper``). :math:`h_t` is
    :math:`\partial f(p_{t-1}) / \partial \alpha` to first order: gradients that keep
    pointing the way the last step went raise the lr, gradients that turn back lower it.
    For plain SGD, :math:`\partial p/\partial\alpha = -g_{t-1}` and this is Baydin's
    SGD-HD, :math:`\alpha_t = \alpha_{t-1} + \beta\, g_t \cdot g_{t-1}`; for Adam,
    :math:`\partial p/\partial\alpha = -\hat m/(\sqrt{\hat v} + \epsilon)` and it is
    Adam-HD.

    The derivative comes from the optimizer's own kernel: at construction the update of
    each group's path (its host ``if`` decisions at steps 1, 2 and 3) is proven to give a
    final ``p`` affine in the hyper, ``p = A + lr * B``, with no state depending on it
    (:mod:`optdsl.affine`; else :class:`~optdsl.errors.NotAffineError` says which line is
    to blame), and the kernels are asked for ``B`` as the extra output ``dlr:<hyper>``.
    "Fused" covers the derivative: it is computed in the update kernel's own pass over
    memory and written to one more buffer per param. The dot product is not fused: it is
    one more read of ``g`` and of the derivative per step, in float64.

    Args:
        optimizer: an optdsl optimizer (``optdsl.optim.SGD``, a class from
            ``optdsl.compile``, ...). Its param groups keep their own lrs; this writes
            each group's new lr into ``group[hyper]`` before every step.
        beta: the hypergradient step size :math:`\beta` (>= 0). It is not scale-free: the
            hypergradient grows with the number of parameters and the size of the
            gradients. Baydin et al. used 1e-3 for SGD and 1e-7 for Adam in their
            experiments; the default, 1e-4, is only a starting point. Watch
            ``last_hypergradients`` and the lrs on a short run to pick it.
        hyper: the float hyper to tune (default ``"lr"``); any other float hyper the
            update is affine in works the same way.
        lr_min, lr_max: the lr is clipped to ``[lr_min, lr_max]`` after each update
            (``lr_max=None``: no upper bound). The default lower bound, 0, keeps the
            optimizer descending; both bounds must lie in the hyper's declared range.

    Each step, a group's h is 0 on the optimizer's first step, after a skipped step, after
    :meth:`load_state_dict`, and for params that did not step last time (no gradient):
    they have no derivative to use. A non-finite h (a nan or inf in a gradient) leaves the
    lr as it is and is counted in ``nonfinite_skips``. A lr set between steps, by you or a
    schedule, is where the next update starts from: the tuner keeps no lr of its own. A
    group whose ``maximize`` hyper is true ascends its objective, so the sign of its h is
    flipped. ``step(closure)`` is refused: the gradients must be there before ``step()``
    is called, since the lr is updated before the closure would run. Params of a group
    with row-sparse gradients count the rows they name.

    Attributes: ``last_hypergradients`` (each group's h of the latest step, None before
    one), ``steps`` (steps seen), ``nonfinite_skips``.

    ``remove()`` detaches it: no more updates, and the optimizer's kernels go back to the
    plain ones that compute no derivative.
    """

    def __init__(self, optimizer: Optimizer, beta: float = 1e-4, *, hyper: str = "lr",
                 lr_min: float = 0.0, lr_max: float | None = None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError("HypergradientLR needs an optdsl optimizer (from optdsl.optim or "
                            f"optdsl.compile), got {type(optimizer).__name__}")
        self.optimizer = optimizer
        name = type(optimizer).__name__
        if not isinstance(hyper, str):
            raise TypeError(f"HypergradientLR({name}): hyper must be the name of a hyper, "
                            f"e.g. 'lr', got {hyper!r}")
        self.hyper = hyper
        where = f"HypergradientLR({name})"
        self.beta = _number("beta", beta, where, low=0.0)
        self.lr_min = _number("lr_min", lr_min, where)
        self.lr_max = None if lr_max is None else _number("lr_max", lr_max, where, inf=True)
        if self.lr_max is not None and self.lr_max < self.lr_min:
            raise ValueError(f"{where}: lr_max={lr_max!r} is below lr_min={lr_min!r}")
        self._proven: set[tuple] = set()
        for index in range(len(optimizer.param_groups)):
            self._prove(index)  # raises NotAffineError (or a bad hyper's error) for a group
        self._check_bounds()
        self.steps = 0
        self.nonfinite_skips = 0
        self.last_hypergradients: list[float | None] = [None] * len(optimizer.param_groups)
        # The params of each group whose derivative the latest step wrote, by group index:
        # only those have a derivative of the previous step to use.
        self._stepped: dict[int, list[Any]] = {}
        optimizer.request_extras(self, (self._extra,))
        self._handles = (optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step))

    @property
    def _extra(self) -> str:
        return f"dlr:{self.hyper}"

    # --- the proof ------------------------------------------------------------------------
    def _prove(self, index: int) -> None:
        """Prove the paths group ``index`` takes with its current hypers affine."""
        opt = self.optimizer
        spec = opt._spec
        values = opt._group_hypers(index)
        for t in _PROVEN_STEPS:
            path = spec.host["decide"](values, t)
            if path in self._proven:
                continue
            try:
                affine_report(spec.checked, path, self.hyper)
            except NotAffineError as exc:
                where = f" (param group {index}, step {t})" if t > 1 or index else ""
                raise NotAffineError(f"HypergradientLR cannot tune {type(opt).__name__}'s "
                                     f"{self.hyper}{where}: {exc}", hyper=exc.hyper,
                                     line=exc.line) from None
            self._proven.add(path)

    def _check_bounds(self) -> None:
        """The clip bounds must be values the hyper may take (its declared range)."""
        info = self.optimizer._spec.hypers[self.hyper]
        name = type(self.optimizer).__name__
        for label, bound in (("lr_min", self.lr_min), ("lr_max", self.lr_max)):
            if bound is None or (label == "lr_max" and math.isinf(bound)):
                continue
            low_ok = info.lo is None or bound > info.lo or (bound == info.lo and info.lo_closed)
            high_ok = info.hi is None or bound < info.hi or (bound == info.hi
                                                             and info.hi_closed)
            if not (low_ok and high_ok):
                raise ValueError(f"HypergradientLR({name}): {label}={bound!r} is outside "
                                 f"{self.hyper}'s range, {info.describe_range()}; give "
                                 "lr_min and lr_max inside it")

    # --- the hooks ------------------------------------------------------------------------
    def _before_step(self, opt: Optimizer, args: tuple, kwargs: dict) -> None:
        if args and args[0] is not None:
            raise OptdslError("HypergradientLR: step(closure) is not supported: the lr is "
                              "updated from the gradients before the step runs, and a "
                              "closure would compute them after; compute the gradients, "
                              "then call step()")
        stepped, self._stepped = self._stepped, {}
        while len(self.last_hypergradients) < len(opt.param_groups):  # add_param_group
            self.last_hypergradients.append(None)
        info = opt._spec.hypers.get("maximize")
        maximize = info is not None and info.type == "bool"
        updates = []
        for index, group in enumerate(opt.param_groups):
            self._prove(index)  # the group's hypers may have changed since
            h = self._hypergradient(index, stepped.get(index, ()))
            if maximize and opt._group_hypers(index)["maximize"]:
                h = -h
            self.last_hypergradients[index] = h
            updates.append((group, h))
        # Every group's h is computed before any lr changes; then they are applied.
        for group, h in updates:
            if not math.isfinite(h):
                self.nonfinite_skips += 1
                continue
            if h != 0.0:
                lr = float(group.get(self.hyper, opt.defaults[self.hyper])) - self.beta * h
                lr = max(lr, self.lr_min)
                group[self.hyper] = lr if self.lr_max is None else min(lr, self.lr_max)
        self.steps += 1

    def _after_step(self, opt: Optimizer, args: tuple, kwargs: dict) -> None:
        if opt.last_step_skipped:  # nothing moved: no derivative to use next time
            return
        self._stepped = {i: [p for p in g["params"] if p.grad is not None]
                         for i, g in enumerate(opt.param_groups)}

    def _hypergradient(self, index: int, params: Any) -> float:
        """Σ over ``params`` (those that stepped last time) still with a gradient of
        <g, derivative of the last step>, in float64."""
        total = []
        with np.errstate(all="ignore"):  # an overflow is reported as a non-finite h
            for p in params:
                grad = p.grad
                if grad is None:
                    continue
                d = self.optimizer.extra_output(p, self._extra, index)
                if d is not None:
                    total.append(_dot(grad, d))
        # One conversion per param (for CuPy, a sync each), summed as Python floats.
        return float(sum(float(x) for x in total))

    # --- saving, removing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The settings and counters, as JSON-able data. The lrs themselves are in the
        optimizer's param groups (``opt.state_dict()``). The derivatives of the last step
        are not saved: the first step after :meth:`load_state_dict` has h = 0."""
        return {"format": _FORMAT, "hyper": self.hyper, "beta": self.beta,
                "lr_min": self.lr_min, "lr_max": self.lr_max, "steps": self.steps,
                "nonfinite_skips": self.nonfinite_skips,
                # None for none yet, and for a non-finite one (JSON has no nan or inf)
                "last_hypergradients": [float(h) if h is not None and math.isfinite(h)
                                        else None for h in self.last_hypergradients]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s settings and counters. Everything is checked first;
        on a mismatch :class:`~optdsl.errors.StateDictError` is raised and nothing
        changes."""
        name = f"HypergradientLR({type(self.optimizer).__name__}).load_state_dict"
        if not isinstance(state_dict, dict):
            raise StateDictError(f"{name}: expected a dict, got {type(state_dict).__name__}")
        keys = set(self.state_dict())
        if set(state_dict) != keys:
            missing, extra = sorted(keys - set(state_dict)), sorted(set(state_dict) - keys)
            raise StateDictError(f"{name}: expected the keys {sorted(keys)}"
                                 + (f"; missing {missing}" if missing else "")
                                 + (f"; unknown {extra}" if extra else ""))
        if state_dict["format"] != _FORMAT:
            raise StateDictError(f"{name}: format {state_dict['format']!r} is not "
                                 f"{_FORMAT}")
        if state_dict["hyper"] != self.hyper:
            raise StateDictError(f"{name}: saved for hyper {state_dict['hyper']!r}, this one "
                                 f"tunes {self.hyper!r}")
        try:
            beta = _number("beta", state_dict["beta"], name, low=0.0)
            lr_min = _number("lr_min", state_dict["lr_min"], name)
            lr_max = state_dict["lr_max"]
            lr_max = None if lr_max is None else _number("lr_max", lr_max, name, inf=True)
            steps = _count("steps", state_dict["steps"], name)
            skips = _count("nonfinite_skips", state_dict["nonfinite_skips"], name)
        except (TypeError, ValueError) as exc:
            raise StateDictError(str(exc)) from None
        if lr_max is not None and lr_max < lr_min:
            raise StateDictError(f"{name}: lr_max={lr_max!r} is below lr_min={lr_min!r}")
        last = state_dict["last_hypergradients"]
        if not isinstance(last, list) or not all(
                h is None or (isinstance(h, Real) and not isinstance(h, bool)) for h in last):
            raise StateDictError(f"{name}: last_hypergradients must be a list of numbers or "
                                 f"None, got {last!r}")
        self.beta, self.lr_min, self.lr_max = beta, lr_min, lr_max
        self.steps, self.nonfinite_skips = steps, skips
        self.last_hypergradients = [None if h is None else float(h) for h in last]
        self._stepped = {}

    def remove(self) -> None:
        """Detach from the optimizer: unregister the hooks and withdraw the request for the
        derivative, so the next steps run the plain kernels and leave the lrs alone."""
        for handle in self._handles:
            handle.remove()
        self.optimizer.request_extras(self, None)
        self._stepped = {}

    def __repr__(self) -> str:
        bounds = f"[{self.lr_min!r}, {'inf' if self.lr_max is None else repr(self.lr_max)}]"
        return (f"HypergradientLR({type(self.optimizer).__name__}, beta={self.beta!r}, "
                f"hyper={self.hyper!r}, bounds={bounds})")


def _dot(grad: Any, d: Any) -> Any:
    """<grad, d> accumulated in float64 (a NumPy float, or a CuPy scalar on the device)."""
    if isinstance(grad, RowSparse):  # rows named twice add up, as the step sums them
        return _dot(grad.values, d[grad.indices])
    g, d = grad.reshape(-1), d.reshape(-1)
    if arrays.is_cupy(g):  # on the params' GPU, which must be the current device
        with arrays.on_device(g):
            return g.astype(np.float64, copy=False) @ d.astype(np.float64, copy=False)
    if g.dtype == np.float64 and d.dtype == np.float64:
        return np.dot(g, d)
    total = np.float64(0.0)
    for lo in range(0, g.size, _CHUNK):
        hi = lo + _CHUNK
        total += np.dot(g[lo:hi].astype(np.float64), d[lo:hi].astype(np.float64))
    return total


def _number(label: str, value: Any, owner: str, *, low: float | None = None,
            inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: {label} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not (inf and value > 0)):
        raise ValueError(f"{owner}: {label} must be finite, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{owner}: {label} must be >= {low:g}, got {value!r}")
    return value


def _count(label: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{owner}: {label} must be a whole number >= 0, got {value!r}")
    return int(value)
