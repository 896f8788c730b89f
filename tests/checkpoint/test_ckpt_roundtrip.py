"""save then load gives back exactly what was saved: every stdlib optimizer's state, step
counts and hypers (tuples as tuples), float16, bfloat16 and float64 arrays bit for bit,
schedules (ReduceLROnPlateau's best=inf), a loss scaler, extra data with non-finite floats;
through standard JSON and safetensors only, never pickle."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

from ckpt_util import CONFIGS, TinyScaler, build, fingerprint, run  # noqa: E402

import optdsl  # noqa: E402
import optdsl.schedules as S  # noqa: E402
from optdsl import Param  # noqa: E402
from optdsl.checkpoint import inspect  # noqa: E402
from optdsl.optim import SGD, Adam  # noqa: E402


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_stdlib_optimizer_round_trips(tmp_path, name):
    opt, sched, params = build(name)
    scaler = TinyScaler()
    run(opt, sched, params, scaler, 1, 4)
    path = tmp_path / "ckpt.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=sched, params=params, scaler=scaler)
    opt2, sched2, params2 = build(name, seed=3)
    scaler2 = TinyScaler(scale=1.0)
    report = optdsl.load(path, optimizer=opt2, scheduler=sched2, params=params2,
                         scaler=scaler2)
    assert fingerprint(opt2, sched2, params2, scaler2) == fingerprint(opt, sched, params, scaler)
    assert report.by == "name" and report.matched == ("w1", "b1", "w2")
    assert report.groups == (0, 1) and report.params.matched == ("w1", "b1", "w2")


def test_half_bfloat16_and_double_state_round_trip_exactly(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtypes = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
    rng = np.random.default_rng(0)

    def make():
        return [Param(rng.standard_normal(7).astype(d), name=np.dtype(d).name)
                for d in dtypes]

    params = make()
    opt = Adam(params, lr=0.1, amsgrad=True)
    for step in range(3):
        for p in params:
            p.grad = (rng.standard_normal(7) * 10.0 ** (step - 1)).astype(p.data.dtype)
        opt.step()
    path = tmp_path / "mixed.safetensors"
    optdsl.save(path, optimizer=opt, params=params)
    fresh = make()
    opt2 = Adam(fresh, lr=0.1, amsgrad=True)
    optdsl.load(path, optimizer=opt2, params=fresh)
    assert fingerprint(opt2, params=fresh) == fingerprint(opt, params=params)
    for p in fresh:
        assert opt2.state[p]["exp_avg"].dtype == p.data.dtype
    # In the file under safetensors' own dtype codes.
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    codes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert codes == {"F16", "BF16", "F32", "F64"}


def test_schedule_state_with_infinity_round_trips(tmp_path):
    """ReduceLROnPlateau's best starts at inf (mode min) and -inf (mode max); the metadata
    stays standard JSON."""
    p = Param(np.zeros(2), name="p")
    q = Param(np.zeros(2), name="q")
    opt = SGD([{"params": [p]}, {"params": [q]}], lr=0.1)
    plateau = S.ReduceLROnPlateau(opt, mode="min")
    path = tmp_path / "plateau.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=plateau)
    assert [s["best"] for s in plateau.state_dict()["state"]] == [np.inf, np.inf]
    opt2 = SGD([{"params": [p]}, {"params": [q]}], lr=0.1)
    plateau2 = S.ReduceLROnPlateau(opt2, mode="min")
    plateau2.step(0.5)
    assert plateau2.state_dict()["state"][0]["best"] == 0.5
    optdsl.load(path, optimizer=opt2, scheduler=plateau2)
    assert plateau2.state_dict() == plateau.state_dict()
    text = _document_text(path)
    json.loads(text, parse_constant=_refuse)  # no NaN or Infinity tokens
    assert '{"$float":"inf"}' in text


def _refuse(token):
    raise AssertionError(f"non-standard JSON token {token}")


def _document_text(path) -> str:
    import safetensors

    with safetensors.safe_open(path, framework="np") as f:
        return f.metadata()["optdsl.checkpoint"]


def test_hypers_come_back_with_their_types(tmp_path):
    p = Param(np.zeros(3), name="p")
    q = Param(np.zeros(3), name="q")
    opt = Adam([{"params": [p], "betas": (0.5, 0.75), "note": "frozen"},
                {"params": [q], "lr": 1, "tag": [1, (2, 3)]}])
    opt.param_groups[1]["betas"] = [0.25, 0.5]  # a list, as a user may assign one
    path = tmp_path / "hypers.safetensors"
    optdsl.save(path, optimizer=opt)
    opt2 = Adam([{"params": [p]}, {"params": [q]}])
    optdsl.load(path, optimizer=opt2)
    g0, g1 = opt2.param_groups
    assert g0["betas"] == (0.5, 0.75) and type(g0["betas"]) is tuple
    assert g0["note"] == "frozen"
    assert g1["tag"] == [1, (2, 3)] and type(g1["tag"][1]) is tuple
    assert tuple(g1["betas"]) == (0.25, 0.5)  # the optimizer's load resolves it as ever
    assert g1["lr"] == opt.param_groups[1]["lr"]
    assert type(g1["lr"]) is type(opt.param_groups[1]["lr"])


def test_extra_and_scaler_round_trip(tmp_path):
    extra = {"epoch": 3, "loss": float("nan"), "best": float("-inf"), "zero": -0.0,
             "batches": (10, 20), "seen": {1: "a", (2, 3): "b"}, "$weird": [None, True],
             "numpy": np.float32(0.5), "count": np.int64(7), "flag": np.bool_(True)}
    scaler = TinyScaler(scale=1024.0)
    scaler.update()
    path = tmp_path / "extra.safetensors"
    optdsl.save(path, scaler=scaler, extra=extra)
    other = TinyScaler(scale=1.0)
    report = optdsl.load(path, scaler=other)
    assert other.state_dict() == {"scale": 1024.0, "growth_tracker": 1}
    got = report.extra
    assert got["loss"] != got["loss"] and got["best"] == float("-inf")
    assert str(got["zero"]) == "-0.0" and got["batches"] == (10, 20)
    assert got["seen"] == {1: "a", (2, 3): "b"} and got["$weird"] == [None, True]
    assert got["numpy"] == 0.5 and got["count"] == 7 and got["flag"] is True
    assert report.by is None and report.params is None


def test_no_pickle_is_ever_used(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "save", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    opt, sched, params = build("RMSprop")
    scaler = TinyScaler()
    run(opt, sched, params, scaler, 1, 2)
    path = tmp_path / "nopickle.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=sched, params=params, scaler=scaler,
                extra={"a": 1})
    opt2, sched2, params2 = build("RMSprop", seed=1)
    optdsl.load(path, optimizer=opt2, scheduler=sched2, params=params2, scaler=TinyScaler())
    assert fingerprint(opt2, sched2, params2) == fingerprint(opt, sched, params)


def test_the_file_is_plain_safetensors_with_the_documented_metadata(tmp_path):
    import safetensors

    opt, sched, params = build("SGD")
    run(opt, sched, params, TinyScaler(), 1, 2)
    path = tmp_path / "plain.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=sched, params=params)
    with safetensors.safe_open(path, framework="np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert set(meta) == {"optdsl.checkpoint", "optdsl.checkpoint.sha256"}
    doc = json.loads(meta["optdsl.checkpoint"])
    assert doc["format"] == "optdsl-checkpoint" and doc["format_version"] == 1
    assert doc["optdsl_version"] == optdsl.__version__
    sgd = doc["optimizer"]
    assert sgd["class"] == "SGD" and sgd["spec_hash"] == SGD._spec.spec_hash
    assert [g["params"] for g in sgd["param_groups"]] == [[0, 1], [2]]
    assert sgd["param_groups"][1]["hypers"]["nesterov"] is True
    assert sgd["params"][0] == {
        "name": "w1", "shape": [4, 3], "dtype": "float32", "step": 2,
        "state": {"momentum_buffer": "optimizer.state.0.momentum_buffer"}}
    np.testing.assert_array_equal(tensors["optimizer.state.0.momentum_buffer"],
                                  opt.state[params["w1"]]["momentum_buffer"])
    np.testing.assert_array_equal(tensors["params.2"], params["w2"].data)
    assert doc["scheduler"]["class"] == "CosineAnnealingLR"
    assert inspect(path)["optimizer"]["param_groups"][0]["hypers"]["lr"] == \
        opt.param_groups[0]["lr"]


def test_params_that_never_stepped_have_no_state(tmp_path):
    a, b = Param(np.ones(2), name="a"), Param(np.ones(2), name="b")
    opt = Adam([a, b])
    a.grad = np.ones(2)
    opt.step()
    path = tmp_path / "partial.safetensors"
    optdsl.save(path, optimizer=opt)
    assert inspect(path)["optimizer"]["params"][1] == {
        "name": "b", "shape": [2], "dtype": "float64", "step": None, "state": {}}
    a2, b2 = Param(np.ones(2), name="a"), Param(np.ones(2), name="b")
    opt2 = Adam([a2, b2])
    optdsl.load(path, optimizer=opt2)
    assert opt2.state[a2]["step"] == 1 and b2 not in opt2.state


def test_flattened_params_are_written_in_place(tmp_path):
    params = [Param(np.full(3, 1.0), name="a"), Param(np.full(4, 2.0), name="b")]
    flat = optdsl.flatten(params)
    opt = SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = np.ones_like(p.data)
    opt.step()
    path = tmp_path / "flat.safetensors"
    optdsl.save(path, optimizer=opt, params=params)
    fresh = [Param(np.zeros(3), name="a"), Param(np.zeros(4), name="b")]
    optdsl.flatten(fresh)
    views = [p.data for p in fresh]
    optdsl.load(path, params=fresh)
    assert all(p.data is v for p, v in zip(fresh, views, strict=True))
    np.testing.assert_array_equal(fresh[1].data, params[1].data)
    assert flat is not None


def test_without_safetensors_the_error_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install 'optdsl\[checkpoint\]'"):
        optdsl.save(tmp_path / "x.safetensors", extra={})
    with pytest.raises(ImportError, match=r"pip install 'optdsl\[checkpoint\]'"):
        optdsl.load(tmp_path / "x.safetensors")
    from optdsl import checkpoint  # importing optdsl never needs it

    assert checkpoint.FORMAT_VERSION == 1
