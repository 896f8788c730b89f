"""``optdsl demo``: train a small NumPy MLP with any stdlib or user optimizer.

The data is generated (three interleaved spirals, 2-D), so the demo needs nothing but
numpy. Backpropagation is written out by hand; the optimizer is the only optdsl part.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .runtime import Param

DEFAULT_LR = {"SGD": 0.1, "Adadelta": 1.0, "Adagrad": 0.05, "RMSprop": 0.003}


def spirals(n_per_class: int = 300, classes: int = 3, seed: int = 0):
    """Three noisy interleaved spirals: a small problem a linear model cannot solve."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 4.0, (c + 1) * 4.0, n_per_class)
        theta = theta + rng.normal(0.0, 0.2, n_per_class)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order], y[order]


class MLP:
    """x -> tanh(x W1 + b1) -> W2 + b2 -> softmax cross-entropy."""

    def __init__(self, sizes=(2, 64, 3), seed: int = 0):
        rng = np.random.default_rng(seed)
        n_in, n_hidden, n_out = sizes
        self.w1 = Param(rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_hidden)).astype(np.float32),
                        name="w1")
        self.b1 = Param(np.zeros(n_hidden, np.float32), name="b1")
        self.w2 = Param(rng.normal(0, 1 / np.sqrt(n_hidden), (n_hidden, n_out))
                        .astype(np.float32), name="w2")
        self.b2 = Param(np.zeros(n_out, np.float32), name="b2")

    def params(self) -> list[Param]:
        return [self.w1, self.b1, self.w2, self.b2]

    def forward(self, x):
        h = np.tanh(x @ self.w1.data + self.b1.data)
        return h, h @ self.w2.data + self.b2.data

    def loss_and_grads(self, x, y) -> float:
        h, logits = self.forward(x)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        n = len(y)
        loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
        d_logits = probs
        d_logits[np.arange(n), y] -= 1
        d_logits /= n
        self.w2.grad = (h.T @ d_logits).astype(np.float32)
        self.b2.grad = d_logits.sum(axis=0).astype(np.float32)
        d_h = (d_logits @ self.w2.data.T) * (1 - h * h)
        self.w1.grad = (x.T @ d_h).astype(np.float32)
        self.b1.grad = d_h.sum(axis=0).astype(np.float32)
        return loss

    def accuracy(self, x, y) -> float:
        return float((self.forward(x)[1].argmax(axis=1) == y).mean())


def optimizer_class(name: str):
    from . import optim
    from .api import compile as compile_spec

    if name in optim.STDLIB:
        return optim.load(name)
    if Path(name).is_file():
        return compile_spec(Path(name))
    raise SystemExit(f"optdsl demo: {name!r} is neither a stdlib optimizer "
                     f"({', '.join(optim.STDLIB)}) nor a .opt file")


def main(args) -> int:
    cls = optimizer_class(args.optimizer)
    x, y = spirals(seed=args.seed)
    split = int(0.8 * len(y))
    x_train, y_train, x_test, y_test = x[:split], y[:split], x[split:], y[split:]
    model = MLP(seed=args.seed)
    lr = args.lr if args.lr is not None else DEFAULT_LR.get(cls.__name__, 0.01)
    opt = cls(model.params(), lr=lr)
    print(f"optdsl demo: {cls.__name__} (lr={lr}) on 3 spirals, {split} train / "
          f"{len(y) - split} test points, MLP 2-64-3")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(split)
        losses = []
        for i in range(0, split, 32):
            batch = order[i:i + 32]
            opt.zero_grad()
            losses.append(model.loss_and_grads(x_train[batch], y_train[batch]))
            opt.step()
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  "
                  f"test accuracy {model.accuracy(x_test, y_test):.3f}")
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s; final test accuracy {model.accuracy(x_test, y_test):.3f}")
    return 0
