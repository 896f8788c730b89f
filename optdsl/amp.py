"""Mixed precision: a loss scaler with torch.amp.GradScaler's semantics.

    scaler = optdsl.amp.GradScaler()
    for batch in batches:
        opt.zero_grad()
        loss = forward(batch)
        backward(scaler.scale(loss))          # gradients of the scaled loss
        if scaler.step(opt):                  # unscale, check, step unless inf/nan
            sched.step()                      # only after a step that was taken
        scaler.update()                       # back off on inf/nan, grow when stable

float16 gradients underflow: small values round to zero. Scaling the loss by ``S``
scales every gradient by ``S`` and keeps them in range; :meth:`GradScaler.unscale_`
multiplies them back by ``1/S`` before the optimizer sees them, and looks for infs and
nans (an ``S`` too large overflows) in the same pass. A step whose gradients hold one is
skipped and ``S`` shrinks; ``growth_interval`` good steps in a row and it grows again.

The main difference from torch: :meth:`GradScaler.step` returns whether the optimizer
stepped (pytorch#55585), not the optimizer's return value. docs/amp.md has the others.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import arrays
from .backend import pool
from .clip import _runs
from .errors import HyperError, HyperTypeError, OptdslError, StateDictError
from .runtime import Optimizer
from .sparse import RowSparse

__all__ = ["GradScaler", "GradScalerError"]

# Elements unscaled at a time on the host (the NumPy backend's chunk): a chunk is checked
# and multiplied while it is in cache, so each gradient is read from memory once.
_CHUNK = 131072

_STATE_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval",
               "_growth_tracker")


class GradScalerError(OptdslError, RuntimeError):
    """GradScaler's methods called out of order (``unscale_`` twice, or after ``step``;
    ``step`` twice before ``update``; before any ``scale``). A RuntimeError, as torch's."""


class _Stage(enum.Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


class _Record:
    """What one optimizer's gradients showed since the last ``update()``: its stage, and
    whether any gradient held an inf or nan: ``found`` on the host, plus one float32 flag
    per GPU, read back only when ``step()`` or ``update()`` needs the answer."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer  # kept alive, so that its id names it until update()
        self.stage = _Stage.READY
        self.checked = False  # whether any gradient was looked at (torch's found_inf dict)
        self.found = False
        self.flags: list[Any] = []

    def found_inf(self) -> bool:
        if self.flags:
            self.found = self.found or any(bool(f.get().any()) for f in self.flags)
            self.flags = []
        return self.found


class GradScaler:
    r"""Dynamic loss scaling, as ``torch.amp.GradScaler``.

    :meth:`scale` multiplies the loss by the scale :math:`S`; :meth:`unscale_` (or
    :meth:`step`) multiplies every gradient of an optimizer's param groups by
    :math:`1/S` in place and notes any inf or nan; :meth:`step` then steps the optimizer
    unless one was found; :meth:`update` sets the scale for the next iteration:

    .. math::
        S \leftarrow \begin{cases}
        S \cdot \text{backoff\_factor} & \text{if an inf or nan was found} \\
        S \cdot \text{growth\_factor} & \text{after growth\_interval good steps in a row} \\
        S & \text{otherwise}
        \end{cases}

    ``init_scale``: :math:`S` before the first update (held in float32, as torch holds
    it). ``growth_factor`` (> 1), ``backoff_factor`` (< 1), ``growth_interval``: as
    above. ``enabled=False`` makes every method a pass-through: :meth:`scale` returns
    its input, :meth:`step` just steps.

    Differences from torch: :meth:`step` returns True if the optimizer stepped and False
    if it skipped the step (torch returns the optimizer's return value); float16
    gradients are unscaled where torch refuses them (optdsl's ``master_weights=True``
    keeps fp32 masters of fp16 params whose gradients are fp16); there is no ``device``
    argument (the scale is a host number, and gradients are unscaled where they live);
    ``init_scale`` must be finite and > 0 and ``growth_interval`` a whole number >= 1,
    which torch does not check.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True):
        if isinstance(init_scale, str):
            raise HyperTypeError(f"GradScaler: init_scale must be a number, got "
                                 f"{init_scale!r}; optdsl's GradScaler takes no device "
                                 "(write GradScaler(), not GradScaler('cuda'))")
        if not isinstance(enabled, (bool, np.bool_)):
            raise HyperTypeError(f"GradScaler: enabled must be True or False, got "
                                 f"{enabled!r}")
        self._enabled = bool(enabled)
        if self._enabled:  # torch checks its arguments only when enabled
            init_scale = _check_scale("init_scale", init_scale)
            growth_factor = _check_growth_factor(growth_factor)
            backoff_factor = _check_backoff_factor(backoff_factor)
            growth_interval = _check_growth_interval(growth_interval)
        self._init_scale = init_scale
        self._growth_factor = growth_factor
        self._backoff_factor = backoff_factor
        self._growth_interval = growth_interval
        self._init_growth_tracker = 0
        # As in torch, the scale (a float32 value, kept here as a Python float) and the
        # growth tracker come to life at the first scale(); until then get_scale() and
        # state_dict() report init_scale as given.
        self._scale: float | None = None
        self._growth_tracker: int | None = None
        self._records: dict[int, _Record] = {}

    # --- the iteration --------------------------------------------------------------------
    def scale(self, outputs: Any) -> Any:
        """``outputs`` times the scale: an array (NumPy or CuPy), a number, or lists,
        tuples and dicts of them (the same structure comes back; another iterable gives a
        lazy iterator, as torch's does). Returned unchanged when disabled.

        As torch computes it: an array keeps its floating dtype (float16 and bfloat16 are
        multiplied in float32 and rounded back, so values past the float16 range become
        inf); a 0-d array or NumPy scalar of float16 or bfloat16 becomes float32, as a 0-d
        tensor times torch's float32 scale does; integer arrays become float32. A Python
        number gives a Python float."""
        if not self._enabled:
            return outputs
        return self._scale_value(outputs)

    def unscale_(self, optimizer: Any) -> None:
        """Multiply every gradient of ``optimizer``'s param groups by ``1/scale`` in place,
        and note whether any holds an inf or nan, in one pass over each gradient.

        Optional: :meth:`step` unscales if this was not called. Call it to work on true
        gradients before the step (``optdsl.clip_grad_norm_``, say). At most once per
        optimizer per iteration: a second call before :meth:`update`, or one after
        :meth:`step`, raises :class:`GradScalerError`.

        ``1/scale`` is computed in double precision and rounded to float32, as torch does.
        float32 gradients are multiplied by it in float32, float64 ones in float64, and
        float16 and bfloat16 ones in float32 and rounded back to nearest: bit for bit
        torch's ``_amp_foreach_non_finite_check_and_unscale_``. A gradient with a
        ``.values`` array (a row-sparse gradient) has its values unscaled. Gradients that
        lie end to end in one buffer (``optdsl.flatten``) are unscaled as that buffer."""
        if not self._enabled:
            return
        self._require_scale("unscale_")
        record = self._record(optimizer)
        if record.stage is _Stage.UNSCALED:
            raise GradScalerError("GradScaler.unscale_: already called for this optimizer "
                                  "since the last update(); unscale_ at most once per "
                                  "optimizer per iteration")
        if record.stage is _Stage.STEPPED:
            raise GradScalerError("GradScaler.unscale_: called after step() for this "
                                  "optimizer; unscale_ before step(), or not at all (step "
                                  "unscales), and call update() to start the next iteration")
        # The reciprocal in double, then float32, as torch (exact float32 division can
        # differ under some compilers' options).
        inv_scale = np.float32(1.0 / self._scale)
        grads = _gradients(optimizer)
        record.checked = record.checked or bool(grads)
        _unscale_grads(grads, inv_scale, record)
        record.stage = _Stage.UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> bool:
        """Unscale ``optimizer``'s gradients (unless :meth:`unscale_` did), then call
        ``optimizer.step(*args, **kwargs)`` unless any gradient held an inf or nan.

        Returns True if the optimizer stepped, False if the step was skipped (here torch
        returns the optimizer's return value; see pytorch#55585). A skipped step changes
        no parameter, state entry or step count; an optdsl optimizer records it in
        ``last_step_skipped`` and ``skipped_steps``, as its own ``skip_nonfinite`` does.
        When disabled, this just steps the optimizer. As torch's, an enabled scaler
        refuses ``closure=`` (the closure would recompute scaled gradients after the
        unscale), and refuses a second step() for one optimizer before :meth:`update`."""
        if not self._enabled:
            optimizer.step(*args, **kwargs)
            return not _skipped(optimizer)
        if "closure" in kwargs:
            raise GradScalerError("GradScaler.step: closure= is not supported while the "
                                  "scaler is enabled (as in torch): compute the loss and "
                                  "gradients before calling step")
        self._require_scale("step")
        record = self._record(optimizer)
        if record.stage is _Stage.STEPPED:
            raise GradScalerError("GradScaler.step: already called for this optimizer since "
                                  "the last update(); call update() once per iteration")
        if record.stage is _Stage.READY:
            self.unscale_(optimizer)
        if not record.checked:
            raise GradScalerError("GradScaler.step: the optimizer has no gradients to "
                                  "unscale or check (every param's .grad is None); compute "
                                  "them from scaler.scale(loss) first")
        if record.found_inf():
            record.stage = _Stage.STEPPED
            if isinstance(optimizer, Optimizer):
                optimizer.last_step_skipped = True
                optimizer.skipped_steps += 1
            return False
        optimizer.step(*args, **kwargs)
        # After the step, as torch: a step() that raised (bad input) may be called again.
        record.stage = _Stage.STEPPED
        return not _skipped(optimizer)

    def update(self, new_scale: Any = None) -> None:
        """End the iteration: set the scale for the next one and forget what the
        optimizers' gradients showed.

        Without ``new_scale``: if any optimizer unscaled since the last update found an
        inf or nan, the scale is multiplied by ``backoff_factor`` and the count of good
        steps restarts; otherwise the count grows by one, and when it reaches
        ``growth_interval`` the scale is multiplied by ``growth_factor`` (unless that
        overflows float32) and the count restarts. Both products are rounded to float32,
        as torch's. ``new_scale``: a number or a one-element array to use instead."""
        if not self._enabled:
            return
        self._require_scale("update")
        if new_scale is not None:
            self._scale = _float32(_check_scale("new_scale", _one_number(new_scale)))
        else:
            records = [r for r in self._records.values() if r.checked]
            if not records:
                raise GradScalerError("GradScaler.update: no optimizer's gradients were "
                                      "unscaled since the last update(); call "
                                      "scaler.step(optimizer) (or unscale_) first")
            found = [r.found_inf() for r in records]  # read every GPU flag back
            if any(found):
                self._scale = _float32(self._scale * self._backoff_factor)
                self._growth_tracker = 0
            else:
                successful = self._growth_tracker + 1
                if successful == self._growth_interval:
                    grown = _float32(self._scale * self._growth_factor)
                    if math.isfinite(grown):  # never grow past float32's range to inf
                        self._scale = grown
                    self._growth_tracker = 0
                else:
                    self._growth_tracker = successful
        self._records = {}

    # --- settings -------------------------------------------------------------------------
    def get_scale(self) -> float:
        """The current scale; ``init_scale`` before the first :meth:`scale`; 1.0 when
        disabled."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale

    def get_growth_factor(self) -> float:
        """What update() multiplies the scale by after growth_interval good steps."""
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        """Set the growth factor (a number > 1)."""
        self._growth_factor = _check_growth_factor(new_factor)

    def get_backoff_factor(self) -> float:
        """What update() multiplies the scale by after a step with an inf or nan."""
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        """Set the backoff factor (a number in (0, 1))."""
        self._backoff_factor = _check_backoff_factor(new_factor)

    def get_growth_interval(self) -> int:
        """How many good steps in a row grow the scale."""
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        """Set the growth interval (a whole number >= 1)."""
        self._growth_interval = _check_growth_interval(new_interval)

    def is_enabled(self) -> bool:
        """Whether the scaler scales (a disabled one passes everything through)."""
        return self._enabled

    def _get_growth_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._growth_tracker is None \
            else self._growth_tracker

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's five entries: ``scale``, ``growth_factor``, ``backoff_factor`` (floats),
        ``growth_interval``, ``_growth_tracker`` (the good steps in a row; ints). Empty
        when disabled. Take it after :meth:`update`, as in torch."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the state of :meth:`state_dict` (this class's or torch's GradScaler's). A
        no-op when disabled. Everything is checked first: a missing key or a bad value
        raises :class:`optdsl.StateDictError` and changes nothing; an empty dict (saved
        by a disabled scaler) raises :class:`GradScalerError`, as torch's RuntimeError."""
        if not self._enabled:
            return
        if not isinstance(state_dict, Mapping):
            raise StateDictError(f"GradScaler.load_state_dict: expected a dict, got "
                                 f"{type(state_dict).__name__}")
        if len(state_dict) == 0:
            raise GradScalerError("GradScaler.load_state_dict: the state dict is empty, "
                                  "possibly because it was saved from a disabled "
                                  "GradScaler")
        missing = [k for k in _STATE_KEYS if k not in state_dict]
        if missing:
            raise StateDictError(f"GradScaler.load_state_dict: missing {', '.join(missing)}"
                                 f" (a GradScaler state dict has {', '.join(_STATE_KEYS)})")
        try:
            scale = _check_scale("scale", state_dict["scale"])
            growth_factor = _check_growth_factor(state_dict["growth_factor"])
            backoff_factor = _check_backoff_factor(state_dict["backoff_factor"])
            growth_interval = _check_growth_interval(state_dict["growth_interval"])
            tracker = _check_int("_growth_tracker", state_dict["_growth_tracker"], 0)
        except HyperError as exc:
            raise StateDictError(f"GradScaler.load_state_dict: {exc}") from None
        self._init_scale = scale
        if self._scale is not None:
            self._scale = _float32(scale)
        self._growth_factor = growth_factor
        self._backoff_factor = backoff_factor
        self._growth_interval = growth_interval
        self._init_growth_tracker = tracker
        if self._growth_tracker is not None:
            self._growth_tracker = tracker

    def __repr__(self) -> str:
        if not self._enabled:
            return "GradScaler(enabled=False)"
        return (f"GradScaler(scale={self.get_scale()}, growth_factor={self._growth_factor}, "
                f"backoff_factor={self._backoff_factor}, "
                f"growth_interval={self._growth_interval})")

    # --- helpers --------------------------------------------------------------------------
    def _record(self, optimizer: Any) -> _Record:
        record = self._records.get(id(optimizer))
        if record is None:
            if not hasattr(optimizer, "param_groups"):
                raise TypeError(f"GradScaler takes an optimizer (with param_groups), got "
                                f"{type(optimizer).__name__}")
            record = self._records[id(optimizer)] = _Record(optimizer)
        return record

    def _require_scale(self, method: str) -> None:
        if self._scale is None:
            raise GradScalerError(f"GradScaler.{method}: the scaler has not scaled anything "
                                  "yet; compute the gradients from scaler.scale(loss) "
                                  "earlier in the iteration")

    def _lazy_init(self) -> np.float32:
        if self._scale is None:
            self._scale = _float32(self._init_scale)
            self._growth_tracker = self._init_growth_tracker
        return np.float32(self._scale)

    def _scale_value(self, value: Any) -> Any:
        if arrays.is_array(value) or isinstance(value, np.generic):
            return _scaled_array(value, self._lazy_init())
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value) * float(self._lazy_init())
        if isinstance(value, Mapping):
            scaled = {k: self._scale_value(v) for k, v in value.items()}
            try:
                return type(value)(scaled)
            except TypeError:  # a mapping not built from a dict (a defaultdict, say)
                return scaled
        if isinstance(value, (list, tuple)):
            items = [self._scale_value(v) for v in value]
            if hasattr(value, "_fields"):  # a namedtuple
                return type(value)(*items)
            return type(value)(items)
        if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) \
                and not type(value).__module__.startswith("torch"):
            return map(self._scale_value, value)
        hint = "; for torch tensors use torch.amp.GradScaler" \
            if type(value).__module__.startswith("torch") else ""
        raise TypeError(f"GradScaler.scale: outputs must be arrays (NumPy or CuPy), numbers, "
                        f"or lists, tuples or dicts of them, got {type(value).__name__}{hint}")


# --- scaling outputs --------------------------------------------------------------------------

def _scaled_array(x: Any, scale: np.float32) -> Any:
    """``x * scale`` with the dtype torch gives a tensor of x's dtype and shape times a
    0-d float32 tensor, computed as torch computes it (narrow floats in float32)."""
    dtype = np.dtype(x.dtype)
    narrow = arrays.is_float(dtype) and dtype.itemsize < 4
    if not (arrays.is_float(dtype) or dtype.kind in "biuc"):
        raise TypeError(f"GradScaler.scale: cannot scale an array of dtype {dtype}")
    with arrays.on_device(x), np.errstate(over="ignore"):  # inf past the range, as torch
        if dtype.kind in "biu":  # integers and bools: a float32 result
            return x.astype(np.float32) * scale
        if not narrow:
            return x * dtype.type(scale) if dtype.kind != "c" else x * scale
        product = x.astype(np.float32) * scale
        # A 0-d narrow value times a 0-d float32 is float32 in torch (both are 0-d, so
        # the wider type wins); a dimensioned one keeps its dtype.
        return product if x.ndim == 0 else product.astype(dtype)


# --- unscaling gradients ----------------------------------------------------------------------

def _gradients(optimizer: Any) -> list:
    """The arrays to unscale: each param's ``.grad`` (its ``.values`` for a row-sparse
    gradient), params without one skipped; each array once."""
    out, seen = [], set()
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            g = getattr(p, "grad", None)
            if g is None:
                continue
            if isinstance(g, RowSparse) and getattr(g.values, "dtype", None) == np.float16:
                # As torch: rows named twice are summed first, since their sum in float16
                # may overflow where the rows alone do not, and that must count as found.
                with np.errstate(over="ignore"):  # an overflow is what this looks for
                    g = g.coalesce_()
            if not arrays.is_array(g) and arrays.is_array(getattr(g, "values", None)):
                g = g.values
            if not arrays.is_array(g) or not arrays.is_float(g.dtype):
                raise TypeError(f"GradScaler: the gradient of a param in group {index} is "
                                f"{arrays.describe(g)}; expected a floating-point NumPy or "
                                "CuPy array (or a row-sparse gradient with .values)")
            if id(g) not in seen:
                seen.add(id(g))
                out.append(g)
    return out


def _unscale_grads(grads: list, inv_scale: np.float32, record: _Record) -> None:
    for run in _runs(grads):
        if arrays.is_cupy(run):
            record.flags.append(_unscale_device(run, inv_scale))
        elif _unscale_host(run, inv_scale):
            record.found = True
    # _runs leaves out empty gradients; torch records a check for them all the same.


def _unscale_host(g: np.ndarray, inv_scale: np.float32) -> bool:
    """Multiply ``g`` by ``inv_scale`` in place; True if it held an inf or nan (before the
    multiply, as torch checks). A large 1-D buffer is cut over the thread pool."""
    narrow = g.dtype.itemsize < 4
    inv = np.float32(inv_scale) if narrow else g.dtype.type(inv_scale)
    if g.ndim != 1:  # a non-contiguous gradient (_runs flattens every other): one piece
        return _unscale_piece(g, inv, None, narrow, False)
    found: dict[int, bool] = {}

    def run(n, flat, args, scratch, chunk, start, stop) -> None:
        hit = False
        for lo in range(start, stop, chunk):
            hit = _unscale_piece(flat[lo: min(lo + chunk, stop)], inv, scratch, narrow, hit)
        found[start] = hit

    def scratch(worker: int) -> np.ndarray | None:
        return np.empty(_CHUNK, np.float32) if narrow else None

    pool.run(run, g.size, [g], (), scratch, _CHUNK)
    return any(found.values())


def _unscale_piece(x: np.ndarray, inv: np.floating, scratch: np.ndarray | None,
                   narrow: bool, found: bool) -> bool:
    """One cache-sized piece: widen (float16/bfloat16 into float32 scratch), check for an
    inf or nan (until one is found), scale, round back; the piece stays in cache
    throughout, so the gradient is read from memory and written back once."""
    with np.errstate(all="ignore"):
        if narrow:
            w = np.empty(x.shape, np.float32) if scratch is None else scratch[: x.size]
            np.copyto(w, x, casting="unsafe")
        else:
            w = x
        if not found:  # (faster than a sum here, and exact: no overflow to rule out)
            found = not np.isfinite(w).all()
        if inv != 1:  # torch leaves the values alone for a scale of 1
            np.multiply(w, inv, out=w)
            if narrow:
                np.copyto(x, w, casting="unsafe")
    return found


# The device kernel: each thread widens its elements to the math type S (float for
# float16, bfloat16 and float32; double for float64), raises the flag for an inf or nan,
# and stores value * inv_scale rounded to T. Racing writes of 1.0 to the flag are benign.
_KERNEL = """
extern "C" __global__ void optdsl_unscale(T* g, const S inv, float* found,
                                          const long long n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    const S v = (S)g[i];
    if (!isfinite(v)) found[0] = 1.0f;
    if (inv != (S)1) g[i] = (T)(v * inv);
  }
}
"""
_THREADS = 256
_MAX_BLOCKS = 65535
_kernels: dict[tuple, Any] = {}


def _unscale_device(g: Any, inv_scale: np.float32) -> Any:
    """Unscale a CuPy gradient in place on its GPU in one launch; returns its float32
    flag there (1.0 if the gradient held an inf or nan)."""
    import cupy

    from .backend.cupy_backend import _typedefs, math_dtype

    with arrays.on_device(g):
        flag = cupy.zeros(1, np.float32)
        # A strided gradient (_runs passes every other one flat) goes through a copy.
        work = g if g.flags.c_contiguous else cupy.ascontiguousarray(g)
        key = (cupy.RawKernel, g.dtype.str)  # per CuPy module: tests swap in a fake one
        if key not in _kernels:
            source = "#include <cupy/carray.cuh>\n" + _typedefs(g.dtype) + _KERNEL
            _kernels[key] = cupy.RawKernel(source, "optdsl_unscale")
        n = work.size
        blocks = max(1, min(-(-n // _THREADS), _MAX_BLOCKS))
        _kernels[key]((blocks,), (_THREADS,),
                      (work, math_dtype(g.dtype).type(inv_scale), flag, np.int64(n)))
        if work is not g:
            g[...] = work
    return flag


# --- small helpers ----------------------------------------------------------------------------

def _skipped(optimizer: Any) -> bool:
    """Whether an optdsl optimizer skipped the step it was just asked for (its own
    ``skip_nonfinite``); other optimizers are taken to have stepped."""
    return isinstance(optimizer, Optimizer) and bool(optimizer.last_step_skipped)


def _float32(value: float) -> float:
    """``value`` rounded to float32 (nearest even; inf past its range), as a float."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise HyperTypeError(f"GradScaler: {name} must be a number, got {value!r}")
    return float(value)


def _check_scale(name: str, value: Any) -> float:
    number = _number(name, value)
    if not (math.isfinite(number) and number > 0):
        raise HyperError(f"GradScaler: {name} must be a finite number > 0, got {value!r}")
    return number


def _check_growth_factor(value: Any) -> float:
    number = _number("growth_factor", value)
    if not number > 1.0:
        raise HyperError(f"GradScaler: the growth factor must be > 1.0, got {value!r}")
    return number


def _check_backoff_factor(value: Any) -> float:
    number = _number("backoff_factor", value)
    if not number < 1.0:
        raise HyperError(f"GradScaler: the backoff factor must be < 1.0, got {value!r}")
    return number


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise HyperTypeError(f"GradScaler: {name} must be a whole number, got {value!r}")
    if value < low:
        raise HyperError(f"GradScaler: {name} must be >= {low}, got {value!r}")
    return int(value)


def _check_growth_interval(value: Any) -> int:
    return _check_int("growth_interval", value, 1)


def _one_number(value: Any) -> Any:
    """``update(new_scale)``'s value: a number, or the element of a one-element array."""
    if arrays.is_array(value) or isinstance(value, np.generic):
        if value.size != 1 or not (arrays.is_float(value.dtype) or value.dtype.kind in "iu"):
            raise HyperTypeError(f"GradScaler.update: new_scale must be a number or a "
                                 f"one-element array of numbers, got "
                                 f"{arrays.describe(value)} of shape {np.shape(value)}")
        return np.asarray(arrays.to_numpy(value)).astype(np.float64).reshape(()).item()
    return value
