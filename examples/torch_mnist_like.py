"""Train a small conv net on synthetic 28x28 "digits" with a user-written .opt rule.

The rule (Signum below, or any .opt file given with --rule) is compiled by optdsl and
turned into a torch optimizer class by ``optdsl.torch.from_rule``; it steps the model's
tensors in place, in one kernel call per step (``flatten=True``), under torch's own
CosineAnnealingLR.

    python examples/torch_mnist_like.py            # 8,000 images, 3 epochs
    python examples/torch_mnist_like.py --small    # 2,000 images, 2 epochs (seconds)
    python examples/torch_mnist_like.py --rule my_rule.opt --lr 0.01

The data: each class is a fixed pattern of three strokes, drawn at a random shift of up
to 3 pixels, with a random brightness, under Gaussian noise (made from --seed, so runs
repeat). A linear model does poorly on it; the conv net learns it in an epoch or two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import optdsl
import optdsl.torch

SIGNUM = '''
optimizer Signum
"""Signum (Bernstein et al., 2018): the sign of a momentum of the gradients, with
decoupled weight decay."""

hyper lr = 1e-3 in [0, inf)
hyper momentum = 0.9 in [0, 1)
hyper weight_decay = 0.0 in [0, inf)

state momentum_buffer = 0

update:
    momentum_buffer = momentum * momentum_buffer + (1 - momentum) * g
    p = p * (1 - lr * weight_decay) - lr * sign(momentum_buffer)
'''

SIZE, CLASSES, SHIFT = 28, 10, 3


def prototypes(rng: np.random.Generator) -> np.ndarray:
    """One 28x28 pattern per class: three strokes between random points."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.zeros((CLASSES, SIZE, SIZE), np.float32)
    for k in range(CLASSES):
        for _ in range(3):
            (y0, x0), (y1, x1) = rng.uniform(6, SIZE - 6, size=(2, 2))
            # distance of every pixel to the segment (y0, x0)-(y1, x1)
            dy, dx = y1 - y0, x1 - x0
            t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-9), 0, 1)
            dist = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
            out[k] = np.maximum(out[k], np.clip(2.0 - dist, 0, 1))
    return out


def make_data(n: int, rng: np.random.Generator, patterns: np.ndarray):
    """``n`` noisy, shifted images of the patterns, and their labels."""
    labels = rng.integers(0, CLASSES, n)
    images = np.empty((n, 1, SIZE, SIZE), np.float32)
    shifts = rng.integers(-SHIFT, SHIFT + 1, size=(n, 2))
    brightness = rng.uniform(0.6, 1.4, n).astype(np.float32)
    for i in range(n):
        images[i, 0] = np.roll(patterns[labels[i]], tuple(shifts[i]), axis=(0, 1))
    images *= brightness[:, None, None, None]
    images += rng.normal(0, 0.6, images.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels)


def conv_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, CLASSES))


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2,000 images, 2 epochs")
    parser.add_argument("--epochs", type=int, help="epochs (default 3; 2 with --small)")
    parser.add_argument("--rule", help="a .opt file to train with (default: Signum above)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-flatten", action="store_true",
                        help="step the tensors one by one instead of in one flat buffer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.small else 3)
    n_train = 2000 if args.small else 8000

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    patterns = prototypes(rng)
    train_x, train_y = make_data(n_train, rng, patterns)
    test_x, test_y = make_data(1000, rng, patterns)

    Rule = optdsl.torch.from_rule(args.rule or SIGNUM)  # a .opt path or the spec's text
    model = conv_net()
    opt = Rule(model.parameters(), lr=args.lr, flatten=not args.no_flatten)
    steps = epochs * -(-n_train // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"rule {Rule.__name__}, {n_params:,} params"
          f"{'' if args.no_flatten else ' in one flat buffer'}, {n_train:,} training images")

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n_train)
        total = 0.0
        for i in range(0, n_train, args.batch_size):
            batch = order[i: i + args.batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        acc = accuracy(model, test_x, test_y)
        print(f"epoch {epoch}: loss {total / n_train:.4f}, test accuracy {acc:.1%} "
              f"({time.perf_counter() - start:.1f} s)")
    return {"loss": total / n_train, "accuracy": acc, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    main()
