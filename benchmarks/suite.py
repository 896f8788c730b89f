"""The benchmark suite: every measurement of ``python -m benchmarks``, in one process.

Everything that is compared is measured in this run, side by side: optdsl's backends,
torch.optim (for-loop, foreach, fused), a naive NumPy Adam, and the machine's own memory
bandwidth. Results are plain dicts (JSON-ready); :mod:`benchmarks.report` formats them and
:func:`targets` judges them. Nothing here asserts a speed.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

import optdsl
import optdsl.optim
from benchmarks import bandwidth, bench_compile, machine
from benchmarks.bench_adam import naive_adam
from optdsl.api import state_bytes_per_param

# The optimizers timed, with the hypers both sides get (torch's defaults otherwise).
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "Adam": {}, "AdamW": {}, "SGD": {"lr": 1e-3, "momentum": 0.9}, "RMSprop": {},
    "Adagrad": {}, "Adadelta": {},
}
# torch 2.13 has fused=True on CPU for these; RMSprop and Adadelta have no fused flag.
TORCH_FUSED = ("Adam", "AdamW", "SGD", "Adagrad")
TORCH_MODES = {"torch for-loop": {"foreach": False}, "torch foreach": {"foreach": True},
               "torch fused": {"fused": True}}
DTYPE = np.dtype(np.float32)
SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'1M' -> 1048576 (K, M, G are powers of two, as the buffers are); '1000' -> 1000."""
    text = text.strip().upper().replace("_", "")
    scale = SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"not a size: {text!r} (write e.g. 1M, 16M, 65536)")
    return int(number) * scale


def size_label(n: int) -> str:
    for suffix, scale in reversed(SUFFIXES.items()):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return f"{n:,}"


def bytes_per_param(name: str, hypers: dict[str, Any], itemsize: int = DTYPE.itemsize) -> int:
    """Bytes one step moves per parameter element: it reads p, g and each state buffer,
    and writes p and each state buffer, so (3 + 2 * states) * itemsize."""
    cls = optdsl.optim.load(name)
    states = state_bytes_per_param(cls._spec, 1, **hypers)  # itemsize 1: counts states
    return (3 + 2 * states) * itemsize


@dataclass
class Config:
    sizes: list[int]
    backends: list[str]
    torch: bool = True
    threads: int = 2
    smoke: bool = False
    many: tuple[int, int] = (1000, 1000)  # tensors, elements each
    stream_elements: int = bandwidth.ELEMENTS
    stream_repeats: int = 10
    notes: list[str] = field(default_factory=list)

    def repeats(self, n: int) -> tuple[int, int]:
        """(warm-up steps, timed steps) for tensors of n elements."""
        if self.smoke:
            return 2, 3
        if n <= 4 << 20:
            return 3, 21
        if n <= 32 << 20:
            return 3, 11
        return 2, 9


# --- measuring ---------------------------------------------------------------------------
def time_steps(step: Callable[[], Any], warmup: int, repeats: int) -> dict[str, Any]:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones (which compile,
    JIT and allocate state), garbage collection paused while timing."""
    for _ in range(warmup):
        step()
    gc.collect()
    gc.disable()
    try:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {"seconds": statistics.median(times), "times": times}


def peak_extra_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes allocated, net, during one call, as tracemalloc sees it: NumPy reports
    its array buffers to tracemalloc, as does Python for its objects. Allocations made
    outside Python's and NumPy's allocators (torch's, numba's runtime) are invisible."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _optdsl_step(name: str, hypers: dict, backend: str, p0: np.ndarray, g: np.ndarray):
    w = optdsl.Param(p0.copy(), grad=g)
    return optdsl.optim.load(name)([w], backend=backend, **hypers).step


def _naive_step(p0: np.ndarray, g: np.ndarray):
    p, m, v, t = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), [0]

    def step():
        t[0] += 1
        naive_adam(p, g, m, v, t[0])

    return step


def _torch_step(torch, name: str, hypers: dict, mode: dict, p0s: list, gs: list):
    params = []
    for p0, g in zip(p0s, gs, strict=True):
        tp = torch.from_numpy(p0.copy()).requires_grad_()
        tp.grad = torch.from_numpy(g)  # shares g's memory; torch.optim does not write it
        params.append(tp)
    return getattr(torch.optim, name)(params, **hypers, **mode).step


def _progress(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def _record(rows: list, started: float, label: str, make: Callable[[], Callable],
            warmup: int, repeats: int, trace: bool, **fields: Any) -> None:
    step = make()
    row = {**fields, **time_steps(step, warmup, repeats)}
    if trace:
        row["peak_extra_bytes"] = peak_extra_bytes(step)
    del step
    gc.collect()
    rows.append(row)
    _progress(f"{label}: {row['seconds'] * 1e3:.3f} ms", started)


def one_tensor(cfg: Config, torch, n: int, started: float) -> list[dict]:
    """Every optimizer on one float32 tensor of n elements, each implementation."""
    rows: list[dict] = []
    rng = np.random.default_rng(n)
    warmup, repeats = cfg.repeats(n)
    p0 = rng.standard_normal(n, dtype=DTYPE)
    g = rng.standard_normal(n, dtype=DTYPE)
    for name, hypers in OPTIMIZERS.items():
        common = {"optimizer": name, "n": n, "bytes_per_param": bytes_per_param(name, hypers)}
        where = f"{name} {size_label(n)}"
        for backend in cfg.backends:
            _record(rows, started, f"{where} optdsl {backend}",
                    partial(_optdsl_step, name, hypers, backend, p0, g),
                    warmup, repeats, True, impl=f"optdsl {backend}", **common)
        if name == "Adam":
            _record(rows, started, f"{where} naive NumPy", partial(_naive_step, p0, g),
                    warmup, repeats, True, impl="naive NumPy", **common)
        if torch is None:
            continue
        for impl, mode in TORCH_MODES.items():
            if "fused" in mode and name not in TORCH_FUSED:
                continue
            _record(rows, started, f"{where} {impl}",
                    partial(_torch_step, torch, name, hypers, mode, [p0], [g]),
                    warmup, repeats, False, impl=impl, **common)
    return rows


def many_tensors(cfg: Config, torch, started: float) -> list[dict]:
    """Adam over many small tensors (separate, and flattened into one buffer) next to the
    same number of elements as one tensor."""
    count, each = cfg.many
    rng = np.random.default_rng(1)
    p0s = [rng.standard_normal(each, dtype=DTYPE) for _ in range(count)]
    gs = [rng.standard_normal(each, dtype=DTYPE) for _ in range(count)]
    p_one, g_one = np.concatenate(p0s), np.concatenate(gs)
    Adam = optdsl.optim.Adam
    warmup, repeats = cfg.repeats(count * each)
    rows: list[dict] = []
    common = {"optimizer": "Adam", "tensors": count, "elements": each}
    many, one = f"{count}x{each}", f"one {size_label(count * each)}"

    def separate(backend: str):
        params = [optdsl.Param(p.copy(), grad=g) for p, g in zip(p0s, gs, strict=True)]
        return Adam(params, backend=backend).step

    def flattened(backend: str):
        params = [optdsl.Param(p.copy()) for p in p0s]
        flat = optdsl.flatten(params)
        for p, g in zip(params, gs, strict=True):
            p.grad[...] = g  # in place: the grads are views of the flat buffer
        step = Adam(params, backend=backend).step
        return lambda: (step(), flat)  # keeps the flat buffers alive with the step

    for backend in cfg.backends:
        impl = f"optdsl {backend}"
        _record(rows, started, f"Adam {one} {impl}",
                partial(_optdsl_step, "Adam", {}, backend, p_one, g_one),
                warmup, repeats, False, impl=impl, layout="one tensor", **common)
        _record(rows, started, f"Adam {many} separate {impl}", partial(separate, backend),
                warmup, repeats, False, impl=impl, layout="separate", **common)
        if hasattr(optdsl, "flatten"):
            _record(rows, started, f"Adam {many} flattened {impl}",
                    partial(flattened, backend), warmup, repeats, False, impl=impl,
                    layout="flattened", **common)
    if torch is not None:
        for impl, mode in TORCH_MODES.items():
            _record(rows, started, f"Adam {one} {impl}",
                    partial(_torch_step, torch, "Adam", {}, mode, [p_one], [g_one]),
                    warmup, repeats, False, impl=impl, layout="one tensor", **common)
            _record(rows, started, f"Adam {many} {impl}",
                    partial(_torch_step, torch, "Adam", {}, mode, p0s, gs),
                    warmup, repeats, False, impl=impl, layout="separate", **common)
    ones = {r["impl"]: r["seconds"] for r in rows if r["layout"] == "one tensor"}
    for r in rows:
        r["vs_one_tensor"] = r["seconds"] / ones[r["impl"]]
    return rows


def derive(results: dict) -> None:
    """GB/s, the fraction of the copy bandwidth, speed against each torch mode, and the
    extra memory as a fraction of the parameter bytes, for each one-tensor row."""
    copy_gbps = results["bandwidth"]["copy_gbps"]
    rows = results["one_tensor"]
    torch_s = {(r["optimizer"], r["n"], r["impl"]): r["seconds"] for r in rows
               if r["impl"].startswith("torch")}
    for r in rows:
        r["gbps"] = r["bytes_per_param"] * r["n"] / r["seconds"] / 1e9
        r["frac_copy"] = r["gbps"] / copy_gbps
        if "peak_extra_bytes" in r:
            r["peak_extra_frac"] = r["peak_extra_bytes"] / (r["n"] * DTYPE.itemsize)
        if r["impl"].startswith("optdsl"):
            for mode in TORCH_MODES:
                ref = torch_s.get((r["optimizer"], r["n"], mode))
                if ref is not None:
                    r[f"speed_vs_{mode}"] = ref / r["seconds"]


# --- targets -----------------------------------------------------------------------------
def _find(rows: list[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _target(status_ok: bool | None, what: str, measured: str, goal: str) -> dict:
    status = "SKIP" if status_ok is None else ("PASS" if status_ok else "MISS")
    return {"status": status, "target": what, "measured": measured, "goal": goal}


def targets(results: dict) -> list[dict]:
    """The project's speed targets, judged on this run's numbers (never asserted)."""
    rows, out = results["one_tensor"], []
    backends = results["config"]["backends"]
    compiled = [b for b in backends if b != "numpy"]
    if not compiled:
        out.append(_target(None, "compiled backend Adam/AdamW 16M and 64M",
                           f"no compiled backend in this run ({', '.join(backends)})",
                           ">= 1.0x torch fused, >= 85% copy bandwidth"))
    for backend in compiled:
        for name in ("Adam", "AdamW"):
            for n in (16 << 20, 64 << 20):
                what = f"optdsl {backend} {name} {size_label(n)}"
                r = _find(rows, optimizer=name, n=n, impl=f"optdsl {backend}")
                if r is None:
                    out.append(_target(None, what, "size not in this run", ">= 1.0x torch "
                                       "fused, >= 85% copy bandwidth"))
                    continue
                speed = r.get("speed_vs_torch fused")
                out.append(_target(None if speed is None else speed >= 1.0,
                                   f"{what} vs torch fused",
                                   "torch not run" if speed is None else f"{speed:.2f}x",
                                   ">= 1.0x"))
                out.append(_target(r["frac_copy"] >= 0.85, f"{what} of copy bandwidth",
                                   f"{r['frac_copy']:.0%} ({r['gbps']:.1f} GB/s)", ">= 85%"))
    n = 16 << 20
    ours = _find(rows, optimizer="Adam", n=n, impl="optdsl numpy")
    naive = _find(rows, optimizer="Adam", n=n, impl="naive NumPy")
    what = f"optdsl numpy Adam {size_label(n)} vs naive NumPy Adam"
    if ours is None or naive is None:
        out.append(_target(None, what, "not in this run", ">= 5x faster"))
    else:
        ratio = naive["seconds"] / ours["seconds"]
        out.append(_target(ratio >= 5.0, what, f"{ratio:.2f}x faster", ">= 5x faster"))
    many = results["many_tensors"]
    for backend in backends:
        r = (_find(many, impl=f"optdsl {backend}", layout="flattened")
             or _find(many, impl=f"optdsl {backend}", layout="separate"))
        if r is None:
            continue
        what = (f"optdsl {backend} Adam {r['tensors']}x{r['elements']} ({r['layout']}) vs "
                f"one {size_label(r['tensors'] * r['elements'])} tensor")
        out.append(_target(r["vs_one_tensor"] <= 1.5, what, f"{r['vs_one_tensor']:.2f}x "
                           "the time", "<= 1.5x"))
    for backend, result in results["compile"].items():
        ms = result["cold"]["cached_compile_ms"]
        out.append(_target(ms < 5.0, f"cached compile, {backend}", f"{ms:.3f} ms", "< 5 ms"))
    return out


# --- the run -----------------------------------------------------------------------------
def run(cfg: Config) -> dict:
    """Run every measurement; returns the results dict that the report formats."""
    started = time.perf_counter()
    torch = None
    if cfg.torch:
        try:
            import torch
        except ImportError:
            cfg.notes.append("torch is not installed: no torch rows")
        else:
            torch.set_num_threads(cfg.threads)
    else:
        cfg.notes.append("--no-torch: no torch rows")
    optdsl.set_num_threads(cfg.threads)
    if not hasattr(optdsl, "flatten"):
        cfg.notes.append("optdsl.flatten is not in this build: the many-tensor benchmark has "
                         "no flattened rows")
    # What is alive now (torch's and NumPy's module objects) lives to the end: frozen, the
    # collections between measurements skip it and take milliseconds, not a tenth of a second.
    gc.collect()
    gc.freeze()
    results: dict[str, Any] = {
        "meta": machine.describe(cfg.threads, torch.__version__ if torch else None),
        "notes": cfg.notes, "config": {k: v for k, v in asdict(cfg).items() if k != "notes"},
        "one_tensor": [], "compile": {},
        # Other processes' share of the CPUs: before the run (this one asleep), and during
        # each section of it.
        "others": {"before the run": machine.idle_share()},
    }
    whole = machine.OtherLoad()

    def section(label: str, measure: Callable[[], Any]) -> Any:
        load = machine.OtherLoad()
        value = measure()
        results["others"][label] = load.share()
        return value

    _progress(f"memory bandwidth, {cfg.threads} threads", started)
    results["bandwidth"] = section("bandwidth", partial(
        bandwidth.measure, cfg.threads, cfg.stream_repeats, cfg.stream_elements))
    cfg.notes.extend(results["bandwidth"]["notes"])
    for backend in cfg.backends:
        _progress(f"compile time, {backend}", started)
        results["compile"][backend] = section(f"compile {backend}",
                                              partial(bench_compile.measure, backend))
    for n in cfg.sizes:
        results["one_tensor"] += section(f"N = {size_label(n)}",
                                         partial(one_tensor, cfg, torch, n, started))
        gc.collect()
    results["many_tensors"] = section("many tensors", partial(many_tensors, cfg, torch,
                                                              started))
    results["others"]["whole run"] = whole.share()
    busy = {k: v for k, v in results["others"].items() if v is not None and v > 0.1}
    if busy:
        # Threads that wait for each other, on cores something else holds, measure the
        # sharing more than the code.
        cfg.notes.append("other processes took more than 10% of the CPUs ("
                         + ", ".join(f"{k}: {v:.0%}" for k, v in busy.items())
                         + "): times measured then are less reliable; rerun on a quiet "
                         "machine")
    derive(results)
    results["targets"] = targets(results)
    results["meta"]["seconds"] = time.perf_counter() - started
    return results
