"""Helpers shared by the checkpoint tests (and run by resume_child.py in a fresh process):
every stdlib optimizer with non-default hypers and two param groups, a schedule, a stand-in
loss scaler, deterministic gradients, snapshots of everything a load may touch, and a way
to rewrite a checkpoint's metadata with valid checksums (to make files optdsl would not).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

import numpy as np

import optdsl.schedules as S
from optdsl import Param
from optdsl.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop

# Every stdlib optimizer: non-default hypers for the optimizer, others again for group 1.
CONFIGS = {
    "SGD": (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
            {"nesterov": True, "dampening": 0.0, "maximize": True}),
    "Adam": (Adam, {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 1e-2, "amsgrad": True},
             {"lr": 3e-2, "decoupled_weight_decay": True, "amsgrad": False}),
    "AdamW": (AdamW, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}, {"maximize": True}),
    "RMSprop": (RMSprop, {"lr": 1e-2, "alpha": 0.9, "centered": True, "momentum": 0.5,
                          "weight_decay": 1e-3}, {"centered": False, "momentum": 0.0}),
    "Adagrad": (Adagrad, {"lr": 0.1, "lr_decay": 1e-2, "initial_accumulator_value": 0.1,
                          "weight_decay": 1e-2}, {"eps": 1e-6}),
    "Adadelta": (Adadelta, {"lr": 0.5, "rho": 0.95, "weight_decay": 1e-2},
                 {"maximize": True, "eps": 1e-4}),
}

# Group 0: two float32 params; group 1: one float64 param.
SHAPES = {"w1": ((4, 3), np.float32), "b1": ((3,), np.float32), "w2": ((5, 2), np.float64)}


class TinyScaler:
    """A stand-in loss scaler (optdsl has none yet): plain-data state that changes as
    training goes, like torch.amp.GradScaler's."""

    def __init__(self, scale: float = 2.0**16):
        self.scale, self.growth_tracker = scale, 0

    def update(self) -> None:
        self.growth_tracker += 1
        if self.growth_tracker == 3:
            self.scale, self.growth_tracker = self.scale * 2, 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if set(sd) != {"scale", "growth_tracker"}:
            raise ValueError(f"TinyScaler: unexpected keys {sorted(sd)}")
        self.scale, self.growth_tracker = float(sd["scale"]), int(sd["growth_tracker"])


def make_params(seed: int = 0, names: bool = True) -> dict[str, Param]:
    rng = np.random.default_rng(seed)
    return {k: Param(rng.uniform(-1.5, 1.5, size=shape).astype(dtype),
                     name=k if names else None)
            for k, (shape, dtype) in SHAPES.items()}


def build(name: str, seed: int = 0, names: bool = True):
    """(optimizer, schedule, params by name) for CONFIGS[name]: groups [w1, b1], [w2]."""
    cls, hypers, group1 = CONFIGS[name]
    params = make_params(seed, names)
    opt = cls([{"params": [params["w1"], params["b1"]]},
               {"params": [params["w2"]], **group1}], **hypers)
    return opt, schedule_for(name, opt), params


def schedule_for(name: str, opt):
    """A different schedule per optimizer: warmup then step decay, cosine, or a plateau
    schedule (which reads a metric)."""
    if name in ("Adam", "RMSprop"):
        return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.2, total_iters=3),
                                    S.StepLR(opt, step_size=2, gamma=0.7)], milestones=[3])
    if name in ("SGD", "Adagrad"):
        return S.CosineAnnealingLR(opt, T_max=7, eta_min=1e-4)
    return S.ReduceLROnPlateau(opt, factor=0.5, patience=1)


def metric(step: int) -> float:
    return 1.0 / (1 + step // 3) + 0.05 * math.sin(1.7 * step)


def grad(step: int, data: np.ndarray, which: int) -> np.ndarray:
    """0.5 * p + seeded noise: depends on the current values, so any difference in an
    update shows in every later step."""
    noise = np.random.default_rng(1000 * which + step).standard_normal(data.shape)
    return data * data.dtype.type(0.5) + noise.astype(data.dtype)


def run(opt, sched, params: dict[str, Param], scaler, first: int, last: int) -> list[str]:
    """Steps first..last; the sha256 of every param's raw bytes after each step."""
    trail = []
    for step in range(first, last + 1):
        for i, p in enumerate(params.values()):
            p.grad = grad(step, p.data, i)
        opt.step()
        if sched.needs_metric:
            sched.step(metric(step))
        else:
            sched.step()
        scaler.update()
        trail.append(digest(*(p.data for p in params.values())))
    return trail


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.name}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fingerprint(opt=None, sched=None, params=None, scaler=None, *,
                ids: bool = False) -> dict[str, Any]:
    """Everything a load may change, as comparable plain values (arrays as bytes); with
    ``ids``, also which params the optimizer holds state for (to compare an optimizer with
    itself)."""
    out: dict[str, Any] = {}
    if opt is not None:
        sd = opt.state_dict()
        out["state"] = {k: {n: (v if n == "step" else (v.dtype.name, v.shape, v.tobytes()))
                            for n, v in st.items()} for k, st in sd["state"].items()}
        out["groups"] = copy.deepcopy(sd["param_groups"])
        if ids:
            out["state_ids"] = sorted(id(p) for p in opt.state)
    if sched is not None:
        out["sched"] = json.dumps(sched.state_dict(), sort_keys=True)
    if params is not None:
        values = params.values() if isinstance(params, dict) else params
        out["params"] = [(p.data.dtype.name, p.data.shape, p.data.tobytes()) for p in values]
    if scaler is not None:
        out["scaler"] = scaler.state_dict()
    return out


def rewrite(path, change=None, *, tensors=None) -> None:
    """Rewrite a checkpoint with safetensors directly (not through optdsl): ``change``
    edits the JSON document, ``tensors`` edits the arrays, and both checksums are
    recomputed as docs/checkpoints.md says, so the file verifies."""
    import safetensors
    from safetensors.numpy import save_file

    with safetensors.safe_open(path, framework="np") as f:
        meta = f.metadata()
    views = dict(safetensors.deserialize(open(path, "rb").read()))
    doc = json.loads(meta["optdsl.checkpoint"])
    arrays = {k: v for k, v in views.items()}
    if tensors is not None:
        tensors(arrays)
    if change is not None:
        change(doc)
    h = hashlib.sha256()
    for name in sorted(arrays):
        v = arrays[name]
        line = json.dumps([name, v["dtype"], list(v["shape"]), len(v["data"])],
                          separators=(",", ":"))
        h.update(line.encode() + b"\n")
        h.update(bytes(v["data"]))
    doc["arrays_sha256"] = h.hexdigest()
    text = json.dumps(doc, separators=(",", ":"))
    meta = {"optdsl.checkpoint": text,
            "optdsl.checkpoint.sha256": hashlib.sha256(text.encode()).hexdigest()}
    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16}
    save_file({k: np.frombuffer(bytes(v["data"]), dtypes[v["dtype"]]).reshape(v["shape"])
               for k, v in arrays.items()}, path, metadata=meta)

