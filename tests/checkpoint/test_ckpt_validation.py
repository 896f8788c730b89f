"""Validation before mutation: a checkpoint that does not fit what it is loaded into
raises a clear error (naming the problem, the param and the fix), and the optimizer,
schedule, params and scaler are exactly as they were. Loading is all or nothing: a part
that fails after others were applied rolls them back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

from ckpt_util import TinyScaler, build, fingerprint, run  # noqa: E402

import optdsl  # noqa: E402
import optdsl.schedules as S  # noqa: E402
from optdsl import CheckpointMismatchError, Param  # noqa: E402
from optdsl.api import make_class  # noqa: E402
from optdsl.compiler import load_spec  # noqa: E402
from optdsl.optim import SGD, Adam, AdamW  # noqa: E402


@pytest.fixture
def ckpt(tmp_path):
    """An Adam run (schedule: warmup then step decay) saved after 4 steps."""
    opt, sched, params = build("Adam")
    scaler = TinyScaler()
    run(opt, sched, params, scaler, 1, 4)
    path = tmp_path / "adam.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=sched, params=params, scaler=scaler)
    return path


def _live(seed=7, steps=2):
    """Another Adam run, built as the saved one but from other values, 2 steps in."""
    opt, sched, params = build("Adam", seed=seed)
    scaler = TinyScaler(scale=5.0)
    run(opt, sched, params, scaler, 1, steps)
    return opt, sched, params, scaler


def _refused(path, error, match, *, optimizer=None, scheduler=None, params=None,
             scaler=None, **kw):
    """Load must raise ``error`` matching ``match`` and change nothing."""
    before = fingerprint(optimizer, scheduler, params, scaler, ids=True)
    with pytest.raises(error, match=match):
        optdsl.load(path, optimizer=optimizer, scheduler=scheduler, params=params,
                    scaler=scaler, **kw)
    assert fingerprint(optimizer, scheduler, params, scaler, ids=True) == before


class RecordingScaler(TinyScaler):
    """A TinyScaler (by class name) that records what it is loaded with."""

    def __init__(self, scale: float):
        super().__init__(scale)
        self.loads = []

    def load_state_dict(self, sd):
        self.loads.append(dict(sd))
        super().load_state_dict(sd)


RecordingScaler.__name__ = "TinyScaler"


def _named(shapes, dtype=np.float32):
    return [Param(np.zeros(s, dtype), name=n) for n, s in shapes]


def test_a_matching_load_changes_everything(ckpt):
    """The control: the same live objects do change when the file fits."""
    opt, sched, params, scaler = _live()
    before = fingerprint(opt, sched, params, scaler)
    optdsl.load(ckpt, optimizer=opt, scheduler=sched, params=params, scaler=scaler)
    after = fingerprint(opt, sched, params, scaler)
    assert all(after[k] != before[k] for k in ("state", "sched", "params", "scaler"))


def test_another_optimizer_class_is_refused_unless_allowed(ckpt):
    opt, sched, params, scaler = _live()
    w = [params["w1"], params["b1"], params["w2"]]
    adamw = AdamW([{"params": w[:2]}, {"params": w[2:]}], lr=0.1)
    _refused(ckpt, CheckpointMismatchError,
             r"optimizer class Adam, not AdamW; to resume, build an optimizer of class Adam, "
             r"or pass allow_spec_mismatch=True", optimizer=adamw)
    # Allowed: Adam's state names are AdamW's too; hypers AdamW lacks are dropped.
    optdsl.load(ckpt, optimizer=adamw, allow_spec_mismatch=True)
    ref = Adam([{"params": w[:2]}, {"params": w[2:]}])
    optdsl.load(ckpt, optimizer=ref)
    assert fingerprint(adamw)["state"] == fingerprint(ref)["state"]
    assert "decoupled_weight_decay" not in adamw.param_groups[0]
    assert adamw.param_groups[0]["betas"] == (0.8, 0.95)
    # A class whose states differ cannot take the state even when allowed.
    sgd = SGD(w, lr=0.1, momentum=0.9)
    _refused(ckpt, CheckpointMismatchError, r"param 'w1' has state 'exp_avg', which SGD does "
             r"not keep \(it keeps momentum_buffer\)", optimizer=sgd,
             allow_spec_mismatch=True)


def test_an_edited_spec_is_refused_unless_allowed(ckpt):
    edited = make_class(load_spec(Adam._spec.text + "\n# a local edit\n", "adam.opt"))
    assert edited.__name__ == "Adam" and edited._spec.spec_hash != Adam._spec.spec_hash
    opt, *_ = _live()
    mine = edited([{"params": g["params"]} for g in opt.param_groups])
    _refused(ckpt, CheckpointMismatchError, r"Adam's spec changed since the checkpoint was "
             r"written \(spec sha256 [0-9a-f]{12}\.\.\. in the file, [0-9a-f]{12}\.\.\. "
             r"here\).*allow_spec_mismatch=True", optimizer=mine)
    report = optdsl.load(ckpt, optimizer=mine, allow_spec_mismatch=True)
    assert report.matched == ("w1", "b1", "w2")


def test_shape_and_dtype_mismatches_name_the_param(ckpt):
    opt = Adam(_named([("w1", (3, 4)), ("b1", (3,)), ("w2", (5, 2))]))
    _refused(ckpt, CheckpointMismatchError, r"param 'w1' has shape \(4, 3\) in the checkpoint "
             r"but \(3, 4\) here; .*give a changed param a new name", optimizer=opt)
    opt = Adam(_named([("w1", (4, 3)), ("b1", (3,))]) + _named([("w2", (5, 2))], np.float32))
    _refused(ckpt, CheckpointMismatchError, r"param 'w2' has dtype float64 in the checkpoint "
             r"but float32 here; build the param with dtype float64", optimizer=opt)
    weights = _named([("w1", (4, 3)), ("b1", (3,)), ("w2", (5, 2))], np.float16)
    _refused(ckpt, CheckpointMismatchError, r"param value 'w1' has dtype float32 in the "
             "checkpoint but float16 here", params=weights)


def test_missing_and_extra_params(ckpt):
    # In the file but not here (by name): its state would be lost.
    opt = Adam(_named([("w1", (4, 3)), ("b1", (3,))]))
    _refused(ckpt, CheckpointMismatchError, r"holds params that are not here: 'w2'; pass "
             r"strict=False", optimizer=opt)
    # By position (no names), the counts must agree.
    unnamed = [Param(np.zeros((4, 3), np.float32)), Param(np.zeros(3, np.float32))]
    _refused(ckpt, CheckpointMismatchError, r"the checkpoint has 3 params, here there are 2; "
             r"loading by position needs the same params", optimizer=Adam(unnamed))
    # Param values: both directions are errors unless strict=False.
    weights = _named([("w1", (4, 3)), ("b1", (3,)), ("w2", (5, 2))])
    weights[2].data = weights[2].data.astype(np.float64)
    extra = weights + _named([("w3", (2,))])
    _refused(ckpt, CheckpointMismatchError, r"param values not in the checkpoint: 'w3'; pass "
             r"strict=False to leave them as they are", params=extra)
    _refused(ckpt, CheckpointMismatchError, r"holds param values that are not here: 'b1'",
             params=[weights[0], weights[2]])


def test_missing_parts_of_the_file(tmp_path):
    p = Param(np.zeros(3), name="w")
    path = tmp_path / "weights.safetensors"
    optdsl.save(path, params=[p])
    opt = Adam([p])
    _refused(path, CheckpointMismatchError, "holds no optimizer state; load it without "
             "optimizer=", optimizer=opt)
    _refused(path, CheckpointMismatchError, "holds no scheduler state",
             scheduler=S.StepLR(opt, step_size=2))
    _refused(path, CheckpointMismatchError, "holds no scaler state", scaler=TinyScaler())


def test_a_schedule_of_another_class_is_refused(ckpt):
    opt, sched, params, scaler = _live()
    cosine = S.CosineAnnealingLR(opt, T_max=10)
    _refused(ckpt, CheckpointMismatchError, r"scheduler class SequentialLR, not "
             "CosineAnnealingLR; build the same scheduler", optimizer=opt, scheduler=cosine,
             params=params, scaler=scaler)


def test_a_bad_schedule_state_leaves_the_optimizer_untouched(ckpt):
    """The optimizer part fits, the schedule (same class, other milestones) does not:
    nothing changes, the optimizer included."""
    opt, _, params, scaler = _live()
    other = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.2, total_iters=3),
                                 S.StepLR(opt, step_size=2, gamma=0.7)], milestones=[4])
    _refused(ckpt, CheckpointMismatchError, r"saved with milestones \[3\], this one has \[4\]",
             optimizer=opt, scheduler=other, params=params, scaler=scaler)


def test_an_optimizer_failing_after_scaler_and_schedule_rolls_them_back(tmp_path):
    """Saved hypers the runtime refuses (lr < 0) only fail in the optimizer's own
    load_state_dict, after the scaler and schedule were loaded: both are rolled back."""
    opt, sched, params = build("Adam")
    scaler = TinyScaler()
    run(opt, sched, params, scaler, 1, 3)
    opt.param_groups[1]["lr"] = -1.0  # saved as is: save does not judge hypers
    path = tmp_path / "bad.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=sched, params=params, scaler=scaler)
    opt, sched, params, _ = _live()
    scaler = RecordingScaler(scale=5.0)
    _refused(path, CheckpointMismatchError, r"param group 1: .*lr", optimizer=opt,
             scheduler=sched, params=params, scaler=scaler)
    assert scaler.loads == [{"scale": 131072.0, "growth_tracker": 0},
                            {"scale": 5.0, "growth_tracker": 0}]


def test_a_failing_scaler_changes_nothing(ckpt):
    class PickyScaler(TinyScaler):
        def load_state_dict(self, sd):
            raise ValueError("not today")

    PickyScaler.__name__ = "TinyScaler"  # the class the file names
    opt, sched, params, scaler = _live()
    _refused(ckpt, CheckpointMismatchError, r"TinyScaler.load_state_dict rejected the saved "
             "scaler state: not today", optimizer=opt, scheduler=sched, params=params,
             scaler=PickyScaler(scale=5.0))


def test_a_schedule_failing_after_the_scaler_rolls_the_scaler_back(ckpt):
    """A schedule that is not optdsl's cannot be checked before it loads: when it fails,
    the scaler loaded before it is restored."""

    class SequentialLR:
        def state_dict(self):
            return {"mine": 1}

        def load_state_dict(self, sd):
            raise KeyError("milestones")

    opt, _, params, _ = _live()
    scaler = RecordingScaler(scale=5.0)
    _refused(ckpt, CheckpointMismatchError, r"SequentialLR.load_state_dict rejected the saved "
             "scheduler state", optimizer=opt, scheduler=SequentialLR(), params=params,
             scaler=scaler)
    # It was loaded from the file, then given its own state back.
    assert scaler.loads == [{"scale": 131072.0, "growth_tracker": 1},
                            {"scale": 5.0, "growth_tracker": 0}]


def test_read_only_params_are_refused_before_anything_changes(ckpt):
    opt, sched, params, scaler = _live()
    params["b1"].data.flags.writeable = False
    _refused(ckpt, CheckpointMismatchError, r"param 'b1' is a read-only array; give a",
             optimizer=opt, scheduler=sched, params=params, scaler=scaler)


def test_bad_arguments(ckpt):
    opt, *_ = _live()
    with pytest.raises(ValueError, match="by must be one of"):
        optdsl.load(ckpt, optimizer=opt, by="shape")
    with pytest.raises(TypeError, match="optimizer= takes an optdsl optimizer"):
        optdsl.load(ckpt, optimizer=object())
    with pytest.raises(TypeError, match="not a set"):
        optdsl.load(ckpt, params={Param(np.zeros(3))})
