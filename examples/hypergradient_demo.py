"""Hypergradient descent rescues a poor learning rate (docs/autotune.md).

A small MLP (NumPy, hand-written backprop) classifies a fixed synthetic dataset: points in
10 dimensions labelled into 4 classes by a random teacher network. SGD and Adam each start
from a poor lr, once with the lr fixed and once tuned online by
``optdsl.autotune.HypergradientLR``; the table gives each run's final training loss, test
accuracy and the lr it ended with.

    python examples/hypergradient_demo.py                 # the table, in a few seconds
    python examples/hypergradient_demo.py --plot docs/hypergradient.png

The plot (loss curves and lr trajectories) needs matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import optdsl  # noqa: E402
from optdsl.autotune import HypergradientLR  # noqa: E402
from optdsl.optim import SGD, Adam  # noqa: E402

FEATURES, CLASSES, HIDDEN = 10, 4, 32

# The best fixed lrs for this task are about 1 for SGD and 0.03 for Adam (a sweep over
# powers of 3); each optimizer starts 100x too small and 10x too large. The betas were
# picked once per optimizer, for both starts.
BEST_LR = {"SGD": 1.0, "Adam": 0.03}
RUNS = (  # (label, optimizer, starting lr, beta)
    ("SGD, lr 100x too small", SGD, 0.01, 0.3),
    ("SGD, lr 10x too large", SGD, 10.0, 0.3),
    ("Adam, lr 100x too small", Adam, 3e-4, 1e-2),
    ("Adam, lr 10x too large", Adam, 0.3, 1e-2),
)


@dataclass
class Data:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_data(n: int, seed: int = 0) -> Data:
    """``n`` training and ``n`` test points, labelled by a random tanh teacher network."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((FEATURES, 16))
    w2 = rng.standard_normal((16, CLASSES))
    x = rng.standard_normal((2 * n, FEATURES))
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return Data(x[:n], y[:n], x[n:], y[n:])


def init_params(seed: int = 1) -> list[optdsl.Param]:
    rng = np.random.default_rng(seed)
    return [optdsl.Param(rng.standard_normal((FEATURES, HIDDEN)) / np.sqrt(FEATURES), "w1"),
            optdsl.Param(np.zeros(HIDDEN), "b1"),
            optdsl.Param(rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN), "w2"),
            optdsl.Param(np.zeros(CLASSES), "b2")]


def forward(params, x, y=None):
    """The mean cross-entropy (and the gradients, given labels ``y``), and the logits."""
    w1, b1, w2, b2 = (p.data for p in params)
    hidden = np.tanh(x @ w1 + b1)
    logits = hidden @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    if y is None:
        return logits
    loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
    dlogits = probs
    dlogits[np.arange(len(y)), y] -= 1
    dlogits /= len(y)
    dhidden = (dlogits @ w2.T) * (1 - hidden**2)
    grads = (x.T @ dhidden, dhidden.sum(0), hidden.T @ dlogits, dlogits.sum(0))
    return loss, grads


def train(optimizer, lr: float, beta: float | None, data: Data, steps: int, batch: int,
          seed: int = 2) -> dict:
    """Minibatch training; ``beta`` None keeps the lr fixed. Returns the curves and the
    final numbers."""
    params = init_params()
    # NumPy kernels: no JIT to wait for (numba's would be faster on large models)
    opt = optimizer(params, lr=lr, backend="numpy")
    tuner = None if beta is None else HypergradientLR(opt, beta=beta)
    rng = np.random.default_rng(seed)  # the same batches for every run
    losses, lrs = [], []
    for _ in range(steps):
        rows = rng.integers(0, len(data.y), batch)
        loss, grads = forward(params, data.x[rows], data.y[rows])
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        losses.append(loss)
        lrs.append(opt.param_groups[0]["lr"])
    final_loss, _ = forward(params, data.x, data.y)
    accuracy = float(np.mean(np.argmax(forward(params, data.x_test), 1) == data.y_test))
    if tuner is not None:
        tuner.remove()
    return {"losses": np.array(losses), "lrs": np.array(lrs), "loss": float(final_loss),
            "accuracy": accuracy, "lr": lrs[-1]}


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(width, len(values)))
    return np.convolve(values, np.ones(width) / width, mode="valid")


def plot(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 6.4),
                             sharex=True, squeeze=False)
    for column, (label, optimizer, fixed, tuned) in enumerate(results):
        top, bottom = axes[0][column], axes[1][column]
        width = max(1, len(fixed["losses"]) // 40)
        steps = np.arange(len(fixed["losses"]))[width - 1:]
        top.plot(steps, smooth(fixed["losses"], width), label="fixed lr", color="tab:gray")
        top.plot(steps, smooth(tuned["losses"], width), label="HypergradientLR",
                 color="tab:blue")
        top.set_title(label, fontsize=10)
        top.set_yscale("log")
        bottom.plot(fixed["lrs"], color="tab:gray")
        bottom.plot(tuned["lrs"], color="tab:blue")
        bottom.axhline(BEST_LR[optimizer.__name__], color="tab:green", linestyle=":",
                       label="best fixed lr")
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        if column == 0:
            top.set_ylabel("training loss (smoothed)")
            bottom.set_ylabel("lr")
            top.legend(fontsize=8)
            bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per run (400)")
    parser.add_argument("--samples", type=int, default=2000,
                        help="training (and test) points (2000)")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size (64)")
    parser.add_argument("--plot", metavar="PATH", help="save the curves (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib (pip install matplotlib)")
    data = make_data(args.samples)

    def row(label: str, lr: float, tuning: str, run: dict) -> None:
        print(f"{label:<25} {lr:>8g}  {tuning:<8} {run['loss']:>10.4f} {run['accuracy']:>8.3f} "
              f"{run['lr']:>10.3g}")

    print(f"{'run':<25} {'lr':>8}  {'tuning':<8} {'final loss':>10} {'test acc':>8} "
          f"{'lr reached':>10}")
    for optimizer in (SGD, Adam):
        name = optimizer.__name__
        lr = BEST_LR[name]
        row(f"{name}, best fixed lr", lr, "fixed",
            train(optimizer, lr, None, data, args.steps, args.batch))
    results = []
    for label, optimizer, lr, beta in RUNS:
        fixed = train(optimizer, lr, None, data, args.steps, args.batch)
        tuned = train(optimizer, lr, beta, data, args.steps, args.batch)
        row(label, lr, "fixed", fixed)
        row(label, lr, f"β={beta:g}", tuned)
        results.append((label, optimizer, fixed, tuned))
    if args.plot:
        plot(results, args.plot)
        print(f"saved {args.plot}")
    return results


if __name__ == "__main__":
    main()
