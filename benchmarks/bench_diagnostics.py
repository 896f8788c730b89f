"""What diagnostics and mixed precision cost: Adam on flattened params, side by side.

    python benchmarks/bench_diagnostics.py [--n 4M] [--tensors 8] [--rounds 9] [--steps 5]
                                           [--backend NAME]

Each configuration has its own params (``--tensors`` tensors, ``--n`` elements in all,
flattened into one buffer, gradients written in place) and its own Adam. The
configurations take turns (``benchmarks/side_by_side.py``): every round times ``--steps``
steps of each, in a rotated order, and the median over rounds is reported, so a machine
whose load drifts slows every configuration alike. Printed, as a Markdown table with ratios:

- float32, diagnostics off (the reference);
- float32, extras only: the kernel writes the update and the tracks, nothing is reduced
  (what the fused kernel's extra outputs cost);
- float32, diagnostics on (extras, plus the host reductions of ``optdsl.diagnostics``);
- float16 params with ``master_weights=True``, and float16 plain (mixed precision).

Absolute times depend on the machine and on what else it runs; the ratios are the
numbers to quote (docs/diagnostics.md).
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
from optdsl.optim import Adam  # noqa: E402

REFERENCE = "float32, diagnostics off"


def make(n: int, tensors: int, dtype, seed: int = 0, **kwargs) -> tuple[Adam, list]:
    """An Adam over ``tensors`` flattened params of ``n`` elements in all, with gradients."""
    rng = np.random.default_rng(seed)
    sizes = [n // tensors + (1 if i < n % tensors else 0) for i in range(tensors)]
    params = [optdsl.Param(rng.standard_normal(k).astype(dtype), name=f"w{i}")
              for i, k in enumerate(sizes)]
    for p in params:
        # Unit-scale gradients: smaller ones make plain float16 Adam's exp_avg_sq
        # subnormal, and NumPy's float32 -> float16 conversion of subnormals is an order
        # of magnitude slower (the staging would be measured, not the step).
        p.grad = rng.standard_normal(p.data.size).astype(dtype)
    optdsl.flatten(params)
    opt = Adam(params, lr=1e-3, **kwargs)
    return opt, params


def configurations(n: int, tensors: int, backend: str | None = None) -> dict[str, Adam]:
    f32, f16 = np.float32, np.float16
    extras, _ = make(n, tensors, f32, backend=backend)
    extras.request_extras("bench", ("track", "update"))  # the kernel's outputs, no reductions
    return {
        REFERENCE: make(n, tensors, f32, backend=backend)[0],
        "float32, extras only": extras,
        "float32, diagnostics on": make(n, tensors, f32, backend=backend, diagnostics=True)[0],
        "float16, master_weights": make(n, tensors, f16, backend=backend,
                                        master_weights=True)[0],
        "float16, plain": make(n, tensors, f16, backend=backend)[0],
    }


def table(times: dict[str, list[float]], backends: dict[str, str], n: int, tensors: int,
          rounds: int, steps: int) -> str:
    title = (f"Adam, {size_label(n)} params in {tensors} flattened tensors, "
             f"{optdsl.num_threads()} threads; median of {rounds} rounds of {steps} steps")
    return side_by_side.table(times, backends, title, REFERENCE, "vs float32 off")


def main(argv: list[str] | None = None) -> int:
    parser = side_by_side.arguments(
        __doc__.splitlines()[0], "optdsl backend (default: the best for each dtype; numba, "
        "where installed, takes float32 but not float16)")
    args = parser.parse_args(argv)
    opts = configurations(args.n, args.tensors, args.backend)
    times = side_by_side.measure(opts, args.rounds, args.steps)
    backends = {name: opt._plans[0].backend.name for name, opt in opts.items()}
    print(table(times, backends, args.n, args.tensors, args.rounds, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
