"""What per-tensor reductions cost: LAMB (a reduce pass, then the update) against Adam.

    python benchmarks/bench_reductions.py [--n 4M] [--tensors 8] [--rounds 9] [--steps 5]
                                          [--backend NAME]

LAMB is Adam's moments and direction, then a trust ratio ``norm(p) / norm(direction)`` per
tensor. optdsl runs it in two passes over memory (docs/language.md, "Per-parameter
values"): a reduce kernel that computes the direction and writes it to scratch, reduced in
float64, with ``norm(p)`` read from p as loaded; then the update kernel. Each configuration
has its own params (``--tensors`` tensors, ``--n`` float32 elements in all, flattened into
one buffer). The configurations take turns (``benchmarks/side_by_side.py``), and the
median over rounds is reported:

- Adam: one fused kernel launch per group and step (the reference);
- LAMB: its reduce pass and update, tensor by tensor;
- LAMB written in NumPy as optax computes it, one array operation at a time: what the
  fusion saves.

The ratios are the numbers to quote; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optdsl  # noqa: E402
from benchmarks import side_by_side  # noqa: E402
from benchmarks.suite import size_label  # noqa: E402
from optdsl.optim import LAMB, Adam  # noqa: E402

REFERENCE = "Adam (one fused pass)"


def _params(n: int, tensors: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    sizes = [n // tensors + (1 if i < n % tensors else 0) for i in range(tensors)]
    params = [optdsl.Param(rng.standard_normal(k).astype(np.float32), name=f"w{i}")
              for i, k in enumerate(sizes)]
    for p in params:
        p.grad = rng.standard_normal(p.data.size).astype(np.float32)
    optdsl.flatten(params)
    return params


class NumpyLamb:
    """optax.lamb, array operation by array operation (b1, b2, eps, weight decay 0.01)."""

    def __init__(self, params: list, lr: float = 1e-3):
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p.data) for p in params]
        self.v = [np.zeros_like(p.data) for p in params]

    def step(self) -> None:
        self.t += 1
        b1, b2, eps, wd, t = 0.9, 0.999, 1e-6, 0.01, self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad
            m[...] = (1 - b1) * g + b1 * m
            v[...] = (1 - b2) * (g * g) + b2 * v
            u = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * p.data
            pn, un = np.linalg.norm(p.data), np.linalg.norm(u)
            ratio = pn / un if pn > 0 and un > 0 else 1.0
            p.data -= self.lr * ratio * u


def configurations(n: int, tensors: int, backend: str | None = None) -> dict:
    return {
        REFERENCE: Adam(_params(n, tensors), lr=1e-3, weight_decay=0.01, backend=backend),
        "LAMB (reduce pass + update)": LAMB(_params(n, tensors), lr=1e-3, weight_decay=0.01,
                                            backend=backend),
        "LAMB in plain NumPy": NumpyLamb(_params(n, tensors)),
    }


def backend_of(opt) -> str:
    if isinstance(opt, NumpyLamb):
        return "-"
    if opt._plans:
        return opt._plans[0].backend.name
    return opt._backend_for([p for g in opt.param_groups for p in g["params"]]).name


def table(times: dict[str, list[float]], backends: dict[str, str], n: int, tensors: int,
          rounds: int, steps: int) -> str:
    title = (f"{size_label(n)} float32 params in {tensors} flattened tensors, "
             f"{optdsl.num_threads()} threads; median of {rounds} rounds of {steps} steps")
    return side_by_side.table(times, backends, title, REFERENCE, "vs Adam")


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side.arguments(__doc__.splitlines()[0],
                                    "optdsl backend (default: the best)")
    args = parser.parse_args(argv)
    opts = configurations(args.n, args.tensors, args.backend)
    times = side_by_side.measure(opts, args.rounds, args.steps)
    backends = {name: backend_of(opt) for name, opt in opts.items()}
    print(table(times, backends, args.n, args.tensors, args.rounds, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
