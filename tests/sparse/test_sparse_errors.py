"""Bad row-sparse input: each mistake raises its own error, naming the param as every
gradient error does, before any param group has stepped (nothing changes)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl import (
    GradientError,
    GradientTypeError,
    HyperError,
    HyperTypeError,
    Param,
    RowSparse,
    SparseGradientError,
    SparseGradientTypeError,
    optim,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fakecupy, cuda_cpu

import fakecupy  # noqa: E402

fake_cupy = fakecupy.fake_cupy  # the fixture: cupy is the fake for one test

WHERE = r"Adam: param 'emb' \(param 0 of group 1\): "

CASES = {
    "float indices": ((5, 3), lambda: RowSparse(np.array([1.0, 2.0]), np.ones((2, 3))),
                      SparseGradientTypeError, "RowSparse indices must be integers, got "
                      "dtype float64"),
    "bool indices": ((5, 3), lambda: RowSparse(np.array([True, False]), np.ones((2, 3))),
                     SparseGradientTypeError, "RowSparse indices must be integers, got "
                     "dtype bool"),
    "2-D indices": ((5, 3), lambda: RowSparse(np.array([[1], [2]]), np.ones((2, 3))),
                    SparseGradientError, r"RowSparse indices must be 1-D \(one row number "
                    r"per row of values\), got shape \(2, 1\)"),
    "index too large": ((5, 3), lambda: RowSparse(np.array([4, 5, 0]), np.ones((3, 3))),
                        SparseGradientError, r"RowSparse row index 5 is out of range for a "
                        r"parameter of 5 rows \(0 to 4\)"),
    "negative index": ((5, 3), lambda: RowSparse(np.array([3, -1]), np.ones((2, 3))),
                       SparseGradientError, "RowSparse row index -1 is out of range"),
    "trailing shape": ((5, 3), lambda: RowSparse(np.array([1, 2]), np.ones((2, 4))),
                       SparseGradientError, r"RowSparse values shape \(2, 4\) does not match "
                       r"\(2, 3\) \(one row of the parameter of shape \(5, 3\) per index\)"),
    "rows of values": ((5, 3), lambda: RowSparse(np.array([1, 2]), np.ones((3, 3))),
                       SparseGradientError, r"RowSparse values of shape \(3, 3\) do not have "
                       r"one row per index \(2 indices\)"),
    "values dtype": ((5, 3), lambda: RowSparse(np.array([1]), np.ones((1, 3), np.float32)),
                     SparseGradientTypeError, "RowSparse values dtype float32 does not match "
                     "parameter dtype float64"),
    "values not an array": ((5, 3), lambda: RowSparse(np.array([1]), [[1.0, 2.0, 3.0]]),
                            SparseGradientTypeError, "RowSparse values must be a NumPy or "
                            "CuPy array, got list"),
    "indices not an array": ((5, 3), lambda: RowSparse({1}, np.ones((1, 3))),
                             SparseGradientTypeError, "RowSparse indices must be a NumPy or "
                             "CuPy integer array, got set"),
    "0-d param": ((), lambda: RowSparse(np.array([0]), np.ones(1)),
                  SparseGradientError, r"a RowSparse gradient needs a parameter with rows "
                  r"\(at least one dimension\); this parameter is 0-d"),
}


def _two_groups(shape):
    """Group 0: a param with a good dense gradient; group 1: 'emb', for the bad one."""
    good = Param(np.ones((4,)), grad=np.ones(4))
    emb = Param(np.ones(shape), name="emb")
    return good, emb


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_sparse_raises_before_anything_steps(case):
    shape, make, error, message = CASES[case]
    good, emb = _two_groups(shape)
    opt = optim.Adam([{"params": [good]}, {"params": [emb]}], lr=0.1)
    emb.grad = make()
    with pytest.raises(error, match=WHERE + message):
        opt.step()
    np.testing.assert_array_equal(good.data, np.ones(4))
    np.testing.assert_array_equal(emb.data, np.ones(shape))
    assert not opt.state
    # The same with the lazy path, and with clipping and the non-finite check on.
    opt = optim.Adam([{"params": [good]}, {"params": [emb]}], lr=0.1, lazy=True,
                     max_grad_norm=1.0, skip_nonfinite=True)
    with pytest.raises(error, match=WHERE + message):
        opt.step()
    np.testing.assert_array_equal(good.grad, np.ones(4))  # not clipped either
    assert not opt.state


def test_the_error_classes_are_gradient_errors():
    assert issubclass(SparseGradientError, GradientError)
    assert issubclass(SparseGradientTypeError, SparseGradientError)
    assert issubclass(SparseGradientTypeError, GradientTypeError)
    assert issubclass(SparseGradientTypeError, TypeError)
    assert optdsl.SparseGradientError is SparseGradientError


def test_values_on_another_device_than_the_param(fake_cupy):
    good, emb = _two_groups((5, 3))
    opt = optim.Adam([{"params": [good]}, {"params": [emb]}], lr=0.1)
    emb.grad = RowSparse(np.array([1]), fake_cupy.ones((1, 3)))
    with pytest.raises(SparseGradientError, match=WHERE + r"the RowSparse values \(cupy"
                       r"\.ndarray float64 on GPU 0\) do not live where the parameter does "
                       r"\(numpy\.ndarray float64\)"):
        opt.step()
    emb.grad = RowSparse(fake_cupy.asarray(np.array([1])), np.ones((1, 3)))
    with pytest.raises(SparseGradientError, match=WHERE + r"RowSparse indices \(cupy.ndarray "
                       r"int64 on GPU 0\) must be a NumPy array or live where the values do"):
        opt.step()
    assert not opt.state


def test_sparse_adam_refuses_dense_gradients_as_torch_does():
    good = Param(np.ones((4, 2)), name="w", grad=RowSparse([1], np.ones((1, 2))))
    dense = Param(np.ones((4, 2)), name="d", grad=np.ones((4, 2)))
    opt = optim.SparseAdam([good, dense])
    with pytest.raises(SparseGradientTypeError, match=r"SparseAdam: param 'd' \(param 1 of "
                       r"group 0\): SparseAdam does not support dense gradients \(got numpy"
                       r"\.ndarray float64\); give it an optdsl.RowSparse gradient, or use "
                       "Adam"):
        opt.step()
    np.testing.assert_array_equal(good.data, np.ones((4, 2)))
    assert not opt.state
    assert optim.SparseAdam.sparse_only and not optim.Adam.sparse_only


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"eps": 0.0}, "eps"),
    ({"betas": (1.0, 0.9)}, "betas"), ({"betas": (0.9, -0.1)}, "betas"),
])
def test_sparse_adam_validates_its_hypers_as_torch_does(kwargs, message):
    with pytest.raises(HyperError, match=message):
        optim.SparseAdam([Param(np.ones(3))], **kwargs)


def test_sparse_adam_takes_torch_keywords_only():
    with pytest.raises(HyperTypeError, match="weight_decay"):
        optim.SparseAdam([Param(np.ones(3))], weight_decay=0.1)
    opt = optim.SparseAdam([Param(np.ones(3))], lr=0.1, betas=(0.5, 0.6), eps=1e-3,
                           maximize=True)
    assert opt.defaults == {"lr": 0.1, "betas": (0.5, 0.6), "eps": 1e-3, "maximize": True}


def test_lazy_must_be_a_bool_and_sparse_adam_is_always_lazy():
    p = Param(np.ones((3, 2)))
    with pytest.raises(HyperTypeError, match="Adam: lazy must be True or False, got 'yes'"):
        optim.Adam([p], lazy="yes")
    with pytest.raises(HyperTypeError, match=r"Adam: param group 0: lazy must be True or "
                       "False, got 1"):
        optim.Adam([{"params": [p], "lazy": 1}])
    with pytest.raises(HyperTypeError, match="SparseAdam: lazy=False is not possible"):
        optim.SparseAdam([p], lazy=False)
    with pytest.raises(HyperTypeError, match="SparseAdam: param group 0: lazy=False is not "
                       "possible"):
        optim.SparseAdam([{"params": [p], "lazy": False}])
    assert optim.SparseAdam([p]).lazy and optim.SparseAdam([p], lazy=True).lazy
    assert not optim.Adam([p]).lazy and optim.Adam([p], lazy=True).lazy


def test_a_group_lazy_key_edited_later_is_checked_before_anything_steps():
    good, emb = _two_groups((5, 3))
    opt = optim.Adam([{"params": [good]}, {"params": [emb]}], lr=0.1)
    opt.param_groups[1]["lazy"] = "no"
    emb.grad = RowSparse([1], np.ones((1, 3)))
    with pytest.raises(HyperTypeError, match="Adam: param group 1: lazy must be True or "
                       "False, got 'no'"):
        opt.step()
    np.testing.assert_array_equal(good.data, np.ones(4))
    assert not opt.state


def test_structural_errors_outside_a_step_say_what_is_wrong():
    with pytest.raises(SparseGradientTypeError, match="^RowSparse indices must be integers"):
        RowSparse(np.array([0.5]), np.ones((1, 2))).coalesce()
    with pytest.raises(SparseGradientError, match="^RowSparse values of shape"):
        optdsl.clip_grad_norm_([Param(np.ones((3, 2)),
                                      grad=RowSparse([0, 1], np.ones((1, 2))))], 1.0)
