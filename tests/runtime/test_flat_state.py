"""Flat state: one buffer per (group, dtype), a view per param, and what users may do to it."""

from __future__ import annotations

import numpy as np
from rt_util import (
    adam_reference,
    assert_bits_equal,
    assert_close,
    grad,
    make_arrays,
    params_from,
    set_grads,
    train,
)

from optdsl import Param
from optdsl.optim import SGD, Adam, RMSprop

BETAS = (0.9, 0.999)


def _adam(params, **kw):
    return Adam(params, lr=0.01, **kw)


def test_state_of_a_group_lives_in_one_buffer():
    a, b, c = params_from(make_arrays(shapes=((4, 3), (5,), (2, 2))))
    opt = _adam([a, b, c])
    train(opt, [a, b, c], 1, 2)
    views = [opt.state[p][name] for p in (a, b, c) for name in ("exp_avg", "exp_avg_sq")]
    base = views[0].base
    assert base is not None
    for v in views:
        assert v.base is base
        assert np.shares_memory(v, base)
    assert opt.state[a]["exp_avg"].shape == (4, 3)
    # One buffer, laid end to end: as many elements as the group's state, plus under a
    # page per row of padding that keeps the rows' addresses apart (see _Layout).
    item = base.dtype.itemsize
    assert 2 * (12 + 5 + 4) <= base.size < 2 * (12 + 5 + 4) + 3 * 4096 // item
    # Views of different params do not overlap.
    assert not np.shares_memory(opt.state[a]["exp_avg"], opt.state[b]["exp_avg"])
    assert not np.shares_memory(opt.state[a]["exp_avg"], opt.state[a]["exp_avg_sq"])


def test_groups_and_dtypes_get_separate_buffers():
    a32, b32 = (Param(x) for x in make_arrays(np.float32))
    a64, b64 = (Param(x) for x in make_arrays(np.float64))
    opt = _adam([{"params": [a32, a64, b32]}, {"params": [b64]}])
    train(opt, [a32, a64, b32, b64], 1, 1)
    assert opt.state[a32]["exp_avg"].base is opt.state[b32]["exp_avg"].base
    assert opt.state[a32]["exp_avg"].base.dtype == np.float32
    assert not np.shares_memory(opt.state[a32]["exp_avg"].base, opt.state[a64]["exp_avg"].base)
    assert not np.shares_memory(opt.state[a64]["exp_avg"].base, opt.state[b64]["exp_avg"].base)


def _run_reference_adam(arrays, steps, **kw):
    """(p, m, v) per param after ``steps`` steps of the written-out Adam, in float64."""
    out = []
    for i, x in enumerate(arrays):
        p, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
        for t in range(1, steps + 1):
            p, m, v, _ = adam_reference(p, grad(t, p, i), m, v, t, lr=0.01, **kw)
        out.append((p, m, v))
    return out


def test_reference_adam_agrees_with_the_runtime():
    arrays = make_arrays()
    params = params_from(arrays)
    opt = _adam(params)
    train(opt, params, 1, 5)
    for p, (rp, rm, rv) in zip(params, _run_reference_adam(arrays, 5), strict=True):
        assert_close(p.data, rp)
        assert_close(opt.state[p]["exp_avg"], rm)
        assert_close(opt.state[p]["exp_avg_sq"], rv)


def _continue_reference(opt, p, step, which, vmax=None):
    """The written-out Adam step from the optimizer's current (possibly edited) state."""
    st = opt.state[p]
    m, v = (np.array(st[k], dtype=p.data.dtype) for k in ("exp_avg", "exp_avg_sq"))
    return adam_reference(
        p.data.copy(), grad(step, p.data, which), m, v, st["step"] + 1, lr=0.01, vmax=vmax
    )


def _assert_follows(opt, params, expected) -> None:
    """Params and Adam's moments equal the written-out reference's."""
    for p, (rp, rm, rv, _) in zip(params, expected, strict=True):
        assert_close(p.data, rp)
        assert_close(opt.state[p]["exp_avg"], rm)
        assert_close(opt.state[p]["exp_avg_sq"], rv)


def test_editing_a_state_view_in_place_changes_the_state():
    a, b = params_from(make_arrays())
    opt = _adam([a, b])
    train(opt, [a, b], 1, 3)
    opt.state[a]["exp_avg"][...] = 0.25
    opt.state[b]["exp_avg_sq"] *= 4
    rows = opt._layouts[(0, a.data.dtype.str)].buffer  # the group's buffer, a row a state
    assert np.all(rows[0, :12] == 0.25)  # it was the buffer
    expected = [_continue_reference(opt, p, 4, i) for i, p in enumerate((a, b))]
    train(opt, [a, b], 4, 4)
    _assert_follows(opt, (a, b), expected)


def test_replacing_a_state_array_is_honoured():
    a, b = params_from(make_arrays())
    opt = _adam([a, b])
    train(opt, [a, b], 1, 3)
    replacement = np.full((4, 3), 0.5)
    opt.state[a]["exp_avg"] = replacement
    opt.state[b]["exp_avg_sq"] = np.full(5, 3, dtype=np.float32)  # another dtype: cast
    expected = [_continue_reference(opt, p, 4, i) for i, p in enumerate((a, b))]
    train(opt, [a, b], 4, 4)
    _assert_follows(opt, (a, b), expected)
    # Re-homed into the flat buffer, which keeps one buffer per group.
    assert opt.state[a]["exp_avg"].base is opt.state[b]["exp_avg"].base
    assert opt.state[b]["exp_avg_sq"].dtype == np.float64


def test_replacement_survives_a_state_appearing_mid_run():
    """Turning amsgrad on grows (moves) the buffer in the same step that a user-replaced
    array must be read: the replacement must not be lost to the move."""
    a, b = params_from(make_arrays())
    opt = _adam([a, b])
    train(opt, [a, b], 1, 3)
    opt.state[b]["exp_avg"] = np.full(5, -0.125)
    opt.param_groups[0]["amsgrad"] = True
    zero = [np.zeros_like(a.data), np.zeros_like(b.data)]
    expected = [_continue_reference(opt, p, 4, i, vmax=zero[i]) for i, p in enumerate((a, b))]
    train(opt, [a, b], 4, 4)
    for p, (rp, rm, _rv, rvmax) in zip((a, b), expected, strict=True):
        assert_close(p.data, rp)
        assert_close(opt.state[p]["exp_avg"], rm)
        assert_close(opt.state[p]["max_exp_avg_sq"], rvmax)


def test_state_dict_after_editing_a_view_reports_the_edit():
    a = Param(make_arrays()[0])
    opt = SGD([a], lr=0.1, momentum=0.9)
    train(opt, [a], 1, 2)
    opt.state[a]["momentum_buffer"][0, 0] = 123.0
    assert opt.state_dict()["state"][0]["momentum_buffer"][0, 0] == 123.0


def test_conditional_states_share_the_buffer_too():
    a, b = params_from(make_arrays())
    opt = RMSprop([a, b], centered=True, momentum=0.9)
    train(opt, [a, b], 1, 2)
    names = ("square_avg", "momentum_buffer", "grad_avg")
    assert set(opt.state[a]) == {"step", *names}
    base = opt.state[a]["square_avg"].base
    assert all(opt.state[p][n].base is base for p in (a, b) for n in names)


def test_state_views_follow_the_buffer_when_it_grows():
    a, b = params_from(make_arrays())
    opt = _adam([a, b])
    train(opt, [a, b], 1, 2)
    before = {p: np.array(opt.state[p]["exp_avg"]) for p in (a, b)}
    opt.param_groups[0]["amsgrad"] = True
    a.grad = grad(3, a.data, 0)
    b.grad = None  # b does not step, but its views must follow the moved buffer
    opt.step()
    assert_bits_equal(opt.state[b]["exp_avg"], before[b])
    assert opt.state[b]["exp_avg"].base is opt.state[a]["exp_avg"].base
    opt.state[b]["exp_avg"][...] = 1.0  # still the live state, not a stale copy
    rows = opt._layouts[(0, a.data.dtype.str)].buffer  # the group's buffer, a row a state
    assert np.all(rows[0, 12:] == 1.0)
    set_grads([a, b], 4)
    opt.step()
    assert opt.state[b]["step"] == 3
    assert "max_exp_avg_sq" in opt.state[b]
