"""optdsl and PyTorch.

Optimizer state, both ways, for the optimizers that torch.optim and optdsl's standard
library share (COUNTERPARTS: SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, RAdam,
Rprop, NAdam, ASGD and Adafactor, with the same names, hypers and state names; Adafactor's
eps[0] = None is 0.0 here)::

    from optdsl.torch import state_dict_from_torch, state_dict_to_torch

    opt.load_state_dict(state_dict_from_torch(torch_opt.state_dict(), "Adam"))
    torch_opt.load_state_dict(state_dict_to_torch(opt.state_dict(), "Adam"))

A run moves from one to the other mid-training and continues with the same numbers
(docs/runtime.md).

And any compiled rule as a ``torch.optim.Optimizer`` that steps a model's tensors in place
(docs/torch.md)::

    opt = optdsl.torch.Adam(model.parameters(), lr=1e-3)        # the stdlib's six
    Lion = optdsl.torch.from_rule("lion.opt")                   # a path, text or class
    opt = Lion(model.parameters(), lr=1e-4, flatten=True)       # one kernel call a step

torch is imported inside the functions that need it, and the optimizer classes are made
on first use, so this module imports without torch.

Sections: what both libraries have (COUNTERPARTS), state_dict conversion, optimizers over
torch tensors (from_rule, the class they share, its views of the optdsl state), and the
private helpers.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import itertools
import math
import operator
import os
from collections.abc import MutableMapping
from typing import Any

import numpy as np

from . import arrays
from . import hypers as H
from .errors import (
    GradientTypeError,
    HyperError,
    ParamGroupError,
    ParamGroupTypeError,
    StateDictError,
)
from .runtime import Param

# (SGD, Adam, ... and TorchOptimizer are made on first use: see __getattr__)
__all__ = ["state_dict_from_torch", "state_dict_to_torch", "from_rule", "COUNTERPARTS"]

# --- what both libraries have -----------------------------------------------------------

# optdsl's stdlib optimizers that torch.optim has under the same name.
COUNTERPARTS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "RAdam",
                "Rprop", "NAdam", "ASGD", "Adafactor")

# Tuple hypers whose first item torch lets be None where optdsl's number stands for it:
# Adafactor's eps = (None, 1e-3), None being the machine epsilon of the param's dtype,
# is (0.0, 1e-3) in stdlib/adafactor.opt.
_NONE_FIRST = {("Adafactor", "eps"): 0.0}

# torch.optim's group keys that choose how torch computes a step, not what it computes.
# optdsl has backends instead: these are dropped on the way in and take torch's defaults
# on the way out.
TORCH_ONLY_KEYS = ("foreach", "fused", "capturable", "differentiable")

# torch.optim.SGD keeps no step count (optdsl does: t is a built-in of the language).
_NO_STEP = frozenset({"SGD"})


# --- state_dict conversion --------------------------------------------------------------


def state_dict_from_torch(state_dict: dict[str, Any], optimizer: Any = None) -> dict[str, Any]:
    """A torch.optim ``state_dict()`` as optdsl's: NumPy arrays, int step counts, and each
    group's hypers as optdsl's optimizer takes them (torch's implementation switches
    ``foreach``, ``fused``, ``capturable`` and ``differentiable`` dropped; other keys, such
    as a scheduler's ``initial_lr``, kept). Load the result with ``opt.load_state_dict``.

    ``optimizer``: the optdsl optimizer the result is for, a class, an instance or a name
    (``"Adam"``; a torch.optim class or instance names it too). With it, the groups hold
    exactly its hypers and the state only its state names; AdamW's implied
    ``decoupled_weight_decay`` must be True. Without it, the optimizer is told from the
    groups' keys (torch's Adam and AdamW both become optdsl's Adam, with their
    ``decoupled_weight_decay``: the same update).

    torch.optim.SGD keeps no step count: a param with a momentum buffer gets step 1 (it
    has stepped; SGD reads ``t`` only to tell its first step). Entries that hold only
    None (a momentum buffer never made) are dropped. Raises :class:`StateDictError` for
    anything that does not fit, naming the group or param.
    """
    where = "state_dict_from_torch"
    groups, state = _layout(state_dict, where)
    if optimizer is None:
        cls = _stdlib_class(_infer(groups, where, torch_keys=True))
    else:
        cls = _optdsl_class(optimizer, where)
    infos = cls._spec.hypers
    names = {s.name for s in (*cls._spec.spec.states, *cls._spec.spec.scalars,
                              *cls._spec.spec.factored)}
    out_groups = []
    for i, group in enumerate(groups):
        at = f"{where}: param group {i}"
        known, extra = {}, {}
        for key, value in group.items():
            if key == "params" or key in TORCH_ONLY_KEYS:
                continue
            value = _plain(value, f"{at}: {key!r}")
            if (cls.__name__, key) in _NONE_FIRST and isinstance(value, tuple) and value \
                    and value[0] is None:
                value = (_NONE_FIRST[(cls.__name__, key)], *value[1:])
            if key in infos:
                known[key] = value
            elif key == "decoupled_weight_decay" and cls.__name__ == "AdamW":
                if value is not True:  # torch's AdamW always sets it
                    raise StateDictError(f"{at}: decoupled_weight_decay is {value!r}: this is "
                                         "torch.optim.Adam's state; convert it for 'Adam'")
            else:
                extra[key] = value
        try:
            values = H.resolve(infos, known, cls.__name__)
            failing = cls._spec.host["requires"](values)
            if failing >= 0:
                raise HyperError(cls._spec.spec.requires[failing].message)
        except HyperError as exc:
            raise StateDictError(f"{at}: {exc}") from None
        out_groups.append({**values, **extra, "params": _param_ids(group, at)})
    out_state = {}
    for pid, entry in state.items():
        at = f"{where}: state of param {pid!r}"
        if not isinstance(entry, dict):
            raise StateDictError(f"{at} must be a dict, got {type(entry).__name__}")
        buffers = {}
        for key, value in entry.items():
            if key == "step" or value is None:
                continue
            if key not in names:
                close = difflib.get_close_matches(str(key), sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise StateDictError(f"{at}: {cls.__name__} has no state {key!r}{hint}")
            buffers[key] = _to_numpy(value, f"{at}: {key!r}")
        if "step" in entry:
            step = _step_count(entry["step"], at)
        elif buffers:
            step = 1
        else:
            continue
        out_state[pid] = {"step": step, **buffers}
    return {"state": out_state, "param_groups": out_groups}


def state_dict_to_torch(state_dict: dict[str, Any], optimizer: Any = None) -> dict[str, Any]:
    """An optdsl ``state_dict()`` as torch.optim's: CPU tensors of the arrays' dtypes,
    step counts as torch's scalar step tensors (none for SGD), and each group with
    exactly the keys torch's optimizer gives it (its hypers checked by torch, its
    switches at torch's defaults unless the group carries them). Load it with
    ``torch_opt.load_state_dict``, which moves the tensors to the params' devices.

    ``optimizer``: the torch.optim optimizer it is for, a class, an instance or a name
    (an optdsl class or instance names it too); without it, the optimizer is told from
    the groups' hypers. Raises :class:`StateDictError` for anything that does not fit
    and ImportError without torch.
    """
    where = "state_dict_to_torch"
    try:
        import torch
    except ImportError:
        raise ImportError(f"{where} needs torch (pip install 'optdsl[torch]')") from None
    groups, state = _layout(state_dict, where)
    name = _infer(groups, where, torch_keys=False) if optimizer is None \
        else _counterpart(optimizer, where)
    torch_cls = getattr(torch.optim, name)
    accepted = set(inspect.signature(torch_cls.__init__).parameters) - {"self", "params"}
    out_groups = []
    for i, group in enumerate(groups):
        at = f"{where}: param group {i}"
        hypers = {k: v for k, v in group.items()
                  if k in accepted and k not in TORCH_ONLY_KEYS}
        for key, value in list(hypers.items()):  # optdsl's stand-in for torch's None
            stand_in = _NONE_FIRST.get((name, key))
            if stand_in is not None and isinstance(value, (tuple, list)) and value \
                    and value[0] == stand_in:
                hypers[key] = (None, *value[1:])
        rest = {k: v for k, v in group.items() if k != "params" and k not in hypers}
        try:
            # torch's own optimizer over a stand-in param: it checks the hypers and lays
            # out the group with every key this torch version keeps, in its order.
            made = torch_cls([torch.zeros(1, requires_grad=True)], **hypers).param_groups[0]
        except (TypeError, ValueError) as exc:
            raise StateDictError(f"{at}: torch.optim.{name} refuses these hypers: {exc}") \
                from None
        made = {k: v for k, v in made.items() if k != "params"}
        out_groups.append({**made, **rest, "params": _param_ids(group, at)})
    scalars = {s.name for s in _stdlib_class(name)._spec.spec.scalars}
    return {"state": _state_to_torch(torch, state, where, steps=name not in _NO_STEP,
                                     scalars=scalars),
            "param_groups": out_groups}


def _state_to_torch(torch: Any, state: dict, where: str, steps: bool,
                    scalars: set[str] = frozenset()) -> dict:
    """optdsl's per-param state as torch's: arrays as CPU tensors (copies), step counts
    as torch's scalar step tensors (``steps``; none for torch.optim.SGD), and scalar
    states (NAdam's mu_product, ASGD's eta and mu) as 0-d tensors of the dtype torch keeps
    them in, as its step: its default dtype if that is float64, else float32."""
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    out_state = {}
    for pid, entry in state.items():
        at = f"{where}: state of param {pid!r}"
        if not isinstance(entry, dict):
            raise StateDictError(f"{at} must be a dict, got {type(entry).__name__}")
        converted = {}
        for key, value in entry.items():
            if key == "step":
                if steps:
                    # torch's step is a float tensor (exact to 2**24 steps in float32)
                    converted[key] = torch.tensor(float(_step_count(value, at)),
                                                  dtype=step_dtype)
            elif key == "master":
                continue  # optdsl's fp32 master copy: torch.optim keeps none (its params are it)
            elif key in scalars and value is not None:
                converted[key] = torch.tensor(float(np.asarray(value)), dtype=step_dtype)
            elif value is not None:
                converted[key] = _to_tensor(torch, value, f"{at}: {key!r}")
        if converted:
            out_state[pid] = converted
    return out_state


# --- optimizers over torch tensors ---------------------------------------------------------
#
# A torch optimizer class wraps a compiled optdsl class (its "rule"). An instance keeps an
# optdsl optimizer (``opt.inner``) over one optdsl.Param per tensor, whose .data and .grad
# are NumPy views (CPU) or CuPy views (CUDA, through DLPack) of the tensor and its
# gradient: the kernel writes the tensors' memory, nothing is copied. torch's side
# (param_groups, defaults, hooks) is the source of truth; each step copies the groups'
# hypers into the optdsl groups and re-views what changed, then the optdsl optimizer steps.

# torch's switches that choose how torch computes a step. optdsl's step is always one
# fused kernel: foreach and fused are accepted and ignored; capturable and differentiable
# ask for what it cannot do (CUDA-graph capture, autograd through the step).
_IGNORED_SWITCHES = ("foreach", "fused")
_REFUSED_SWITCHES = ("capturable", "differentiable")

# Constructor keywords that are not hypers: how the optdsl optimizer runs.
_OPTIONS = ("backend", "skip_nonfinite", "max_grad_norm")

# optdsl rule class -> the torch optimizer class made for it (from_rule caches).
_TORCH_CLASSES: dict[type, type] = {}
_BASE: list[type] = []


def from_rule(rule: Any) -> type:
    """A ``torch.optim.Optimizer`` class that steps torch tensors with an optdsl rule.

    ``rule``: a compiled optimizer class (``optdsl.compile(...)``, ``optdsl.optim.Adam``),
    the path of a ``.opt`` file, or spec source text. The class is named after the spec
    and takes ``params`` and the spec's hypers as keywords, with the spec's defaults
    (``lr`` may also be given second, by position, as torch allows), and the options
    ``flatten`` (re-home the params into one buffer per dtype and device, so that a step
    is one kernel call per param group), ``backend``, ``skip_nonfinite`` and
    ``max_grad_norm`` (as optdsl's optimizers take them). torch's ``foreach`` and
    ``fused`` are accepted and ignored.

    The same rule gives the same class. ``optdsl.torch.Adam`` and the other stdlib names
    (COUNTERPARTS) are ``from_rule`` of the stdlib class; any other stdlib optimizer is
    ``from_rule(optdsl.optim.load(name))``.
    Needs torch; see docs/torch.md.
    """
    cls = _rule_class(rule)
    if cls not in _TORCH_CLASSES:
        _TORCH_CLASSES[cls] = _make_class(cls)
    return _TORCH_CLASSES[cls]


def __getattr__(name: str) -> Any:
    """The stdlib's torch optimizer classes (and their base), made on first use, so that
    this module imports without torch."""
    if name in COUNTERPARTS:
        from .optim import load

        value = from_rule(load(name))
    elif name == "TorchOptimizer":
        value = _base()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(COUNTERPARTS) | {"TorchOptimizer"})


def _rule_class(rule: Any) -> type:
    from .runtime import Optimizer

    if isinstance(rule, (str, os.PathLike)):
        from .api import compile as compile_spec

        cls = compile_spec(rule)
        if not issubclass(cls, Optimizer):
            raise TypeError(f"from_rule: {cls.__name__} is a {cls._spec.kind}, not an "
                            "optimizer")
    else:
        # a class from_rule made stands for its rule
        cls = getattr(rule, "rule", None) if isinstance(rule, type) else None
        cls = rule if isinstance(rule, type) and issubclass(rule, Optimizer) else cls
        if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
            raise TypeError("from_rule: expected an optdsl optimizer class, a .opt path or "
                            f"spec text, got {type(rule).__name__}")
    if cls.sparse_only:
        raise TypeError(f"from_rule: {cls.__name__} steps only sparse gradients, which "
                        "optdsl.torch does not take; use torch.optim.SparseAdam")
    return cls


def _make_class(rule: type) -> type:
    """The torch optimizer class for ``rule``, with a signature showing its hypers."""
    infos = rule._spec.hypers
    Parameter = inspect.Parameter
    params = [Parameter("params", Parameter.POSITIONAL_OR_KEYWORD)]
    # lr second, as torch.optim has it (and may be given by position); the rest by keyword
    for name in sorted(infos, key=lambda n: n != "lr"):
        kind = Parameter.POSITIONAL_OR_KEYWORD if name == "lr" else Parameter.KEYWORD_ONLY
        default = Parameter.empty if infos[name].required else infos[name].default
        params.append(Parameter(name, kind, default=default))
    params += [Parameter("flatten", Parameter.KEYWORD_ONLY, default=False),
               Parameter("backend", Parameter.KEYWORD_ONLY, default=None),
               Parameter("skip_nonfinite", Parameter.KEYWORD_ONLY, default=False),
               Parameter("max_grad_norm", Parameter.KEYWORD_ONLY, default=None)]
    doc = (f"{rule.__doc__ or rule.__name__}\n\nA torch.optim.Optimizer over torch tensors "
           f"(optdsl.torch.from_rule({rule.__name__})): each step runs the compiled kernel "
           "in place on the tensors' memory. See docs/torch.md.")
    return type(rule.__name__, (_base(),), {
        "rule": rule, "__doc__": doc, "__module__": __name__,
        "__signature__": inspect.Signature(params)})


def _base() -> type:
    """``TorchOptimizer``: :class:`_TorchCore` on ``torch.optim.Optimizer`` (made once,
    when torch is first needed; the methods import torch, which is there by then)."""
    if not _BASE:
        try:
            import torch
        except ImportError:
            raise ImportError("optdsl.torch's optimizers need torch (pip install "
                              "'optdsl[torch]')") from None
        _BASE.append(type("TorchOptimizer", (_TorchCore, torch.optim.Optimizer), {
            "__module__": __name__, "__doc__": _TorchCore.__doc__}))
    return _BASE[0]


class _Slot:
    """One tensor of a torch optimizer and the optdsl.Param that views it.

    ``grad``: the gradient tensor ``param.grad`` views (None for none); ``ptr`` and
    ``shape``: of the tensor's data when ``param.data`` was made (``p.data = ...``
    rebinds it). ``flat_grad`` / ``flat_array``: with ``flatten=True``, the gradient's
    home in the flat buffer, as a tensor and as its array."""

    __slots__ = ("tensor", "param", "grad", "ptr", "shape", "flat_grad", "flat_array")

    def __init__(self, tensor: Any, param: Any):
        self.tensor, self.param, self.grad = tensor, param, None
        self.ptr, self.shape = tensor.data_ptr(), tensor.shape
        self.flat_grad = self.flat_array = None


class _TorchCore:
    """A ``torch.optim.Optimizer`` whose step is a compiled optdsl rule, run in place on
    the tensors' memory (NumPy views of CPU tensors, CuPy views of CUDA tensors).

    ``param_groups``, ``defaults``, ``add_param_group``, ``zero_grad``, the step and
    state_dict hooks are torch's, so torch's schedulers and ``torch.amp.GradScaler`` drive
    it. ``state`` shows the optdsl optimizer's state as torch's (tensors sharing its
    memory), and ``state_dict()`` / ``load_state_dict()`` use torch's layout, so a
    checkpoint moves to and from the torch.optim optimizer of the same name.
    ``inner`` is the optdsl optimizer itself, and ``flat`` the :class:`optdsl.FlatParams`
    of ``flatten=True`` (None otherwise).
    """

    rule: type  # the compiled optdsl optimizer class, set by from_rule

    def __init__(self, params: Any, *args: Any, flatten: bool = False, **kwargs: Any):
        name = type(self).__name__
        infos = self.rule._spec.hypers
        if args:
            if len(args) > 1 or "lr" not in infos or "lr" in kwargs:
                raise TypeError(f"{name}: only lr may be given by position, after params")
            kwargs["lr"] = args[0]
        for key in _IGNORED_SWITCHES:
            kwargs.pop(key, None)
        for key in _REFUSED_SWITCHES:
            if kwargs.pop(key, False):
                raise HyperError(f"{name}: {key}=True is not supported: optdsl's step is a "
                                 "compiled kernel, outside autograd and CUDA graphs")
        if not isinstance(flatten, (bool, np.bool_)):
            raise TypeError(f"{name}: flatten must be True or False, got {flatten!r}")
        self._options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
        # the hypers are checked here, with the spec's messages, before torch sees them
        defaults = H.resolve(infos, kwargs, name)
        failing = self.rule._spec.host["requires"](defaults)
        if failing >= 0:
            raise HyperError(f"{name}: {self.rule._spec.spec.requires[failing].message}")
        self.inner: Any = None
        self.flat: Any = None
        self._slots: dict[int, _Slot] = {}  # by id of the tensor
        self._group_slots: list[tuple[Any, list[_Slot]]] = []  # per group: (params, slots)
        self._cuda = False  # whether any tensor is a CUDA tensor (see _streams)
        super().__init__(params, defaults)  # torch's: calls add_param_group per group
        if flatten:
            self._flatten()

    # torch.optim.Optimizer.__init__ assigns an empty state; the state lives in `inner`.
    @property
    def state(self) -> _StateView:
        return _StateView(self)

    @state.setter
    def state(self, value: Any) -> None:
        if value:
            raise AttributeError(f"{type(self).__name__}.state cannot be replaced: change "
                                 "entries in place, or use load_state_dict")

    def __getstate__(self) -> Any:
        raise TypeError(f"optdsl.torch.{type(self).__name__} cannot be pickled or copied: "
                        "save its state_dict() and load it into a new one")

    # --- param groups ----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # torch's checks; fills in the defaults
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        try:
            names = group.get("param_names") or [None] * len(group["params"])
            slots = [self._new_slot(t, index, i, n)
                     for i, (t, n) in enumerate(zip(group["params"], names, strict=True))]
            inner_group = {k: _hyper_value(v) for k, v in group.items()
                           if k not in ("params", "param_names")}
            inner_group["params"] = [s.param for s in slots]
            if self.inner is None:
                self.inner = self.rule([inner_group], **self._options, **self.defaults)
            else:
                self.inner.add_param_group(inner_group)
        except BaseException:
            self.param_groups.pop()
            raise
        self._slots.update((id(s.tensor), s) for s in slots)
        self._group_slots.append((group["params"], slots))

    def _new_slot(self, tensor: Any, index: int, position: int, name: Any) -> _Slot:
        import torch

        where = f"{type(self).__name__}: " + (
            f"param {name!r} (param {position} of group {index})" if name
            else f"param {position} of group {index}")
        if tensor.layout != torch.strided:
            raise ParamGroupTypeError(f"{where}: a sparse tensor ({tensor.layout}) cannot be "
                                      "stepped in place; optdsl.torch takes dense tensors")
        if not tensor.is_floating_point():
            raise ParamGroupTypeError(f"{where}: parameters must be floating-point tensors, "
                                      f"got {tensor.dtype}")
        if any(s == 0 and n > 1 for s, n in zip(tensor.stride(), tensor.shape, strict=True)):
            raise ParamGroupError(f"{where}: the tensor's elements overlap in memory (an "
                                  "expanded tensor): it cannot be updated in place")
        param = Param(_array_of(tensor, where, ParamGroupTypeError),
                      name=name if isinstance(name, str) else None)
        self._cuda = self._cuda or tensor.is_cuda
        return _Slot(tensor, param)

    def _stream(self) -> Any:
        """A context in which CuPy works on torch's current CUDA stream (see _streams)."""
        return _streams(self) if self._cuda else contextlib.nullcontext()

    def _entry(self, tensor: Any) -> dict:
        """The optdsl state of ``tensor`` ({} for none, or for a tensor not stepped here)."""
        s = self._slots.get(id(tensor))
        if s is None or s.tensor is not tensor:
            return {}
        return self.inner.state.get(s.param) or {}

    def _where(self, slot: _Slot) -> str:
        for gi, (_, slots) in enumerate(self._group_slots):
            if any(s is slot for s in slots):
                return self.inner._where(gi, slot.param)
        return type(self).__name__

    # --- flat buffers ------------------------------------------------------------------------
    def _flatten(self) -> None:
        """Copy the params into one buffer per dtype and device (optdsl.flatten) and point
        each tensor's data, and the gradient of each that requires one, at its slice."""
        import torch

        from .flat import flatten

        slots = [s for _, group in self._group_slots for s in group]
        for s in slots:
            s.param.grad = None
        with torch.no_grad(), self._stream():
            self.flat = flatten([s.param for s in slots])
            for s in slots:
                t, old_grad = s.tensor, s.tensor.grad
                t.data = _tensor_of(s.param.data)
                s.ptr, s.shape = t.data_ptr(), t.shape
                s.flat_array = s.param.grad
                s.flat_grad = _tensor_of(s.flat_array)
                if old_grad is not None:
                    s.flat_grad.copy_(old_grad)
                s.param.grad = s.grad = None
                if t.requires_grad or old_grad is not None:
                    t.grad = s.grad = s.flat_grad
                    s.param.grad = s.flat_array

    # --- stepping ----------------------------------------------------------------------------
    def register_grad_hook(self, hook: Any) -> Any:
        """As :meth:`optdsl.Optimizer.register_grad_hook`, on the optdsl optimizer that
        steps the tensors: ``hook(optimizer, grads)`` sees the gradients as NumPy (CuPy)
        views of the tensors' ``.grad``, before every step (for
        :class:`optdsl.distributed.TorchAllReduce`)."""
        if self.inner is None:
            raise ValueError(f"{type(self).__name__} has no params to hook yet")
        return self.inner.register_grad_hook(hook)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's, except with ``flatten=True``: the gradients of the flattened params are
        zeroed in place, in one fill per buffer, and point at their slices again
        (``set_to_none`` applies only to params outside the buffers)."""
        if self.flat is None:
            super().zero_grad(set_to_none)
            return
        import torch

        with self._stream():
            self.flat.zero_grad()
        with torch.no_grad():
            for group in self.param_groups:
                for t in group["params"]:
                    s = self._slots.get(id(t))
                    if s is not None and s.flat_grad is not None and t.data_ptr() == s.ptr:
                        if t.grad is not s.flat_grad and (t.requires_grad or t.grad is not None):
                            t.grad = s.flat_grad
                            s.param.grad, s.grad = s.flat_array, s.flat_grad
                    elif t.grad is not None:  # as torch.optim.Optimizer.zero_grad does
                        if set_to_none:
                            t.grad = None
                        else:
                            if t.grad.grad_fn is not None:
                                t.grad.detach_()
                            else:
                                t.grad.requires_grad_(False)
                            t.grad.zero_()

    def step(self, closure: Any = None) -> Any:
        """One update of every tensor that has a gradient; returns the closure's loss (the
        closure runs with gradients enabled, as in torch)."""
        import torch

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            stepped = self._sync()
        with self._stream():
            self.inner.step()
        # The tensors changed behind autograd's back: bump their version counters, as
        # torch's in-place updates do, so a graph that saved them refuses to backward.
        if stepped:
            torch.autograd.graph.increment_version(stepped)
        for s in self._slots.values():
            # Views of gradients torch made anew (backward after zero_grad()) are not kept
            # past the step: they would hold that memory until the next step.
            if s.grad is not None and s.grad is not s.flat_grad:
                s.param.grad = s.grad = None
        return loss

    def _sync(self) -> list:
        """Bring the optdsl optimizer up to date with torch's groups: hypers, params lists,
        rebound data, new gradients. Returns the tensors that will step."""
        inner_groups = self.inner.param_groups
        if len(self.param_groups) != len(inner_groups):
            raise ParamGroupError(f"{type(self).__name__}: param_groups has "
                                  f"{len(self.param_groups)} groups, but "
                                  f"{len(inner_groups)} were added: add groups with "
                                  "add_param_group")
        hypers = self.rule._spec.hypers
        stepped = []
        for index, (group, inner_group) in enumerate(zip(self.param_groups, inner_groups,
                                                          strict=True)):
            for key in hypers:
                inner_group[key] = _hyper_value(group.get(key, self.defaults[key]))
            params, slots = self._group_slots[index]
            if group["params"] is not params or len(params) != len(slots) \
                    or not all(map(operator.is_, params, (s.tensor for s in slots))):
                slots = self._regroup(index, group)
                inner_group["params"] = [s.param for s in slots]
            for s in slots:
                if self._refresh(s):
                    stepped.append(s.tensor)
        return stepped

    def _regroup(self, index: int, group: dict[str, Any]) -> list[_Slot]:
        """A group's params list was replaced or edited by hand: slots for its tensors."""
        params = group["params"]
        if not isinstance(params, (list, tuple)):
            raise ParamGroupTypeError(f"{type(self).__name__}: param group {index}'s params "
                                      f"must be a list, got {type(params).__name__}")
        slots = []
        for position, t in enumerate(params):
            s = self._slots.get(id(t))
            if s is None or s.tensor is not t:
                s = self._slots[id(t)] = self._new_slot(t, index, position, None)
            slots.append(s)
        self._group_slots[index] = (params, slots)
        return slots

    def _refresh(self, s: _Slot) -> bool:
        """View ``s``'s data again if it was rebound, and its gradient if it is new;
        whether the tensor has a gradient to step on."""
        t = s.tensor
        if t.data_ptr() != s.ptr or t.shape != s.shape:
            # p.data = ... (or model.to(...)): no longer the flat buffer's slice, if it was
            s.param.data = _array_of(t, self._where(s), ParamGroupTypeError)
            self._cuda = self._cuda or t.is_cuda
            s.ptr, s.shape = t.data_ptr(), t.shape
            s.flat_grad = s.flat_array = None
        g = t.grad
        if g is s.grad:
            return g is not None
        if g is None:
            s.param.grad = s.grad = None
            return False
        import torch

        if g.layout != torch.strided:
            raise GradientTypeError(f"{self._where(s)}: a sparse gradient ({g.layout}) "
                                    "cannot be stepped; optdsl.torch takes dense gradients "
                                    "(for nn.Embedding, sparse=False)")
        if g is s.flat_grad:
            s.param.grad = s.flat_array
        elif s.flat_grad is not None and g.shape == s.flat_grad.shape \
                and g.dtype == s.flat_grad.dtype and g.device == s.flat_grad.device:
            # A gradient made anew (model.zero_grad() then backward): back into the flat
            # buffer, so the group still steps in one kernel call.
            s.flat_grad.copy_(g)
            t.grad = g = s.flat_grad
            s.param.grad = s.flat_array
        else:
            s.param.grad = _array_of(g, self._where(s), GradientTypeError)
        s.grad = g
        return True

    # --- state_dict --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: the state's tensors (CPU copies), step counts as torch's
        step tensors, and the groups as torch's optimizer of this name keeps them (for the
        stdlib names: torch's switches at their defaults). torch.optim's optimizer of the
        same name loads it, and so does this class."""
        import torch

        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        groups, state, ids = [], {}, itertools.count()
        for group in self.param_groups:
            packed = {k: _hyper_value(v) for k, v in group.items() if k != "params"}
            packed["params"] = []
            for t in group["params"]:
                pid = next(ids)
                packed["params"].append(pid)
                if entry := self._entry(t):
                    state[pid] = dict(entry)
            groups.append(packed)
        sd = {"state": state, "param_groups": groups}
        name = type(self).__name__
        with self._stream():  # copies of the state, from the GPU for CUDA tensors
            if name in COUNTERPARTS and self.rule is _stdlib_class(name):
                sd = state_dict_to_torch(sd, name)
            else:
                sd = {"state": _state_to_torch(torch, state, f"{name}.state_dict",
                                               steps=True),
                      "param_groups": groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this class, of torch.optim's optimizer of the same name,
        or of the optdsl optimizer. Everything is checked first: on any mismatch a
        :class:`StateDictError` is raised and nothing changes."""
        state_dict = dict(state_dict) if isinstance(state_dict, dict) else state_dict
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        name = type(self).__name__
        try:
            converted = state_dict_from_torch(state_dict, self.rule)
        except StateDictError as exc:
            raise StateDictError(f"{name}.load_state_dict: {exc}") from None
        with self._stream():
            self.inner.load_state_dict(converted)
        for i, (group, saved) in enumerate(zip(self.param_groups, converted["param_groups"],
                                               strict=True)):
            new = {k: v for k, v in saved.items() if k != "params"}
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            self.param_groups[i] = {"params": group["params"], **new}
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


class _StateView(MutableMapping):
    """``opt.state``: the optdsl optimizer's state, as torch shows it. Keys are the
    tensors that have state; each entry is an :class:`_EntryView`."""

    def __init__(self, opt: Any):
        self._opt = opt

    def _slot(self, tensor: Any) -> _Slot:
        s = self._opt._slots.get(id(tensor))
        if s is None or s.tensor is not tensor:
            raise KeyError("not a parameter of this optimizer")
        return s

    def __getitem__(self, tensor: Any) -> _EntryView:
        return _EntryView(self._opt, self._slot(tensor).param)

    def __setitem__(self, tensor: Any, value: Any) -> None:
        entry = _EntryView(self._opt, self._slot(tensor).param)
        entry.clear()
        entry.update(value)

    def __delitem__(self, tensor: Any) -> None:
        del self._opt.inner.state[self._slot(tensor).param]

    def __iter__(self):
        return (t for group in self._opt.param_groups for t in group["params"]
                if self._opt._entry(t))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


class _EntryView(MutableMapping):
    """``opt.state[p]``: the state of one param, as torch's optimizer of this name shows
    it. Buffers are tensors sharing the optdsl state's memory (edit them in place, or
    assign a new tensor, whose values the next step takes); ``step`` is torch's step
    tensor (torch.optim.SGD shows none)."""

    def __init__(self, opt: Any, param: Any):
        self._opt, self._param = opt, param
        name = type(opt).__name__
        self._steps = not (name in _NO_STEP and opt.rule is _stdlib_class(name))

    def _entry(self) -> dict:
        return self._opt.inner.state.get(self._param) or {}

    def _keys(self) -> list[str]:
        return [k for k in self._entry() if k != "master" and (k != "step" or self._steps)]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        import torch

        value = self._entry()[key]
        if key == "step":
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 \
                else torch.float32
            return torch.tensor(float(value), dtype=dtype)
        return _tensor_of(value)

    def __setitem__(self, key: str, value: Any) -> None:
        at = f"{type(self._opt).__name__}.state"
        if key == "step":
            value = _step_count(value, at)
        elif key not in {s.name for s in (*self._opt.rule._spec.spec.states,
                                          *self._opt.rule._spec.spec.scalars,
                                          *self._opt.rule._spec.spec.factored)}:
            raise KeyError(f"{at}: {type(self._opt).__name__} has no state {key!r}")
        else:
            value = _to_numpy(value, f"{at}[{key!r}]")
        self._opt.inner.state[self._param][key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._keys():
            raise KeyError(key)
        del self._opt.inner.state[self._param][key]

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return repr(dict(self))


def _hyper_value(value: Any) -> Any:
    """A group value as optdsl takes it: torch lets lr (and betas) be one-element
    tensors."""
    if _is_tensor(value) and value.numel() == 1:
        return value.item()
    if isinstance(value, tuple) and any(map(_is_tensor, value)):
        return tuple(_hyper_value(v) for v in value)
    return value


def _array_of(tensor: Any, where: str, error: type) -> Any:
    """An array sharing ``tensor``'s memory: NumPy for a CPU tensor (bfloat16 as
    ml_dtypes' bfloat16), CuPy for a CUDA tensor (through DLPack)."""
    import torch

    x = tensor.detach()
    if x.device.type == "cpu":
        try:
            if x.dtype == torch.bfloat16:
                return x.view(torch.int16).numpy().view(_bfloat16(where, error))
            return x.numpy()
        except (TypeError, RuntimeError) as exc:
            raise error(f"{where}: a NumPy view of the tensor cannot be made: {exc}") \
                from None
    if x.device.type == "cuda":  # pragma: no cover - needs a GPU (tests/torch, skipped)
        try:
            import cupy
        except ImportError:
            raise error(f"{where}: a CUDA tensor steps through CuPy, which is not "
                        "installed (pip install 'optdsl[cuda]')") from None
        try:
            return cupy.from_dlpack(x)
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:
            raise error(f"{where}: a CuPy view of the tensor cannot be made: {exc}") \
                from None
    raise error(f"{where}: the tensor lives on {x.device}; optdsl.torch steps CPU and "
                "CUDA tensors")


def _tensor_of(array: Any) -> Any:
    """A tensor sharing ``array``'s memory (the inverse of :func:`_array_of`)."""
    import torch

    if arrays.is_cupy(array):  # pragma: no cover - needs a GPU
        return torch.from_dlpack(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _streams(opt: Any) -> Any:  # pragma: no cover - needs a GPU (tests/torch, skipped)
    """Run CuPy's kernels on torch's current stream of the first CUDA tensor's device,
    so that they are ordered with torch's work on the tensors."""
    import cupy
    import torch

    device = next(s.tensor.device for s in opt._slots.values() if s.tensor.is_cuda)
    stream = torch.cuda.current_stream(device)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device.index)


# --- helpers ------------------------------------------------------------------------------

def _layout(sd: Any, where: str) -> tuple[list[dict], dict]:
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise StateDictError(f"{where}: expected a state_dict, a dict with 'state' and "
                             "'param_groups'")
    groups, state = sd["param_groups"], sd["state"]
    if not isinstance(groups, (list, tuple)) or not isinstance(state, dict):
        raise StateDictError(f"{where}: 'param_groups' must be a list and 'state' a dict")
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or "params" not in group:
            raise StateDictError(f"{where}: param group {i} has no 'params'")
    return list(groups), state


def _param_ids(group: dict, at: str) -> list:
    try:
        return list(group["params"])
    except TypeError:
        raise StateDictError(f"{at}: 'params' must be a list of param ids, got "
                             f"{group['params']!r}") from None


def _name(optimizer: Any) -> str:
    if isinstance(optimizer, str):
        return optimizer
    return optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__


def _counterpart(optimizer: Any, where: str) -> str:
    name = _name(optimizer)
    if name not in COUNTERPARTS:
        raise StateDictError(f"{where}: {name!r} is not an optimizer that torch.optim and "
                             f"optdsl both have ({', '.join(COUNTERPARTS)})")
    return name


def _optdsl_class(optimizer: Any, where: str) -> type:
    """The optdsl class itself where one is given (its own hypers and states), else the
    stdlib class of that name."""
    from .runtime import Optimizer

    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, Optimizer):
        return type(optimizer)
    return _stdlib_class(_counterpart(optimizer, where))


def _stdlib_class(name: str) -> type:
    from .optim import load

    return load(name)


def _infer(groups: list[dict], where: str, torch_keys: bool) -> str:
    """The optimizer whose hypers a state_dict's groups hold: the one with the most hypers
    that all appear (optdsl's Adam has AdamW's and decoupled_weight_decay)."""
    from .optim import load

    hypers = {name: set(load(name)._spec.hypers) for name in COUNTERPARTS}
    found = set()
    for group in groups:
        keys = set(group)
        fits = [n for n in COUNTERPARTS if hypers[n] <= keys]
        if not fits:
            raise StateDictError(f"{where}: cannot tell which optimizer these param groups "
                                 f"are for (keys: {', '.join(sorted(map(str, keys)))}); pass "
                                 "optimizer=")
        found.add(max(fits, key=lambda n: len(hypers[n])))
    if len(found) != 1:
        raise StateDictError(f"{where}: the param groups look like different optimizers "
                             f"({', '.join(sorted(found))}); pass optimizer=")
    name = found.pop()
    if torch_keys and name == "AdamW" and not any("decoupled_weight_decay" in g
                                                  for g in groups):
        # torch before 2.6 kept no decoupled_weight_decay: Adam and AdamW look the same.
        raise StateDictError(f"{where}: torch.optim.Adam and AdamW keep the same keys here; "
                             "pass optimizer='Adam' or 'AdamW'")
    return name


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _plain(value: Any, at: str) -> Any:
    """A group value as a Python one: torch lets lr (and betas) be 0-d tensors."""
    if _is_tensor(value):
        if value.numel() != 1:
            raise StateDictError(f"{at}: expected a number, got a tensor of shape "
                                 f"{tuple(value.shape)}")
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v, at) for v in value)
    return value


def _step_count(value: Any, at: str) -> int:
    try:
        number = float(value.item() if _is_tensor(value) else np.asarray(value).item())
    except (TypeError, ValueError, RuntimeError):
        raise StateDictError(f"{at}: 'step' must be a number, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not math.isfinite(number) or number < 0 \
            or not number.is_integer():
        raise StateDictError(f"{at}: 'step' must be a whole number >= 0, got {value!r}")
    return int(number)


def _to_numpy(value: Any, at: str) -> np.ndarray:
    """A NumPy copy of a tensor (from any device; bfloat16 as ml_dtypes' bfloat16)."""
    if _is_tensor(value):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            bfloat16 = _bfloat16(at)
            return tensor.view(torch.int16).numpy().view(bfloat16).copy()
        try:
            return tensor.numpy().copy()
        except TypeError as exc:  # a dtype NumPy lacks
            raise StateDictError(f"{at}: {exc}") from None
    if arrays.is_array(value):
        return arrays.to_numpy(value).copy()
    raise StateDictError(f"{at}: expected a tensor or an array, got {type(value).__name__}")


def _to_tensor(torch: Any, value: Any, at: str) -> Any:
    if _is_tensor(value):
        return value.detach().clone()
    if not arrays.is_array(value):
        raise StateDictError(f"{at}: expected an array, got {type(value).__name__}")
    host = np.array(arrays.to_numpy(value), copy=True, order="C")
    if host.dtype.name == "bfloat16":
        return torch.from_numpy(host.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(host)


def _bfloat16(at: str, error: type = StateDictError) -> Any:
    try:
        import ml_dtypes
    except ImportError:
        raise error(f"{at}: a bfloat16 tensor needs ml_dtypes for its NumPy array "
                    "(pip install ml_dtypes)") from None
    return ml_dtypes.bfloat16
