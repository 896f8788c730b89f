"""Remapping by name: a checkpoint loads into param groups that were reordered, split or
merged, and into an optimizer with new params (fresh state); the report says what was
matched, added and dropped. Hypers are restored for groups that correspond one to one and
kept elsewhere. Without names, params load by position, only when every shape agrees."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

from ckpt_util import make_params  # noqa: E402

import optdsl  # noqa: E402
import optdsl.schedules as S  # noqa: E402
from optdsl import CheckpointMismatchError, Param  # noqa: E402
from optdsl.optim import Adam  # noqa: E402


def _grads(params, step):
    for i, p in enumerate(params):
        p.grad = np.random.default_rng(100 * step + i).standard_normal(p.data.shape).astype(
            p.data.dtype)


@pytest.fixture
def saved(tmp_path):
    """Adam with groups [w1, b1] (lr 0.01) and [w2] (lr 0.02), 3 steps, saved; and the
    state of every param by name."""
    params = make_params()
    opt = Adam([{"params": [params["w1"], params["b1"]], "lr": 0.01},
                {"params": [params["w2"]], "lr": 0.02, "weight_decay": 0.5}])
    for step in range(3):
        _grads(params.values(), step)
        opt.step()
    path = tmp_path / "named.safetensors"
    optdsl.save(path, optimizer=opt)
    state = {name: {k: (v if k == "step" else v.copy()) for k, v in opt.state[p].items()}
             for name, p in params.items()}
    return path, state


def _assert_state(opt, params, state, names):
    for name in names:
        got = opt.state[params[name]]
        assert set(got) == set(state[name]), name
        for k, v in state[name].items():
            if k == "step":
                assert got[k] == v
            else:
                assert got[k].tobytes() == v.tobytes(), (name, k)


def test_reordered_groups_load_by_name_and_keep_their_hypers(saved):
    path, state = saved
    params = make_params(seed=1)
    opt = Adam([{"params": [params["w2"]], "lr": 0.5},
                {"params": [params["b1"], params["w1"]], "lr": 0.6}])
    report = optdsl.load(path, optimizer=opt)
    assert report.by == "name" and set(report.matched) == {"w1", "b1", "w2"}
    assert report.added == () and report.dropped == ()
    assert report.groups == (1, 0)  # each live group corresponds to one saved group
    _assert_state(opt, params, state, ["w1", "b1", "w2"])
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 0.5
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0


def test_split_groups_keep_the_hypers_they_were_built_with(saved):
    path, state = saved
    params = make_params(seed=1)
    opt = Adam([{"params": [params["w1"]], "lr": 0.3},
                {"params": [params["b1"]], "lr": 0.4, "weight_decay": 0.0},
                {"params": [params["w2"]], "lr": 0.5}])
    report = optdsl.load(path, optimizer=opt)
    assert report.groups == (None, None, 1)
    _assert_state(opt, params, state, ["w1", "b1", "w2"])
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.4, 0.02]


def test_merged_groups_keep_their_hypers(saved):
    path, state = saved
    params = make_params(seed=1)
    opt = Adam(list(params.values()), lr=0.7)
    report = optdsl.load(path, optimizer=opt)
    assert report.groups == (None,)
    _assert_state(opt, params, state, ["w1", "b1", "w2"])
    assert opt.param_groups[0]["lr"] == 0.7


def test_added_params_start_fresh(saved):
    path, state = saved
    params = make_params(seed=1)
    new = Param(np.ones(4, np.float32), name="head")
    opt = Adam([{"params": [params["w1"], new, params["b1"]]}, {"params": [params["w2"]]}])
    report = optdsl.load(path, optimizer=opt)
    assert report.added == ("head",) and report.matched == ("w1", "b1", "w2")
    # The groups still correspond (the new param joined one): saved hypers restored.
    assert report.groups == (0, 1) and opt.param_groups[1]["weight_decay"] == 0.5
    _assert_state(opt, params, state, ["w1", "b1", "w2"])
    assert new not in opt.state
    every = [params["w1"], new, params["b1"], params["w2"]]
    _grads(every, 9)
    opt.step()
    assert opt.state[new]["step"] == 1 and opt.state[params["w1"]]["step"] == 4


def test_dropped_params_need_strict_false(saved):
    path, state = saved
    params = make_params(seed=1)
    opt = Adam([{"params": [params["w1"]]}, {"params": [params["w2"]]}])
    with pytest.raises(CheckpointMismatchError, match="not here: 'b1'; pass strict=False"):
        optdsl.load(path, optimizer=opt)
    assert not opt.state
    report = optdsl.load(path, optimizer=opt, strict=False)
    assert report.dropped == ("b1",) and report.matched == ("w1", "w2")
    # Group 0 lost b1 but takes w1 from saved group 0 alone: still one to one.
    assert report.groups == (0, 1)
    _assert_state(opt, params, state, ["w1", "w2"])


def test_a_schedule_cannot_follow_restructured_groups(saved, tmp_path):
    path, _ = saved
    params = make_params(seed=1)
    opt = Adam([{"params": [params["w2"]]}, {"params": [params["w1"], params["b1"]]}])
    sched = S.StepLR(opt, step_size=3)
    ref = Adam([{"params": [params["w1"], params["b1"]]}, {"params": [params["w2"]]}])
    other = tmp_path / "with_schedule.safetensors"
    optdsl.save(other, optimizer=ref, scheduler=S.StepLR(ref, step_size=3))
    before = sched.state_dict()
    with pytest.raises(CheckpointMismatchError, match="the param groups changed since the "
                       "save; build a new schedule"):
        optdsl.load(other, optimizer=opt, scheduler=sched)
    assert sched.state_dict() == before and not opt.state


def _unnamed(seed=0, shapes=((4, 3), (3,), (5, 2))):
    rng = np.random.default_rng(seed)
    return [Param(rng.standard_normal(s)) for s in shapes]


def test_unnamed_params_load_by_position(tmp_path):
    params = _unnamed()
    opt = Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}])
    _grads(params, 0)
    opt.step()
    path = tmp_path / "unnamed.safetensors"
    optdsl.save(path, optimizer=opt, params=params)
    fresh = _unnamed(seed=1)
    opt2 = Adam([{"params": fresh[:2]}, {"params": fresh[2:]}])
    report = optdsl.load(path, optimizer=opt2, params=fresh)
    assert report.by == "position" and report.matched == ("#0", "#1", "#2")
    assert report.groups == (0, 1) and opt2.param_groups[1]["lr"] == 0.05
    assert report.params.by == "position"
    for p, q in zip(params, fresh, strict=True):
        assert p.data.tobytes() == q.data.tobytes()
        assert opt.state[p]["exp_avg"].tobytes() == opt2.state[q]["exp_avg"].tobytes()
    # Positions regrouped: the state follows the positions, the hypers stay.
    again = _unnamed(seed=2)
    opt3 = Adam([{"params": again[:1], "lr": 0.2}, {"params": again[1:], "lr": 0.3}])
    report = optdsl.load(path, optimizer=opt3)
    assert report.groups == (None, None)  # saved group 0 was split
    assert [g["lr"] for g in opt3.param_groups] == [0.2, 0.3]
    assert opt3.state[again[2]]["exp_avg"].tobytes() == opt.state[params[2]]["exp_avg"].tobytes()
    # A shape that disagrees is an error, not a guess.
    swapped = _unnamed(shapes=((3,), (4, 3), (5, 2)))
    with pytest.raises(CheckpointMismatchError, match=r"param #0 has shape \(4, 3\) in the "
                       r"checkpoint but \(3,\) here; loading by position needs the same "
                       "shapes"):
        optdsl.load(path, optimizer=Adam(swapped))


def test_names_on_one_side_only(tmp_path, saved):
    path, state = saved
    # Saved with names, loaded into unnamed params of the same shapes: by position.
    params = _unnamed(shapes=((4, 3), (3,), (5, 2)))
    params[0].data = params[0].data.astype(np.float32)
    params[1].data = params[1].data.astype(np.float32)
    opt = Adam([{"params": params[:2]}, {"params": params[2:]}])
    assert optdsl.load(path, optimizer=opt).by == "position"
    assert opt.state[params[0]]["exp_avg"].tobytes() == state["w1"]["exp_avg"].tobytes()


def test_partly_named_and_duplicate_names_are_errors(saved):
    path, state = saved
    params = make_params(seed=1)
    params["b1"].name = None
    opt = Adam([{"params": [params["w1"], params["b1"]]}, {"params": [params["w2"]]}])
    with pytest.raises(CheckpointMismatchError, match=r"some params are named and some are "
                       r"not \(unnamed live params: #1\).*or pass by='position'"):
        optdsl.load(path, optimizer=opt)
    assert not opt.state
    report = optdsl.load(path, optimizer=opt, by="position")
    assert report.by == "position" and report.matched == ("w1", "#1", "w2")
    _assert_state(opt, params, state, ["w1", "b1", "w2"])
    with pytest.raises(CheckpointMismatchError, match=r"live param #1 has no name"):
        optdsl.load(path, optimizer=opt, by="name")
    twins = make_params(seed=1)
    twins["b1"].name = "w1"
    opt = Adam(list(twins.values()))
    with pytest.raises(CheckpointMismatchError, match=r"several live params are named 'w1'"):
        optdsl.load(path, optimizer=opt)


def test_param_values_by_name_from_a_dict(tmp_path):
    params = make_params()
    path = tmp_path / "weights.safetensors"
    optdsl.save(path, params={"encoder.w": params["w1"], "encoder.b": params["b1"].data})
    w = np.zeros((4, 3), np.float32)
    b = Param(np.zeros(3, np.float32))
    report = optdsl.load(path, params={"encoder.b": b, "encoder.w": w})
    assert report.params.matched == ("encoder.b", "encoder.w")
    assert w.tobytes() == params["w1"].data.tobytes()
    assert b.data.tobytes() == params["b1"].data.tobytes()
