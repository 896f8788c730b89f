"""ShardedOptimizer's checkpoints: saved by 2 MPI ranks, sharded and consolidated, then
loaded by 1, 2 and 3 ranks and by a plain optimizer (``mpiexec`` runs
tests/distributed/sharded_checkpoint.py); and in one process on MPI.COMM_SELF, the
state_dict, the files, and the errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI", reason="optdsl.distributed needs mpi4py "
                          "(pip install 'optdsl[mpi]')")

import optdsl  # noqa: E402
from optdsl.distributed import ShardedOptimizer, consolidated_state_dict  # noqa: E402
from optdsl.errors import CheckpointMismatchError, StateDictError  # noqa: E402
from optdsl.optim import SGD, Adam  # noqa: E402
from tests.distributed.launch import HERE, ROOT, TIMEOUT, run  # noqa: E402

SCRIPT = "sharded_checkpoint.py"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint saved by 2 ranks after 10 steps, both forms, and the params 10 steps
    later."""
    where = tmp_path_factory.mktemp("saved")
    done = run(SCRIPT, "save", str(where))
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(re.findall(r"rank (\d): saved", done.stdout)) == ["0", "1"]
    (where / "world").write_text("2")
    return where


def test_a_sharded_save_writes_one_shard_per_rank_and_an_index(saved):
    names = sorted(os.listdir(saved))
    shards = [n for n in names if re.fullmatch(r"sharded\.[0-9a-f]{16}\.rank\d-of-2"
                                               r"\.safetensors", n)]
    assert len(shards) == 2 and "sharded.safetensors" in names
    index = optdsl.checkpoint.inspect(saved / "sharded.safetensors")
    assert index["optimizer"] is None and index["sharding"]["world"] == 2
    assert sorted(index["sharding"]["files"]) == shards
    consolidated = optdsl.checkpoint.inspect(saved / "consolidated.safetensors")
    assert [e["shape"] for e in consolidated["optimizer"]["params"]] == [[7, 3], [3],
                                                                          [2, 2, 2]]


@pytest.mark.parametrize("form", ["consolidated", "sharded"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_resuming_on_any_number_of_ranks_continues_the_run(saved, n, form):
    """Loaded by n ranks, the last 10 steps end where the saving run ended: bit for bit on
    2 ranks, to rtol 1e-12 on 1 and 3 (whose averaged gradients round differently)."""
    done = run(SCRIPT, "resume", str(saved), form, n=n)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(rf"rank (\d): resumed {form} on {n}, exact=(\w+)", done.stdout)
    assert sorted(r for r, _ in found) == [str(r) for r in range(n)]
    assert {e for _, e in found} == {str(n == 2)}


@pytest.mark.parametrize("form", ["consolidated", "sharded"])
def test_a_plain_optimizer_resumes_from_either_form(saved, form):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(HERE / SCRIPT), "plain", str(saved), form],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"plain: resumed {form}" in done.stdout


def test_a_missing_shard_fails_the_load_on_every_rank_and_changes_nothing(saved,
                                                                          tmp_path):
    where = tmp_path / "copy"
    shutil.copytree(saved, where)
    last = next(n for n in os.listdir(where) if n.endswith(".rank1-of-2.safetensors"))
    os.unlink(where / last)
    done = run(SCRIPT, "broken", str(where))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(re.findall(r"^rank (\d): (.*)$", done.stdout, flags=re.M))
    assert sorted(lines) == ["0", "1"]
    assert lines["1"].startswith("CheckpointMismatchError") and "is missing" in lines["1"]
    assert lines["0"].startswith("DistributedError") and "rank 1 failed" in lines["0"]


# --- in one process ------------------------------------------------------------------------

def _model(names=("w", "b"), shapes=((4, 3), (5,))):
    rng = np.random.default_rng(1)
    return [optdsl.Param(rng.standard_normal(s), name=n) for n, s in zip(names, shapes,
                                                                         strict=True)]


def _train(opt, params, steps=3, seed=2):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in params:
            p.grad = rng.standard_normal(p.data.shape)
        opt.step()


def _stepped():
    """Params and a ShardedOptimizer (Adam, one rank) that has taken 3 steps."""
    params = _model()
    sharded = ShardedOptimizer(Adam(params, lr=0.1), MPI.COMM_SELF)
    _train(sharded, params)
    return params, sharded


def test_state_dict_is_the_unsharded_optimizers():
    params, plain_params = _model(), _model()
    sharded = ShardedOptimizer(Adam(params, lr=0.1, amsgrad=True), MPI.COMM_SELF)
    plain = Adam(plain_params, lr=0.1, amsgrad=True)
    _train(sharded, params)
    _train(plain, plain_params)
    mine, theirs = sharded.state_dict(), plain.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys()
    for i, st in theirs["state"].items():
        assert mine["state"][i].keys() == st.keys()
        assert mine["state"][i]["step"] == st["step"] == 3
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_array_equal(mine["state"][i][k], st[k])


def test_load_state_dict_takes_a_plain_optimizers_state_and_continues_alike():
    params, plain_params = _model(), _model()
    plain = Adam(plain_params, lr=0.1)
    _train(plain, plain_params)
    for p, q in zip(params, plain_params, strict=True):
        p.data[...] = q.data
    sharded = ShardedOptimizer(Adam(params, lr=0.5), MPI.COMM_SELF)
    sharded.load_state_dict(plain.state_dict())
    assert sharded.param_groups[0]["lr"] == 0.1  # the saved hypers, as torch
    _train(sharded, params, seed=3)
    _train(plain, plain_params, seed=3)
    for p, q in zip(params, plain_params, strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_refuses_what_a_shard_cannot_hold():
    params, sharded = _stepped()
    good = sharded.state_dict()
    before = sharded.state_dict()

    uneven = sharded.state_dict()
    uneven["state"][1]["step"] = 2
    with pytest.raises(StateDictError, match=r"different numbers of steps \(\[2, 3\]\)"):
        sharded.load_state_dict(uneven)
    partial = sharded.state_dict()
    del partial["state"][0]
    with pytest.raises(StateDictError, match="param 0 has no state but others do"):
        sharded.load_state_dict(partial)
    shape = sharded.state_dict()
    shape["state"][0]["exp_avg"] = np.zeros(3)
    with pytest.raises(StateDictError, match=r"'exp_avg' has shape \(3,\)"):
        sharded.load_state_dict(shape)
    unknown = sharded.state_dict()
    unknown["state"][0]["momentum"] = np.zeros((4, 3))
    unknown["state"][1]["momentum"] = np.zeros(5)
    with pytest.raises(StateDictError, match="unknown state 'momentum'"):
        sharded.load_state_dict(unknown)
    after = sharded.state_dict()
    for i in before["state"]:
        for k, v in before["state"][i].items():
            np.testing.assert_array_equal(after["state"][i][k], v)
    sharded.load_state_dict(good)


def test_sharded_files_replace_the_previous_save_and_its_shards(tmp_path):
    params, sharded = _stepped()
    path = tmp_path / "run.safetensors"
    sharded.save(path, consolidated=False)
    first = sorted(os.listdir(tmp_path))
    _train(sharded, params, steps=1)
    sharded.save(path, consolidated=False)
    second = sorted(os.listdir(tmp_path))
    assert len(first) == len(second) == 2 and first != second  # old shard removed
    state = consolidated_state_dict(path)
    assert {st["step"] for st in state["state"].values()} == {4}


def test_a_consolidated_file_remaps_params_by_name(tmp_path):
    params, sharded = _stepped()
    path = tmp_path / "run.safetensors"
    sharded.save(path, params=params)
    w, b = _model()
    w.data[...], b.data[...] = 0, 0
    again = ShardedOptimizer(Adam([b, w], lr=0.1), MPI.COMM_SELF)  # the other order
    report = again.load(path, params=[b, w])
    assert report.by == "name" and report.matched == ("b", "w")
    np.testing.assert_array_equal(w.data, params[0].data)
    saved = sharded.state_dict()["state"]
    mine = again.state_dict()["state"]
    np.testing.assert_array_equal(mine[0]["exp_avg"], saved[1]["exp_avg"])  # b
    np.testing.assert_array_equal(mine[1]["exp_avg"], saved[0]["exp_avg"])  # w


def test_checkpoint_errors_say_what_to_do(tmp_path):
    params, sharded = _stepped()
    path = tmp_path / "run.safetensors"
    sharded.save(path, consolidated=False)
    plain = Adam(_model(), lr=0.1)
    with pytest.raises(CheckpointMismatchError, match="index of a sharded checkpoint"):
        optdsl.load(path, optimizer=plain)
    shard = next(tmp_path.glob("run.*.rank0-of-1.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="one shard of a sharded checkpoint"):
        sharded.load(shard)
    with pytest.raises(TypeError, match="a ShardedOptimizer saves itself"):
        optdsl.save(tmp_path / "x.safetensors", optimizer=sharded)
    other = ShardedOptimizer(Adam(_model(shapes=((4, 3), (6,))), lr=0.1), MPI.COMM_SELF)
    with pytest.raises(CheckpointMismatchError, match=r"param group 0 held params of shapes "
                                                      r"\[\(4, 3\), \(5,\)\]"):
        other.load(path)
    with pytest.raises(CheckpointMismatchError, match="class Adam, not SGD"):
        ShardedOptimizer(SGD(_model(), lr=0.1), MPI.COMM_SELF).load(path)
    # A shard of another save under this index's name: refused, not mixed in.
    old = shard.read_bytes()
    _train(sharded, params, steps=1)
    sharded.save(path, consolidated=False)
    new = next(tmp_path.glob("run.*.rank0-of-1.safetensors"))
    new.write_bytes(old)
    with pytest.raises(CheckpointMismatchError, match="is not shard 0 of this checkpoint"):
        sharded.load(path)


def test_a_never_stepped_optimizer_saves_and_loads_no_state(tmp_path):
    params = _model()
    sharded = ShardedOptimizer(Adam(params, lr=0.1), MPI.COMM_SELF)
    for consolidated in (True, False):
        path = tmp_path / f"{consolidated}.safetensors"
        sharded.save(path, consolidated=consolidated)
        assert consolidated_state_dict(path)["state"] == {}
        report = sharded.load(path)
        assert report.matched == ("w", "b")
        assert report.by == ("name" if consolidated else "position")
    assert not any(sharded.inner.state.values())
