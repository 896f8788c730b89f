"""A small NumPy MLP with hand-written backprop: the model that ``optdsl demo`` trains.

The network is ``x -> tanh(x W1 + b1) -> ... -> W_out + b_out -> softmax``, trained on
the mean softmax cross-entropy. With ``a_0 = x``, ``z_k = a_{k-1} W_k + b_k``,
``a_k = tanh(z_k)`` for the hidden layers and ``z_L`` the logits, backprop is::

    dL/dz_L     = (softmax(z_L) - onehot(y)) / n
    dL/dW_k     = a_{k-1}^T dL/dz_k        dL/db_k = sum over rows of dL/dz_k
    dL/dz_{k-1} = (dL/dz_k W_k^T) * (1 - a_{k-1}^2)

The parameters are :class:`optdsl.Param` objects (an array ``.data`` and its ``.grad``),
so any optdsl optimizer steps them: ``opt = Adam(model.params(), lr=3e-3)``, then per
batch ``model.loss_and_grads(x, y)`` writes every ``.grad`` and ``opt.step()`` updates.

This file is the model's one home. ``optdsl demo`` loads it from here in a checkout, and
from the copy that the wheel carries in ``optdsl/_data/examples/`` (pyproject's
force-include, found by ``optdsl._resources.data_dir``), so what a reader sees here is
exactly what the demo runs. Run it directly for the shortest training loop::

    python examples/mlp.py           # Adam on the digits, 20 epochs, a few seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from optdsl import Param


class MLP:
    """A fully connected network: ``sizes = (inputs, hidden..., classes)``, tanh between
    layers, float32 weights drawn with ``seed`` (LeCun-normal: variance 1 / fan-in)."""

    def __init__(self, sizes: Sequence[int] = (64, 64, 10), seed: int = 0):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least inputs and outputs, got sizes={sizes}")
        rng = np.random.default_rng(seed)
        self.sizes = tuple(sizes)
        self.weights: list[Param] = []
        self.biases: list[Param] = []
        for k, (n_in, n_out) in enumerate(pairwise(sizes), 1):
            w = rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
            self.weights.append(Param(w, name=f"w{k}"))
            self.biases.append(Param(np.zeros(n_out, np.float32), name=f"b{k}"))

    def params(self) -> list[Param]:
        """Every parameter, layer by layer: w1, b1, w2, b2, ..."""
        return [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        """The activations ``[x, a_1, ..., a_{L-1}, logits]``."""
        acts = [x]
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True), 1):
            z = acts[-1] @ w.data + b.data
            acts.append(z if k == len(self.weights) else np.tanh(z))
        return acts

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[-1]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> float:
        """The mean cross-entropy of the batch; sets every parameter's ``.grad``."""
        acts = self.forward(x)
        probs = softmax(acts[-1])
        n = len(y)
        loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
        delta = probs  # dL/dz of the last layer, built in place
        delta[np.arange(n), y] -= 1.0
        delta /= n
        for k in range(len(self.weights) - 1, -1, -1):
            w, b, a_in = self.weights[k], self.biases[k], acts[k]
            w.grad = (a_in.T @ delta).astype(np.float32)
            b.grad = delta.sum(axis=0).astype(np.float32)
            if k:
                delta = (delta @ w.data.T) * (1.0 - a_in * a_in)
        return loss

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """``(mean cross-entropy, accuracy)`` on ``x, y``; no gradients."""
        probs = softmax(self.logits(x))
        loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
        return loss, float((probs.argmax(axis=1) == y).mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


if __name__ == "__main__":
    from optdsl.demo import load_dataset
    from optdsl.optim import Adam

    data = load_dataset(seed=0)
    model = MLP((data.features, 64, data.classes), seed=0)
    opt = Adam(model.params(), lr=3e-3)
    rng = np.random.default_rng(0)
    for epoch in range(1, 21):
        order = rng.permutation(len(data.y_train))
        for i in range(0, len(order), 32):
            batch = order[i:i + 32]
            opt.zero_grad()
            model.loss_and_grads(data.x_train[batch], data.y_train[batch])
            opt.step()
        loss, acc = model.evaluate(data.x_test, data.y_test)
        print(f"epoch {epoch:2d}  test loss {loss:.4f}  test accuracy {acc:.3f}")
    print(f"data: {data.name}")
