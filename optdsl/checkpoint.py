"""Checkpoints: an optimizer, its schedule, params and loss scaler in one safetensors file.

    optdsl.save("run.safetensors", optimizer=opt, scheduler=sched, params=params)
    report = optdsl.load("run.safetensors", optimizer=opt, scheduler=sched, params=params)

The arrays (optimizer state, param values) are the file's tensors; the structure is one
JSON document in the safetensors metadata, next to its sha256. Nothing is pickled, and
nothing read from a file is ever executed. ``docs/checkpoints.md`` describes the format
field by field.

:func:`save` writes atomically: a temp file in the same directory, flushed and fsynced,
renamed onto the path, and the directory fsynced. :func:`load` reads and verifies the
whole file, checks that it fits every object it is loaded into, and only then changes
anything (see :func:`load` for the order and the rollback).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import __version__, arrays
from .errors import (
    CheckpointChecksumError,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointVersionError,
    StateDictError,
)

FORMAT = "optdsl-checkpoint"
FORMAT_VERSION = 1
# The two metadata keys. They are the envelope every format version keeps, so that a
# damaged file is reported as damaged, not as "written by a newer optdsl".
DOC_KEY = "optdsl.checkpoint"
DOC_SHA256_KEY = "optdsl.checkpoint.sha256"

# NumPy dtype name -> safetensors dtype code (safetensors.numpy reads no BF16: see _dtype).
_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
          "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
          "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8"}
_NAMES = {code: name for name, code in _CODES.items()}

# Temp files are ".<name>.<host>-<pid>-<random>.tmp" next to the checkpoint: hidden, and
# not ending in the checkpoint's own suffix, so no glob for checkpoints picks one up.
_TMP_SUFFIX = ".tmp"
_WRITE_CHUNK = 1 << 24

_BY = ("auto", "name", "position")


# --- what load reports ---------------------------------------------------------------------

@dataclass(frozen=True)
class Remap:
    """How saved params were matched to live ones: ``by`` "name" or "position"; the
    labels (names, or ``#i`` for the i-th param when unnamed) of params ``matched`` in
    both, ``added`` (live only) and ``dropped`` (in the file only)."""

    by: str
    matched: tuple[str, ...]
    added: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load` did.

    ``by``, ``matched``, ``added``, ``dropped``: the optimizer's params, as in
    :class:`Remap` (``by`` is None without an optimizer). Added params have no state: they
    start fresh at their next step. ``groups``: for each live param group, the saved group
    whose hypers it took, or None where it kept its own. ``params``: the same for
    ``params=`` (None without). ``extra``: what ``save(extra=...)`` stored."""

    by: str | None
    matched: tuple[str, ...]
    added: tuple[str, ...]
    dropped: tuple[str, ...]
    groups: tuple[int | None, ...]
    params: Remap | None
    extra: Any
    format_version: int
    optdsl_version: str


# --- plain data as standard JSON -----------------------------------------------------------

def _encode(value: Any, where: str) -> Any:
    """Plain data as standard JSON. Non-finite floats become {"$float": "inf"}, tuples
    {"$tuple": [...]}, and dicts whose keys are not all strings, or that use a key starting
    with "$", {"$dict": [[key, value], ...]}, so that everything comes back as it was."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if number - number == 0:  # finite
            return number
        return {"$float": "nan" if number != number else ("inf" if number > 0 else "-inf")}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"$dict": [[_encode(k, f"{where} key {k!r}"), _encode(v, f"{where}[{k!r}]")]
                          for k, v in value.items()]}
    raise CheckpointError(f"optdsl.save: {where} holds a {type(value).__name__}; a checkpoint "
                          "stores plain data only (None, bool, int, float, str, and lists, "
                          "tuples and dicts of them), never pickles")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, inner), = value.items()
        if key == "$float" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if key == "$tuple" and isinstance(inner, list):
            return tuple(_decode(v) for v in inner)
        if key == "$dict" and isinstance(inner, list) and all(
                isinstance(kv, list) and len(kv) == 2 for kv in inner):
            try:
                return {_decode(k): _decode(v) for k, v in inner}
            except TypeError:  # an unhashable key
                pass
    if any(k.startswith("$") for k in value):
        raise _Malformed(f"unknown tagged value {json.dumps(value)[:80]}")
    return {k: _decode(v) for k, v in value.items()}


def _no_constants(token: str) -> Any:
    raise _Malformed(f"non-standard JSON token {token}")


class _Malformed(Exception):
    """A document that passed its checksum but does not have the documented structure."""


# --- the file ------------------------------------------------------------------------------

def _safetensors():
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise ImportError("optdsl.save and optdsl.load need the safetensors package: pip "
                          "install 'optdsl[checkpoint]'") from None
    return safetensors


def _dtype(code: str) -> np.dtype:
    if code == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError("this checkpoint holds bfloat16 arrays, which need the "
                                  "ml_dtypes package: pip install ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_NAMES[code])


def _host_array(value: Any, where: str) -> np.ndarray:
    """A C-contiguous little-endian NumPy copy or view of ``value``, of a storable dtype."""
    if not arrays.is_array(value):
        raise CheckpointError(f"optdsl.save: {where} is a {type(value).__name__}, not an "
                              "array")
    arr = arrays.to_numpy(value)
    if np.dtype(arr.dtype).name not in _CODES:
        raise CheckpointError(f"optdsl.save: {where} has dtype {arr.dtype}, which a "
                              f"checkpoint cannot store (it stores {', '.join(_CODES)})")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # safetensors.numpy writes the bytes at the array's address: a strided view would
    # write the wrong ones.
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def _arrays_sha256(items: Iterable[tuple[str, str, list[int], Any]]) -> str:
    """sha256 over every tensor in name order: a JSON line [name, code, shape, nbytes]
    then the raw little-endian bytes (docs/checkpoints.md, "Checksums")."""
    h = hashlib.sha256()
    for name, code, shape, data in sorted(items, key=lambda item: item[0]):
        view = memoryview(data).cast("B")
        line = json.dumps([name, code, list(shape), view.nbytes], separators=(",", ":"))
        h.update(line.encode() + b"\n")
        h.update(view)
    return h.hexdigest()


def _bytes_of(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))


@dataclass
class _Checkpoint:
    """A verified file: the decoded document and its tensors as NumPy arrays."""

    path: str
    doc: dict
    tensors: dict[str, np.ndarray]


def _corrupt(path: str, problem: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"{path}: {problem}; this file cannot be loaded: use "
                                  "another checkpoint (an earlier one, or a backup)")


def _read(path: Any) -> _Checkpoint:
    """Read the whole file once and verify it: envelope, document checksum, format
    version, safetensors structure, array checksum. Raises a CheckpointError subclass."""
    st = _safetensors()
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise _corrupt(name, f"truncated: {len(data)} bytes, not even a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise _corrupt(name, f"truncated or damaged: its header claims {n} bytes, the file "
                             f"has {len(data)}")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(name, "damaged: its safetensors header is not valid JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or DOC_KEY not in meta:
        raise _corrupt(name, f"not an optdsl checkpoint (no {DOC_KEY!r} entry in its "
                             "safetensors metadata): written by another program, or damaged")
    text, digest = meta[DOC_KEY], meta.get(DOC_SHA256_KEY)
    if not isinstance(text, str) or not isinstance(digest, str):
        raise _corrupt(name, "damaged: its metadata entries are not strings")
    end = 0
    for key, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if key != "__metadata__":
            if not (isinstance(offsets, list) and len(offsets) == 2
                    and all(isinstance(o, int) for o in offsets)):
                raise _corrupt(name, f"damaged: tensor {key!r} has no valid data_offsets")
            end = max(end, offsets[1])
    if len(data) - 8 - n < end:
        raise _corrupt(name, f"truncated: its tensors need {end} bytes of data, the file has "
                             f"{len(data) - 8 - n}")
    if hashlib.sha256(text.encode()).hexdigest() != digest:
        raise CheckpointChecksumError(
            f"{name}: checksum mismatch in the metadata (the JSON document in the header "
            "does not match its sha256): the file is damaged; use another checkpoint")
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except (ValueError, _Malformed) as exc:
        raise _corrupt(name, f"malformed metadata ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _corrupt(name, f"not an optdsl checkpoint (its document's format is not "
                             f"{FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _corrupt(name, f"malformed metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{name}: written in checkpoint format {version} (by optdsl "
            f"{doc.get('optdsl_version')}), but this optdsl {__version__} reads format "
            f"{FORMAT_VERSION} and older; upgrade optdsl to load it")
    try:
        views = st.deserialize(data)
    except st.SafetensorError as exc:
        raise _corrupt(name, f"damaged: {exc}") from None
    if _arrays_sha256((k, v["dtype"], v["shape"], v["data"]) for k, v in views) \
            != doc.get("arrays_sha256"):
        raise CheckpointChecksumError(
            f"{name}: checksum mismatch in the array data (the tensors do not match the "
            "sha256 in the metadata): the file is damaged; use another checkpoint")
    tensors = {}
    for key, v in views:
        if v["dtype"] not in _NAMES:
            raise _corrupt(name, f"tensor {key!r} has dtype {v['dtype']}, which optdsl "
                                 "never writes")
        tensors[key] = np.frombuffer(v["data"], _dtype(v["dtype"])).reshape(v["shape"])
    try:
        doc = _decode(doc)
        _check_structure(doc, tensors)
    except _Malformed as exc:
        raise _corrupt(name, f"malformed metadata ({exc})") from None
    return _Checkpoint(name, doc, tensors)


def _check_structure(doc: dict, tensors: dict[str, np.ndarray]) -> None:
    """The document has the documented shape and names only tensors the file holds (its
    checksum passed, so this fails only for files optdsl did not write)."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise _Malformed(what)

    def entry_ok(e: Any) -> bool:
        return (isinstance(e, dict) and (e.get("name") is None or isinstance(e["name"], str))
                and isinstance(e.get("shape"), list)
                and all(isinstance(d, int) for d in e["shape"])
                and isinstance(e.get("dtype"), str))

    referenced = []
    opt = doc.get("optimizer")
    if opt is not None:
        need(isinstance(opt, dict) and isinstance(opt.get("class"), str)
             and isinstance(opt.get("params"), list)
             and isinstance(opt.get("param_groups"), list), "optimizer section")
        count = len(opt["params"])
        ids = []
        for g in opt["param_groups"]:
            need(isinstance(g, dict) and isinstance(g.get("hypers"), dict)
                 and isinstance(g.get("extra"), dict) and isinstance(g.get("params"), list)
                 and all(isinstance(i, int) and 0 <= i < count for i in g["params"]),
                 "param group")
            ids += g["params"]
        need(sorted(ids) == list(range(count)), "param groups do not list every param once")
        for e in opt["params"]:
            need(entry_ok(e) and isinstance(e.get("state"), dict)
                 and (e.get("step") is None or isinstance(e["step"], int)), "optimizer param")
            referenced += e["state"].values()
    params = doc.get("params")
    if params is not None:
        need(isinstance(params, list), "params section")
        for e in params:
            need(entry_ok(e) and isinstance(e.get("tensor"), str), "param entry")
            referenced.append(e["tensor"])
    need(doc.get("sharding") is None or isinstance(doc["sharding"], dict),
         "sharding section")
    for key in ("scheduler", "scaler"):
        part = doc.get(key)
        need(part is None or (isinstance(part, dict) and isinstance(part.get("class"), str)
                              and "state" in part), f"{key} section")
    need(all(isinstance(t, str) and t in tensors for t in referenced),
         "names a tensor the file does not hold")
    need(len(set(referenced)) == len(tensors), "holds tensors its metadata does not name")


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a new temp file next to ``path``, fsync it, rename it onto
    ``path`` and fsync the directory: ``path`` holds the old file or the new one, whole."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_leftovers(directory, base)
    tmp = os.path.join(directory, f".{base}.{_host_tag()}-{os.getpid()}-"
                                  f"{secrets.token_hex(4)}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            view = memoryview(data)
            for start in range(0, len(view), _WRITE_CHUNK):
                f.write(view[start:start + _WRITE_CHUNK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if os.name != "nt":  # Windows cannot open a directory to fsync it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        except OSError:  # some filesystems refuse to fsync a directory; the rename stands
            pass
        finally:
            os.close(dir_fd)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _remove_leftovers(directory: str, base: str) -> None:
    """Delete temp files of earlier saves to the same path whose writer, a process on
    this machine, no longer runs (it was killed mid-save). Temp files of live writers, and
    of other machines sharing the directory, are left alone."""
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return
    prefix, host = f".{base}.", _host_tag()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        parts = name[len(prefix):-len(_TMP_SUFFIX)].split("-")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():
            continue  # another thread of ours may be writing it
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except OSError:  # e.g. no permission to signal it: it exists
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


# --- save ----------------------------------------------------------------------------------

def save(path: str | os.PathLike, *, optimizer: Any = None, scheduler: Any = None,
         params: Iterable[Any] | Mapping[str, Any] | None = None, scaler: Any = None,
         extra: Any = None) -> None:
    """Write a checkpoint to ``path`` atomically: the file there afterwards is this
    checkpoint, whole; if the process dies first, it is the old file, untouched.

    ``optimizer``: an optdsl optimizer (state, step counts, param groups' hypers).
    ``scheduler``: any schedule of :mod:`optdsl.schedules`. ``params``: params whose
    values to store, a list (named by their ``.name``) or a dict of names to params or
    arrays. ``scaler``: any object with ``state_dict()``/``load_state_dict()`` of plain
    data (a loss scaler). ``extra``: plain data of your own (epoch, data-loader position),
    returned by :func:`load` as ``report.extra``.
    """
    _save(path, optimizer=optimizer, scheduler=scheduler, params=params, scaler=scaler,
          extra=extra)


def _save(path: str | os.PathLike, *, optimizer: Any = None, scheduler: Any = None,
          params: Any = None, scaler: Any = None, extra: Any = None,
          state_dict: dict | None = None, sharding: dict | None = None) -> None:
    """:func:`save`, and what optdsl.distributed.ShardedOptimizer adds: ``state_dict``, the
    optimizer's state to write instead of its own (a consolidated one), and ``sharding``,
    the document's "sharding" section (docs/checkpoints.md, "Sharded checkpoints")."""
    st = _safetensors()
    tensors: dict[str, np.ndarray] = {}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optdsl_version": __version__,
        "optimizer": None if optimizer is None else _optimizer_section(optimizer, tensors,
                                                                       state_dict),
        "scheduler": None if scheduler is None else _stateful_section(scheduler,
                                                                      "scheduler"),
        "params": None if params is None else _params_section(params, tensors),
        "scaler": None if scaler is None else _stateful_section(scaler, "scaler"),
        "extra": _encode(extra, "extra"),
    }
    if sharding is not None:
        doc["sharding"] = _encode(sharding, "sharding")
    doc["arrays_sha256"] = _arrays_sha256(
        (k, _CODES[np.dtype(a.dtype).name], a.shape, _bytes_of(a)) for k, a in tensors.items())
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    metadata = {DOC_KEY: text, DOC_SHA256_KEY: hashlib.sha256(text.encode()).hexdigest()}
    _write_atomic(os.fspath(path), st.numpy.save(tensors, metadata=metadata))


def _param_name(p: Any) -> str | None:
    name = getattr(p, "name", None)
    return None if name is None or name == "" else str(name)


def _shape_dtype(arr: Any) -> tuple[list[int], str]:
    return [int(d) for d in np.shape(arr)], np.dtype(arr.dtype).name


def _optimizer_section(opt: Any, tensors: dict[str, np.ndarray], sd: dict | None) -> dict:
    spec = getattr(type(opt), "_spec", None)
    if spec is None or not hasattr(opt, "param_groups"):
        hint = ("; a ShardedOptimizer saves itself: sharded.save(path), on every rank"
                if hasattr(opt, "inner") and hasattr(opt, "comm") else "")
        raise TypeError(f"optdsl.save: optimizer= takes an optdsl optimizer, got "
                        f"{type(opt).__name__}{hint}")
    if sd is None:
        sd = opt.state_dict()
    live = [p for g in opt.param_groups for p in g["params"]]
    groups = []
    for gi, group in enumerate(sd["param_groups"]):
        where = f"param group {gi}"
        groups.append({
            "hypers": _encode({k: group[k] for k in spec.hypers if k in group}, where),
            "extra": _encode({k: v for k, v in group.items()
                              if k not in spec.hypers and k != "params"}, where),
            "params": [int(i) for i in group["params"]],
        })
    entries = []
    for i, p in enumerate(live):
        shape, dtype = _shape_dtype(p.data)
        saved = sd["state"].get(i, {})
        step = saved.get("step")
        entry = {"name": _param_name(p), "shape": shape, "dtype": dtype,
                 "step": None if step is None else int(step), "state": {}}
        for key, value in saved.items():
            if key == "step" or value is None:
                continue
            tensor = f"optimizer.state.{i}.{key}"
            tensors[tensor] = _host_array(value, f"state {key!r} of param "
                                                 f"{_label(entry['name'], i)}")
            entry["state"][key] = tensor
        entries.append(entry)
    return {"class": type(opt).__name__, "spec_hash": spec.spec_hash,
            "param_groups": groups, "params": entries}


def _stateful_section(obj: Any, what: str) -> dict:
    if not callable(getattr(obj, "state_dict", None)) \
            or not callable(getattr(obj, "load_state_dict", None)):
        raise TypeError(f"optdsl.save: {what}= takes an object with state_dict() and "
                        f"load_state_dict(), got {type(obj).__name__}")
    return {"class": type(obj).__name__, "state": _encode(obj.state_dict(), what)}


def _targets(params: Any, what: str) -> list[tuple[str | None, Any]]:
    """(name, array) for ``params``: a dict of names to params or arrays, or an ordered
    collection of params (named by their ``.name``)."""
    if isinstance(params, Mapping):
        items = [(str(k), v) for k, v in params.items()]
    elif isinstance(params, (set, frozenset)):
        raise TypeError(f"{what}: params must be ordered (a list or a dict), not a set")
    else:
        items = [(_param_name(p), p) for p in params]
    out = []
    for name, p in items:
        data = p if arrays.is_array(p) else getattr(p, "data", None)
        if not arrays.is_array(data):
            raise TypeError(f"{what}: params must be parameters (with an array .data) or "
                            f"arrays, got {type(p).__name__}")
        out.append((name, data))
    return out


def _params_section(params: Any, tensors: dict[str, np.ndarray]) -> list[dict]:
    entries = []
    for i, (name, data) in enumerate(_targets(params, "optdsl.save")):
        shape, dtype = _shape_dtype(data)
        tensor = f"params.{i}"
        tensors[tensor] = _host_array(data, f"param {_label(name, i)}")
        entries.append({"name": name, "shape": shape, "dtype": dtype, "tensor": tensor})
    return entries


# --- load ----------------------------------------------------------------------------------

def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """The verified, decoded metadata document of a checkpoint (tensors not included).
    Raises as :func:`load` does for a damaged or newer file."""
    return _read(path).doc


def load(path: str | os.PathLike, *, optimizer: Any = None, scheduler: Any = None,
         params: Iterable[Any] | Mapping[str, Any] | None = None, scaler: Any = None,
         strict: bool = True, by: str = "auto",
         allow_spec_mismatch: bool = False) -> LoadReport:
    """Load a checkpoint into the objects given (each optional), all or nothing.

    First the whole file is read and verified (checksums, format version), and every
    part is checked against its live object: the optimizer's class and spec, params
    matched by name or position with their shapes and dtypes, the schedule's class and
    state, the scaler's class. Only then does anything change, in this order: the scaler
    and the schedule (each snapshotted first), the optimizer (its own load_state_dict,
    which validates before it swaps), then the params' values in place. If a step fails,
    the ones before it are rolled back, so a failed load leaves everything as it was.

    ``by``: "auto" matches params by name when every param, in the file and here, has a
    name, and by position when either side has none; "name" or "position" force one.
    ``strict``: by default a param in the file but not here is an error (its state would be
    lost); ``strict=False`` drops it. By name, optimizer params not in the file are added
    with fresh state; for ``params=`` they are an error unless ``strict=False``. By
    position, counts and every shape must agree. ``allow_spec_mismatch``: load the state
    of another optimizer class, or of an edited spec, anyway (its state names must exist
    here). Hypers: see docs/checkpoints.md, "Remapping".
    """
    where = f"optdsl.load({os.fspath(path)!r})"
    if by not in _BY:
        raise ValueError(f"{where}: by must be one of {', '.join(map(repr, _BY))}, got {by!r}")
    ckpt = _read(path)
    # Check every part before changing anything.
    opt_plan = None
    if optimizer is not None:
        opt_plan = _plan_optimizer(ckpt, optimizer, where, by, strict, allow_spec_mismatch)
    return _load_planned(ckpt, where, optimizer, opt_plan, scheduler=scheduler,
                         params=params, scaler=scaler, by=by, strict=strict)


def _load_planned(ckpt: _Checkpoint, where: str, optimizer: Any,
                  opt_plan: _OptimizerPlan | None, *, scheduler: Any, params: Any,
                  scaler: Any, by: str, strict: bool) -> LoadReport:
    """:func:`load` once the optimizer's part is planned (``optimizer.load_state_dict``
    will take ``opt_plan.state_dict``): check the other parts, then apply them all."""
    stateful = []  # applied in this order: the scaler (unvalidated), then the schedule
    if scaler is not None:
        stateful.append(("scaler", scaler, _plan_stateful(ckpt, "scaler", scaler, where)))
    if scheduler is not None:
        stateful.append(("scheduler", scheduler,
                         _plan_scheduler(ckpt, scheduler, opt_plan, where)))
    params_plan = None
    if params is not None:
        params_plan = _plan_params(ckpt, params, where, by, strict)
    _apply(where, optimizer, opt_plan, stateful, params_plan)
    doc = ckpt.doc
    remap = opt_plan.remap if opt_plan is not None else None
    return LoadReport(
        by=remap.by if remap else None,
        matched=remap.matched if remap else (), added=remap.added if remap else (),
        dropped=remap.dropped if remap else (),
        groups=tuple(opt_plan.groups) if opt_plan is not None else (),
        params=params_plan.remap if params_plan is not None else None,
        extra=doc.get("extra"), format_version=doc["format_version"],
        optdsl_version=str(doc.get("optdsl_version")))


def _apply(where, optimizer, opt_plan, stateful, params_plan) -> None:
    undo = []
    try:
        for what, obj, state in stateful:
            snapshot = copy.deepcopy(obj.state_dict())
            try:
                obj.load_state_dict(state)
            except Exception as exc:
                raise CheckpointMismatchError(f"{where}: {type(obj).__name__}.load_state_dict "
                                              f"rejected the saved {what} state: {exc}") from exc
            undo.append((obj, snapshot))
        if opt_plan is not None:
            try:
                optimizer.load_state_dict(opt_plan.state_dict)
            except StateDictError as exc:
                raise CheckpointMismatchError(f"{where}: {exc}") from None
    except BaseException:
        for obj, snapshot in reversed(undo):
            obj.load_state_dict(snapshot)
        raise
    # Last, as nothing can fail now: same shapes and dtypes, writable, staged on the device.
    for target, staged in params_plan.copies if params_plan is not None else ():
        arrays.copy_into(target, staged)


def _label(name: str | None, index: int) -> str:
    """How messages name a param: its name quoted, or ``#i`` (its position)."""
    return repr(name) if name else f"#{index}"


def _tag(name: str | None, index: int) -> str:
    """How reports name a param: its name, or ``#i`` (its position)."""
    return name if name else f"#{index}"


@dataclass
class _Match:
    remap: Remap
    pairs: list[tuple[int, int]]  # (live index, saved index)


def _match(where: str, what: str, saved: list[dict], live: list[tuple[str | None, Any]],
           by: str, strict: bool, missing_ok: bool) -> _Match:
    """Pair saved params with live ones by name or position (see :func:`load`), checking
    shapes and dtypes of every pair."""
    saved_names = [e["name"] for e in saved]
    live_names = [name for name, _ in live]
    if by == "auto":
        if all(saved_names) and all(live_names):
            by = "name"
        elif not any(saved_names) or not any(live_names):
            by = "position"
        else:
            side, names = (("checkpoint", saved_names) if not all(saved_names)
                           else ("live", live_names))
            unnamed = [f"#{i}" for i, n in enumerate(names) if not n]
            raise CheckpointMismatchError(
                f"{where}: some {what}s are named and some are not (unnamed {side} "
                f"{what}s: {', '.join(unnamed[:5])}); give every param a name "
                "(Param(..., name=...)) to load by name, or pass by='position'")
    if by == "position":
        if len(saved) != len(live):
            raise CheckpointMismatchError(
                f"{where}: the checkpoint has {len(saved)} {what}s, here there are "
                f"{len(live)}; loading by position needs the same params in the same order: "
                "give the params names to load by name")
        pairs = list(zip(range(len(live)), range(len(saved)), strict=True))
        labels = [_tag(live_names[i], i) for i in range(len(live))]
        remap = Remap("position", tuple(labels), (), ())
    else:
        for side, names in (("checkpoint", saved_names), ("live", live_names)):
            if not all(names):
                raise CheckpointMismatchError(
                    f"{where}: by='name' needs every {what} named, but {side} {what} "
                    f"#{names.index(next(n for n in names if not n))} has no name")
            dup = sorted(n for n, c in Counter(names).items() if c > 1)
            if dup:
                raise CheckpointMismatchError(
                    f"{where}: several {side} {what}s are named {dup[0]!r}; names must be "
                    "unique to load by name (or pass by='position')")
        index = {n: j for j, n in enumerate(saved_names)}
        pairs = [(i, index[n]) for i, n in enumerate(live_names) if n in index]
        added = [n for n in live_names if n not in index]
        here = set(live_names)
        dropped = [n for n in saved_names if n not in here]
        if dropped and strict:
            raise CheckpointMismatchError(
                f"{where}: the checkpoint holds {what}s that are not here: "
                f"{', '.join(map(repr, dropped[:5]))}{' ...' if len(dropped) > 5 else ''}; "
                "pass strict=False to drop them")
        if added and not missing_ok and strict:
            raise CheckpointMismatchError(
                f"{where}: {what}s not in the checkpoint: "
                f"{', '.join(map(repr, added[:5]))}{' ...' if len(added) > 5 else ''}; pass "
                "strict=False to leave them as they are")
        remap = Remap("name", tuple(live_names[i] for i, _ in pairs), tuple(added),
                      tuple(dropped))
    for i, j in pairs:
        entry, array = saved[j], live[i][1]
        shape, dtype = _shape_dtype(array)
        label = _label(live_names[i], i)
        if entry["shape"] != shape:
            fix = ("the model changed since the save: give a changed param a new name so "
                   "that it starts fresh" if by == "name" else "loading by position needs "
                   "the same shapes in the same order: name the params to load by name")
            raise CheckpointMismatchError(
                f"{where}: {what} {label} has shape {tuple(entry['shape'])} in the checkpoint "
                f"but {tuple(shape)} here; {fix}")
        if entry["dtype"] != dtype:
            raise CheckpointMismatchError(
                f"{where}: {what} {label} has dtype {entry['dtype']} in the checkpoint but "
                f"{dtype} here; build the param with dtype {entry['dtype']} to resume")
    return _Match(remap, pairs)


@dataclass
class _OptimizerPlan:
    remap: Remap
    groups: list[int | None]
    state_dict: dict


def _plan_optimizer(ckpt: _Checkpoint, opt: Any, where: str, by: str, strict: bool,
                    allow_spec_mismatch: bool) -> _OptimizerPlan:
    spec = getattr(type(opt), "_spec", None)
    if spec is None or not hasattr(opt, "param_groups"):
        raise TypeError(f"{where}: optimizer= takes an optdsl optimizer, got "
                        f"{type(opt).__name__}")
    section = ckpt.doc.get("optimizer")
    cls = type(opt).__name__
    sharding = ckpt.doc.get("sharding")
    if section is None and isinstance(sharding, dict) and sharding.get("role") == "index":
        raise CheckpointMismatchError(
            f"{where}: this is the index of a sharded checkpoint: the optimizer state is in "
            "its shard files. Load it with ShardedOptimizer.load on any number of ranks, or "
            "into this optimizer with "
            "opt.load_state_dict(optdsl.distributed.consolidated_state_dict(path))")
    if section is None:
        raise CheckpointMismatchError(f"{where}: the checkpoint holds no optimizer state; "
                                      "load it without optimizer=")
    if section["class"] != cls and not allow_spec_mismatch:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint holds the state of optimizer class {section['class']}, "
            f"not {cls}; to resume, build an optimizer of class {section['class']}, or pass "
            f"allow_spec_mismatch=True to load its state into the {cls} anyway")
    if section.get("spec_hash") != spec.spec_hash and not allow_spec_mismatch:
        raise CheckpointMismatchError(
            f"{where}: {cls}'s spec changed since the checkpoint was written (spec sha256 "
            f"{str(section.get('spec_hash'))[:12]}... in the file, {spec.spec_hash[:12]}... "
            "here), so its update rule may differ; pass allow_spec_mismatch=True to load "
            "the state anyway")
    saved = section["params"]
    live_params = [p for g in opt.param_groups for p in g["params"]]
    live_group = [gi for gi, g in enumerate(opt.param_groups) for _ in g["params"]]
    saved_group = [0] * len(saved)
    for gi, g in enumerate(section["param_groups"]):
        for j in g["params"]:
            saved_group[j] = gi
    match = _match(where, "param", saved, [(_param_name(p), p.data) for p in live_params],
                   by, strict, missing_ok=True)
    states = {s.name for s in (*spec.spec.states, *spec.spec.scalars, *spec.spec.factored)}
    state: dict[int, dict[str, Any]] = {}
    for i, j in match.pairs:
        entry = saved[j]
        unknown = sorted(set(entry["state"]) - states)
        if unknown:
            raise CheckpointMismatchError(
                f"{where}: param {_label(entry['name'], i)} has state {unknown[0]!r}, which "
                f"{cls} does not keep (it keeps {', '.join(sorted(states)) or 'none'})")
        if entry["step"] is not None:
            state[i] = {"step": entry["step"],
                        **{k: ckpt.tensors[t] for k, t in entry["state"].items()}}
    groups = _corresponding_groups(match.pairs, live_group, saved_group,
                                   len(opt.param_groups))
    saved_groups = section["param_groups"]
    new_groups, next_id = [], 0
    for gi, group in enumerate(opt.param_groups):
        current = {k: v for k, v in group.items() if k != "params"}
        source = groups[gi]
        if source is None:
            packed = current
        else:
            # As torch: the saved group replaces the live one (its extra keys too); hypers
            # the saved group lacks (another spec) keep their current values.
            saved_hypers = saved_groups[source]["hypers"]
            packed = {**{k: current[k] for k in spec.hypers if k in current},
                      **{k: v for k, v in saved_hypers.items() if k in spec.hypers},
                      **saved_groups[source]["extra"]}
        packed["params"] = list(range(next_id, next_id + len(group["params"])))
        next_id += len(group["params"])
        new_groups.append(packed)
    return _OptimizerPlan(match.remap, groups, {"state": state, "param_groups": new_groups})


def _corresponding_groups(pairs, live_group, saved_group, n_live) -> list[int | None]:
    """For each live group, the saved group it corresponds to one to one: all its matched
    params come from that saved group, and no other live group's do. None otherwise (a
    split, a merge, or a group of new params)."""
    sources: list[set[int]] = [set() for _ in range(n_live)]
    for i, j in pairs:
        sources[live_group[i]].add(saved_group[j])
    users = Counter(k for s in sources for k in s)
    return [next(iter(s)) if len(s) == 1 and users[next(iter(s))] == 1 else None
            for s in sources]


def _plan_stateful(ckpt: _Checkpoint, what: str, obj: Any, where: str) -> Any:
    section = ckpt.doc.get(what)
    if section is None:
        raise CheckpointMismatchError(f"{where}: the checkpoint holds no {what} state; load "
                                      f"it without {what}=")
    if section["class"] != type(obj).__name__:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint holds the state of {what} class {section['class']}, "
            f"not {type(obj).__name__}; build the same {what} as the saved run")
    if not callable(getattr(obj, "load_state_dict", None)):
        raise TypeError(f"{where}: {what}= takes an object with load_state_dict(), got "
                        f"{type(obj).__name__}")
    return section["state"]


def _plan_scheduler(ckpt: _Checkpoint, scheduler: Any, opt_plan: _OptimizerPlan | None,
                    where: str) -> Any:
    state = _plan_stateful(ckpt, "scheduler", scheduler, where)
    if opt_plan is not None and ckpt.doc.get("optimizer") is not None:
        saved_count = len(ckpt.doc["optimizer"]["param_groups"])
        if opt_plan.groups != list(range(saved_count)):
            raise CheckpointMismatchError(
                f"{where}: the schedule's state is kept per param group, and the param "
                "groups changed since the save; build a new schedule instead of loading its "
                "state (load without scheduler=)")
    # A schedule of optdsl.schedules validates without changing anything; another kind is
    # rolled back if its load_state_dict fails after the scaler's has run.
    parse = getattr(scheduler, "_parse_state", None)
    if parse is not None:
        try:
            parse(state)
        except StateDictError as exc:
            raise CheckpointMismatchError(f"{where}: {exc}") from None
    return state


@dataclass
class _ParamsPlan:
    remap: Remap
    copies: list[tuple[Any, Any]]  # (live array, values staged where it lives)


def _plan_params(ckpt: _Checkpoint, params: Any, where: str, by: str,
                 strict: bool) -> _ParamsPlan:
    saved = ckpt.doc.get("params")
    if saved is None:
        raise CheckpointMismatchError(f"{where}: the checkpoint holds no param values; load it "
                                      "without params=")
    live = _targets(params, where)
    match = _match(where, "param value", saved, live, by, strict, missing_ok=False)
    copies = []
    for i, j in match.pairs:
        target = live[i][1]
        values = ckpt.tensors[saved[j]["tensor"]]
        if arrays.is_cupy(target):  # copy to its GPU now: the final copies allocate nothing
            staged = arrays.copy(target)
            arrays.copy_into(staged, values)
        else:
            if not target.flags.writeable:
                raise CheckpointMismatchError(f"{where}: param {_label(live[i][0], i)} is a "
                                              "read-only array; give a writable one")
            staged = values
        copies.append((target, staged))
    return _ParamsPlan(match.remap, copies)
