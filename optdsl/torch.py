"""optdsl and PyTorch.

Optimizer state, both ways, for the optimizers that torch.optim and optdsl's standard
library share (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta: the same names, hypers and
state names)::

    from optdsl.torch import state_dict_from_torch, state_dict_to_torch

    opt.load_state_dict(state_dict_from_torch(torch_opt.state_dict(), "Adam"))
    torch_opt.load_state_dict(state_dict_to_torch(opt.state_dict(), "Adam"))

A run moves from one to the other mid-training and continues with the same numbers
(docs/runtime.md). torch is imported inside the functions that need it, so this module
imports without torch.

Sections: what both libraries have (COUNTERPARTS), state_dict conversion, and the
private helpers; optimizer classes over torch tensors, when they come, get their own.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

import numpy as np

from . import arrays
from . import hypers as H
from .errors import HyperError, StateDictError

__all__ = ["state_dict_from_torch", "state_dict_to_torch", "COUNTERPARTS"]

# --- what both libraries have -----------------------------------------------------------

# optdsl's stdlib optimizers that torch.optim has under the same name.
COUNTERPARTS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta")

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
    names = {s.name for s in cls._spec.spec.states}
    out_groups = []
    for i, group in enumerate(groups):
        at = f"{where}: param group {i}"
        known, extra = {}, {}
        for key, value in group.items():
            if key == "params" or key in TORCH_ONLY_KEYS:
                continue
            value = _plain(value, f"{at}: {key!r}")
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
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    out_state = {}
    for pid, entry in state.items():
        at = f"{where}: state of param {pid!r}"
        if not isinstance(entry, dict):
            raise StateDictError(f"{at} must be a dict, got {type(entry).__name__}")
        converted = {}
        for key, value in entry.items():
            if key == "step":
                if name not in _NO_STEP:
                    # torch's step is a float tensor (exact to 2**24 steps in float32)
                    converted[key] = torch.tensor(float(_step_count(value, at)),
                                                  dtype=step_dtype)
            elif value is not None:
                converted[key] = _to_tensor(torch, value, f"{at}: {key!r}")
        if converted:
            out_state[pid] = converted
    return {"state": out_state, "param_groups": out_groups}


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


def _bfloat16(at: str) -> Any:
    try:
        import ml_dtypes
    except ImportError:
        raise StateDictError(f"{at}: a bfloat16 tensor needs ml_dtypes for its NumPy array "
                             "(pip install ml_dtypes)") from None
    return ml_dtypes.bfloat16
