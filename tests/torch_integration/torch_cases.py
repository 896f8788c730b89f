"""Shared pieces of the optdsl.torch tests: a small model, a training step, and
comparisons of two models' parameters."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optdsl.torch's optimizers drive torch models")

# Relative tolerance for params after training side by side with torch.optim; the
# absolute floor is that times the largest entry (entries near zero carry an absolute
# error of a few ulps of the others).
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def mlp(dtype=torch.float64, seed: int = 0) -> torch.nn.Module:
    """A two-layer MLP, the same for the same seed."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3)).to(dtype)


def batch(step: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s batch: one of two fixed batches, so that the loss falls."""
    g = torch.Generator().manual_seed(1000 + step % 2)
    return torch.randn(16, 6, generator=g, dtype=dtype), torch.randint(0, 3, (16,), generator=g)


def loss_of(model: torch.nn.Module, step: int) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    x, y = batch(step, dtype)
    return torch.nn.functional.cross_entropy(model(x), y)


def train_step(model: torch.nn.Module, opt, step: int, set_to_none: bool = True) -> float:
    opt.zero_grad(set_to_none=set_to_none)
    loss = loss_of(model, step)
    loss.backward()
    opt.step()
    return loss.item()


def assert_close(ours, theirs, dtype=torch.float64) -> None:
    """Tensors (or iterables of tensors, pairwise) equal to RTOL[dtype]."""
    if isinstance(ours, torch.Tensor):
        ours, theirs = [ours], [theirs]
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        a, b = a.detach().double().numpy(), b.detach().double().numpy()
        scale = float(np.abs(b).max()) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def unchanged(params, before) -> bool:
    """Whether every tensor of ``params`` equals its copy in ``before``, bit for bit."""
    return all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def copies(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]
