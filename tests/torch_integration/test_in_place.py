"""optdsl.torch steps the tensors in place: the same tensor objects at the same addresses,
the optdsl params viewing their memory. With ``flatten=True`` the params and gradients
live in one buffer per dtype, and a step is one kernel call however many tensors."""

from __future__ import annotations

from itertools import pairwise
from unittest import mock

import numpy as np
import pytest
from torch_cases import (
    assert_close,
    batch,
    copies,
    loss_of,
    mlp,
    torch,
    train_step,
    unchanged,
)

import optdsl.torch as ot
from optdsl.runtime import Optimizer as OptdslOptimizer


@pytest.fixture
def launches():
    """The kernel calls optdsl makes: a list, one entry (the element count) per call."""
    calls = []
    real = OptdslOptimizer._launch

    def spy(self, kernel, backend, n, *args, **kwargs):
        calls.append(n)
        return real(self, kernel, backend, n, *args, **kwargs)

    with mock.patch.object(OptdslOptimizer, "_launch", spy):
        yield calls


def test_tensors_are_updated_in_place_zero_copy(launches):
    model = mlp()
    params = list(model.parameters())
    addresses = [p.data_ptr() for p in params]
    before = copies(params)
    opt = ot.Adam(model.parameters(), lr=0.1)
    for step in range(3):
        train_step(model, opt, step)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert [p.data_ptr() for p in params] == addresses
    assert not any(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for p, view in zip(params, opt.inner.param_groups[0]["params"], strict=True):
        assert np.shares_memory(view.data, p.detach().numpy())
    assert len(launches) == 3 * len(params)  # separate tensors: a call each


def test_flatten_steps_in_one_kernel_call_with_the_same_numbers(launches):
    ours, plain, theirs = mlp(), mlp(), mlp()
    params = list(ours.parameters())
    opt = ot.Adam(ours.parameters(), lr=0.1, flatten=True)
    ref_plain = ot.Adam(plain.parameters(), lr=0.1)
    ref = torch.optim.Adam(theirs.parameters(), lr=0.1)
    assert all(a is b for a, b in zip(ours.parameters(), params, strict=True))
    # one buffer: each param starts where the one before ends, and so do the gradients
    size = params[0].element_size()
    for a, b in pairwise(params):
        assert a.data_ptr() + a.numel() * size == b.data_ptr()
        assert a.grad.data_ptr() + a.numel() * size == b.grad.data_ptr()
    grads = [p.grad for p in params]
    for step in range(4):
        del launches[:]
        train_step(ours, opt, step, set_to_none=step % 2 == 0)
        if step:  # the first step makes the state param by param, and plans the rest
            assert launches == [sum(p.numel() for p in params)], step
        train_step(plain, ref_plain, step)
        train_step(theirs, ref, step)
        assert unchanged(ours.parameters(), plain.parameters())  # bit for bit
        assert_close(ours.parameters(), theirs.parameters())
    # zero_grad zeroes in place: the gradients are still the flat buffer's views
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))


def test_flattened_gradients_made_anew_go_back_into_the_buffer(launches):
    ours, theirs = mlp(), mlp()
    opt = ot.SGD(ours.parameters(), lr=0.1, momentum=0.9, flatten=True)
    ref = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    grads = [p.grad for p in ours.parameters()]
    for step in range(3):
        del launches[:]
        for model, o in ((ours, opt), (theirs, ref)):
            model.zero_grad()  # the module's: sets every .grad to None
            loss_of(model, step).backward()  # torch makes new gradient tensors
            o.step()
        assert len(launches) == (4 if step == 0 else 1)
    assert all(p.grad is g for p, g in zip(ours.parameters(), grads, strict=True))
    assert_close(ours.parameters(), theirs.parameters())


def test_params_without_a_gradient_are_skipped_flat_or_not(launches):
    for flatten in (False, True):
        model = mlp()
        opt = ot.Adam(model.parameters(), lr=0.1, flatten=flatten)
        frozen = model[0].bias
        before = frozen.detach().clone()
        opt.zero_grad()
        loss_of(model, 0).backward()
        frozen.grad = None
        opt.step()
        assert torch.equal(frozen, before)
        assert len(opt.state[frozen]) == 0 and len(opt.state[model[0].weight]) == 3


def test_non_contiguous_and_float32_params_step_as_torch_does():
    # a transposed view: not contiguous
    ours = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64).t())
    theirs = torch.nn.Parameter(ours.detach().clone())
    assert not ours.is_contiguous()
    small = torch.nn.Parameter(torch.randn(3, dtype=torch.float32))
    small_ref = torch.nn.Parameter(small.detach().clone())
    address = ours.data_ptr()
    opt = ot.RMSprop([ours, small], lr=0.01, momentum=0.9)
    ref = torch.optim.RMSprop([theirs, small_ref], lr=0.01, momentum=0.9)
    for step in range(3):
        for p, q, o in ((ours, small, opt), (theirs, small_ref, ref)):
            o.zero_grad()
            ((p ** 2).sum() * (step + 1) + (q ** 3).sum()).backward()
            o.step()
    assert ours.data_ptr() == address
    assert_close(ours, theirs)
    assert_close(small, small_ref, torch.float32)


def test_version_counters_advance_as_torch_s_in_place_updates_do():
    for make in (ot.SGD, torch.optim.SGD):
        w = torch.nn.Parameter(torch.ones(3))
        opt = make([w], lr=0.1)
        w.grad = torch.ones(3)
        loss = (w * w).sum()  # saves w for its backward
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_bfloat16_params_step_in_place():
    pytest.importorskip("ml_dtypes", reason="bfloat16 NumPy views")
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ref = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    address = w.data_ptr()
    for p, o in ((w, ot.SGD([w], lr=0.5)), (ref, torch.optim.SGD([ref], lr=0.5))):
        p.grad = torch.full((4,), 0.25, dtype=torch.bfloat16)
        o.step()
    assert w.data_ptr() == address and torch.equal(w, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and CUDA torch")
def test_cuda_tensors_step_in_place_through_dlpack():  # pragma: no cover - GPU only
    pytest.importorskip("cupy", reason="CUDA tensors step through CuPy")
    ours, theirs = mlp().cuda(), mlp().cuda()
    addresses = [p.data_ptr() for p in ours.parameters()]
    for flatten in (False, True):
        opt = ot.Adam(ours.parameters(), lr=0.1, flatten=flatten)
        ref = torch.optim.Adam(theirs.parameters(), lr=0.1)
        for step in range(3):
            for model, o in ((ours, opt), (theirs, ref)):
                o.zero_grad()
                x, y = (t.cuda() for t in batch(step))
                torch.nn.functional.cross_entropy(model(x), y).backward()
                o.step()
        torch.cuda.synchronize()
        assert_close([p.cpu() for p in ours.parameters()],
                     [p.cpu() for p in theirs.parameters()])
        if not flatten:
            assert [p.data_ptr() for p in ours.parameters()] == addresses
