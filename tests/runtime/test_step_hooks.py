"""Step hooks (torch's register_step_pre_hook / register_step_post_hook) and extra kernel
outputs requested through the runtime (``request_extras`` / ``extra_output``)."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl import Param
from optdsl.optim import SGD, Adam


def _params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [Param(rng.standard_normal(s).astype(dtype)) for s in ((3, 4), (5,))]


def _set_grads(params, step):
    rng = np.random.default_rng(100 + step)
    for p in params:
        p.grad = rng.standard_normal(p.data.shape).astype(p.data.dtype)


def test_pre_and_post_hooks_run_in_order_and_can_be_removed():
    params = _params()
    opt = SGD(params, lr=0.1)
    seen = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", o,
                                                                          o.state[params[0]]
                                                                          .get("step"))))
    post = opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", o,
                                                                            o.state[params[0]]
                                                                            .get("step"))))
    _set_grads(params, 0)
    opt.step()
    assert seen == [("pre", opt, None), ("post", opt, 1)]
    pre.remove()
    post.remove()
    post.remove()  # a second remove is harmless, as in torch
    opt.step()
    assert len(seen) == 2


def test_a_hook_must_be_callable():
    with pytest.raises(TypeError, match="must be callable"):
        SGD(_params(), lr=0.1).register_step_pre_hook(3)


@pytest.mark.parametrize("flatten", [False, True], ids=["separate", "flat"])
def test_requested_extras_are_written_by_the_step_and_withdrawn(flatten):
    params = _params()
    if flatten:
        optdsl.flatten(params)
    opt = Adam(params, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    plain = set(opt._spec.kernels)
    opt.request_extras("test", ("dlr:lr", "update"))
    for step in range(4):  # the first step param by param, then the plan
        before = [p.data.copy() for p in params]
        _set_grads(params, step)
        if flatten:
            for p in params:
                p.grad = p.grad  # rebinding is fine: the plan is remade
        opt.step()
        for p, old in zip(params, before, strict=True):
            np.testing.assert_allclose(opt.extra_output(p, "diag:update"), p.data - old,
                                       rtol=1e-12, atol=1e-15)
            # AdamW is affine in lr: p_new = p - lr * (wd * p + step_dir), so the update
            # divided by lr is the derivative.
            np.testing.assert_allclose(opt.extra_output(p, "dlr:lr") * 0.01, p.data - old,
                                       rtol=1e-10, atol=1e-15)
    assert opt.extra_output(params[0], "track:nothing") is None
    assert opt.extra_output(Param(np.zeros(2)), "dlr:lr") is None
    opt.request_extras("test", None)
    used = set()
    original = opt._spec.kernel

    def spy(backend, path, *extras):
        used.add(extras)
        return original(backend, path, *extras)

    opt._spec.kernel = spy
    try:
        _set_grads(params, 9)
        for p in params:
            p.grad = p.grad.copy()  # new arrays: the step replans and asks for kernels
        opt.step()
    finally:
        del opt._spec.kernel
    assert used == {()}  # the plain kernels again: nothing extra is computed
    assert plain <= set(opt._spec.kernels)


def test_extras_of_narrow_params_are_stored_in_the_compute_dtype():
    p = Param(np.ones(4, np.float16))
    opt = SGD([p], lr=0.5, master_weights=True)
    opt.request_extras("test", ("update",))
    p.grad = np.full(4, 1e-3, np.float16)
    opt.step()
    update = opt.extra_output(p, "diag:update")
    assert update.dtype == np.float32
    np.testing.assert_allclose(update, -0.5 * np.float32(np.float16(1e-3)), rtol=1e-6)


def test_a_lazy_step_without_rows_writes_zero_extras():
    p = Param(np.zeros((4, 2)))
    opt = SGD([p], lr=0.1, lazy=True)
    opt.request_extras("test", ("dlr:lr",))
    p.grad = optdsl.RowSparse(np.array([1, 3]), np.ones((2, 2)))
    opt.step()
    np.testing.assert_array_equal(opt.extra_output(p, "dlr:lr"), [[0, 0], [-1, -1], [0, 0],
                                                                   [-1, -1]])
    p.grad = optdsl.RowSparse(np.zeros(0, np.int64), np.ones((0, 2)))
    opt.step()  # nothing stepped: no derivative left over from the step before
    np.testing.assert_array_equal(opt.extra_output(p, "dlr:lr"), np.zeros((4, 2)))
