"""Rendering values and names into generated Python.

Generated code may contain only validated identifiers and re-rendered numbers (DESIGN.md).
These helpers are the only way text from a spec reaches a template: identifiers are
re-checked against a strict pattern and prefixed so they cannot collide with Python
keywords or the template's own names; numbers are re-rendered from floats; strings become
tuples of code points, decoded at run time.
"""

from __future__ import annotations

import keyword
import math
import re

from .errors import InternalCompilerError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def ident(name: str, prefix: str = "v_") -> str:
    """A spec identifier as a safe Python name (``exp_avg`` -> ``v_exp_avg``)."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise InternalCompilerError(f"refusing to render non-identifier {name!r}")
    out = prefix + name
    if keyword.iskeyword(out):  # pragma: no cover - a prefix makes this impossible
        raise InternalCompilerError(f"identifier {out!r} is a keyword")
    return out


# Extra kernel outputs (diagnostics: see optdsl.extras) are named KIND:NAME, which no spec
# name can be. In generated code each kind takes its own letter after the prefix's, so
# that ``c_`` + a spec name and ``ct_`` + a track name can never be the same identifier:
# ``track:lr`` -> ``ct_lr``, ``diag:update`` -> ``cd_update``, ``dlr:lr`` -> ``ch_lr``.
# ``red:rK`` is a reduce stage's output: the value reduction K reduces; ``fac:eK`` a row or
# column value broadcast to the parameter's shape, which a kernel reads (optdsl.stages).
EXTRA_KINDS = {"track": "t", "diag": "d", "dlr": "h", "red": "r", "fac": "f"}

# Keys of the per-parameter host values a kernel's scalar prologue reads ("scalar" leaves).
SCALAR_KINDS = ("state", "reduce")


def quoted_scalar(key: str) -> str:
    """A per-parameter value's key (``numel``, ``state:NAME``, ``reduce:rK``) as a string
    literal (``h['state:mu_product']``)."""
    kind, colon, rest = key.partition(":") if isinstance(key, str) else ("", "", "")
    if key not in ("numel", "factored", "dtype_eps") and not (
            colon and kind in SCALAR_KINDS and _IDENT.match(rest)):
        raise InternalCompilerError(f"refusing to render scalar key {key!r}")
    return "'" + key + "'"


def buffer_ident(name: str, prefix: str) -> str:
    """A kernel buffer's name (``p``, a state, or an extra output ``KIND:NAME``) as a safe
    Python or C++ name, for a ``prefix`` that ends with ``_``."""
    kind, colon, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not colon:
        return ident(name, prefix)
    if kind not in EXTRA_KINDS or not prefix.endswith("_"):
        raise InternalCompilerError(f"refusing to render buffer name {name!r}")
    return ident(rest, prefix[:-1] + EXTRA_KINDS[kind] + "_")


def quoted_buffer(name: str) -> str:
    """A buffer name (an identifier, or ``KIND:NAME`` for an extra output) as a string
    literal (``BUFFERS = ('p', 'g', 'track:lr', )``)."""
    buffer_ident(name, "b_")
    return "'" + name + "'"


def quoted_ident(name: str) -> str:
    """A validated identifier as a string literal (dictionary keys like ``h['lr']``)."""
    ident(name)
    return "'" + name + "'"


_CODE = re.compile(r"[A-Za-z0-9_, ]*\Z")


def quoted_code(text: str) -> str:
    """A string literal of generated code made of identifiers, commas and spaces only
    (a kernel's parameter list, such as ``'T b_g, S a0'``)."""
    if not isinstance(text, str) or not _CODE.match(text):
        raise InternalCompilerError(f"refusing to quote {text!r}")
    return "'" + text + "'"


def number(value: float) -> str:
    """A float literal that evaluates back to exactly ``value``."""
    value = float(value)
    if math.isnan(value):
        return "_NAN"
    if math.isinf(value):
        return "_INF" if value > 0 else "(-_INF)"
    text = repr(value)
    return f"({text})" if text.startswith("-") else text


def text(value: str) -> str:
    """A string as code points: ``'min'`` -> ``_text((109, 105, 110))``."""
    return "_text((" + "".join(f"{ord(c)}, " for c in value) + "))"


def constant(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return text(value)
    if isinstance(value, tuple):
        return "(" + "".join(constant(v) + ", " for v in value) + ")"
    return number(value)


def hex_string(value: str) -> str:
    """A hash (hex digits only) as a string literal."""
    if not re.fullmatch(r"[0-9a-f]+", value):
        raise InternalCompilerError(f"refusing to render non-hex {value!r}")
    return "'" + value + "'"
