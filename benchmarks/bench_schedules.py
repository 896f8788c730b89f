"""Host cost of one ``sched.step()``: optdsl's compiled schedules next to torch's.

A schedule runs on the host once per optimizer step, so its cost matters only relative to
the step it follows; this prints microseconds per ``step()`` for each stdlib schedule
(one param group), with torch.optim.lr_scheduler's in the same run when torch is
installed, and the ratio.

    python benchmarks/bench_schedules.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import optdsl.schedules as S
from optdsl import Param
from optdsl.optim import SGD

CONFIGS = {
    "StepLR": {"step_size": 30},
    "MultiStepLR": {"milestones": [30, 80]},
    "ExponentialLR": {"gamma": 0.999},
    "CosineAnnealingLR": {"T_max": 500},
    "CosineAnnealingWarmRestarts": {"T_0": 50, "T_mult": 2},
    "ReduceLROnPlateau": {"patience": 5},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 100_000},
    "LinearLR": {"start_factor": 0.1, "total_iters": 500},
    "ConstantLR": {"factor": 0.5, "total_iters": 500},
    "PolynomialLR": {"total_iters": 500},
    "WarmupCosineLR": {"warmup_steps": 100, "total_steps": 100_000},
}


def per_step(make, steps: int, metric: bool) -> float:
    sched = make()
    args = (1.0,) if metric else ()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            sched.step(*args)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    try:
        import torch
        import torch.optim.lr_scheduler as T
    except ImportError:
        torch = T = None
    warnings.simplefilter("ignore")
    print(f"{'schedule':30s} {'optdsl us/step':>15s} {'torch us/step':>14s} {'ratio':>6s}")
    for name, kw in CONFIGS.items():
        metric = name == "ReduceLROnPlateau"

        def ours(name=name, kw=kw):
            return getattr(S, name)(SGD([Param(np.zeros(1))], lr=0.1, momentum=0.9), **kw)

        mine = per_step(ours, args.steps, metric)
        line = f"{name:30s} {mine:15.1f}"
        if T is not None and hasattr(T, name):
            def theirs(name=name, kw=kw):
                opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1,
                                      momentum=0.9)
                return getattr(T, name)(opt, **kw)

            ref = per_step(theirs, args.steps, metric)
            line += f" {ref:14.1f} {mine / ref:6.2f}"
        print(line)


if __name__ == "__main__":
    main()
