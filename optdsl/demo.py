"""``optdsl demo``: train a small NumPy MLP on handwritten digits with any optimizer.

The model, with its hand-written backprop, is ``examples/mlp.py`` (see :func:`mlp_module`
for how it is found in a checkout and in a wheel); this module holds the rest of the
demo: the data, the training loop, the progress bar, the printout and the plot.

The data is scikit-learn's digits set (``sklearn.datasets.load_digits``: 1797 8x8 images,
shipped inside scikit-learn, no download) when scikit-learn is installed (the ``demo``
extra), and otherwise a set that :func:`generated_digits` draws the way the original was
made: pen strokes on a 32x32 bitmap, counted in 4x4 blocks into 8x8 images of values
0-16. The first line of the output says which one was used.

Optimizers and schedules are chosen by name: a stdlib name in any case (``adam``,
``CosineAnnealingLR``), the name of a ``.opt`` file that ships in ``examples/`` (``lion``),
or a path to any ``.opt`` file.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import numpy as np

from .errors import OptdslError

# A learning rate per optimizer that reaches a good test accuracy in the default 20 epochs
# of batch 32: the best of a sweep over about 3x steps, by the mean final accuracy over
# seeds 0 and 1 on both datasets (README.md gives the accuracies). An optimizer not
# listed here starts from its spec's default lr.
DEFAULT_LR = {"SGD": 0.1, "Adam": 1e-2, "AdamW": 1e-2, "RMSprop": 1e-3, "Adagrad": 0.1,
              "Adadelta": 10.0, "Lion": 1e-3, "AdaBelief": 3e-2, "Yogi": 3e-2,
              "Signum": 1e-3, "Adan": 3e-2, "AdEMAMix": 3e-2, "Adamax": 0.1, "RAdam": 3e-2,
              "Rprop": 0.1, "NAdam": 3e-2, "ASGD": 0.5, "Adafactor": 0.1, "LAMB": 3e-3,
              "LARS": 2.0, "NovoGrad": 2e-2, "ScheduleFreeAdamW": 0.1}
EPOCHS, SMALL_EPOCHS = 20, 3
TEST_FRACTION = 0.25
DEMO_EXTRA = "pip install 'optdsl[demo]'"


# --- the data --------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """Images as rows of floats in [0, 1], labels as ints, split into train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def features(self) -> int:
        return self.x_train.shape[1]

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_dataset(source: str = "auto", seed: int = 0) -> Dataset:
    """The digits, split 75/25 by a permutation drawn from ``seed``.

    ``source`` is ``"sklearn"`` (scikit-learn's set; an error without scikit-learn),
    ``"generated"`` (:func:`generated_digits`) or ``"auto"`` (the first that is there).
    """
    if source not in ("auto", "sklearn", "generated"):
        raise OptdslError(f"unknown dataset {source!r}: choose auto, sklearn or generated")
    x = None
    if source != "generated":
        x, y = _sklearn_digits()
        if x is None and source == "sklearn":
            raise OptdslError(f"the sklearn dataset needs scikit-learn: {DEMO_EXTRA}")
        name = ("digits from scikit-learn (load_digits: 1797 8x8 images of handwritten "
                "digits)")
    if x is None:
        x, y = generated_digits(seed=0)  # one fixed set, whatever --seed: only splits vary
        name = ("generated digits (scikit-learn is not installed: 1797 8x8 images drawn by "
                f"optdsl.demo; {DEMO_EXTRA} for the real set)") if source == "auto" else \
            "generated digits (1797 8x8 images drawn by optdsl.demo.generated_digits)"
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(TEST_FRACTION * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, x[train], y[train], x[test], y[test])


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None, None
    digits = load_digits()
    return digits.data, digits.target.astype(np.int64)


def _arc(cx: float, cy: float, rx: float, ry: float, degrees0: float, degrees1: float):
    a = np.radians(np.linspace(degrees0, degrees1, 60))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _line(*points: tuple[float, float]):
    pts = np.asarray(points, float)
    return np.concatenate([np.linspace(p, q, 30) for p, q in pairwise(pts)])


# The pen strokes of each digit in a unit box, x to the right and y down (so an arc whose
# angle grows turns clockwise on the page).
_STROKES = (
    _arc(0.5, 0.5, 0.3, 0.45, 0, 360),
    _line((0.3, 0.25), (0.55, 0.05), (0.55, 0.95)),
    np.concatenate([_arc(0.5, 0.3, 0.3, 0.25, 180, 360),
                    _line((0.8, 0.3), (0.2, 0.95), (0.85, 0.95))]),
    np.concatenate([_arc(0.5, 0.27, 0.28, 0.22, 200, 450),
                    _arc(0.5, 0.72, 0.3, 0.23, 270, 520)]),
    _line((0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.85, 0.65)),
    np.concatenate([_line((0.8, 0.05), (0.3, 0.05), (0.25, 0.45)),
                    _arc(0.5, 0.68, 0.3, 0.27, 230, 500)]),
    np.concatenate([_line((0.7, 0.05), (0.25, 0.6)), _arc(0.5, 0.7, 0.27, 0.25, 0, 360)]),
    _line((0.15, 0.05), (0.85, 0.05), (0.4, 0.95)),
    np.concatenate([_arc(0.5, 0.27, 0.23, 0.22, 0, 360), _arc(0.5, 0.72, 0.28, 0.23, 0, 360)]),
    np.concatenate([_arc(0.5, 0.3, 0.27, 0.25, 0, 360), _line((0.77, 0.3), (0.6, 0.95))]),
)


def generated_digits(n: int = 1797, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` handwritten-looking digits, made as the UCI set behind scikit-learn's was.

    Each digit's strokes are drawn by a random hand (rotation, slant, size, position,
    jitter along the stroke, pen width) onto a 32x32 bitmap; the set pixels are counted
    in 4x4 blocks, giving an 8x8 image of values 0 to 16. Returns ``(x, y)``: ``x`` of
    shape ``(n, 64)`` (float64, as scikit-learn's) and the labels ``y``, classes balanced.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 10)
    x = np.zeros((n, 64))
    pen = np.stack(np.mgrid[-3:4, -3:4], axis=-1).reshape(-1, 2)  # stamp offsets (dy, dx)
    for label, strokes in enumerate(_STROKES):
        rows = np.flatnonzero(y == label)
        k = len(rows)
        angle = np.radians(rng.normal(0.0, 8.0, k))
        slant = rng.normal(0.0, 0.15, k)
        sx, sy = rng.uniform(0.55, 0.9, k), rng.uniform(0.75, 0.95, k)
        cos, sin = np.cos(angle), np.sin(angle)
        # rotation @ [[sx, slant], [0, sy]], one 2x2 matrix per image
        m = np.stack([np.stack([cos * sx, cos * slant - sin * sy], -1),
                      np.stack([sin * sx, sin * slant + cos * sy], -1)], axis=1)
        pts = np.einsum("kij,pj->kpi", m, strokes - 0.5) * 30.0 + 16.0
        pts += rng.normal(0.0, 1.5, (k, 1, 2)) + rng.normal(0.0, 0.4, pts.shape)
        radius = rng.uniform(1.2, 2.6, k)
        bitmap = np.zeros((k, 32, 32), bool)
        image = np.repeat(np.arange(k), len(strokes))
        px = np.rint(pts[..., 0]).astype(int).ravel()
        py = np.rint(pts[..., 1]).astype(int).ravel()
        for dy, dx in pen:
            inked = np.repeat(dy * dy + dx * dx <= radius * radius, len(strokes))
            yy, xx = py + dy, px + dx
            keep = inked & (yy >= 0) & (yy < 32) & (xx >= 0) & (xx < 32)
            bitmap[image[keep], yy[keep], xx[keep]] = True
        x[rows] = bitmap.reshape(k, 8, 4, 8, 4).sum(axis=(2, 4)).reshape(k, 64)
    return x, y.astype(np.int64)


# --- the model -------------------------------------------------------------------------

def mlp_module() -> ModuleType:
    """``examples/mlp.py``, the model's one home, imported from its file.

    A checkout has ``examples/`` at the top; the wheel carries ``mlp.py`` and ``lion.opt``
    in ``optdsl/_data/examples/`` (pyproject's force-include), where ``data_dir`` finds
    them as it finds the stdlib. Importing the file (rather than keeping a copy of the
    model in the package) keeps the code that a reader opens the code that runs.
    """
    name = "optdsl._examples_mlp"
    if name not in sys.modules:
        from ._resources import data_dir

        path = data_dir("examples") / "mlp.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


# --- choosing optimizers and schedules -------------------------------------------------

def _examples_opt(name: str) -> Path | None:
    from ._resources import data_dir

    try:
        folder = data_dir("examples")
    except FileNotFoundError:
        return None
    path = folder / f"{name.lower()}.opt"
    return path if path.is_file() else None


def _from_stdlib(name: str, stdlib: dict) -> str | None:
    return next((known for known in stdlib if known.lower() == name.lower()), None)


def optimizer_class(name: str) -> type:
    """An optimizer class from a stdlib name in any case, the name of a ``.opt`` file in
    ``examples/``, or a ``.opt`` path."""
    from . import optim
    from .api import compile as compile_spec

    known = _from_stdlib(name, optim.STDLIB)
    if known in optim.SPARSE_ONLY:
        raise OptdslError(f"{known} steps row-sparse gradients only, and the demo's are "
                          "dense; choose another optimizer")
    if known is not None:
        return optim.load(known)
    path = Path(name) if Path(name).is_file() else _examples_opt(name)
    if path is None:
        stdlib = ", ".join(n for n in optim.STDLIB if n not in optim.SPARSE_ONLY)
        raise OptdslError(f"unknown optimizer {name!r}: not a stdlib optimizer ({stdlib}), "
                          "an example (lion) or a .opt file")
    cls = compile_spec(path)
    if cls._spec.kind != "optimizer":
        raise OptdslError(f"{name} is a schedule, not an optimizer (give it to --schedule)")
    return cls


def default_lr(cls: type) -> float:
    """The demo's lr for ``cls``: :data:`DEFAULT_LR`, else the spec's own default."""
    from .hypers import REQUIRED

    if cls.__name__ in DEFAULT_LR:
        return DEFAULT_LR[cls.__name__]
    info = cls._spec.hypers.get("lr")
    if info is None or info.default is REQUIRED or isinstance(info.default, bool) \
            or not isinstance(info.default, (int, float)):
        raise OptdslError(f"{cls.__name__} has no default lr; give one with --lr")
    return float(info.default)


def schedule_factory(words: Sequence[str] | None, epochs: int) -> Callable | None:
    """From ``--schedule NAME KEY=VALUE ...``, a function ``optimizer -> schedule``.

    The schedule steps once per epoch, so its lengths count epochs; a length it needs and
    is not given (``T_max``, ``total_steps``) is the run's epochs, and OneCycleLR's
    ``max_lr`` is the run's lr."""
    if not words:
        return None
    from . import schedules
    from .cli import _parse_hypers, _schedule_class

    name = _from_stdlib(words[0], schedules.STDLIB) or words[0]
    if name not in schedules.STDLIB and not Path(name).is_file():
        path = _examples_opt(name)
        name = str(path) if path is not None else name
    cls = _schedule_class(name)
    given = _parse_hypers(list(words[1:]), cls._spec.hypers)
    lengths = {"T_max": epochs, "total_steps": epochs}
    if "epochs" not in given and "steps_per_epoch" not in given:
        for key, value in lengths.items():
            if key in cls._spec.hypers:
                given.setdefault(key, value)

    def make(optimizer):
        hypers = dict(given)
        if "max_lr" in cls._spec.hypers:
            hypers.setdefault("max_lr", optimizer.param_groups[0]["lr"])
        return cls(optimizer, **hypers)

    make.label = " ".join([cls.__name__, *words[1:]])  # type: ignore[attr-defined]
    return make


# --- training --------------------------------------------------------------------------

@dataclass
class Run:
    """One optimizer's training: the per-epoch numbers and the wall time."""

    name: str
    lr: float
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0


class ProgressBar:
    """A one-line bar over a run's steps, redrawn in place; shown only on a terminal."""

    def __init__(self, stream: TextIO, total: int, label: str, enabled: bool):
        self.stream, self.total, self.label, self.enabled = stream, total, label, enabled
        self.done, self.shown = 0, 0.0
        self.first: tuple[float, int] | None = None  # the rate is timed from the first
        # step on, which compiles the kernel

    def update(self, steps: int = 1) -> None:
        self.done += steps
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, self.done)
        if not self.enabled or (now - self.shown < 0.1 and self.done < self.total):
            return
        self.shown = now
        width, frac = 30, self.done / self.total
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        line = f"\r{self.label} [{bar}] {self.done}/{self.total} steps"
        if self.done > self.first[1] and now > self.first[0]:
            rate = (self.done - self.first[1]) / (now - self.first[0])
            line += f" {rate:.0f}/s, {(self.total - self.done) / rate:.0f} s left"
        self.stream.write(line)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")

    def write(self, line: str) -> None:
        """Print a line above the bar."""
        self.clear()
        print(line, file=self.stream, flush=True)
        self.shown = 0.0  # redraw the bar at the next step


def train(cls: type, lr: float, data: Dataset, *, epochs: int, batch_size: int, seed: int,
          hidden: int, schedule: Callable | None = None, out: TextIO = sys.stdout,
          bar: bool = False, verbose: bool = True) -> Run:
    """Train a fresh MLP with ``cls`` and return what happened, printing a line per epoch
    (when ``verbose``) and a progress bar (when ``bar``)."""
    model = mlp_module().MLP((data.features, hidden, data.classes), seed=seed)
    opt = cls(model.params(), lr=lr)
    sched = schedule(opt) if schedule is not None else None
    run = Run(cls.__name__, lr)
    rng = np.random.default_rng(seed)
    n = len(data.y_train)
    per_epoch = math.ceil(n / batch_size)
    progress = ProgressBar(out, epochs * per_epoch, f"{cls.__name__:>8}", bar)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        run.lrs.append(float(opt.param_groups[0]["lr"]))
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, batch_size):
            batch = order[i:i + batch_size]
            opt.zero_grad()
            total += model.loss_and_grads(data.x_train[batch], data.y_train[batch]) * len(batch)
            opt.step()
            progress.update()
        run.train_loss.append(total / n)
        test_loss, accuracy = model.evaluate(data.x_test, data.y_test)
        run.test_loss.append(test_loss)
        run.test_accuracy.append(accuracy)
        if not math.isfinite(run.train_loss[-1]):
            progress.write(f"{cls.__name__}: the loss diverged at epoch {epoch}; "
                           "try a smaller --lr")
            break
        if verbose:
            lr_note = f"  lr {run.lrs[-1]:.3g}" if sched is not None else ""
            progress.write(f"{cls.__name__:>8}  epoch {epoch:{len(str(epochs))}d}/{epochs}  "
                           f"loss {run.train_loss[-1]:.4f}  test loss {test_loss:.4f}  "
                           f"test accuracy {accuracy:.3f}{lr_note}")
        if sched is not None:
            if sched.needs_metric:
                sched.step(run.train_loss[-1])
            else:
                sched.step()
    progress.clear()
    run.seconds = time.perf_counter() - start
    return run


# --- the plot --------------------------------------------------------------------------

def plot_runs(runs: Sequence[Run], path: str | Path, title: str) -> None:
    """The loss curves (train solid, test dashed) and the test accuracy, per epoch, one
    colour per optimizer. Needs matplotlib."""
    from .plot import _figure

    fig = _figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for k, run in enumerate(runs):
        color = f"C{k % 10}"
        epochs = np.arange(1, len(run.train_loss) + 1)
        loss_ax.plot(epochs, run.train_loss, color=color, lw=1.8,
                     label=f"{run.name} (lr {run.lr:g})")
        loss_ax.plot(epochs, run.test_loss, color=color, lw=1.2, ls="--")
        acc_ax.plot(epochs, run.test_accuracy, color=color, lw=1.8,
                    label=f"{run.name}: {run.test_accuracy[-1]:.3f}")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy (train solid, test dashed)",
                yscale="log", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(max(0.0, min(min(r.test_accuracy) for r in runs) - 0.05), 1.0)
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)


# --- the command -----------------------------------------------------------------------

def main(args: Any) -> int:
    """``optdsl demo`` with the parsed arguments of its parser in optdsl.cli."""
    started = time.perf_counter()
    if args.compare and args.optimizer:
        raise OptdslError("give --optimizer or --compare, not both")
    names = [n.strip() for n in args.compare.split(",")] if args.compare \
        else [args.optimizer or "adam"]
    if not all(names):
        raise OptdslError(f"--compare {args.compare!r}: an empty name in the list")
    classes = [optimizer_class(n) for n in names]
    lrs = [args.lr if args.lr is not None else default_lr(c) for c in classes]
    epochs = args.epochs or (SMALL_EPOCHS if args.small else EPOCHS)
    schedule = schedule_factory(args.schedule, epochs)
    data = load_dataset(args.dataset, seed=args.seed)
    out = sys.stdout
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=out))
    print(f"data: {data.name}; {len(data.y_train)} train / {len(data.y_test)} test",
          file=out)
    say(f"model: MLP {data.features}-{args.hidden}-{data.classes}, tanh, softmax "
        f"cross-entropy, hand-written backprop (examples/mlp.py); {epochs} epochs of batch "
        f"{args.batch_size}, seed {args.seed}"
        + (f"; schedule {schedule.label}, stepped per epoch" if schedule else ""))
    runs = []
    for cls, lr in zip(classes, lrs, strict=True):
        say(f"{cls.__name__} (lr {lr:g}, from {_origin(cls)})")
        runs.append(train(cls, lr, data, epochs=epochs, batch_size=args.batch_size,
                          seed=args.seed, hidden=args.hidden, schedule=schedule, out=out,
                          bar=out.isatty() and not args.quiet, verbose=not args.quiet))
    for run in runs:
        print(f"{run.name}: test accuracy {run.test_accuracy[-1]:.3f} after "
              f"{len(run.test_accuracy)} epochs ({run.seconds:.1f} s of training)")
    if args.plot:
        short = data.name.split(" (")[0]
        title = f"optdsl demo: {short}, MLP {data.features}-{args.hidden}-{data.classes}"
        try:
            plot_runs(runs, args.plot, title)
        except OSError as exc:
            raise OptdslError(f"cannot write {args.plot}: {exc.strerror or exc}") from None
        except OptdslError:  # no matplotlib: the training still counts
            print(f"no plot drawn: it needs matplotlib ({DEMO_EXTRA})", file=sys.stderr)
        else:
            print(f"wrote {args.plot}", file=sys.stderr)  # as the other commands do
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _origin(cls: type) -> str:
    """Where a class's spec came from: ``stdlib/adam.opt``, ``examples/lion.opt``, a path."""
    from ._resources import data_dir

    where = Path(cls._spec.filename)
    try:
        if where.resolve().parent == data_dir("examples").resolve():
            return f"examples/{where.name}"
    except FileNotFoundError:
        pass
    return str(where)
