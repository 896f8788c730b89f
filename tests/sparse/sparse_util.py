"""Helpers shared by the sparse-gradient tests: deterministic row-sparse gradients (with
duplicate rows, other rows every step, some rows never touched), their dense equivalents,
and the same gradients as torch sparse COO tensors."""

from __future__ import annotations

import numpy as np

from optdsl import RowSparse

# Rows no gradient ever names, for params of at least this many rows.
NEVER = (2, 7)


def rows_for(step: int, n_rows: int, which: int = 0) -> np.ndarray:
    """Row numbers for one step: a different draw every step, with duplicates, never
    naming the rows in NEVER (nor any row >= n_rows)."""
    rng = np.random.default_rng(1000 * which + step)
    allowed = np.array([r for r in range(n_rows) if r not in NEVER])
    k = int(rng.integers(1, max(2, n_rows)))
    rows = rng.choice(allowed, size=k)
    rows[-1] = rows[0]  # always one duplicate at least
    return rows


def sparse_grad(step: int, data: np.ndarray, which: int = 0) -> RowSparse:
    """``0.5 * p[rows] + noise`` on :func:`rows_for`'s rows: depends on the current
    parameter, so a wrong update anywhere changes every later gradient."""
    rows = rows_for(step, data.shape[0], which)
    noise = np.random.default_rng(7 + 1000 * which + step).standard_normal(
        (len(rows), *data.shape[1:]))
    values = (np.asarray(data)[rows] * 0.5 + noise).astype(data.dtype)
    return RowSparse(rows, values)


def dense(grad: RowSparse, shape: tuple) -> np.ndarray:
    """The dense equivalent, summed independently of optdsl (duplicates in given order)."""
    out = np.zeros(shape, grad.values.dtype)
    np.add.at(out, np.asarray(grad.indices), grad.values)
    return out


def to_torch(grad: RowSparse, shape: tuple):
    """The same (uncoalesced) gradient as a torch sparse COO tensor of ``shape``."""
    import torch

    return torch.sparse_coo_tensor(torch.as_tensor(np.asarray(grad.indices))[None, :],
                                   torch.as_tensor(np.array(grad.values)), shape,
                                   check_invariants=True)


def untouched(n_rows: int, touched) -> np.ndarray:
    """The rows not in ``touched``."""
    return np.setdiff1d(np.arange(n_rows), np.asarray(touched))
