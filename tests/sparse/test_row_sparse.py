"""``optdsl.RowSparse`` itself: coalescing (sorted unique rows, duplicates summed in the
order given, on the host and, without atomics, on a GPU), ``to_dense``, its repr."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sparse_util import dense

from optdsl import Optimizer, Param, RowSparse, optim
from optdsl.sparse import _segment_sum


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.integers(0, 6), max_size=25), tail=st.sampled_from([(), (2,), (2, 3)]),
       seed=st.integers(0, 2 ** 16))
def test_coalesce_sums_duplicates_in_the_order_given(rows, tail, seed):
    values = np.random.default_rng(seed).standard_normal((len(rows), *tail)).astype(
        np.float32)
    idx = np.array(rows, np.int64)
    kept = values.copy(), idx.copy()
    done = RowSparse(idx, values).coalesce()
    np.testing.assert_array_equal(done.indices, np.unique(idx))
    assert done.indices.dtype == idx.dtype and done.is_coalesced()
    want = dense(RowSparse(idx, values), (7, *tail))  # np.add.at: sequential, in order
    np.testing.assert_array_equal(done.values, want[np.unique(idx)])
    np.testing.assert_array_equal(RowSparse(idx, values).to_dense((7, *tail)), want)
    # The CuPy path's summation (passes by occurrence), run on NumPy: the same bits.
    _, inverse = np.unique(idx, return_inverse=True)
    np.testing.assert_array_equal(_segment_sum(values, inverse.reshape(-1),
                                               len(np.unique(idx))), want[np.unique(idx)])
    # Coalescing never writes into the arrays it was given.
    np.testing.assert_array_equal(values, kept[0])
    np.testing.assert_array_equal(idx, kept[1])


def test_a_coalesced_gradient_is_its_own_coalesced_form():
    g = RowSparse(np.array([0, 3, 4]), np.ones((3, 2)))
    assert g.coalesce() is g and g.coalesce_() is g and g.values is g.values
    h = RowSparse([4, 0, 4], np.arange(6.0).reshape(3, 2))
    assert not h.is_coalesced()
    values = h.values
    assert h.coalesce_() is h and h.is_coalesced() and h.values is not values
    np.testing.assert_array_equal(h.indices, [0, 4])
    np.testing.assert_array_equal(h.values, [[2, 3], [4, 6]])


def test_lists_are_taken_and_repr_says_what_it_holds():
    g = RowSparse([1, 2], np.zeros((2, 5), np.float32))
    assert g.indices.dtype.kind == "i" and g.dtype == np.float32
    assert repr(g) == "RowSparse(rows=2, values=numpy.ndarray float32 of shape (2, 5))"
    assert RowSparse([], np.zeros((0, 5))).indices.dtype == np.int64


def test_optimizer_takes_lazy_as_a_keyword():
    assert inspect.signature(Optimizer.__init__).parameters["lazy"].default is None


@pytest.mark.skipif("master_weights" not in inspect.signature(Optimizer.__init__).parameters,
                    reason="needs master weights")
def test_lazy_with_master_weights_steps_the_master_rows():
    """With the same rows every step, lazy Adam is dense Adam (an untouched row with zero
    moments does not move), so the lazy run must give the dense run's bits: the float16
    param rounded from its fp32 master, on the touched rows only."""
    start = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float16)
    runs = []
    for lazy in (True, False):
        p = Param(start.copy())
        opt = optim.Adam([p], lr=1e-2, lazy=lazy, master_weights=True)
        for step in range(1, 6):
            values = np.full((3, 4), 0.25 * step, np.float16)
            g = RowSparse([1, 4, 1], values)
            p.grad = g if lazy else g.to_dense((6, 4))
            opt.step()
        runs.append((p.data, opt.state[p]["master"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0][[1, 4]], start[[1, 4]])
    np.testing.assert_array_equal(runs[0][0][[0, 2, 3, 5]], start[[0, 2, 3, 5]])


@pytest.mark.skipif(not hasattr(Optimizer, "request_extras"), reason="needs kernel extras")
def test_lazy_extra_outputs_are_zero_outside_the_rows():
    """A kernel's extra outputs (diagnostics) in a lazy step: the rows' values, and zero
    for rows that did not step."""
    p = Param(np.random.default_rng(0).uniform(-1, 1, (5, 3)))
    opt = optim.Adam([p], lr=0.1, lazy=True)
    opt.request_extras("test", ("update",))
    for rows in ([0, 1, 3], [3, 1, 3]):
        before = p.data.copy()
        p.grad = RowSparse(rows, np.ones((3, 3)))
        opt.step()
        np.testing.assert_array_equal(opt.extra_output(p, "diag:update"), p.data - before)
        rest = np.setdiff1d(np.arange(5), rows)
        assert len(rest) and not opt.extra_output(p, "diag:update")[rest].any()
