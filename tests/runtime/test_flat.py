"""optdsl.flatten: params re-homed into one contiguous buffer per dtype (views of it), and
the optimizer's zero_grad on flattened gradients."""

from __future__ import annotations

import numpy as np
import pytest
from rt_util import assert_bits_equal, grad, make_arrays, params_from

import optdsl
from optdsl import Param
from optdsl.flat import FlatBuffer, FlatParams
from optdsl.optim import SGD, Adam

SHAPES = ((4, 3), (5,), (), (0,), (2, 0, 3), (1, 1, 1), (7, 2))


def _arrays(dtype=np.float64, shapes=SHAPES, seed=0):
    # np.asarray: make_arrays gives a NumPy scalar, not a 0-d array, for shape ()
    return [np.asarray(a) for a in make_arrays(dtype, shapes, seed)]


def _params(dtype=np.float64, shapes=SHAPES, seed=0):
    return params_from(_arrays(dtype, shapes, seed))


# --- the buffers and the views ---------------------------------------------------------------


def test_flatten_returns_one_buffer_whose_slices_are_the_params():
    params = _params()
    values = [p.data.copy() for p in params]
    flat = optdsl.flatten(params)
    assert isinstance(flat, FlatParams) and flat.params == params
    (buffer,) = flat.buffers
    assert isinstance(buffer, FlatBuffer)
    assert buffer.params == params and buffer.dtype == np.float64
    total = sum(v.size for v in values)
    assert buffer.data.shape == buffer.grad.shape == (total,)
    assert buffer.data.flags.c_contiguous and buffer.grad.flags.c_contiguous
    offset = 0
    for p, s, v in zip(params, buffer.slices, values, strict=True):
        assert s == slice(offset, offset + v.size)  # end to end, in the order given
        offset += v.size
        for arr, whole in ((p.data, buffer.data), (p.grad, buffer.grad)):
            assert isinstance(arr, np.ndarray)
            assert arr.shape == v.shape and arr.dtype == v.dtype
            assert arr.base is whole  # a view of the buffer, not a copy
        assert_bits_equal(p.data, v, "values preserved")
        assert_bits_equal(buffer.data[s], v.reshape(-1))
        if v.size:
            assert np.shares_memory(p.data, buffer.data[s])
            assert np.shares_memory(p.grad, buffer.grad[s])
    assert repr(buffer) == f"FlatBuffer({len(params)} params, {total} x float64)"


def test_writes_go_both_ways_between_views_and_buffer():
    a, b = _params(shapes=((2, 3), (4,)))
    flat = optdsl.flatten([a, b])
    buffer = flat.buffers[0]
    a.data[1, 2] = 42.0
    b.grad[...] = 7.0
    assert buffer.data[5] == 42.0
    assert np.all(buffer.grad[6:] == 7.0) and np.all(buffer.grad[:6] == 0.0)
    buffer.data[6:] = -1.0
    assert np.all(b.data == -1.0)
    a.grad += 2.0  # accumulating in place stays in the buffer
    assert np.all(buffer.grad[:6] == 2.0)


def test_existing_grads_are_copied_and_missing_ones_are_zero():
    params = _params()
    for i, p in enumerate(params):
        if i % 2 == 0:
            p.grad = grad(1, p.data, i)
    given = [None if p.grad is None else p.grad.copy() for p in params]
    old = [p.grad for p in params]
    optdsl.flatten(params)
    for p, g, o in zip(params, given, old, strict=True):
        assert p.grad is not None and p.grad is not o
        if g is None:
            assert p.grad.shape == p.data.shape and not np.any(p.grad)
        else:
            assert_bits_equal(p.grad, g)


def test_non_contiguous_input_is_copied_by_value():
    base = np.arange(12.0).reshape(3, 4)
    p = Param(base.T, grad=(base * 10).T)
    optdsl.flatten([p])
    assert p.data.shape == (4, 3) and p.data.flags.c_contiguous
    assert_bits_equal(p.data, base.T.copy())
    assert_bits_equal(p.grad, (base * 10).T.copy())
    assert not np.shares_memory(p.data, base)


def test_mixed_dtypes_give_one_buffer_each_in_first_seen_order():
    a32, b32 = params_from(_arrays(np.float32, ((3,), (2, 2))))
    a64, b64 = params_from(_arrays(np.float64, ((5,), ())))
    (c16,) = params_from(_arrays(np.float16, ((2,),)))
    order = [a64, a32, c16, b32, b64]
    values = [p.data.copy() for p in order]
    flat = optdsl.flatten(order)
    assert [b.dtype for b in flat.buffers] == [np.float64, np.float32, np.float16]
    assert [b.params for b in flat.buffers] == [[a64, b64], [a32, b32], [c16]]
    assert [b.data.size for b in flat.buffers] == [6, 7, 2]
    for p, v in zip(order, values, strict=True):
        assert_bits_equal(p.data, v)
        assert p.grad.dtype == v.dtype
    assert flat.buffers[1].slices == [slice(0, 3), slice(3, 7)]
    assert b32.data.base is flat.buffers[1].data
    assert flat.params == order


def test_flatten_accepts_any_iterable_and_duck_typed_params():
    class Weights:
        def __init__(self, data):
            self.data, self.grad = data, None

    ws = [Weights(np.ones(3)), Weights(np.zeros((2, 2)))]
    flat = optdsl.flatten(w for w in ws)
    assert flat.buffers[0].data.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert ws[1].data.base is flat.buffers[0].data


def test_flatten_of_nothing_is_empty():
    flat = optdsl.flatten([])
    assert flat.buffers == [] and flat.params == []
    flat.zero_grad()
    assert flat.is_flat()


def test_flat_zero_grad_fills_in_place():
    params = _params()
    for i, p in enumerate(params):
        p.grad = grad(1, p.data, i)
    flat = optdsl.flatten(params)
    views = [p.grad for p in params]
    flat.zero_grad()
    assert not np.any(flat.buffers[0].grad)
    assert all(p.grad is v for p, v in zip(params, views, strict=True))


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.ones(3), object(), 3.0, [1.0, 2.0]],
                         ids=["ndarray", "object", "float", "list"])
def test_a_non_param_is_a_type_error(bad):
    with pytest.raises(TypeError, match="not a parameter with a NumPy or CuPy array .data"):
        optdsl.flatten([Param(np.ones(2)), bad])


def test_a_param_whose_data_is_not_an_array_is_a_type_error():
    with pytest.raises(TypeError, match="not a parameter"):
        optdsl.flatten([Param([1.0, 2.0])])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, bool, np.complex128])
def test_non_float_params_are_a_type_error(dtype):
    with pytest.raises(TypeError, match="floating-point arrays, got"):
        optdsl.flatten([Param(np.ones(2)), Param(np.ones(2, dtype))])


def test_a_param_listed_twice_is_a_value_error():
    a, b = _params(shapes=((2,), (3,)))
    with pytest.raises(ValueError, match="the same parameter appears twice"):
        optdsl.flatten([a, b, a])


def test_a_grad_of_the_wrong_shape_is_a_value_error():
    a, b = _params(shapes=((2,), (3,)))
    b.grad = np.ones(4)
    with pytest.raises(ValueError, match=r"gradient shape \(4,\) does not match parameter "
                                         r"shape \(3,\)"):
        optdsl.flatten([a, b])


@pytest.mark.parametrize("late_error", ["type", "dtype", "twice", "shape"])
def test_an_error_leaves_every_param_untouched(late_error):
    a, b = _params(shapes=((2,), (3,)))
    a.grad = np.ones(2)
    before = [(p.data, p.grad) for p in (a, b)]
    bad = {"type": object(), "dtype": Param(np.ones(2, np.int64)), "twice": a,
           "shape": Param(np.ones(2), grad=np.ones(3))}[late_error]
    with pytest.raises((TypeError, ValueError)):
        optdsl.flatten([a, b, bad])
    assert [(p.data, p.grad) for p in (a, b)] == before  # the same objects: nothing rebound


# --- is_flat -----------------------------------------------------------------------------------


def test_is_flat_right_after_flatten():
    params = _params(shapes=((4, 3), (5,), (), (1, 1, 1), (7, 2)))
    flat = optdsl.flatten(params)
    assert flat.is_flat()


def test_is_flat_right_after_flatten_with_empty_params():
    params = _params(shapes=((4, 3), (0,), (5,), (2, 0, 3)))
    flat = optdsl.flatten(params)
    assert flat.is_flat()


def test_is_flat_with_mixed_dtypes():
    params = params_from(_arrays(np.float32, ((3,), (2,)))) + _params(shapes=((4,),))
    flat = optdsl.flatten(params)
    assert flat.is_flat()


def test_is_flat_survives_in_place_writes():
    params = _params(shapes=((4, 3), (5,)))
    flat = optdsl.flatten(params)
    for i, p in enumerate(params):
        p.grad[...] = grad(1, p.data, i)
        p.data += 1.0
        p.grad += 1.0
    flat.zero_grad()
    opt = Adam(params, lr=0.1)
    for i, p in enumerate(params):
        p.grad[...] = grad(2, p.data, i)
    opt.step()
    opt.step()
    opt.zero_grad()
    assert flat.is_flat()


@pytest.mark.parametrize("attr", ["grad", "data"])
def test_is_flat_is_false_once_a_view_is_rebound(attr):
    params = _params(shapes=((4, 3), (5,), (2,)))
    flat = optdsl.flatten(params)
    setattr(params[1], attr, getattr(params[1], attr).copy())
    assert not flat.is_flat()


def test_is_flat_is_false_after_set_to_none_or_a_view_of_the_wrong_slice():
    params = _params(shapes=((3,), (3,)))
    flat = optdsl.flatten(params)
    a, b = params
    a.grad = None
    assert not flat.is_flat()
    a.grad = flat.buffers[0].grad[3:6]  # a view of the buffer, but b's slice
    assert not flat.is_flat()


def test_rebinding_back_to_the_slice_makes_it_flat_again():
    params = _params(shapes=((4, 3), (5,)))
    flat = optdsl.flatten(params)
    buffer = flat.buffers[0]
    params[0].grad = None
    params[0].grad = buffer.grad[buffer.slices[0]].reshape(4, 3)
    assert flat.is_flat()


# --- the optimizer's zero_grad on flattened params -------------------------------------------


def _flat_with_grads(shapes=((4, 3), (5,), (), (2, 2))):
    params = _params(shapes=shapes)
    for i, p in enumerate(params):
        p.grad = grad(1, p.data, i)
    return params, optdsl.flatten(params)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_zeroes_flattened_grads_in_place(set_to_none):
    params, flat = _flat_with_grads()
    views = [p.grad for p in params]
    opt = SGD(params, lr=0.1)
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    assert all(p.grad is v for p, v in zip(params, views, strict=True))
    assert not np.any(flat.buffers[0].grad)
    for p in params:  # still views of the buffer
        assert p.grad.base is flat.buffers[0].grad


class _CountingArray(np.ndarray):
    """A grad buffer that counts fill() calls on itself."""

    fills: list = []

    def fill(self, value):
        _CountingArray.fills.append(self.size)
        super().fill(value)


class _NumpyWithCountingZeros:
    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def zeros(*args, **kwargs):
        return np.zeros(*args, **kwargs).view(_CountingArray)


@pytest.mark.parametrize("cover", ["all", "part"])
def test_zero_grad_fills_a_whole_buffer_once(monkeypatch, cover):
    monkeypatch.setattr("optdsl.arrays.np", _NumpyWithCountingZeros())
    monkeypatch.setattr(_CountingArray, "fills", [])
    params, flat = _flat_with_grads()
    buffer = flat.buffers[0]
    assert isinstance(buffer.grad, _CountingArray)
    opt = SGD(params if cover == "all" else params[:-1], lr=0.1)
    opt.zero_grad()
    if cover == "all":
        assert _CountingArray.fills == [buffer.grad.size]
        assert not np.any(buffer.grad)
    else:  # the other param's grad must survive: no whole-buffer fill
        assert _CountingArray.fills == []
        assert np.any(params[-1].grad) and not np.any(buffer.grad[:-4])


def test_zero_grad_on_plain_params():
    a, b = params_from(make_arrays())
    a.grad, b.grad = np.ones(a.data.shape), np.ones(b.data.shape)
    ga = a.grad
    opt = SGD([a, b], lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert a.grad is ga and not np.any(ga) and not np.any(b.grad)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_zero_grad_of_a_rebound_grad_sets_it_to_none():
    params, flat = _flat_with_grads()
    params[1].grad = np.ones(params[1].data.shape)  # no longer a view of the buffer
    opt = SGD(params, lr=0.1)
    opt.zero_grad()
    assert params[1].grad is None
    for i in (0, 2, 3):
        assert params[i].grad.base is flat.buffers[0].grad and not np.any(params[i].grad)


def test_an_optimizer_over_part_of_a_flat_set_zeroes_only_its_grads():
    params, flat = _flat_with_grads(shapes=((4, 3), (5,), (), (2, 2), (3,)))
    mine, others = params[1:3], params[:1] + params[3:]
    kept = [p.grad.copy() for p in others]
    opt = SGD(mine, lr=0.1)
    opt.zero_grad()
    for p in mine:
        assert p.grad.base is flat.buffers[0].grad and not np.any(p.grad)
    for p, g in zip(others, kept, strict=True):
        assert_bits_equal(p.grad, g, "a grad the optimizer does not own")


def test_two_optimizers_over_halves_of_a_flat_set():
    params, flat = _flat_with_grads(shapes=((4, 3), (5,), (), (2, 2)))
    first, second = SGD(params[:2], lr=0.1), Adam(params[2:], lr=0.1)
    kept = [p.grad.copy() for p in params[2:]]
    first.zero_grad()
    assert not np.any(flat.buffers[0].grad[:17])
    for p, g in zip(params[2:], kept, strict=True):
        assert_bits_equal(p.grad, g)
    second.zero_grad()
    assert not np.any(flat.buffers[0].grad)


def test_zero_grad_over_two_dtype_buffers():
    params = params_from(_arrays(np.float32, ((3,), (2,)))) + _params(shapes=((4,), ()))
    for i, p in enumerate(params):
        p.grad = grad(1, p.data, i)
    flat = optdsl.flatten(params)
    opt = Adam([{"params": params[:3]}, {"params": params[3:]}])
    opt.zero_grad()
    assert all(not np.any(b.grad) for b in flat.buffers)
    assert all(p.grad is not None for p in params)


def test_flattened_params_with_zeroed_grads_step_as_torch_does():
    """After zero_grad every flattened param has a (zero) gradient, so it steps, as in
    torch with set_to_none=False: Adam's moments decay and weight decay still applies."""
    params, _ = _flat_with_grads(shapes=((3,), (2,)))
    opt = Adam(params, lr=0.1, weight_decay=0.5)
    opt.step()
    opt.zero_grad()
    before = [p.data.copy() for p in params]
    opt.step()
    assert all(opt.state[p]["step"] == 2 for p in params)
    assert all(np.all(p.data != b) for p, b in zip(params, before, strict=True))
