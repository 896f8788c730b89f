"""Saving and loading a :class:`optdsl.distributed.ShardedOptimizer`'s state.

Two forms (docs/checkpoints.md, "Sharded checkpoints"):

- **consolidated**: the shards are gathered on rank 0, which writes one ordinary optdsl
  checkpoint, as the unsharded optimizer would have: ``optdsl.load`` reads it into a plain
  optimizer, and ``ShardedOptimizer.load`` into any number of ranks;
- **sharded**: every rank writes its own shard file (an ordinary checkpoint of the shard
  optimizer, ``sharded.inner``), then rank 0 writes the index at ``path``: the schedule,
  params and extra data, and a "sharding" section naming the shard files and the layout
  they split. Shard file names carry a random token of their save, and the index is
  written last, atomically: a save that dies midway leaves the previous checkpoint whole.

Loading with another number of ranks reads, for each rank, only the saved shards that
overlap its new shard. Every collective here is buffer-based (no pickle), and the ranks
agree on success after each phase, so an error on one rank is an error on all, not a hang.
"""

from __future__ import annotations

import copy
import os
import secrets
from typing import Any

import numpy as np

from . import arrays
from . import checkpoint as ck
from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    StateDictError,
)
from .runtime import _convert_entry, _validate_layout

_TOKEN_BYTES = 8


# --- in memory -----------------------------------------------------------------------------

def consolidate(sh: Any, root: int | None) -> dict | None:
    """The unsharded optimizer's state_dict, gathered from every rank's shard: on every
    rank (``root`` None, Allgather) or on rank ``root`` only (Gather; None elsewhere).
    Every rank must call it."""
    comm, here = sh.comm, root is None or sh.rank == root
    state: dict[int, dict[str, Any]] = {}
    groups = []
    inner_of = {gi: k for k, gi in enumerate(sh._group_index)}
    next_id = 0
    for gi, group in enumerate(sh.opt.param_groups):
        params = group["params"]
        ids = list(range(next_id, next_id + len(params)))
        next_id += len(params)
        k = inner_of.get(gi)
        hypers = sh.inner.param_groups[k] if k is not None else group
        groups.append({**copy.deepcopy({key: v for key, v in hypers.items()
                                        if key != "params"}), "params": ids})
        st = sh.inner.state.get(sh._groups[k][3]) if k is not None else None
        if not st:  # never stepped: alike on every rank, which step together
            continue
        for key in sorted(st):
            if key == "step":
                continue
            local = np.ascontiguousarray(arrays.to_numpy(st[key]))
            whole = np.empty(local.size * sh.size, local.dtype) if here else None
            if root is None:
                comm.Allgather(local, whole)
            else:
                comm.Gather(local, whole, root=root)
            if not here:
                continue
            at = 0
            for i, p in zip(ids, params, strict=True):
                entry = state.setdefault(i, {"step": int(st["step"])})
                entry[key] = whole[at:at + p.data.size].reshape(p.data.shape).copy()
                at += p.data.size
    return {"state": state, "param_groups": groups} if here else None


def shard_state(sh: Any, full: Any, name: str) -> dict:
    """The shard optimizer's state_dict for this rank, cut from ``full``, a state_dict of
    the unsharded optimizer (any number of ranks saved it, or none). Validates everything;
    raises StateDictError."""
    groups, state = _validate_layout(name, full, sh.opt.param_groups)
    params = [p for g in sh.opt.param_groups for p in g["params"]]
    saved_ids = [int(i) for g in groups for i in g["params"]]
    by_id = dict(zip(saved_ids, params, strict=True))
    for sid in state:
        if sid not in by_id:
            raise StateDictError(f"{name}: state for param id {sid}, which no param group "
                                 "lists")
    sid_of = {id(p): sid for sid, p in by_id.items()}
    inner_groups, inner_state = [], {}
    for k, gi in enumerate(sh._group_index):
        plist, (_, flat, _, shard) = sh.opt.param_groups[gi]["params"], sh._groups[k]
        inner_groups.append({**{key: v for key, v in groups[gi].items() if key != "params"},
                             "params": [k]})
        entries = [state.get(sid_of[id(p)]) for p in plist]
        if all(e is None for e in entries):
            continue
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            raise StateDictError(
                f"{name}: param group {gi}: param {missing[0]} has no state but others do; "
                "the params of a shard step together, so all or none must have state")
        allowed = {s.name for s in sh.opt._spec.spec.states}
        if sh.inner._has_master(flat.dtype):
            allowed.add("master")
        converted = [_convert_entry(name, sid_of[id(p)], e, p, allowed)
                     for p, e in zip(plist, entries, strict=True)]
        steps = sorted({c["step"] for c in converted})
        keys = sorted({frozenset(c) for c in converted}, key=sorted)
        if len(steps) > 1:
            raise StateDictError(f"{name}: param group {gi}: its params have taken "
                                 f"different numbers of steps ({steps}); the params of a "
                                 "shard step together")
        if len(keys) > 1:
            raise StateDictError(f"{name}: param group {gi}: its params keep different "
                                 f"states ({', '.join(sorted(keys[0] ^ keys[1]))} in some "
                                 "only); the params of a shard keep the same ones")
        entry: dict[str, Any] = {"step": steps[0]}
        for key in sorted(keys[0] - {"step"}):
            pieces, at = [], 0
            for p, c in zip(plist, converted, strict=True):
                pieces.append((at, np.asarray(c[key]).reshape(-1)))
                at += p.data.size
            entry[key] = _cut(sh, shard.data.size, pieces, flat.dtype)
        inner_state[k] = entry
    return {"state": inner_state, "param_groups": inner_groups}


def _cut(sh: Any, per: int, pieces: list[tuple[int, np.ndarray]], dtype: Any) -> np.ndarray:
    """This rank's shard (``per`` elements from ``rank * per``) of a flat buffer given as
    ``(offset, values)`` pieces; where no piece lies (the padding) it is zero, and the
    padding is never seen: its params and gradients are zero and the rules elementwise."""
    lo = sh.rank * per
    out = np.zeros(per, np.result_type(dtype, *(v.dtype for _, v in pieces)))
    for start, values in pieces:
        a, b = max(lo, start), min(lo + per, start + values.size)
        if a < b:
            out[a - lo:b - lo] = values[a - start:b - start]
    return out


# --- files ---------------------------------------------------------------------------------

def shard_path(path: str, token: str, rank: int, world: int) -> str:
    """Where rank ``rank`` of ``world`` writes its shard of the save ``token`` to ``path``:
    beside it, ``run.safetensors`` giving ``run.<token>.rank0-of-2.safetensors``."""
    root, ext = os.path.splitext(path)
    return f"{root}.{token}.rank{rank}-of-{world}{ext}"


def _agree(comm: Any, error: BaseException | None, what: str) -> None:
    """Every rank learns whether every rank succeeded (one Allreduce): a rank that failed
    raises its own error, the others a DistributedError naming the failed ranks."""
    from mpi4py import MPI

    from .distributed import DistributedError

    flags = np.zeros(comm.Get_size(), np.int32)
    flags[comm.Get_rank()] = 0 if error is None else 1
    comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.SUM)
    if error is not None:
        raise error
    failed = np.flatnonzero(flags).tolist()
    if failed:
        ranks = ", ".join(map(str, failed))
        raise DistributedError(f"ShardedOptimizer.{what}: rank{'s' if len(failed) > 1 else ''} "
                               f"{ranks} failed (the error is in that rank's output); "
                               "nothing was changed here")


def _token(comm: Any) -> str:
    """A random token from rank 0, the same on every rank (Bcast of its bytes)."""
    raw = np.frombuffer(secrets.token_hex(_TOKEN_BYTES).encode(), np.uint8).copy()
    comm.Bcast(raw, root=0)
    return raw.tobytes().decode()


def _layout(sh: Any) -> list[dict]:
    """Every param group of the unsharded optimizer as the index records it."""
    inner_of = {gi: k for k, gi in enumerate(sh._group_index)}
    out = []
    for gi, group in enumerate(sh.opt.param_groups):
        k = inner_of.get(gi)
        hypers = sh.inner.param_groups[k] if k is not None else group
        entry = {"hypers": {key: v for key, v in hypers.items() if key != "params"},
                 "params": [{"name": ck._param_name(p),
                             "shape": [int(d) for d in np.shape(p.data)]}
                            for p in group["params"]],
                 "dtype": None, "numel": 0, "padded": 0}
        if k is not None:
            flat = sh._groups[k][1]
            entry.update(dtype=np.dtype(flat.dtype).name, padded=int(flat.size),
                         numel=sum(int(p.data.size) for p in group["params"]))
        out.append(entry)
    return out


def save(sh: Any, path: Any, *, consolidated: bool, scheduler: Any, params: Any,
         scaler: Any, extra: Any) -> None:
    path = os.fspath(path)
    if consolidated:
        full = consolidate(sh, root=0)
        error = None
        if sh.rank == 0:
            try:
                ck._save(path, optimizer=sh.opt, state_dict=full, scheduler=scheduler,
                         params=params, scaler=scaler, extra=extra)
            except Exception as exc:  # noqa: BLE001 - every rank must hear of it
                error = exc
        _agree(sh.comm, error, "save")
        return
    token = _token(sh.comm)
    mine = shard_path(path, token, sh.rank, sh.size)
    error = None
    try:
        ck._save(mine, optimizer=sh.inner, sharding={
            "role": "shard", "token": token, "rank": sh.rank, "world": sh.size})
    except Exception as exc:  # noqa: BLE001
        error = exc
    try:
        _agree(sh.comm, error, "save")
    except BaseException:
        _remove(mine)  # this save's shards are useless without their index
        raise
    error, stale = None, []
    if sh.rank == 0:
        try:
            stale = _old_shards(path)
            files = [os.path.basename(shard_path(path, token, r, sh.size))
                     for r in range(sh.size)]
            ck._save(path, scheduler=scheduler, params=params, scaler=scaler, extra=extra,
                     sharding={"role": "index", "token": token, "world": sh.size,
                               "files": files, "optimizer": type(sh.opt).__name__,
                               "spec_hash": sh.opt._spec.spec_hash, "groups": _layout(sh)})
        except Exception as exc:  # noqa: BLE001
            error = exc
    try:
        _agree(sh.comm, error, "save")
    except BaseException:
        _remove(mine)
        raise
    if sh.rank == 0:  # the new index stands: the old one's shards are garbage now
        for name in stale:
            if name not in files:
                _remove(os.path.join(os.path.dirname(os.path.abspath(path)), name))


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _old_shards(path: str) -> list[str]:
    """The shard files the sharded checkpoint at ``path`` names (none if there is none, or
    it is not sharded, or it cannot be read: it is replaced either way)."""
    if not os.path.exists(path):
        return []
    try:
        index = _index(ck._read(path))
    except (CheckpointError, OSError):
        return []
    return list(index["files"]) if index is not None else []


def _index(ckpt: Any) -> dict | None:
    """The verified "sharding" section of an index file, or None for a consolidated file."""
    section = ckpt.doc.get("sharding")
    if section is None:
        return None
    path = ckpt.path

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise CheckpointCorruptError(f"{path}: malformed sharding section ({what}); "
                                         "this file cannot be loaded")

    need(section.get("role") in ("index", "shard"), "role")
    if section["role"] == "shard":
        raise CheckpointMismatchError(
            f"{path} is one shard of a sharded checkpoint; load its index (the path given "
            "to ShardedOptimizer.save) instead")
    world, files, groups = section.get("world"), section.get("files"), section.get("groups")
    need(isinstance(world, int) and world >= 1, "world")
    need(isinstance(section.get("token"), str), "token")
    need(isinstance(files, list) and len(files) == world and all(
        isinstance(f, str) and f and os.path.basename(f) == f and f not in (".", "..")
        and "/" not in f and "\\" not in f for f in files), "files")
    need(isinstance(groups, list), "groups")
    for g in groups:
        need(isinstance(g, dict) and isinstance(g.get("hypers"), dict)
             and isinstance(g.get("params"), list)
             and all(isinstance(e, dict) and isinstance(e.get("shape"), list)
                     and all(isinstance(d, int) and d >= 0 for d in e["shape"])
                     for e in g["params"])
             and isinstance(g.get("numel"), int) and isinstance(g.get("padded"), int)
             and g["padded"] % world == 0 and 0 <= g["numel"] <= g["padded"]
             and g["numel"] == sum(int(np.prod(e["shape"])) for e in g["params"])
             and (g.get("dtype") is None or isinstance(g["dtype"], str)), "groups")
    return section


def _shard_file(path: str, index: dict, s: int, where: str) -> Any:
    """Saved shard ``s``, read and verified, and checked to belong to this index."""
    name = os.path.join(os.path.dirname(os.path.abspath(path)), index["files"][s])
    try:
        shard = ck._read(name)
    except FileNotFoundError:
        raise CheckpointMismatchError(
            f"{where}: shard file {name} of this sharded checkpoint is missing; every "
            "rank's shard must be readable where the checkpoint is loaded") from None
    mark = shard.doc.get("sharding") or {}
    section = shard.doc.get("optimizer")
    if mark.get("role") != "shard" or mark.get("token") != index["token"] \
            or mark.get("rank") != s or mark.get("world") != index["world"] \
            or section is None:
        raise CheckpointMismatchError(f"{where}: {name} is not shard {s} of this "
                                      "checkpoint's save (another save's file?)")
    return shard


def load(sh: Any, path: Any, *, scheduler: Any, params: Any, scaler: Any, strict: bool,
         by: str, allow_spec_mismatch: bool) -> Any:
    path = os.fspath(path)
    where = f"ShardedOptimizer.load({path!r})"
    if by not in ck._BY:  # the same on every rank: no need to agree
        raise ValueError(f"{where}: by must be one of {', '.join(map(repr, ck._BY))}, got "
                         f"{by!r}")
    plan = ckpt = error = None
    try:  # read and check everything, change nothing
        ckpt = ck._read(path)
        index = _index(ckpt)
        if index is None:
            full = ck._plan_optimizer(ckpt, _synced(sh), where, by, strict,
                                      allow_spec_mismatch)
            try:
                inner = shard_state(sh, full.state_dict, where)
            except StateDictError as exc:
                raise CheckpointMismatchError(str(exc)) from None
            plan = ck._OptimizerPlan(full.remap, full.groups, inner)
        else:
            plan = _plan_sharded(sh, path, ckpt, index, where, allow_spec_mismatch)
    except Exception as exc:  # noqa: BLE001 - every rank must hear of it
        error = exc
    _agree(sh.comm, error, "load")
    snapshot, report, error = sh.inner.state_dict(), None, None
    try:
        report = ck._load_planned(ckpt, where, sh.inner, plan, scheduler=scheduler,
                                  params=params, scaler=scaler, by=by, strict=strict)
    except Exception as exc:  # noqa: BLE001
        error = exc
    try:
        _agree(sh.comm, error, "load")
    except BaseException:
        if error is None:  # applied here, failed elsewhere: put the shard's state back
            sh.inner.load_state_dict(snapshot)
        raise
    return report


def _synced(sh: Any) -> Any:
    """The unsharded optimizer, its groups' hypers brought up to date from the shard
    optimizer's (a schedule changes those), to plan a consolidated load on."""
    for k, gi in enumerate(sh._group_index):
        group = sh.opt.param_groups[gi]
        group.update({key: v for key, v in sh.inner.param_groups[k].items()
                      if key != "params"})
    return sh.opt


def _plan_sharded(sh: Any, path: str, ckpt: Any, index: dict, where: str,
                  allow_spec_mismatch: bool) -> Any:
    cls = type(sh.opt).__name__
    if index.get("optimizer") != cls and not allow_spec_mismatch:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint holds the state of optimizer class "
            f"{index.get('optimizer')}, not {cls}; pass allow_spec_mismatch=True to load "
            "it anyway")
    if index.get("spec_hash") != sh.opt._spec.spec_hash and not allow_spec_mismatch:
        raise CheckpointMismatchError(
            f"{where}: {cls}'s spec changed since the checkpoint was written; pass "
            "allow_spec_mismatch=True to load the state anyway")
    live = _layout(sh)
    saved = index["groups"]
    if len(saved) != len(live):
        raise CheckpointMismatchError(f"{where}: the checkpoint has {len(saved)} param "
                                      f"groups, this optimizer {len(live)}")
    for gi, (a, b) in enumerate(zip(saved, live, strict=True)):
        shapes_a = [tuple(e["shape"]) for e in a["params"]]
        shapes_b = [tuple(e["shape"]) for e in b["params"]]
        if shapes_a != shapes_b or a.get("dtype") != b["dtype"]:
            raise CheckpointMismatchError(
                f"{where}: param group {gi} held params of shapes {shapes_a} "
                f"({a.get('dtype')}) when saved, and holds {shapes_b} ({b['dtype']}) here; "
                "a sharded checkpoint loads into the same params in the same order (save "
                "it consolidated to remap params by name)")
    files: dict[int, Any] = {}
    state, groups = {}, []
    for k, gi in enumerate(sh._group_index):
        group, (_, flat, _, shard) = saved[gi], sh._groups[k]
        groups.append({**group["hypers"], "params": [k]})
        per_old = group["padded"] // index["world"]
        lo, hi = sh.rank * shard.data.size, (sh.rank + 1) * shard.data.size
        # The saved shards overlapping this rank's, and shard 0 always (its step and
        # states tell whether there is state, when this shard is all padding).
        wanted = sorted({0, *(range(lo // per_old, min(index["world"], -(-hi // per_old)))
                               if per_old else ())})
        entries = []
        for s in wanted:
            if s not in files:
                files[s] = _shard_file(path, index, s, where)
            shard_ckpt = files[s]
            section = shard_ckpt.doc["optimizer"]
            if k >= len(section["params"]) \
                    or section["params"][k]["shape"] != [per_old]:
                raise CheckpointMismatchError(f"{where}: {shard_ckpt.path} does not hold "
                                              f"the shard its index describes")
            e = section["params"][k]
            entries.append((s * per_old, e["step"],
                            {key: shard_ckpt.tensors[t] for key, t in e["state"].items()}))
        if not entries or all(step is None for _, step, _ in entries):
            continue
        steps = {step for _, step, _ in entries}
        keys = {frozenset(st) for _, _, st in entries}
        if len(steps) > 1 or len(keys) > 1:
            raise CheckpointMismatchError(f"{where}: the shards of param group {gi} "
                                          "disagree (steps or states); the files are not "
                                          "of one save")
        entry: dict[str, Any] = {"step": steps.pop()}
        for key in sorted(keys.pop()):
            entry[key] = _cut(sh, shard.data.size,
                              [(start, st[key].reshape(-1)) for start, _, st in entries],
                              flat.dtype)
        state[k] = entry
    entries = [e for g in saved for e in g["params"]]
    labels = tuple(ck._tag(e.get("name"), i) for i, e in enumerate(entries))
    return ck._OptimizerPlan(ck.Remap("position", labels, (), ()),
                             list(range(len(saved))), {"state": state,
                                                       "param_groups": groups})


def consolidated_state_dict(path: Any) -> dict:
    """The unsharded optimizer's state_dict from a checkpoint saved by
    ``ShardedOptimizer.save``, sharded or consolidated, read in one process without MPI:
    ``opt.load_state_dict(consolidated_state_dict(path))`` resumes a plain optimizer over
    the same params (and ``optdsl.load(path, params=..., scheduler=...)`` the rest)."""
    path = os.fspath(path)
    where = f"consolidated_state_dict({path!r})"
    ckpt = ck._read(path)
    index = _index(ckpt)
    if index is None:
        section = ckpt.doc.get("optimizer")
        if section is None:
            raise CheckpointMismatchError(f"{where}: the checkpoint holds no optimizer state")
        state = {}
        for i, e in enumerate(section["params"]):
            if e["step"] is not None:
                state[i] = {"step": e["step"],
                            **{k: ckpt.tensors[t].copy() for k, t in e["state"].items()}}
        groups = [{**g["hypers"], **g["extra"], "params": list(g["params"])}
                  for g in section["param_groups"]]
        return {"state": state, "param_groups": groups}
    shards = [_shard_file(path, index, s, where) for s in range(index["world"])]
    state, groups, next_id = {}, [], 0
    k = 0
    for group in index["groups"]:
        ids = list(range(next_id, next_id + len(group["params"])))
        next_id += len(ids)
        groups.append({**group["hypers"], "params": ids})
        if not group["params"]:
            continue
        entries = [s.doc["optimizer"]["params"][k] for s in shards]
        k += 1
        if entries[0]["step"] is None:
            continue
        for key in sorted(entries[0]["state"]):
            whole = np.concatenate([s.tensors[e["state"][key]].reshape(-1)
                                    for s, e in zip(shards, entries, strict=True)])
            at = 0
            for i, p in zip(ids, group["params"], strict=True):
                size = int(np.prod(p["shape"]))
                st = state.setdefault(i, {"step": entries[0]["step"]})
                st[key] = whole[at:at + size].reshape(p["shape"]).copy()
                at += size
    return {"state": state, "param_groups": groups}
