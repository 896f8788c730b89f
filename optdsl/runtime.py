"""The torch-shaped runtime: parameters, param groups, state in flat buffers, stepping.

The compiled core (host functions and kernels from :mod:`optdsl.compiler`) is pure; every
mutation of parameters and state happens here.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import itertools
import math
import operator
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import arrays
from . import clip as C
from . import hypers as H
from . import sparse as S
from . import stages as ST
from .backend import Backend, pool
from .backend import available as available_backends
from .backend import get as get_backend
from .compiler import CompiledSpec
from .errors import (
    GradientError,
    GradientTypeError,
    HyperError,
    HyperTypeError,
    OptdslError,
    ParamGroupError,
    ParamGroupTypeError,
    StateDictError,
)

# The extra outputs diagnostics=True asks the kernels for (see optdsl.extras).
DIAGNOSTIC_EXTRAS = ("track", "update")


class _HookHandle:
    """What ``register_step_pre_hook`` returns: ``remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: dict[int, Callable], hook: Callable):
        if not callable(hook):
            raise TypeError(f"a step hook must be callable, got {type(hook).__name__}")
        self.hooks, self.id = hooks, next(self._ids)
        hooks[self.id] = hook

    def remove(self) -> None:
        self.hooks.pop(self.id, None)


class _Version:
    """A counter of changes to an optimizer's state made by anyone but the step itself."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class Param:
    """A parameter: an array ``data`` and its gradient ``grad`` (None until set).

    Any object with array attributes ``.data`` and ``.grad`` works as a parameter; this
    is the plain one. Parameters are hashed by identity, as torch tensors are.
    """

    __slots__ = ("data", "grad", "name", "__weakref__")

    def __init__(self, data: Any, name: str | None = None, grad: Any = None):
        self.data = data
        self.grad = grad
        self.name = name

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        _REBINDS.n += 1  # lets a step plan over Params skip checking every param's arrays

    def __repr__(self) -> str:
        shape = getattr(self.data, "shape", "?")
        dtype = getattr(self.data, "dtype", "?")
        label = f"{self.name!r}, " if self.name else ""
        return f"Param({label}shape={tuple(shape)}, dtype={dtype})"


class _Layout:
    """The state of one param group for one dtype: flat buffers, a view per param.

    Each state is a row: state ``name`` for every param of the group with this dtype,
    laid end to end, so the kernel can also run over a whole row at once. Rows are
    grouped into one buffer per storage dtype: the params' dtype unless ``dtypes`` gives
    another for a state (``state_dtypes``, and fp32 master weights of narrow params).

    Rows start at different offsets within a 4 KiB page (and away from offset 0, where
    large arrays such as the params and grads start): a kernel streams every row and p
    and g at once, and streams whose addresses agree in their low 12 bits collide in the
    caches. Measured for numba Adam on 64M float32 params, one thread: rows 2**28 bytes
    apart took 140 ms a step, rows shifted as below 55 ms (torch's fused Adam: 59 ms).
    """

    # Bytes between the 4 KiB phases of consecutive rows (a multiple of every itemsize).
    PHASE = 1088

    # GPU rows start on 256-byte boundaries instead (whole memory transactions).
    GPU_ALIGN = 256

    def __init__(self, params: list[Any], dtype: np.dtype, names: list[str],
                 dtypes: dict[str, np.dtype] | None = None):
        self.params = params
        self.dtype = np.dtype(dtype)
        # Storage dtypes of states stored otherwise than the params.
        self.dtypes = {k: np.dtype(v) for k, v in (dtypes or {}).items()}
        # Where the state lives: with the params (host memory, or their GPU).
        self.like = params[0].data
        self.device = arrays.device(self.like)
        self.offsets = {}
        offset = 0
        for p in params:
            self.offsets[id(p)] = (offset, int(np.size(p.data)), tuple(np.shape(p.data)))
            offset += int(np.size(p.data))
        self.size = offset
        self.names: list[str] = []
        # dtype -> (rows, size) array (keyed by the dtype itself: bfloat16's .str is '<V2')
        self.buffers: dict[np.dtype, Any] = {}
        self.rows: dict[str, tuple[np.dtype, int]] = {}  # name -> (dtype, row)
        self.grow(names)

    def dtype_of(self, name: str) -> np.dtype:
        return self.dtypes.get(name, self.dtype)

    def _allocate(self, rows: int, dtype: np.dtype, first: int) -> np.ndarray:
        """A zeroed (rows, size) view whose row k starts (first + k + 1) * PHASE bytes
        into a page, modulo 4 KiB, given a page-aligned allocation (as large ones are)."""
        item = dtype.itemsize
        if self.device != "cpu":
            align = self.GPU_ALIGN // item
            stride = -(-self.size // align) * align
            flat = arrays.zeros(rows * stride, dtype, self.like)
            return flat.reshape(rows, stride)[:, : self.size]
        head = (self.PHASE * (first + 1)) % 4096 // item
        pad = ((self.PHASE - self.size * item) % 4096) // item
        stride = self.size + pad
        flat = np.zeros(head + rows * stride, dtype)
        return flat[head:].reshape(rows, stride)[:, : self.size]

    def grow(self, names: list[str]) -> bool:
        """Make room for states not yet laid out; True if the buffers moved."""
        new = [n for n in names if n not in self.names]
        if not new:
            return False
        every = self.names + new
        by_dtype: dict[np.dtype, list[str]] = {}
        for n in every:
            by_dtype.setdefault(self.dtype_of(n), []).append(n)
        buffers, rows, first = {}, {}, 0
        for key, members in by_dtype.items():
            buffer = self._allocate(len(members), key, first)
            first += len(members)
            for k, n in enumerate(members):
                rows[n] = (key, k)
                if n in self.rows:
                    with arrays.on_device(self.like):
                        buffer[k] = self.row(n)
            buffers[key] = buffer
        self.buffers, self.rows, self.names = buffers, rows, every
        return True

    @property
    def buffer(self) -> Any:
        """The buffer of the rows stored in the params' dtype (every row, by default)."""
        return self.buffers[self.dtype]

    def row(self, name: str) -> Any:
        """State ``name`` of every param of the layout, end to end."""
        key, k = self.rows[name]
        return self.buffers[key][k]

    def flat(self, name: str, p: Any) -> np.ndarray:
        off, n, _ = self.offsets[id(p)]
        return self.row(name)[off: off + n]

    def view(self, name: str, p: Any) -> np.ndarray:
        return self.flat(name, p).reshape(self.offsets[id(p)][2])


# Counts assignments to any Param's attributes (see Param.__setattr__).
_REBINDS = _Version()


class _ParamState(dict):
    """One parameter's state, ``opt.state[p]``: a plain dict that counts changes, so a
    step can reuse the plan it made last time when nobody touched the state since."""

    __slots__ = ("_version",)

    def __init__(self, version: _Version, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._version = version

    def _touch(self) -> None:
        self._version.n += 1

    def __setitem__(self, key, value):
        self._touch()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._touch()
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        self._touch()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        if key not in self:
            self._touch()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._touch()
        return super().pop(*args)

    def popitem(self):
        self._touch()
        return super().popitem()

    def clear(self):
        self._touch()
        super().clear()

    def __ior__(self, other):
        self._touch()
        return super().__ior__(other)

    def __reduce__(self):  # copies (copy.deepcopy) are plain dicts
        return dict, (dict(self),)


class _State(defaultdict):
    """``opt.state``: as torch's, a defaultdict (``opt.state[p]`` of a param that has not
    stepped is ``{}``), whose entries count changes (see :class:`_ParamState`)."""

    def __init__(self, version: _Version):
        super().__init__(lambda: _ParamState(version))
        self._version = version

    def __setitem__(self, key, value):
        self._version.n += 1
        if not isinstance(value, _ParamState):
            value = _ParamState(self._version, value)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._version.n += 1
        super().__delitem__(key)

    def __reduce__(self):
        return dict, (dict(self),)


_DATA = operator.attrgetter("data")
_consume = deque(maxlen=0).extend  # runs an iterator to its end
_GRAD = operator.attrgetter("grad")


class _Plan:
    """How one param group steps, reused while nothing changes: the params with a
    gradient (by identity, with their data and grad arrays), and for each set of params
    sharing a dtype and a step count, the kernel's buffers over runs of params that lie
    end to end in memory (flattened params: one run, one kernel call)."""

    def __init__(self, signature: tuple, arrays: tuple, version: int, state: Any,
                 backend: Any, parts: list, rebinds: int | None):
        self.signature, self.version, self.state = signature, version, state
        # _REBINDS when the signature was last found unchanged, if every param of the
        # group is an optdsl.Param (None otherwise): while no Param attribute has been
        # assigned since, the params' arrays cannot have changed, and the signature need
        # not be computed (with a thousand params, the larger part of a step's overhead).
        self.rebinds = rebinds
        # The params and arrays the signature's ids name, kept alive so that no new
        # array can be given one of those ids while the plan exists.
        self.arrays = arrays
        self.backend, self.parts = backend, parts


def _signature(params: list[Any]) -> tuple:
    """What a plan depends on in a group's params list: which list (and its length), and
    each param's data and grad arrays (None for no grad), by identity. Two C-level passes:
    with a thousand params this is most of a planned step's overhead."""
    return (id(params), len(params), tuple(map(id, map(_DATA, params))),
            tuple(map(id, map(_GRAD, params))))


def _is_param(obj: Any) -> bool:
    return hasattr(obj, "data") and hasattr(obj, "grad")


class Optimizer:
    """Base class of every compiled optimizer; subclasses carry a ``_spec``.

    Mirrors ``torch.optim.Optimizer``: ``param_groups``, ``state``, ``step``,
    ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict``.

    Besides the spec's hypers, the constructor takes ``backend`` (a backend's name, or
    None for the best one for where the arrays live) and ``skip_nonfinite`` (skip steps
    whose gradients hold a nan or an inf; see :meth:`step`, which sets
    ``last_step_skipped`` and counts ``skipped_steps``) and ``max_grad_norm`` (clip the
    gradients of all groups together to this 2-norm inside :meth:`step`, as
    ``optdsl.clip_grad_norm_`` over every param would; a group's ``"max_grad_norm"`` key
    clips that group by its own norm, before the global clip). ``lazy``: step
    :class:`optdsl.RowSparse` gradients on their rows only (a group's ``"lazy"`` key
    overrides it); by default they step as the equivalent dense gradients would (see
    :mod:`optdsl.sparse`).
    """

    _spec: CompiledSpec
    # True for optimizers that step only RowSparse gradients, lazily, and refuse dense ones
    # (optdsl.optim.SparseAdam, as torch.optim.SparseAdam).
    sparse_only: bool = False

    def __init__(self, params: Iterable[Any], *, backend: str | None = None,
                 skip_nonfinite: bool = False, max_grad_norm: float | None = None,
                 master_weights: bool = False, state_dtypes: dict[str, Any] | None = None,
                 diagnostics: bool = False, lazy: bool | None = None, **hypers: Any):
        name = type(self).__name__
        self.lazy = S.resolve_lazy(type(self), lazy)
        self.defaults: dict[str, Any] = H.resolve(self._spec.hypers, hypers, name)
        self._check_requires(self.defaults)
        if backend is not None:
            get_backend(backend)  # an unknown or unavailable backend fails here, not at step
        self.backend = backend
        self.param_groups: list[dict[str, Any]] = []
        # A defaultdict, as in torch: opt.state[p] of a param that has not stepped is {}.
        self._version = _Version()
        self.state: dict[Any, dict[str, Any]] = _State(self._version)
        self._plans: dict[int, _Plan] = {}
        self._layouts: dict[tuple[int, str], _Layout] = {}
        self._validated: list[tuple[dict, dict]] = []
        self._scratch: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        # Not a hyper (it is no part of the update rule) but how step() treats a step
        # whose gradients hold a nan or an inf; see step().
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise TypeError(f"{name}: skip_nonfinite must be True or False, got "
                            f"{skip_nonfinite!r}")
        self.skip_nonfinite = bool(skip_nonfinite)
        self.last_step_skipped = False
        self.skipped_steps = 0
        # Not a hyper either: step() clips the gradients to it before the update.
        self.max_grad_norm = C.check_max_grad_norm(max_grad_norm, name)
        # The total gradient norms step() clipped with last: over all groups (None when
        # max_grad_norm is None), and by group index for groups with their own key.
        self.last_grad_norm: np.floating | None = None
        self.last_group_grad_norms: dict[int, np.floating] = {}
        self._state_names = tuple(s.name for s in self._spec.spec.states)
        # Mixed precision: fp32 master copies of float16/bfloat16 params (state "master"),
        # and the storage dtype of each state (see _storage_dtypes).
        if not isinstance(master_weights, (bool, np.bool_)):
            raise TypeError(f"{name}: master_weights must be True or False, got "
                            f"{master_weights!r}")
        self._master_weights = bool(master_weights)
        self._state_dtypes = _check_state_dtypes(name, state_dtypes, self._state_names)
        if not isinstance(diagnostics, (bool, np.bool_)):
            raise TypeError(f"{name}: diagnostics must be True or False, got {diagnostics!r}")
        self.diagnostics_enabled = bool(diagnostics)
        self._last_diagnostics: Any = None
        # Extra kernel outputs (see optdsl.extras) asked for by tools attached to this
        # optimizer (optdsl.autotune.HypergradientLR asks for "dlr:lr"), by who asks.
        self._extra_requests: dict[Any, tuple[str, ...]] = {}
        # Their buffers, by (group index, params' dtype): one row per extra output, laid
        # out as the state's layout is, in the dtype the kernels compute in.
        self._extra_layouts: dict[tuple[int, str], _Layout] = {}
        self._step_pre_hooks: dict[int, Callable] = {}
        self._grad_hooks: dict[int, Callable] = {}
        self._step_post_hooks: dict[int, Callable] = {}
        if _is_param(params) or arrays.is_array(params):
            raise ParamGroupTypeError(f"{name}: params must be an iterable of parameters or "
                                      f"of dicts, got a single {type(params).__name__}")
        if isinstance(params, (set, frozenset)):
            raise ParamGroupTypeError(f"{name}: params must be an ordered collection such as "
                                      "a list, not a set: their order numbers them in the "
                                      "state_dict")
        groups = list(params)
        if not groups:
            raise ParamGroupError(f"{name} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @property
    def master_weights(self) -> bool:
        """Whether float16/bfloat16 params step through fp32 master copies (state
        ``"master"``); fixed at construction."""
        return self._master_weights

    @property
    def state_dtypes(self) -> dict[str, np.dtype]:
        """The storage dtype asked for each state (a copy); fixed at construction."""
        return dict(self._state_dtypes)

    def _storage_dtypes(self, dtype: np.dtype) -> dict[str, np.dtype]:
        """For params of ``dtype``: the states stored in another dtype than the params'.
        With master weights a narrow param's states are float32, as its master is."""
        out: dict[str, np.dtype] = {}
        if self._master_weights and _narrow(dtype):
            out = {n: np.dtype(np.float32) for n in (*self._state_names, "master")}
        out.update(self._state_dtypes)
        return {k: v for k, v in out.items() if v != dtype}

    def _compute_for(self, dtype: np.dtype) -> np.dtype:
        """The dtype kernels compute in for params of ``dtype``: float32 for float16 and
        bfloat16, else the params' own; wider if a state is stored wider."""
        return max([_compute_dtype(dtype), *self._storage_dtypes(dtype).values()],
                   key=lambda d: d.itemsize)

    def _has_master(self, dtype: np.dtype) -> bool:
        return self._master_weights and _narrow(dtype)

    def sync_master_weights(self) -> None:
        """Copy every param's values into its fp32 master copy. The step reads and
        writes the master, and rounds it into the param; call this after changing a
        param's values by hand (as the master would otherwise overwrite them)."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st is not None and "master" in st:
                    arrays.copy_into(st["master"], p.data)

    # --- class-level introspection ------------------------------------------------------
    @classmethod
    def source(cls, backend: str = "numpy", *, t: int = 1, **hypers: Any) -> str:
        """The exact kernel source that runs for these hypers (defaults otherwise) at step t."""
        values = H.resolve(cls._spec.hypers, hypers, cls.__name__)
        path = cls._spec.host["decide"](values, t)
        return cls._spec.kernel(get_backend(backend), path).source

    @classmethod
    def ir(cls, *, t: int = 1, optimized: bool = True, **hypers: Any):
        """The IR of the specialisation these hypers select (after the passes by default)."""
        values = H.resolve(cls._spec.hypers, hypers, cls.__name__)
        path = cls._spec.host["decide"](values, t)
        return cls._spec.program(path) if optimized else cls._spec.unoptimized(path)

    @classmethod
    def spec_text(cls) -> str:
        """The ``.opt`` text this class was compiled from."""
        return cls._spec.text

    # --- param groups -------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, a dict with ``"params"`` and any hypers to override (the others
        take the optimizer's defaults), as torch's. Its hypers are validated now, and a
        param already in another group is refused."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise ParamGroupTypeError(f"{name}: a param group must be a dict, got "
                                      f"{type(param_group).__name__}")
        if "params" not in param_group:
            raise ParamGroupTypeError(f"{name}: a param group needs a 'params' entry")
        params = param_group["params"]
        if isinstance(params, (set, frozenset)):
            raise ParamGroupTypeError(f"{name}: a param group's params must be an ordered "
                                      "collection such as a list, not a set: their order "
                                      "numbers them in the state_dict")
        params = [params] if _is_param(params) else list(params)
        for p in params:
            if not _is_param(p):
                raise ParamGroupTypeError(f"{name}: {type(p).__name__} is not a parameter: "
                                          "it needs array attributes .data and .grad (wrap "
                                          "arrays in optdsl.Param)")
            dtype = getattr(p.data, "dtype", None)
            if dtype is None or not arrays.is_float(dtype):
                raise ParamGroupTypeError(f"{name}: parameters must hold floating-point "
                                          f"arrays, got {dtype}")
        if len({id(p) for p in params}) != len(params):
            raise ParamGroupError(f"{name}: a param group holds the same parameter twice")
        existing = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        for p in params:
            if id(p) in existing:
                raise ParamGroupError(f"{name}: some parameters appear in more than one "
                                      "parameter group: "
                                      f"{self._label(existing[id(p)], p)}")
        overrides = {k: v for k, v in param_group.items() if k != "params"}
        extra = {k: v for k, v in overrides.items() if k not in self._spec.hypers}
        for key in extra:
            close = difflib.get_close_matches(key, list(self._spec.hypers), n=1, cutoff=0.8)
            if close:
                raise HyperTypeError(f"{name}: unknown param group key {key!r}; did you "
                                     f"mean {close[0]!r}?")
        known = {k: v for k, v in overrides.items() if k in self._spec.hypers}
        index = len(self.param_groups)
        S.group_lazy(self, index, param_group)
        with _in_group(index, index > 0):
            values = H.resolve(self._spec.hypers, known, name, defaults=self.defaults)
            self._check_requires(values)
        group = {"params": params, **values, **extra}
        self.param_groups.append(group)
        self._validated.append(({k: group[k] for k in self._spec.hypers}, values))

    def _check_requires(self, values: dict[str, Any]) -> None:
        failing = self._spec.host["requires"](values)
        if failing >= 0:
            message = self._spec.spec.requires[failing].message
            raise HyperError(f"{type(self).__name__}: {message}")

    def _group_hypers(self, index: int) -> dict[str, Any]:
        """The group's validated hypers; revalidated only when something changed."""
        group = self.param_groups[index]
        current = {k: group.get(k, self.defaults[k]) for k in self._spec.hypers}
        if index >= len(self._validated):  # a group appended to param_groups by hand
            self._validated.extend([(None, None)] * (index + 1 - len(self._validated)))
        snapshot, values = self._validated[index]
        try:
            changed = bool(current != snapshot)
        except (ValueError, TypeError):  # e.g. an array put in a group: let resolve say why
            changed = True
        if changed:
            with _in_group(index, len(self.param_groups) > 1):
                values = H.resolve(self._spec.hypers, current, type(self).__name__)
                self._check_requires(values)
            # A copy: a list edited in place (group["betas"][0] = ...) must still differ.
            self._validated[index] = (copy.deepcopy(current), values)
        return values

    # --- stepping -----------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``set_to_none``, torch's default) or zero it in place.
        Gradients of params re-homed by :func:`optdsl.flatten` are always zeroed in place,
        so they stay views of their flat buffer (a whole buffer is zeroed in one fill).
        A :class:`optdsl.RowSparse` gradient is always set to None: it has no buffer of
        the parameter's shape to zero (as torch drops a sparse gradient)."""
        from .flat import GRAD_BUFFERS

        flat: dict[int, list] = {}
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                owner = getattr(grad, "base", None)
                if owner is not None and GRAD_BUFFERS.get(id(owner)) is owner:
                    flat.setdefault(id(owner), [owner, 0, []])
                    entry = flat[id(owner)]
                    entry[1] += grad.size
                    entry[2].append(grad)
                elif set_to_none or isinstance(grad, S.RowSparse):  # no buffer to zero
                    p.grad = None
                else:
                    with arrays.on_device(grad):
                        grad[...] = 0
        for owner, covered, grads in flat.values():
            with arrays.on_device(owner):
                if covered == owner.size:
                    owner.fill(0)
                else:
                    for grad in grads:
                        grad[...] = 0

    def step(self, closure: Callable[[], Any] | None = None, *,
             skip_nonfinite: bool | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss.

        ``skip_nonfinite`` (default: the optimizer's ``skip_nonfinite``, False unless given
        at construction): when any gradient holds a nan or an inf, change nothing (no
        parameter, state or step count) and set ``last_step_skipped`` and count the step in
        ``skipped_steps``. Off, nothing is checked and a nan propagates, as in torch.

        Bad input (a gradient of the wrong shape, dtype or type, a bad hyper, a parameter
        in two groups) raises before any group has stepped.

        Hooks registered with :meth:`register_step_pre_hook` run first, and those of
        :meth:`register_step_post_hook` last, as in torch."""
        for hook in list(self._step_pre_hooks.values()):
            hook(self, (closure,), {"skip_nonfinite": skip_nonfinite})
        loss = self._step(closure, skip_nonfinite)
        for hook in list(self._step_post_hooks.values()):
            hook(self, (closure,), {"skip_nonfinite": skip_nonfinite})
        return loss

    def register_step_pre_hook(self, hook: Callable) -> _HookHandle:
        """Call ``hook(optimizer, args, kwargs)`` before every step (torch's signature;
        its return value is ignored). Returns a handle whose ``remove()`` unregisters."""
        return _HookHandle(self._step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable) -> _HookHandle:
        """Call ``hook(optimizer, args, kwargs)`` after every step, skipped or not."""
        return _HookHandle(self._step_post_hooks, hook)

    def register_grad_hook(self, hook: Callable) -> _HookHandle:
        """Call ``hook(optimizer, grads)`` in every step, once the step has checked the
        gradients and before it clips or uses them: ``grads`` lists, for every param group
        in order, the group's gradient arrays (of its params that have one, in the group's
        order; an empty list for a group without). The hook may change them in place, as
        :class:`optdsl.distributed.AllReduce` sums them over processes. Hooks run in the
        order they were registered. Returns a handle whose ``remove()`` unregisters."""
        if not callable(hook):
            raise TypeError(f"{type(self).__name__}.register_grad_hook takes a callable, "
                            f"got {type(hook).__name__}")
        return _HookHandle(self._grad_hooks, hook)

    def _step(self, closure: Callable[[], Any] | None, skip_nonfinite: bool | None) -> Any:
        loss = closure() if closure is not None else None
        # Check every group's hypers and gradients before touching anything, so a bad value
        # in one group raises without having stepped the groups before it. Gradients are
        # checked again only when they are other arrays than last step's.
        todo = []
        replanned = False
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            plan = self._plans.get(index)
            if plan is not None and plan.rebinds is not None and plan.rebinds == _REBINDS.n \
                    and plan.arrays[0] is params and len(params) == plan.signature[1] \
                    and all(map(operator.is_, params, plan.arrays[1])):
                signature = plan.signature
            else:
                if not isinstance(params, (list, tuple)):
                    self._refuse_params(index, params)
                signature = _signature(params)
            if plan is not None and plan.signature == signature and plan.state is self.state \
                    and plan.version == self._version.n and isinstance(self.state, _State):
                if plan.rebinds is not None:
                    plan.rebinds = _REBINDS.n
                todo.append((index, group, None, signature, plan, self._group_hypers(index),
                             plan.backend))
                continue
            replanned = True
            live = [p for p in params if p.grad is not None]
            if not live:
                continue
            for p in live:
                self._check_grad(index, p)
                self._check_state(index, p)
            todo.append((index, group, live, signature, None, self._group_hypers(index),
                         self._backend_for(live)))
        if replanned:  # a group's list changed (or is new): no param may be in two groups
            self._check_membership()
        if self._grad_hooks:  # e.g. the all-reduce of data-parallel training
            grads = [[p.grad for p in group["params"] if p.grad is not None]
                     for group in self.param_groups]
            for hook in list(self._grad_hooks.values()):
                hook(self, grads)
        if skip_nonfinite is None:
            skip_nonfinite = self.skip_nonfinite
        clipped = [t for t in todo if t[1].get("max_grad_norm") is not None]
        if clipped or self.max_grad_norm is not None:
            # Clip before the update, as torch users call clip_grad_norm_ before step().
            # A finite norm means finite gradients; only a non-finite one needs the check.
            if not self._clip(todo, clipped, skip_nonfinite):
                self._diagnose(todo)
                return loss
        elif skip_nonfinite and not all(map(_finite_grads, todo)):
            self.last_step_skipped = True
            self.skipped_steps += 1
            self._diagnose(todo)
            return loss
        self.last_step_skipped = False
        for index, group, live, signature, plan, values, backend in todo:
            if live is not None and S.has_row_sparse(live):  # param by param, no plan
                self._plans.pop(index, None)
                S.step_group(self, index, live, values, backend)
                continue
            if plan is None or not self._run_plan(plan, values):
                self._plans.pop(index, None)
                live = live or [p for p in group["params"] if p.grad is not None]
                self._step_group(index, group, live, values, backend)
                plan = self._make_plan(index, live, signature, values, backend)
                if plan is not None:
                    self._plans[index] = plan
        # The state changes this step made are the step's own: every plan used or made in
        # it stays valid (one group's first step must not undo another group's plan).
        for index, *_ in todo:
            if index in self._plans:
                self._plans[index].version = self._version.n
        self._diagnose(todo)
        return loss

    # --- extra kernel outputs: diagnostics and hypergradients -----------------------------
    def _extras(self) -> tuple[str, ...]:
        """The extra outputs the kernels write this step (none: the plain kernels)."""
        wanted = set(DIAGNOSTIC_EXTRAS) if self.diagnostics_enabled else set()
        for requests in self._extra_requests.values():
            wanted.update(requests)
        return tuple(sorted(wanted))

    def request_extras(self, owner: Any, requests: tuple[str, ...] | None) -> None:
        """Ask the kernels to write extra outputs (see :mod:`optdsl.extras`) on behalf of
        ``owner`` (None: withdraw its requests). The next step compiles the kernels
        that write them; :meth:`extra_output` reads them after it."""
        if requests:
            from .extras import normalize

            self._extra_requests[owner] = normalize(requests)
        else:
            self._extra_requests.pop(owner, None)

    def extra_output(self, p: Any, name: str, group: int | None = None) -> Any:
        """Extra output ``name`` (``"dlr:lr"``, ``"diag:update"``, ``"track:NAME"``) of
        ``p``'s last step that wrote it, shaped as ``p``; None where there is none.
        ``group``: the index of ``p``'s param group, if known (saves looking it up)."""
        indices = range(len(self.param_groups)) if group is None else (group,)
        for index in indices:
            layout = self._extra_layouts.get(self._layout_key(index, p.data))
            # The layout holds its params, so no other object can have their ids.
            if layout is not None and id(p) in layout.offsets:
                return layout.view(name, p) if name in layout.names else None
        return None

    def _layout_key(self, index: int, data: Any) -> tuple:
        """Which layout of group ``index`` holds a param of ``data``: one per dtype, and
        for a rule that reads ``factored``, matrices apart from the rest (so that a
        vector's conditional state, Adafactor's variance, takes no room for matrices)."""
        key = (index, np.dtype(data.dtype).str)
        return (*key, np.ndim(data) >= 2) if self._spec.uses_factored else key

    def _extra_layout(self, index: int, layout: _Layout, kernel) -> _Layout | None:
        """The buffers of ``kernel``'s extra outputs for the params of ``layout``."""
        names = [b for b in kernel.buffers if ":" in b and not b.startswith("fac:")]
        if not names:
            return None
        key = self._layout_key(index, layout.params[0].data)
        extra = self._extra_layouts.get(key)
        if extra is None or extra.offsets != layout.offsets or extra.device != layout.device:
            extra = _Layout(layout.params, self._compute_for(layout.dtype), names)
            self._extra_layouts[key] = extra
        else:
            extra.grow(names)
        return extra

    def diagnostics(self) -> Any:
        """What the last step did, per param and per group (see :mod:`optdsl.diagnostics`);
        needs ``diagnostics=True`` (or ``opt.diagnostics_enabled = True``) and a step."""
        from .diagnostics import require

        return require(self)

    def _diagnose(self, todo: list) -> None:
        if self.diagnostics_enabled:
            from .diagnostics import collect

            self._last_diagnostics = collect(self, todo)

    def _clip(self, todo: list, clipped: list, skip_nonfinite: bool) -> bool:
        """Clip the gradients ``step()`` is about to use: each group of ``clipped`` by its
        own norm, then all of ``todo``'s together by ``max_grad_norm``. False (having
        changed nothing, and counted the skip) when ``skip_nonfinite`` finds a nan or inf.
        """
        name = type(self).__name__
        limits = [C.check_max_grad_norm(t[1]["max_grad_norm"], f"{name}: param group {t[0]}")
                  for t in clipped]
        norms = [C.total_norm(_step_grads(t), 2.0) for t in clipped]
        total = None
        if self.max_grad_norm is not None and not clipped:
            total = C.total_norm([g for t in todo for g in _step_grads(t)], 2.0)
        if skip_nonfinite:
            # A finite norm vouches for the gradients it covers: the global one for every
            # group, else each clipped group's own; the other groups are checked. A
            # non-finite norm may be an overflow of finite values: check them one by one.
            if total is not None:
                fine, rest = math.isfinite(total), []
            else:
                fine = all(map(math.isfinite, norms))
                rest = [t for t in todo if not any(t is c for c in clipped)]
            if not (fine and all(map(_finite_grads, rest))) \
                    and not all(map(_finite_grads, todo)):
                self.last_step_skipped = True
                self.skipped_steps += 1
                return False
        self.last_group_grad_norms = {}
        for t, limit, norm in zip(clipped, limits, norms, strict=True):
            C.scale_(_step_grads(t), C.clip_coefficient(limit, norm))
            self.last_group_grad_norms[t[0]] = norm
        if self.max_grad_norm is not None:
            grads = [g for t in todo for g in _step_grads(t)]
            if total is None:  # after the groups' own clips, as two calls in a row would
                total = C.total_norm(grads, 2.0)
            C.scale_(grads, C.clip_coefficient(self.max_grad_norm, total))
        self.last_grad_norm = total
        return True

    def _label(self, index: int, p: Any) -> str:
        """``param 'w' (param 1 of group 0)``, or ``param 1 of group 0`` without a name."""
        position = next((i for i, q in enumerate(self.param_groups[index]["params"])
                         if q is p), "?")
        name = getattr(p, "name", None)
        if isinstance(name, str) and name:
            return f"param {name!r} (param {position} of group {index})"
        return f"param {position} of group {index}"

    def _where(self, index: int, p: Any) -> str:
        return f"{type(self).__name__}: {self._label(index, p)}"

    def _check_grad(self, index: int, p: Any) -> None:
        data, grad = p.data, p.grad
        if self.sparse_only or isinstance(grad, S.RowSparse):
            S.check_grad(self, index, p)  # and coalesces it, for clipping and the step
            return
        if not arrays.is_array(grad):
            module = type(grad).__module__
            kind = type(grad).__qualname__
            kind = kind if module == "builtins" else f"{module.split('.')[0]}.{kind}"
            hint = "; for a torch tensor, assign t.numpy()" if module.startswith("torch") else ""
            raise GradientTypeError(f"{self._where(index, p)}: the gradient must be an array "
                                    f"like the parameter ({arrays.describe(data)} of shape "
                                    f"{tuple(np.shape(data))}), got {kind}{hint}")
        if grad.shape != np.shape(data):
            raise GradientError(f"{self._where(index, p)}: gradient shape {grad.shape} does "
                                f"not match parameter shape {np.shape(data)}")
        if grad.dtype != data.dtype:
            raise GradientTypeError(f"{self._where(index, p)}: gradient dtype {grad.dtype} "
                                    f"does not match parameter dtype {data.dtype}")
        if arrays.is_cupy(grad) != arrays.is_cupy(data) \
                or arrays.device(grad) != arrays.device(data):
            raise GradientError(f"{self._where(index, p)}: the gradient "
                                f"({arrays.describe(grad)}) does not live where its "
                                f"parameter does ({arrays.describe(data)})")

    def _check_state(self, index: int, p: Any) -> None:
        """Arrays the user put in ``opt.state[p]`` (as torch allows) must fit ``p``: the
        step copies them into the state's buffers."""
        st = self.state.get(p)
        if st:
            for key in self._state_names:
                value = st.get(key)
                if value is not None and np.shape(value) != np.shape(p.data):
                    raise OptdslError(f"{self._where(index, p)}: state {key!r} has shape "
                                      f"{np.shape(value)}, the parameter has "
                                      f"{np.shape(p.data)}")

    def _refuse_params(self, index: int, params: Any) -> None:
        raise ParamGroupTypeError(
            f"{type(self).__name__}: param group {index}'s params must be a list, got "
            f"{type(params).__name__}"
            + (" (a set has no order, and the order numbers params in the state_dict)"
               if isinstance(params, (set, frozenset)) else ""))

    def _check_membership(self) -> None:
        ids = [id(p) for group in self.param_groups for p in group["params"]]
        if len(set(ids)) == len(ids):
            return
        seen: dict[int, tuple[int, int]] = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if id(p) in seen:
                    raise ParamGroupError(f"{self._where(seen[id(p)][0], p)} is also param "
                                          f"{pi} of group {gi}: a parameter may be listed "
                                          "only once, in one param group")
                seen[id(p)] = (gi, pi)

    def _backend_for(self, params: list[Any]) -> Backend:
        """The backend for a group: the one asked for, else the best available one that
        accepts every param (numba takes float32 and float64; float16 stays on numpy) and
        that the spec has kernels for (an exported module has one backend's)."""
        if self.backend is not None:
            candidates = [get_backend(self.backend)]
        else:
            allowed = getattr(self._spec, "backends", None)
            candidates = [get_backend(n) for n in available_backends()
                          if allowed is None or n in allowed]
        for backend in candidates:
            if all(backend.accepts(p.data) for p in params):
                devices = {}
                for p in params:
                    devices.setdefault(backend.device(p.data), p)
                if len(devices) > 1:
                    a, b = list(devices.values())[:2]
                    raise OptdslError(f"{type(self).__name__}: parameters of one group live "
                                      f"on different devices ({arrays.describe(a.data)} and "
                                      f"{arrays.describe(b.data)}); put them in different "
                                      "param groups or optimizers")
                return backend
        name = type(self).__name__
        cannot = ("no backend here runs" if self.backend is None
                  else f"backend {self.backend!r} cannot run")
        a = params[0].data
        b = next((p.data for p in params if arrays.describe(p.data) != arrays.describe(a)),
                 None)
        if b is None:
            raise OptdslError(f"{name}: {cannot} parameters of type {arrays.describe(a)} "
                              f"(backends here: {', '.join(available_backends())})")
        raise OptdslError(f"{name}: {cannot} every parameter of this group: parameters of "
                          f"one group live on different devices or types "
                          f"({arrays.describe(a)} and {arrays.describe(b)}); put them in "
                          "different param groups or optimizers")

    def _layout(self, index: int, p: Any, names: list[str]) -> _Layout:
        """The layout of ``p``'s group and dtype, holding at least the states ``names``."""
        dtype = np.dtype(p.data.dtype)
        key = self._layout_key(index, p.data)
        old = self._layouts.get(key)
        if self._has_master(dtype):
            names = [*names, "master"]
        if old is not None and id(p) in old.offsets and all(n in old.names for n in names) \
                and old.device == arrays.device(p.data):
            return old
        # (Re)build: on first use, when a state appears mid-run (amsgrad turned on), or when
        # a param joined the group (appended to its list) or changed dtype since. The buffer
        # moves: copy what our views hold and re-point them. Entries that are not our views
        # (arrays the user put in the state, as torch allows) are left for their param's
        # next step to copy in.
        members = [q for q in self.param_groups[index]["params"]
                   if self._layout_key(index, q.data) == key]
        layout = _Layout(members, dtype, list(dict.fromkeys([*(old.names if old else ()),
                                                             *names])),
                         self._storage_dtypes(dtype))
        for q in old.params if old is not None else ():
            st = self.state.get(q)
            if not st or id(q) not in layout.offsets:
                continue
            for n in old.names:
                if n in st and _same_view(st[n], old, n, q):
                    view = layout.view(n, q)
                    arrays.copy_into(view, st[n])
                    st[n] = view
        self._layouts[key] = layout
        return layout

    def _init_state(self, values: dict, p: Any, layout: _Layout, name: str) -> None:
        if name == "master":  # the fp32 master copy starts as the param's values
            init = p.data
        else:
            init = self._spec.host["init_" + name](values, arrays.for_host_code(p.data))
        view = layout.view(name, p)
        arrays.copy_into(view, init)
        self.state[p][name] = view

    def _kernel(self, values: dict, t: int, dtype: np.dtype, backend: Backend,
                cache: dict) -> tuple[Any, tuple, tuple[int, ...]]:
        """The kernel for step ``t`` of params of ``dtype``, with its scalar arguments in
        the dtype it computes in (float32 for float16 and bfloat16 params)."""
        key = (t, dtype.str, values.get("factored"))  # factored: per param
        if key not in cache:
            path = self._spec.host["decide"](values, t)
            extras = self._extras()
            kernel = self._spec.kernel(backend, path, extras) if extras \
                else self._spec.kernel(backend, path)
            # A spec with reductions or scalar states computes its arguments per param.
            args = None if self._spec.per_parameter \
                else self._kernel_args(kernel, values, t, dtype, backend)
            cache[key] = (kernel, args, path)
        return cache[key]

    def _kernel_args(self, kernel, values: dict, t: int, dtype: np.dtype,
                     backend: Backend) -> tuple:
        """``kernel``'s scalar arguments, in the dtype it computes in."""
        return self._cast_args(kernel.host_args(values, t), dtype, backend)

    def _cast_args(self, args: tuple, dtype: np.dtype, backend: Backend) -> tuple:
        scalar = backend.math_dtype(self._compute_for(dtype)).type
        return tuple(scalar(a) if isinstance(a, np.floating) else a for a in args)

    def _per_param(self, kernel, values: dict, t: int, p: Any, layout: _Layout,
                   span: tuple[int, int], flat_p: Any, flat_g: Any, dtype: np.dtype,
                   backend: Backend) -> dict:
        """The values a per-parameter step reads besides the group's hypers: the param's
        size (``numel``), ``factored``, ``dtype_eps``, its scalar states (``state:NAME``)
        and the results of the reductions (``reduce:rK``), which this runs stage by stage
        (:mod:`optdsl.stages`); with the factored program's run, and the ``fac:eK``
        buffers the update kernel reads."""
        start, stop = span
        st = self.state[p]
        h = dict(values)
        h["numel"] = float(stop - start)
        h["factored"] = np.ndim(p.data) >= 2
        h["dtype_eps"] = _machine_epsilon(p.data.dtype)
        for decl in self._spec.spec.scalars:
            h[f"state:{decl.name}"] = float(st[decl.name])
        master = "master" in layout.names
        compute = self._compute_for(dtype)
        run = None
        results: dict[str, Any] = {}
        fac: dict[str, Any] = {}
        if kernel.factored is not None:
            states = {d.name: st[d.name] for d in self._spec.spec.factored if d.name in st}
            run = ST.FactoredRun(kernel.factored, h, t, states, arrays.module(flat_p),
                                 compute, tuple(np.shape(p.data)))

        def buffer(name: str) -> Any:
            if name == "p":
                return layout.row("master")[start:stop] if master else flat_p
            if name == "g":
                return flat_g
            if name in fac:
                return fac[name]
            return layout.row(name)[start:stop]

        for k, stage in enumerate(kernel.stages):
            if run is not None:  # the row and column values this stage's kernel reads
                run.advance(k, results)
                fac = run.expanded(k)
            temps: dict[str, Any] = {}
            if stage.kernel is not None:
                sk = stage.kernel
                buffers = []
                for name in sk.buffers:
                    if name in sk.outputs:  # red:rK, the values the stage reduces
                        temps[name] = self._reduce_scratch(len(temps), stop - start, dtype,
                                                           flat_p)
                        buffers.append(temps[name])
                    else:
                        buffers.append(buffer(name))
                self._launch(sk, backend, stop - start, buffers,
                             self._kernel_args(sk, h, t, dtype, backend), dtype)
            for r in stage.reductions:
                source = temps[r.source] if r.source in temps else buffer(r.source)
                if r.kind in ("rowmean", "colmean"):  # a row (column) value
                    results[r.key] = ST.factored_mean(r.kind, source, np.shape(p.data),
                                                      compute)
                else:
                    results[r.key] = h[f"reduce:{r.key}"] = backend.reduce(r.kind, source)
        if run is not None:
            run.advance(len(kernel.stages), results)
            fac = run.expanded(len(kernel.stages))
        return h, run, fac

    def _reduce_scratch(self, k: int, n: int, dtype: np.dtype, like: Any) -> Any:
        """Reduce stages' output ``k`` for a param of ``n`` elements of ``dtype``, where
        ``like`` lives: one buffer per output, as large as the largest param seen, kept
        for the next param and step."""
        key = ("reduce", k, self._compute_for(dtype).str, arrays.device(like))
        have = self._scratch.get(key)
        if have is None or have.shape[0] < n:
            have = self._scratch[key] = arrays.zeros(n, self._compute_for(dtype), like)
        return have[:n]

    def _step_group(self, index, group, live, values, backend) -> None:
        """Step ``live`` param by param, creating and re-pointing state as needed (the
        first step, or after something changed); :meth:`_make_plan` then records how to
        do the next steps in as few kernel calls as the memory layout allows."""
        enabled = self._spec.host["state_enabled"](values)
        cache: dict[tuple, tuple] = {}
        for p in live:
            with arrays.on_device(p.data):  # copies and fills go to the param's GPU
                self._step_param(index, p, values, enabled, backend, cache)

    def _step_param(self, index, p, values, enabled, backend, cache) -> None:
        """One param's step by :meth:`_step_group`, on the param's device."""
        data, grad = p.data, p.grad
        st = self.state[p]  # {} before the first step, filled in place as torch does
        t = st.get("step", 0) + 1
        dtype = np.dtype(data.dtype)
        if self._spec.uses_factored:  # the path and the states depend on p's shape
            values = {**values, "factored": np.ndim(data) >= 2}
            enabled = self._spec.host["state_enabled"](values)
        kernel, args, _ = self._kernel(values, t, dtype, backend, cache)
        layout = self._prepare_state(index, p, values, enabled, kernel)
        contiguous = data.flags.c_contiguous
        flat_p = data.reshape(-1) if contiguous else arrays.ascontiguous(data).reshape(-1)
        flat_g = arrays.ascontiguous(grad).reshape(-1)
        off, n, _ = layout.offsets[id(p)]
        scalars: dict = {}
        run = None
        fac: dict = {}
        if args is None:  # per-parameter values: reduce stages, scalar and factored states
            h, run, fac = self._per_param(kernel, values, t, p, layout, (off, off + n),
                                          flat_p, flat_g, dtype, backend)
            if kernel.host_step is not None:  # the arguments and the scalar states, at once
                args, scalars = kernel.host_step(h, t)
                args = self._cast_args(args, dtype, backend)
            else:
                args = self._kernel_args(kernel, h, t, dtype, backend)
        extra = self._extra_layout(index, layout, kernel)
        buffers, mirror = _kernel_buffers(kernel, layout, off, off + n, flat_p, flat_g, extra,
                                          fac)
        self._launch(kernel, backend, n, buffers, args, dtype, mirror)
        if not contiguous:
            data[...] = flat_p.reshape(data.shape)
        for name, value in scalars.items():
            st[name] = np.array(value, np.float64)
        if run is not None:  # the row and column states' new values
            for name, value in run.outputs().items():
                st[name] = _factored_array(value, st[name])
        st["step"] = t

    def _prepare_state(self, index, p, values, enabled, kernel) -> _Layout:
        """Make ``p``'s state hold what ``kernel`` reads, as views of the group's layout."""
        st = self.state[p]
        for decl in self._spec.spec.scalars:  # kept on the host, as a 0-d float64 array
            if decl.name not in st:
                st[decl.name] = np.array(self._spec.host["init_" + decl.name](values, None),
                                         np.float64)
        if np.ndim(p.data) >= 2:  # row and column states, where the param's device is
            for decl in self._spec.spec.factored:
                if decl.name not in st:
                    init = self._spec.host["init_" + decl.name](values, None)
                    shape = factored_shape(decl.kind, np.shape(p.data))
                    full = arrays.zeros(int(np.prod(shape)), self._compute_for(
                        np.dtype(p.data.dtype)), p.data).reshape(shape)
                    full[...] = init
                    st[decl.name] = full
        needed = [b for b in kernel.buffers if b not in ("p", "g") and ":" not in b]
        wanted = [s.name for s in self._spec.spec.states if enabled[s.name] or s.name in needed]
        layout = self._layout(index, p, wanted)
        st.setdefault("step", 0)
        if "master" in layout.names:
            wanted.append("master")
        for s in wanted:
            if s not in st:
                self._init_state(values, p, layout, s)
            elif not _same_view(st[s], layout, s, p):
                # The user replaced the array (as torch allows): take its values.
                arrays.copy_into(layout.view(s, p), st[s], casting="same_kind")
                st[s] = layout.view(s, p)
        return layout

    def _launch(self, kernel, backend, n: int, buffers: list, args: tuple, dtype,
                mirror: Any = None) -> None:
        """Run ``kernel`` over ``n`` elements of ``buffers`` (params of ``dtype``). Buffers
        stored otherwise than the dtype the kernel computes in are staged: widened into
        compute-dtype scratch chunk by chunk, and the outputs rounded back once. With
        ``mirror`` (a narrow param under its fp32 master, which is buffer "p"), the
        master's new values are also rounded into it."""
        compute = self._compute_for(np.dtype(dtype))
        parallel = getattr(backend, "parallel", False)
        if backend.device_kind != "cpu":
            if mirror is None and all(b.dtype == dtype for b in buffers):
                kernel.run(n, *buffers, args, None, 0, 0, n)  # narrow T: widened inside
            else:
                _run_staged_whole(kernel, n, buffers, args, compute, mirror)
            return
        if mirror is None and all(b.dtype == compute for b in buffers):
            if parallel:  # it spreads the work over threads itself
                kernel.run(n, *buffers, args, None, 0, 0, n)
                return
            pool.run(kernel.run, n, buffers, args,
                     lambda worker: self._scratch_for(kernel, compute, worker, n), _chunk())
            return
        run = _staged(kernel, compute, parallel, mirror is not None)
        every = [*buffers, mirror] if mirror is not None else buffers
        pool.run(run, n, every, args,
                 lambda worker: self._scratch_for(kernel, compute, worker, n, len(buffers)),
                 _chunk(), threads=1 if parallel else None)

    def _make_plan(self, index, live, signature, values, backend) -> _Plan | None:
        """After a step by :meth:`_step_group`: the kernel calls that repeat it. Params
        whose data and grad are C-contiguous and lie end to end in one buffer each (as
        ``optdsl.flatten`` leaves them), with their state end to end in the layout, share
        one call. None when some param needs more care (non-contiguous arrays, mixed step
        counts or dtypes are fine, but those are stepped param by param)."""
        if not isinstance(self.state, _State) or self._spec.per_parameter:
            # A mapping swapped in by the user (its changes cannot be seen), or a spec that
            # steps each param with its own scalar arguments (reductions, scalar states).
            return None
        parts: dict[tuple, list] = {}
        for p in live:
            data, grad = p.data, p.grad
            if not (data.flags.c_contiguous and grad.flags.c_contiguous):
                return None
            st = self.state[p]
            dtype = np.dtype(data.dtype)
            parts.setdefault((st["step"], dtype.str), []).append(p)
        out = []
        for (t, _), members in parts.items():
            dtype = np.dtype(members[0].data.dtype)
            layout = self._layouts[(index, dtype.str)]
            runs: list[list[Any]] = []
            for p in members:
                if runs and _follows(runs[-1], p, layout):
                    runs[-1].append(p)
                else:
                    runs.append([p])
            states = [self.state[p] for p in members]
            # The states every param of the part holds: a kernel that needs another (a
            # conditional state turned on) sends the step back to the param-by-param path.
            covered = set.intersection(*(set(st) for st in states))
            # A list: the step count (first) advances with every step the plan takes.
            # The last item caches multi-tensor launchers by kernel (see _run_plan).
            out.append([t, dtype, layout, [_run_views(run, layout) for run in runs], states,
                        covered, {}])
        params = self.param_groups[index]["params"]
        held = (params, list(params), list(map(_DATA, params)), list(map(_GRAD, params)))
        rebinds = _REBINDS.n if all(type(p) is Param for p in params) else None
        return _Plan(signature, held, self._version.n, self.state, backend, out, rebinds)

    def _run_plan(self, plan: _Plan, values: dict) -> bool:
        """Step with a plan; False (having changed nothing) if the kernels it needs read
        state the plan does not cover (a branch turned a conditional state on)."""
        enabled = self._spec.host["state_enabled"](values)
        cache: dict[tuple, tuple] = {}
        calls = []
        for part in plan.parts:
            t, dtype, layout, runs, states, covered, _ = part
            kernel, args, _ = self._kernel(values, t + 1, dtype, plan.backend, cache)
            names = [b for b in kernel.buffers if b not in ("p", "g") and ":" not in b]
            wanted = [s.name for s in self._spec.spec.states if enabled[s.name]]
            if any(n not in layout.names or n not in covered for n in (*names, *wanted)):
                return False
            calls.append((part, kernel, args, dtype, layout, runs, states, t + 1))
        index = next(i for i, p in self._plans.items() if p is plan) \
            if any(":" in b for c in calls for b in c[1].buffers) else None
        for part, kernel, args, dtype, layout, runs, states, t in calls:
            extra = None if index is None else self._extra_layout(index, layout, kernel)
            # Buffers of mixed dtypes are staged run by run (see _launch).
            staged = "master" in layout.names or bool(layout.dtypes)
            if kernel.many is not None and len(runs) > 1 and not staged:
                # Params that do not lie end to end: one multi-tensor launch for them all,
                # through a table of their buffers' addresses made once per plan.
                launchers = part[6]
                entry = launchers.get(id(kernel))
                if entry is None or entry[0] is not kernel or entry[1] is not extra:
                    tensors = [_kernel_buffers(kernel, layout, *run, extra)[0]
                               for run in runs]
                    entry = launchers[id(kernel)] = (kernel, extra, kernel.many(tensors))
                entry[2](args)
            else:
                for start, stop, flat_p, flat_g in runs:
                    buffers, mirror = _kernel_buffers(kernel, layout, start, stop, flat_p,
                                                      flat_g, extra)
                    self._launch(kernel, plan.backend, stop - start, buffers, args, dtype,
                                 mirror)
            # The step's own write (not through _ParamState, so the plan stays valid), in
            # one C-level loop: with a thousand params this is a good part of the overhead.
            _consume(map(dict.__setitem__, states, itertools.repeat("step"),
                          itertools.repeat(t)))
            part[0] = t
        return True

    def _scratch_for(self, kernel, dtype, worker: int, n: int,
                     staged: int = 0) -> tuple[np.ndarray, ...]:
        """Chunk-sized scratch for one worker; no larger than the largest param seen.
        ``staged``: the number of buffers a staged run widens (see :func:`_staged`),
        which then get a chunk of ``dtype`` each after the kernel's own scratch."""
        key = (id(kernel), np.dtype(dtype).str, worker, staged)
        size = min(_chunk(), max(n, 1))
        have = self._scratch.get(key)
        if have is None or have[0].shape[1] < size:
            n_float, n_bool = kernel.scratch
            scratch = (np.empty((n_float, size), dtype), np.empty((n_bool, size), bool))
            if staged:
                scratch = (*scratch, np.empty((staged, size), dtype))
            self._scratch[key] = scratch
        return self._scratch[key]

    # --- state_dict -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: integer param ids, groups listing them. Arrays are copies."""
        ids: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                ids[id(p)] = len(ids)
                packed["params"].append(ids[id(p)])
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:  # never stepped (or only looked at): no state, as in torch
                    continue
                state[ids[id(p)]] = {k: (v if k == "step" else arrays.copy(v))
                                     for k, v in st.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict. Everything is validated first; on any mismatch a
        StateDictError is raised and the optimizer is left exactly as it was."""
        name = type(self).__name__
        groups, state = _validate_layout(name, state_dict, self.param_groups)
        new_groups, new_validated = [], []
        for i, (saved, group) in enumerate(zip(groups, self.param_groups, strict=True)):
            saved_hypers = {k: v for k, v in saved.items() if k in self._spec.hypers}
            try:
                values = H.resolve(self._spec.hypers, saved_hypers, name,
                                   defaults=self.defaults)
                self._check_requires(values)
            except HyperError as exc:
                raise StateDictError(f"{name}.load_state_dict: param group {i}: {exc}") \
                    from None
            extra = {k: v for k, v in saved.items()
                     if k not in self._spec.hypers and k != "params"}
            new_group = {"params": group["params"], **values, **extra}
            new_groups.append(new_group)
            new_validated.append(({k: new_group[k] for k in self._spec.hypers}, values))
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in groups for i in g["params"]]
        by_saved_id = dict(zip(saved_ids, params, strict=True))
        states = {s.name for s in self._spec.spec.states}
        scalars = {s.name for s in self._spec.spec.scalars}
        factored = {s.name: s.kind for s in self._spec.spec.factored}
        converted: dict[Any, dict[str, Any]] = {}
        for sid, entry in state.items():
            if sid not in by_saved_id:
                raise StateDictError(f"{name}.load_state_dict: state for param id {sid}, "
                                     "which no param group lists")
            p = by_saved_id[sid]
            allowed = states | {"master"} if self._has_master(p.data.dtype) else states
            converted[p] = _convert_entry(name, sid, entry, p, allowed, scalars, factored)
        # Validation is complete: build the new layouts, then swap everything in.
        layouts: dict[tuple[int, str], _Layout] = {}
        version = _Version()
        new_state: dict[Any, dict[str, Any]] = _State(version)
        for gi, group in enumerate(new_groups):
            enabled = self._spec.host["state_enabled"](new_validated[gi][1])
            for p in group["params"]:
                if p not in converted:
                    continue
                entry = converted[p]
                key = self._layout_key(gi, p.data)
                on = enabled if not self._spec.uses_factored else self._spec.host[
                    "state_enabled"]({**new_validated[gi][1], "factored": p.data.ndim >= 2})
                names = [s.name for s in self._spec.spec.states
                         if on[s.name] or s.name in entry]
                if self._has_master(p.data.dtype):
                    names.append("master")  # taken from the param at its next step if absent
                if key not in layouts:
                    members = [q for q in group["params"]
                               if self._layout_key(gi, q.data) == key]
                    layouts[key] = _Layout(members, p.data.dtype, names,
                                           self._storage_dtypes(np.dtype(p.data.dtype)))
                layout = layouts[key]
                layout.grow(names)
                new_state[p] = {"step": entry["step"]}
                for s, arr in entry.items():
                    if s in scalars:
                        new_state[p][s] = arr
                    elif s in factored:  # in the compute dtype, where the param is
                        new_state[p][s] = _factored_array(arr, arrays.zeros(
                            arr.size, self._compute_for(np.dtype(p.data.dtype)),
                            p.data).reshape(arr.shape))
                    elif s != "step":
                        arrays.copy_into(layout.view(s, p), arr)
        for p, st in new_state.items():
            gi = next(i for i, g in enumerate(new_groups) if any(q is p for q in g["params"]))
            layout = layouts[self._layout_key(gi, p.data)]
            for s in converted[p]:
                if s != "step" and s not in scalars and s not in factored:
                    st[s] = layout.view(s, p)
        self.param_groups[:] = new_groups
        self._validated = new_validated
        self._layouts = layouts
        self.state, self._version = new_state, version
        self._plans.clear()
        self._scratch.clear()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in self._spec.hypers:
                lines.append(f"    {k}: {group[k]!r}")
        lines.append(")")
        return "\n".join(lines)


@contextlib.contextmanager
def _in_group(index: int, say: bool):
    """Add which param group a HyperError is about to its message, where there is more
    than one group to tell apart (one group's messages stay as they were)."""
    try:
        yield
    except HyperError as exc:
        if not say:
            raise
        raise type(exc)(f"{exc} (in param group {index})") from None


def _follows(run: list[Any], p: Any, layout: _Layout) -> bool:
    """Whether ``p`` continues ``run`` in memory: data, grad and state end to end. Empty
    params take no room (NumPy gives them any address), so they never break a run."""
    a, b = layout.offsets[id(run[-1])], layout.offsets[id(p)]
    if a[0] + a[1] != b[0]:
        return False
    sized = [q for q in run if q.data.size]
    if not p.data.size or not sized:
        return True
    prev = sized[-1]
    for x, y in ((prev.data, p.data), (prev.grad, p.grad)):
        owner = _owner(x)
        if owner is not _owner(y) or not arrays.is_array(owner) \
                or not owner.flags.c_contiguous or owner.dtype != x.dtype \
                or arrays.address(x) + x.nbytes != arrays.address(y):
            return False
    return True


def _kernel_buffers(kernel, layout: _Layout, start: int, stop: int, flat_p: Any,
                    flat_g: Any, extra: _Layout | None = None,
                    fac: dict | None = None) -> tuple[list, Any]:
    """The kernel's buffers, in its order, over elements [start, stop) of ``layout``
    whose params and grads are ``flat_p`` and ``flat_g`` (and of ``extra``, holding the
    extra outputs); and the array the kernel's p must also be rounded into (the param,
    when its fp32 master stands in for it)."""
    master = "master" in layout.names
    buffers = []
    for b in kernel.buffers:
        if b == "p":
            buffers.append(layout.row("master")[start:stop] if master else flat_p)
        elif b == "g":
            buffers.append(flat_g)
        elif fac and b in fac:  # a row or column value broadcast to p's shape
            buffers.append(fac[b])
        elif ":" in b:
            buffers.append(extra.row(b)[start:stop])
        else:
            buffers.append(layout.row(b)[start:stop])
    mirror = flat_p if master and "p" in kernel.outputs else None
    return buffers, mirror


def _narrow(dtype: Any) -> bool:
    """float16 and bfloat16: stored narrow, computed in float32."""
    return np.dtype(dtype).itemsize < 4


def _compute_dtype(dtype: Any) -> np.dtype:
    """The dtype kernels compute in for params of ``dtype``."""
    return np.dtype(np.float32) if _narrow(dtype) else np.dtype(dtype)


def _staged(kernel, compute: np.dtype, parallel: bool, mirrored: bool) -> Callable:
    """A chunked run of ``kernel`` over buffers of mixed dtypes: each chunk of a buffer
    not stored in ``compute`` is widened into scratch, the kernel runs on the chunk,
    and its outputs are rounded back (to nearest) once. ``mirrored``: the last buffer
    is a narrow param that also receives p's new values (from its fp32 master)."""
    outputs = [k for k, b in enumerate(kernel.buffers) if b in kernel.outputs]
    p_index = kernel.buffers.index("p") if "p" in kernel.buffers else None
    # The update a narrow param without a master stores is its rounded change, not the
    # kernel's: restated below from the param's loaded and stored values.
    u_index = kernel.buffers.index("diag:update") \
        if "diag:update" in kernel.buffers and "p" in kernel.outputs and not mirrored else None

    def run(n, *rest) -> None:
        *buffers, args, scratch, chunk, start, stop = rest
        target = buffers.pop() if mirrored else None
        wide = scratch[2]
        inner = None if parallel else scratch[:2]
        restate = u_index is not None and buffers[p_index].dtype != compute
        for lo in range(start, stop, chunk):
            hi = min(lo + chunk, stop)
            m = hi - lo
            views = []
            for k, b in enumerate(buffers):
                part = b[lo:hi]
                if part.dtype != compute:
                    w = wide[k, :m]
                    np.copyto(w, part, casting="unsafe")
                    part = w
                views.append(part)
            if restate:  # the update's buffer is not staged: its scratch row is free
                np.copyto(wide[u_index, :m], views[p_index])
            if parallel:
                kernel.run(m, *views, args, None, 0, 0, m)
            else:
                kernel.run(m, *views, args, inner, chunk, 0, m)
            for k in outputs:
                if buffers[k].dtype != compute:
                    np.copyto(buffers[k][lo:hi], views[k], casting="unsafe")
            if restate:
                np.copyto(views[u_index], buffers[p_index][lo:hi], casting="unsafe")
                np.subtract(views[u_index], wide[u_index, :m], out=views[u_index])
            if target is not None:
                np.copyto(target[lo:hi], views[p_index], casting="unsafe")

    return run


def _run_staged_whole(kernel, n: int, buffers: list, args: tuple, compute: np.dtype,
                      mirror: Any) -> None:
    """:func:`_staged` for a GPU: whole buffers are widened (a copy each), the kernel
    runs once in ``compute``, and its outputs are rounded back."""
    views = [b if b.dtype == compute else b.astype(compute) for b in buffers]
    names = kernel.buffers
    restate = mirror is None and "diag:update" in names and "p" in kernel.outputs \
        and views[names.index("p")] is not buffers[names.index("p")]
    loaded = views[names.index("p")].copy() if restate else None
    kernel.run(n, *views, args, None, 0, 0, n)
    for k, b in enumerate(names):
        if b in kernel.outputs and views[k] is not buffers[k]:
            arrays.copy_into(buffers[k], views[k])
    if restate:  # the change of the stored (rounded) param, as _staged restates it
        update = views[names.index("diag:update")]
        update[...] = buffers[names.index("p")].astype(compute) - loaded
    if mirror is not None:
        arrays.copy_into(mirror, views[kernel.buffers.index("p")])


def _check_state_dtypes(name: str, state_dtypes: Any, states: tuple[str, ...]) -> dict:
    """``state_dtypes`` as {state: dtype}, each a state of the spec and a float dtype."""
    if state_dtypes is None:
        return {}
    if not isinstance(state_dtypes, dict):
        raise TypeError(f"{name}: state_dtypes must be a dict of state name to dtype, e.g. "
                        f"{{'exp_avg': 'bfloat16'}}, got {type(state_dtypes).__name__}")
    out = {}
    for key, value in state_dtypes.items():
        if key not in states:
            close = difflib.get_close_matches(str(key), list(states), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f" (its states: {', '.join(states) or 'none'})"
            raise HyperError(f"{name}: state_dtypes names {key!r}, which is not a state of "
                             f"{name}{hint}")
        out[key] = _float_dtype(name, key, value)
    return out


def _float_dtype(name: str, key: str, value: Any) -> np.dtype:
    if isinstance(value, str) and value == "bfloat16" or getattr(value, "__name__", "") \
            == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise HyperError(f"{name}: state_dtypes[{key!r}] = 'bfloat16' needs ml_dtypes "
                             "(pip install 'optdsl[bf16]')") from None
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not arrays.is_float(dtype) or dtype.itemsize > 8:
        raise HyperError(f"{name}: state_dtypes[{key!r}] must be one of 'float16', "
                         f"'bfloat16', 'float32', 'float64', got {value!r}")
    return dtype


def _owner(array: np.ndarray) -> np.ndarray:
    return array if array.base is None else array.base


def _run_views(run: list[Any], layout: _Layout) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(start, stop) in the layout, and flat views of the run's data and grads."""
    start = layout.offsets[id(run[0])][0]
    stop = layout.offsets[id(run[-1])][0] + layout.offsets[id(run[-1])][1]
    sized = [q for q in run if q.data.size]
    if len(sized) <= 1:
        first = sized[0] if sized else run[0]
        return start, stop, first.data.reshape(-1), first.grad.reshape(-1)
    first = sized[0]
    views = []
    for x in (first.data, first.grad):
        owner = _owner(x)
        flat = owner.reshape(-1)  # the params lie end to end in it: it is contiguous
        offset = (arrays.address(x) - arrays.address(flat)) // x.itemsize
        views.append(flat[offset: offset + (stop - start)])
    return start, stop, views[0], views[1]


def _same_view(arr: Any, layout: _Layout, name: str, p: Any) -> bool:
    if id(p) not in layout.offsets:  # e.g. a deepcopy of the optimizer: other params
        return False
    view = layout.view(name, p)
    return (arrays.is_array(arr) and arrays.is_cupy(arr) == arrays.is_cupy(view)
            and arr.shape == view.shape and arrays.address(arr) == arrays.address(view)
            and arr.dtype == view.dtype)


def _step_grads(todo: tuple) -> list:
    """The gradients one group is about to step on: the plan's runs where the group has
    one (a flattened group's are one array), else each param's."""
    _, _, live, _, plan, _, _ = todo
    if plan is not None:
        return [run[3] for part in plan.parts for run in part[3]]
    return [S.grad_array(p.grad) for p in live]  # a RowSparse's coalesced values


def _finite_grads(todo: tuple) -> bool:
    """Whether the gradients one group is about to step on are all finite."""
    return _all_finite(_step_grads(todo))


def _all_finite(grads: list) -> bool:
    """One read of each gradient: a sum, which any nan or inf makes non-finite (summed
    on the gradients' device, so a GPU group costs one transfer). A non-finite total can
    also come from finite values overflowing: only then are the elements looked at."""
    with arrays.on_device(grads[0]), np.errstate(all="ignore"):
        if math.isfinite(float(sum(map(_total, grads)))):
            return True
        return all(bool(np.isfinite(g).all()) for g in grads)


def _total(grad: Any) -> Any:
    """The sum of a gradient (in float32 for narrower floats, which overflow sooner); a
    large flat host array's over the thread pool, as the step's kernels run."""
    dtype = np.float32 if grad.dtype.itemsize < 4 else None
    if grad.ndim != 1 or grad.size < 2 * pool.MIN_ELEMENTS_PER_THREAD or arrays.is_cupy(grad):
        return grad.sum(dtype=dtype)
    partial: dict[int, Any] = {}

    def run(n, g, args, scratch, chunk, start, stop) -> None:
        partial[start] = g[start:stop].sum(dtype=dtype)

    pool.run(run, grad.size, [grad], (), lambda worker: None, _chunk())
    return sum(partial.values())


def _chunk() -> int:
    from .backend.numpy_backend import CHUNK

    return CHUNK


def _validate_layout(name: str, sd: Any, param_groups: list[dict]):
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise StateDictError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             "'param_groups'")
    groups, state = sd["param_groups"], sd["state"]
    if not isinstance(groups, (list, tuple)) or not isinstance(state, dict):
        raise StateDictError(f"{name}.load_state_dict: 'param_groups' must be a list and "
                             "'state' a dict")
    if len(groups) != len(param_groups):
        raise StateDictError(f"{name}.load_state_dict: the state_dict has {len(groups)} "
                             f"param groups, the optimizer has {len(param_groups)}")
    seen: set[int] = set()
    for i, (saved, ours) in enumerate(zip(groups, param_groups, strict=True)):
        if not isinstance(saved, dict) or "params" not in saved:
            raise StateDictError(f"{name}.load_state_dict: param group {i} has no 'params'")
        try:
            ids = list(saved["params"])
        except TypeError:
            raise StateDictError(f"{name}.load_state_dict: param group {i}: 'params' must be "
                                 f"a list of param ids, got {saved['params']!r}") from None
        if len(ids) != len(ours["params"]):
            raise StateDictError(f"{name}.load_state_dict: param group {i} has {len(ids)} "
                                 f"params in the state_dict but {len(ours['params'])} here")
        for sid in ids:
            if isinstance(sid, bool) or not isinstance(sid, (int, np.integer)) or sid in seen:
                raise StateDictError(f"{name}.load_state_dict: bad or repeated param id "
                                     f"{sid!r} in group {i}")
            seen.add(int(sid))
    return groups, state


def _convert_entry(name: str, sid: Any, entry: Any, p: Any, states: set[str],
                   scalars: set[str] = frozenset(), factored: dict | None = None) -> dict:
    where = f"{name}.load_state_dict: state of param {sid}"
    if not isinstance(entry, dict):
        raise StateDictError(f"{where} must be a dict")
    out: dict[str, Any] = {}
    # A None entry is a state that does not exist (older torch.optim.SGD saved
    # momentum_buffer=None without momentum).
    given = {k: v for k, v in entry.items() if k != "step" and v is not None}
    # torch.optim.SGD keeps no 'step': a param with state but no step has stepped already,
    # and must not take the first-step path again (which resets the momentum buffer).
    step = entry.get("step", 1 if given else 0)
    try:
        step_array = np.asarray(step)
        if step_array.dtype.kind not in "iuf" or step_array.ndim != 0:
            raise TypeError
        step_value = float(step_array)
    except (TypeError, ValueError):
        raise StateDictError(f"{where}: 'step' must be a number, got {step!r}") from None
    if not math.isfinite(step_value) or step_value < 0 or not step_value.is_integer():
        raise StateDictError(f"{where}: 'step' must be a whole number >= 0, got {step!r}")
    out["step"] = int(step_value)
    for key, value in given.items():
        if key in scalars:  # one number, as torch keeps NAdam's mu_product
            try:
                arr = np.asarray(arrays.to_numpy(value), dtype=np.float64)
                if arr.ndim != 0 and arr.shape != (1,):
                    raise ValueError(f"shape {arr.shape}")
            except (TypeError, ValueError) as exc:
                raise StateDictError(f"{where}: scalar state {key!r} must be one number "
                                     f"({exc})") from None
            out[key] = np.array(arr.reshape(()), np.float64)
            continue
        if factored and key in factored:  # a row or column state of a 2+-D param
            arr = arrays.to_numpy(value)
            want = factored_shape(factored[key], tuple(np.shape(p.data))) \
                if np.ndim(p.data) >= 2 else None
            if want is None or arr.shape != want:
                raise StateDictError(f"{where}: {key!r} has shape {arr.shape}; a "
                                     f"{factored[key]} state of a parameter of shape "
                                     f"{tuple(np.shape(p.data))} has "
                                     f"{want if want else 'none (fewer than 2 dims)'}")
            out[key] = arr
            continue
        if key not in states:
            close = difflib.get_close_matches(key, sorted(states | scalars), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StateDictError(f"{where}: unknown state {key!r}{hint}")
        try:
            arr = arrays.to_numpy(value)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is a bad entry
            raise StateDictError(f"{where}: {key!r} is not an array ({exc})") from None
        if arr.shape != tuple(np.shape(p.data)):
            raise StateDictError(f"{where}: {key!r} has shape {arr.shape}, the parameter "
                                 f"has {tuple(np.shape(p.data))}")
        if arr.dtype.kind not in "fiu" and not arrays.is_float(arr.dtype):
            raise StateDictError(f"{where}: {key!r} has dtype {arr.dtype}, expected floats")
        out[key] = arr
    return out


def factored_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A row (``(..., R, 1)``) or column (``(..., 1, C)``) state's shape, for a param of
    ``shape`` (2 or more dimensions), as torch's Adafactor keeps row_var and col_var."""
    if kind == "row":
        return (*shape[:-1], 1)
    return (*shape[:-2], 1, shape[-1])


def _factored_array(value: Any, old: Any) -> Any:
    """A row or column state's new value (an array, or a host number that fills it), in
    the old array's shape, dtype and place."""
    new = arrays.module(old).empty(old.shape, old.dtype)
    new[...] = value  # broadcast, and cast once
    return new


def _machine_epsilon(dtype: Any) -> float:
    try:
        return float(np.finfo(dtype).eps)
    except (TypeError, ValueError):  # bfloat16 (ml_dtypes has its own finfo)
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).eps)
