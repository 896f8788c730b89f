"""Regenerate ``golden/torch_schedules.json``: torch.optim.lr_scheduler's values on every case
of ``schedule_cases.CASES``.

Usage (needs torch 2.13.0 exactly, CPU is fine)::

    python tests/schedules/make_schedule_golden.py

For every case it builds torch's optimizer (two param groups, ``schedule_cases.param_groups``)
and schedule (``case["torch_schedule"]`` where torch spells it differently), then calls
``optimizer.step()`` and ``scheduler.step()`` (``step(metric)`` for ReduceLROnPlateau)
``case["steps"]`` times, and records each group's lr after construction and after every
step. The momentum (SGD) or ``betas[0]`` (Adam) is recorded too where the schedule moves it
(OneCycleLR's cycle_momentum); elsewhere only its initial value is kept, and the test checks
that optdsl leaves it alone as torch does.

Floats are written with Python's ``repr`` (the json module's default), which round-trips
float64 exactly. One case per line, so a regenerated file diffs readably.
"""

from __future__ import annotations

import datetime
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from schedule_cases import (  # noqa: E402
    CASES,
    MOMENTUM_KEY,
    OPTIMIZER_KWARGS,
    build_schedule,
    metric_values,
    param_groups,
    read_value,
)

OUT_PATH = Path(__file__).resolve().parent / "golden" / "torch_schedules.json"
TORCH_VERSION = "2.13.0"


def torch_optimizer(name: str) -> torch.optim.Optimizer:
    groups = param_groups(name, lambda: torch.zeros(2, requires_grad=True))
    return getattr(torch.optim, name)(groups, **OPTIMIZER_KWARGS[name])


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case in torch; every value of every group after construction and each step."""
    optimizer = torch_optimizer(case["optimizer"])
    spec = case.get("torch_schedule", case["schedule"])
    metrics = metric_values(case)
    keys = ("lr", MOMENTUM_KEY[case["optimizer"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = build_schedule(spec, optimizer, torch.optim.lr_scheduler)
        rows = {key: [] for key in keys}

        def record() -> None:
            for key in keys:
                rows[key].append([read_value(g, key) for g in optimizer.param_groups])

        record()
        for step in range(case["steps"]):
            optimizer.step()  # no gradients: a no-op, but keeps torch's call order
            if metrics is None:
                scheduler.step()
            else:
                scheduler.step(metrics[step])
            record()

    momentum_key = keys[1]
    moved = any(row != rows[momentum_key][0] for row in rows[momentum_key])
    out: dict[str, Any] = {"id": case["id"], "case": case, "lr": rows["lr"]}
    if metrics is not None:
        out["metrics"] = metrics
    if moved:
        out[momentum_key] = rows[momentum_key]
    else:
        out["constant"] = {momentum_key: rows[momentum_key][0]}
    return out


def main() -> None:
    if not torch.__version__.startswith(TORCH_VERSION):
        raise SystemExit(f"the golden file must come from torch {TORCH_VERSION}, found "
                         f"{torch.__version__}; refusing to write it")
    ids = [c["id"] for c in CASES]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate case ids in schedule_cases.CASES")
    cases = [run_case(c) for c in CASES]
    meta = {
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "date": datetime.date.today().isoformat(),
        "generator": "tests/schedules/make_schedule_golden.py",
    }
    lines = [json.dumps(c, allow_nan=False, separators=(",", ":")) for c in cases]
    text = (
        '{"meta":' + json.dumps(meta, separators=(",", ":")) + ',"cases":[\n'
        + ",\n".join(lines) + "\n]}\n"
    )
    json.loads(text)  # well-formed
    OUT_PATH.parent.mkdir(exist_ok=True)
    OUT_PATH.write_text(text)
    print(f"wrote {len(cases)} cases, {len(text) / 1e3:.0f} kB -> {OUT_PATH}")


if __name__ == "__main__":
    main()
