"""Building param groups from named parameters: weight decay off for biases and norm
weights, and layer-wise learning-rate decay (in the spirit of timm's
``param_groups_weight_decay`` and ``param_groups_layer_decay``).

Weight decay on biases and on the scales and shifts of normalisation layers is rarely
wanted (pytorch#1402), but torch.optim applies a group's ``weight_decay`` to every param
in it. :func:`param_groups` splits the params into groups that say so.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable
from typing import Any

from .errors import HyperError, ParamGroupTypeError

__all__ = ["param_groups", "no_decay_match", "layer_id"]

_LAYER = re.compile(r"^\d+$")


def param_groups(named_params: Iterable[tuple[str, Any]] | dict[str, Any], *,
                 weight_decay: float = 0.0, no_decay: Iterable[str] = ("bias", "norm"),
                 layer_decay: float | None = None, lr: float | None = None,
                 ) -> list[dict[str, Any]]:
    """Param groups for an optimizer from ``(name, param)`` pairs (``model
    .named_parameters()``, a dict, or any iterable of pairs), in their order.

    - Params whose name matches a pattern of ``no_decay`` get ``weight_decay`` 0; the
      others get ``weight_decay``. See :func:`no_decay_match` for the matching rules.
    - ``layer_decay`` (a number in (0, 1]): the params of layer ``i`` of ``n`` (see
      :func:`layer_id`) get ``lr_scale = layer_decay ** (n - i)``; with ``lr`` their
      group's ``"lr"`` is ``lr * lr_scale`` too. The deepest layer keeps the full lr.

    Params that share a (weight decay, layer) pair share a group; the groups come in the
    order their first param does, and each lists its params in the order given. A group
    holds ``"params"``, ``"weight_decay"``, and with layer decay ``"lr_scale"`` and
    ``"layer"`` (and ``"lr"`` when ``lr`` is given); names are kept in ``"param_names"``.
    """
    pairs = _pairs(named_params)
    patterns = _patterns(no_decay)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not math.isfinite(weight_decay) or weight_decay < 0:
        raise HyperError(f"param_groups: weight_decay must be a number >= 0, got "
                         f"{weight_decay!r}")
    if layer_decay is not None and (isinstance(layer_decay, bool)
                                    or not isinstance(layer_decay, (int, float))
                                    or not 0 < layer_decay <= 1):
        raise HyperError(f"param_groups: layer_decay must be a number in (0, 1], got "
                         f"{layer_decay!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                           or not math.isfinite(lr) or lr < 0):
        raise HyperError(f"param_groups: lr must be a number >= 0, got {lr!r}")
    layers = _layers([name for name, _ in pairs]) if layer_decay is not None else None
    groups: dict[tuple, dict[str, Any]] = {}
    for k, (name, p) in enumerate(pairs):
        decay = 0.0 if no_decay_match(name, patterns) else float(weight_decay)
        key: tuple = (decay,)
        extra: dict[str, Any] = {}
        if layers is not None:
            layer, count = layers[k], max(layers) if layers else 0
            scale = float(layer_decay) ** (count - layer)
            key += (layer,)
            extra = {"layer": layer, "lr_scale": scale}
            if lr is not None:
                extra["lr"] = float(lr) * scale
        group = groups.setdefault(key, {"params": [], "param_names": [],
                                        "weight_decay": decay, **extra})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def no_decay_match(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` (a dotted param name, ``"blocks.0.norm1.weight"``) matches one of
    ``patterns``. A pattern with a glob character (``*``, ``?``, ``[``) must match the
    whole name, as :func:`fnmatch.fnmatchcase` does (``"*.bias"``, ``"head.*"``). Any
    other pattern matches when some dot-separated part of the name contains it, ignoring
    case: ``"bias"`` matches ``"fc.bias"``, and ``"norm"`` matches ``"norm1.weight"``,
    ``"ln.layernorm.bias"`` and ``"BatchNorm.weight"``. A plain pattern is a substring
    test, so ``"fc"`` also matches ``"fc2.weight"``; use a glob such as ``"fc.*"`` to
    match one part exactly."""
    lowered = name.lower()
    parts = lowered.split(".")
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if fnmatch.fnmatchcase(name, pattern):
                return True
        elif any(pattern.lower() in part for part in parts):
            return True
    return False


def layer_id(name: str) -> int | None:
    """The layer a param belongs to: the first dot-separated part of its name that is a
    whole number, plus one (``"blocks.3.attn.weight"`` is layer 4); None if no part is.
    """
    for part in name.split("."):
        if _LAYER.match(part):
            return int(part) + 1
    return None


def _layers(names: list[str]) -> list[int]:
    """Every param's layer: numbered params by :func:`layer_id`; unnumbered params
    before the first numbered one are layer 0 (embeddings, stems), and those after it
    the last layer plus one (heads, final norms)."""
    ids = [layer_id(n) for n in names]
    numbered = [i for i in ids if i is not None]
    last = max(numbered, default=0)
    seen_numbered = False
    out = []
    for i in ids:
        if i is not None:
            seen_numbered = True
            out.append(i)
        else:
            out.append(last + 1 if seen_numbered else 0)
    return out


def _pairs(named_params: Any) -> list[tuple[str, Any]]:
    if isinstance(named_params, dict):
        items = list(named_params.items())
    else:
        try:
            items = list(named_params)
        except TypeError:
            raise ParamGroupTypeError("param_groups needs (name, param) pairs, such as "
                                      "model.named_parameters() or a dict, got "
                                      f"{type(named_params).__name__}") from None
    pairs = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ParamGroupTypeError("param_groups needs (name, param) pairs, such as "
                                      "model.named_parameters() or a dict; got an item "
                                      f"{item!r:.60}")
        pairs.append(item)
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ParamGroupTypeError(f"param_groups: the name {dup!r} is given twice")
    return pairs


def _patterns(no_decay: Any) -> tuple[str, ...]:
    if isinstance(no_decay, str):
        return (no_decay,)
    patterns = tuple(no_decay or ())
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ParamGroupTypeError(f"param_groups: no_decay holds name patterns "
                                      f"(non-empty strings), got {pattern!r}")
    return patterns
