"""Lark's LALR tables cached on disk as JSON, so a new process skips the grammar analysis.

Building the parser costs about 100 ms; loading the tables costs a few. Lark's own cache
uses pickle, which optdsl never uses, so the tables are stored as JSON here: tuples and
dicts with non-string keys are tagged so they round-trip exactly. The file name hashes the
grammar and Lark's version; a file that fails to load is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import lark
from lark import Lark
from lark.grammar import Rule
from lark.lexer import TerminalDef

from .cache import cache_dir, write_atomically


def _encode(x: Any) -> Any:
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x):
            return {k: _encode(v) for k, v in x.items()}
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store {type(x).__name__} in the parser cache")


def _decode(d: dict) -> Any:
    if len(d) == 1 and "__dict__" in d:
        return {k: v for k, v in d["__dict__"]}
    if len(d) == 1 and "__tuple__" in d:
        return tuple(d["__tuple__"])
    return d


def load_parser(grammar: str, build: Callable[[], Lark], **runtime_options: Any) -> Lark:
    """The parser for ``grammar``: from the disk cache, or ``build()`` and store it.

    ``runtime_options`` (the postlexer) are objects that cannot be stored; they are
    passed again when loading.
    """
    directory = cache_dir()
    digest = hashlib.sha256((grammar + lark.__version__).encode()).hexdigest()[:24]
    path = directory / f"lark-{digest}.json" if directory else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(), object_hook=_decode)
            return Lark.__new__(Lark)._load(data, **runtime_options)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
            pass
    parser = build()
    if path is not None:
        data, memo = parser.memo_serialize([TerminalDef, Rule])
        for name in runtime_options:
            data["options"][name] = None
        try:
            text = json.dumps(_encode({"data": data, "memo": memo}))
        except TypeError:
            return parser  # a Lark version whose tables are not plain data: no cache
        write_atomically(path, text)
    return parser
