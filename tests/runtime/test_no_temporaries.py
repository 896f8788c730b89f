"""No parameter-sized temporaries: after a warm-up, a step allocates only small change.

NumPy reports its data allocations to tracemalloc, so the traced peak of one step bounds
every array the step creates, however short-lived.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from optdsl import Param
from optdsl.optim import SGD, Adam, RMSprop

N = 4 * 1024 * 1024  # 4M float32 elements: 16 MiB per array
BUDGET = 0.05  # of the parameter's bytes

CASES = [
    (Adam, {"lr": 1e-3}),
    (Adam, {"lr": 1e-3, "amsgrad": True, "weight_decay": 1e-2}),
    (RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.9}),
    (SGD, {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize(
    "cls, kwargs", CASES, ids=[f"{c[0].__name__}-{'-'.join(c[1])}" for c in CASES]
)
def test_step_allocates_no_parameter_sized_temporaries(cls, kwargs):
    rng = np.random.default_rng(0)
    p = Param(rng.standard_normal(N, dtype=np.float32).reshape(2048, 2048))
    p.grad = rng.standard_normal(N, dtype=np.float32).reshape(2048, 2048)
    opt = cls([p], **kwargs)
    opt.step()  # warm-up: state, scratch and kernels are created here
    opt.step()  # SGD's later steps run another kernel than its first
    before = p.data.copy()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not np.array_equal(p.data, before)  # the traced step did the work
    assert peak - base < BUDGET * p.data.nbytes, f"peak {peak - base} bytes in one step"


def test_tracemalloc_sees_a_parameter_sized_temporary():
    """The probe is sensitive: a naive out-of-place update would fail the budget."""
    data = np.ones(N, np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        data[...] = data - 0.1 * data
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base >= data.nbytes
