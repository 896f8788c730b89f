"""Plots of learning-rate schedules: ``optdsl plot-schedule`` and the README's figure.

Needs matplotlib, the ``plot`` extra (``pip install 'optdsl[plot]'``); importing this
module does not, so the command line can say so cleanly. Figures are built with
matplotlib's object API on an Agg canvas: no display is needed, and pyplot's global
state (a notebook's backend, say) is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptdslError

MISSING_MATPLOTLIB = "plotting needs matplotlib: pip install 'optdsl[plot]'"

# The README's figure: one panel per stdlib schedule, with a representative config,
# at base lr 0.1 over 100 steps.
GALLERY_STEPS = 100
GALLERY_LR = 0.1
# ReduceLROnPlateau's panel: a loss that improves steadily, then stays flat from step 40.
GALLERY_METRICS = tuple(float(v) for v in np.maximum(1.0 - np.arange(1, GALLERY_STEPS) / 50,
                                                     0.2))
GALLERY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("StepLR", {"step_size": 30, "gamma": 0.5}),
    ("MultiStepLR", {"milestones": (30, 60, 80), "gamma": 0.5}),
    ("ExponentialLR", {"gamma": 0.97}),
    ("CosineAnnealingLR", {"T_max": 100}),
    ("CosineAnnealingWarmRestarts", {"T_0": 10, "T_mult": 2}),
    ("ReduceLROnPlateau", {"factor": 0.5, "patience": 10}),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 100}),
    ("LinearLR", {"start_factor": 0.1, "total_iters": 30}),
    ("ConstantLR", {"factor": 0.5, "total_iters": 30}),
    ("PolynomialLR", {"total_iters": 80, "power": 2.0}),
    ("WarmupCosineLR", {"warmup_steps": 10, "total_steps": 100}),
)
_LR_COLOR, _MOMENTUM_COLOR = "tab:blue", "tab:orange"


def _figure(**kwargs: Any):
    """A matplotlib Figure on an Agg canvas, or a clean error without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OptdslError(MISSING_MATPLOTLIB) from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def changes(values: np.ndarray) -> bool:
    """Whether a previewed series moves at all (momentum is drawn only where it does)."""
    return len(values) > 0 and not np.all(values == values[0])


def describe(name: str, hypers: Mapping[str, Any]) -> str:
    """``StepLR(step_size=30, gamma=0.5)``."""
    def show(v: Any) -> str:
        return ",".join(map(show, v)) if isinstance(v, (tuple, list)) else repr(v)

    return f"{name}({', '.join(f'{k}={show(v)}' for k, v in hypers.items())})"


def schedule_figure(values: Mapping[str, np.ndarray], title: str):
    """lr against step, with a second panel for the momentum where it changes."""
    lr, momentum = values["lr"], values.get("momentum")
    two = momentum is not None and changes(momentum)
    fig = _figure(figsize=(6.4, 5.0 if two else 3.4), layout="constrained")
    axes = fig.subplots(2 if two else 1, 1, sharex=True, squeeze=False)[:, 0]
    steps = np.arange(len(lr))
    axes[0].plot(steps, lr, color=_LR_COLOR)
    axes[0].set_ylabel("lr")
    axes[0].set_title(title, fontsize=10)
    if two:
        axes[1].plot(steps, momentum, color=_MOMENTUM_COLOR)
        axes[1].set_ylabel("momentum")
    axes[-1].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def plot_schedule(values: Mapping[str, np.ndarray], title: str, path: str | Path,
                  dpi: int = 100) -> None:
    """Write :func:`schedule_figure` to ``path`` (the format follows its extension)."""
    schedule_figure(values, title).savefig(path, dpi=dpi)


def gallery_values(steps: int = GALLERY_STEPS) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The previewed lr and momentum of every :data:`GALLERY` config."""
    from .schedules import preview

    out = []
    for name, hypers in GALLERY:
        metrics = GALLERY_METRICS if name == "ReduceLROnPlateau" else None
        values = preview(name, steps, lr=GALLERY_LR, metrics=metrics, **hypers)
        out.append((describe(name, hypers), values))
    return out


def gallery_figure(panels: Sequence[tuple[str, Mapping[str, np.ndarray]]], columns: int = 4):
    """A grid of small panels, lr against step; momentum dashed on a right-hand axis
    where it changes (OneCycleLR)."""
    rows = -(-len(panels) // columns)
    fig = _figure(figsize=(3.0 * columns, 2.35 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, values) in zip(axes, panels, strict=False):
        lr = values["lr"]
        ax.plot(np.arange(len(lr)), lr, color=_LR_COLOR, lw=1.5)
        title_lines = title.replace("(", "\n(", 1)
        ax.set_title(title_lines, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        momentum = values.get("momentum")
        if momentum is not None and changes(momentum):
            twin = ax.twinx()
            twin.plot(np.arange(len(momentum)), momentum, color=_MOMENTUM_COLOR, lw=1.2,
                      ls="--")
            twin.tick_params(labelsize=7, colors=_MOMENTUM_COLOR)
            twin.set_ylabel("momentum (dashed)", fontsize=7, color=_MOMENTUM_COLOR)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"optdsl's stdlib schedules: lr against step (base lr {GALLERY_LR}; "
                 "ReduceLROnPlateau fed a loss that stops improving at step 40)", fontsize=9)
    return fig


def plot_gallery(path: str | Path, dpi: int = 80) -> None:
    """Write the README's figure of every stdlib schedule to ``path``."""
    gallery_figure(gallery_values()).savefig(path, dpi=dpi)


# --- optdsl plot-diagnostics -------------------------------------------------------------

def diagnostics_figure(records: Sequence[Mapping[str, Any]], group: int = 0,
                       source: str = ""):
    """Four panels over the steps of a diagnostics log (:func:`optdsl.diagnostics.read_jsonl`):
    each group's gradient norm, its update/param ratio, the mean of each tracked value
    with its min-max band, and a heat map of group ``group``'s gradient histograms."""
    from .diagnostics import rebin, series

    data = series(list(records))
    steps, groups = data["steps"], data["groups"]
    if group not in groups:
        raise OptdslError(f"group {group} is in no record of {source or 'the log'} "
                          f"(groups: {', '.join(map(str, groups))})")
    fig = _figure(figsize=(7.2, 8.4), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    colors = [f"C{i}" for i in range(10)]
    for k, (gi, g) in enumerate(groups.items()):
        color = colors[k % len(colors)]
        axes[0].plot(steps, _positive(g["grad_norm"]), color=color, lw=1.2, label=f"group {gi}")
        axes[1].plot(steps, _positive(g["update_ratio"]), color=color, lw=1.2,
                     label=f"group {gi}")
    axes[0].set_ylabel("grad norm")
    axes[1].set_ylabel("update / param")
    for ax, key in zip(axes[:2], ("grad_norm", "update_ratio"), strict=False):
        if any(np.any(_positive(g[key]) > 0) for g in groups.values()):
            ax.set_yscale("log")  # (not when every value is 0 or nan: nothing to draw)
        if len(groups) > 1:
            ax.legend(fontsize=7, loc="best")
    ax = axes[2]
    k = 0
    for gi, g in groups.items():
        for name, t in g["tracks"].items():
            color = colors[k % len(colors)]
            ax.plot(steps, t["mean"], color=color, lw=1.2, label=f"{name} (group {gi}) mean")
            ax.fill_between(steps, t["min"], t["max"], color=color, alpha=0.2, lw=0)
            k += 1
    if k:
        ax.set_yscale("log" if _all_positive(groups) else "linear")
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no tracked values (track NAME = ... in the .opt file)",
                ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
    ax.set_ylabel("tracked: mean,\nmin-max band")
    ax = axes[3]
    counts, edges = rebin(groups[group]["histograms"])
    if len(steps):
        x = _step_edges(steps)
        mesh = ax.pcolormesh(x, edges, np.log10(1 + counts.T), cmap="viridis",
                             shading="flat")
        fig.colorbar(mesh, ax=ax, label="log10(1 + count)", pad=0.01)
    ax.set_ylabel(f"grad values\n(group {group})")
    ax.set_xlabel("step")
    for ax in axes[:3]:
        ax.grid(alpha=0.3)
    name = data["optimizer"] or "optimizer"
    title = f"{name} diagnostics" + (f": {Path(source).name}" if source else "")
    axes[0].set_title(f"{title} ({len(steps)} records)", fontsize=10)
    return fig


def _positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive ones (an update of 0) as gaps."""
    out = np.asarray(values, float).copy()
    out[~(out > 0)] = np.nan
    return out


def _all_positive(groups: Mapping[int, Mapping[str, Any]]) -> bool:
    lows = [t["min"] for g in groups.values() for t in g["tracks"].values()]
    values = np.concatenate(lows) if lows else np.array([])
    values = values[np.isfinite(values)]
    return bool(values.size) and bool(np.all(values > 0))


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each step, for a heat map column per record."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[2 * steps[0] - mid[0]], mid, [2 * steps[-1] - mid[-1]]])


def plot_diagnostics(records: Sequence[Mapping[str, Any]], path: str | Path, group: int = 0,
                     source: str = "", dpi: int = 80) -> None:
    """Write :func:`diagnostics_figure` to ``path`` (the format follows its extension)."""
    diagnostics_figure(records, group, source).savefig(path, dpi=dpi)
