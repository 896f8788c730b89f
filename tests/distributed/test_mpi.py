"""optdsl.distributed over real MPI processes: ``mpiexec -n 2 python -m mpi4py`` runs the
scripts beside this file (mpi4py and the mpich wheel: ``pip install 'optdsl[mpi]'``), and
in-process checks on MPI.COMM_SELF."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI", reason="optdsl.distributed needs mpi4py "
                          "(pip install 'optdsl[mpi]')")

import optdsl  # noqa: E402
from optdsl import Param, RowSparse  # noqa: E402
from optdsl.distributed import AllReduce, DistributedError, _decode, _difference, _encode  # noqa: E402
from optdsl.optim import SGD, Adam  # noqa: E402
from tests.distributed.launch import HERE, ROOT, TIMEOUT, run  # noqa: E402
from tests.distributed.launch import mpiexec as _mpiexec  # noqa: E402


@pytest.mark.parametrize("args", [(), ("1e-5",), ("25", "flat"), ("1e-5", "flat")],
                         ids=["packed", "packed-small-buckets", "flat", "flat-small-buckets"])
def test_data_parallel_adam_equals_the_whole_batch(args):
    """2 ranks, each half the batch, averaged by AllReduce: the single-process run on the
    whole batch, to rtol 1e-12 in float64; buckets issued alike on both ranks."""
    done = run("allreduce_equivalence.py", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"rank (\d+): ok, (\d+) buckets", done.stdout)  # may interleave
    assert sorted(rank for rank, _ in found) == ["0", "1"]
    buckets = {int(count) for _, count in found}
    assert len(buckets) == 1  # the same collectives on both ranks
    if args and args[0] == "1e-5":
        assert buckets != {1}  # the small buckets did split the gradients


def test_a_rank_that_raises_ends_the_job_at_once():
    start = time.monotonic()
    done = run("rank_raises.py")
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert time.monotonic() - start < TIMEOUT / 2  # no rank left waiting


def test_mismatched_shapes_are_a_clear_error_on_every_rank():
    done = run("shape_mismatch.py")
    assert done.returncode != 0
    assert ("param 0 of group 0 has a gradient of shape (3,) and dtype float64 on rank 1 "
            "but shape (4,) and dtype float64 on rank 0") in done.stderr


# --- in one process: MPI.COMM_SELF -----------------------------------------------------------

def test_one_rank_leaves_the_gradients_and_counts_buckets():
    w, c, b = Param(np.ones((3, 2))), Param(np.ones(4)), Param(np.ones(5, np.float32))
    w.grad, c.grad, b.grad = np.full((3, 2), 2.0), np.full(4, 2.0), np.full(5, 3.0, np.float32)
    opt = SGD([w, c, b], lr=0.5)
    hook = AllReduce(MPI.COMM_SELF)
    handle = opt.register_grad_hook(hook)
    opt.step()
    np.testing.assert_array_equal(w.data, np.zeros((3, 2)))
    # w and c, apart in memory, packed into one float64 bucket; b, alone, reduced in place
    assert hook.buckets_last_step == 2 and set(hook._scratch) == {np.dtype(np.float64)}
    handle.remove()
    opt.step()
    np.testing.assert_array_equal(w.data, -np.ones((3, 2)))
    assert "size=1" in repr(hook)


def test_hooks_see_every_group_and_may_change_the_gradients():
    a, b = Param(np.zeros(2)), Param(np.zeros(2))
    a.grad = np.ones(2)
    seen = []

    def double(opt, grads):
        seen.append([len(g) for g in grads])
        for group in grads:
            for g in group:
                g *= 2

    opt = SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    opt.register_grad_hook(double)
    opt.step()
    assert seen == [[1, 0]]  # group 1 has no gradient this step
    np.testing.assert_array_equal(a.data, [-2.0, -2.0])
    with pytest.raises(TypeError, match="takes a callable"):
        opt.register_grad_hook(3)


def test_bad_arguments_and_gradients_are_refused():
    with pytest.raises(TypeError, match="mpi4py communicator"):
        AllReduce(object())
    with pytest.raises(ValueError, match="bucket_mb"):
        AllReduce(MPI.COMM_SELF, bucket_mb=0)
    with pytest.raises(TypeError, match="average"):
        AllReduce(MPI.COMM_SELF, average="yes")
    emb = Param(np.zeros((4, 2)))
    emb.grad = RowSparse([1], np.ones((1, 2)))
    opt = Adam([emb])
    opt.register_grad_hook(AllReduce(MPI.COMM_SELF))
    with pytest.raises(DistributedError, match="RowSparse gradient"):
        opt.step()


def test_layout_differences_are_told_in_words():
    ref = [[("float64", (4, 3)), ("float32", (5,))]]
    assert _decode(_encode(ref)) == ref
    assert "rank 1 has 2 param groups, rank 0 1" in _difference([ref, ref + [[]]])
    assert "param group 0 has 1 gradients on rank 1 but 2" in _difference([ref, [ref[0][:1]]])
    other = [[("float64", (4, 3)), ("float64", (5,))]]
    assert "param 1 of group 0" in _difference([ref, other])


def test_flattened_gradients_are_reduced_in_place():
    params = [Param(np.zeros(3)), Param(np.zeros((2, 2)))]
    for p in params:
        p.grad = np.ones_like(p.data)
    flat = optdsl.flatten(params)
    assert flat.is_flat()
    opt = SGD(params, lr=1.0)
    hook = AllReduce(MPI.COMM_SELF, bucket_mb=16 / (1 << 20))  # two float64 per bucket
    opt.register_grad_hook(hook)
    opt.step()
    assert hook.buckets_last_step == 4  # 7 elements of one buffer, in slices of 2
    assert hook._scratch == {}  # nothing packed


def test_the_docs_page_runs_in_one_process(capsys):
    """docs/distributed.md's MPI blocks, in this process (COMM_WORLD of one rank), and
    its install line names the extra that pyproject.toml declares."""
    sys.path.insert(0, str(ROOT / "tests"))
    from doc_blocks import code_blocks, run_blocks, runnable_blocks

    page = ROOT / "docs" / "distributed.md"
    blocks = runnable_blocks(page, "python")  # not torch.distributed's, nor NCCL's
    assert len(blocks) < len(code_blocks(page, "python"))
    assert not any("init_process_group" in b or "NcclAllReduce" in b for b in blocks)
    run_blocks(blocks, "distributed.md", capsys)
    assert code_blocks(page, "")[0].startswith("pip install 'optdsl[mpi]'")
    assert 'mpi = ["mpi4py==4.1.2", "mpich"]' in (ROOT / "pyproject.toml").read_text()


def test_the_distributed_example_trains_and_agrees_on_every_rank():
    """examples/distributed_train.py at 2 epochs: rank 0's accuracy lines, and the check
    that every rank ends with rank 0's parameters."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py",
                           str(ROOT / "examples" / "distributed_train.py"), "--epochs", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["epoch", "1"], ["epoch", "2"]]
    assert lines[-1].startswith("2 ranks, ") and lines[-1].endswith(
        "the parameters are the same on every rank")


def test_the_allreduce_benchmark_runs_at_a_tiny_size():
    """benchmarks/bench_allreduce.py at 1 MiB (numbers not meaningful): six rows, the
    reference at 1.00x, the default buckets one collective for 1 MiB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py",
                           str(ROOT / "benchmarks" / "bench_allreduce.py"), "--mib", "1",
                           "--rounds", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "one tensor, one collective", "one tensor, 25 MiB buckets",
        "64 tensors, packed into 25 MiB buckets", "64 tensors flattened, 25 MiB buckets",
        "64 tensors flattened, 25 MiB buckets, fp16 on the wire",
        "64 tensors flattened, 25 MiB buckets, bf16 on the wire"]
    assert rows[0].endswith("| 1.00x |") and all(" | 1 | " in row for row in rows)


def test_the_sharded_benchmark_runs_at_a_tiny_size():
    """benchmarks/bench_sharded.py at 1 MiB (numbers not meaningful): the unsharded step at
    1.00x, and the sharded one holding half of its state on rank 0 of 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py",
                           str(ROOT / "benchmarks" / "bench_sharded.py"), "--mib", "1",
                           "--rounds", "1", "--backend", "numpy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    names = [row.split(" | ")[0][2:] for row in rows]
    assert names == ["unsharded: AllReduce + Adam",
                     "sharded: reduce-scatter + Adam on 1/N + all-gather"]
    assert rows[0].split(" | ")[2] == "1.00x"
    assert [row.split(" | ")[3].rstrip(" |") for row in rows] == ["2,097,152", "1,048,576"]


# --- ShardedOptimizer (ZeRO stage 1) -----------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_sharded_adam_equals_the_whole_batch_with_a_share_of_the_state(n):
    """n ranks, each a shard of Adam's state and a share of the batch: the unsharded run
    on the whole batch to rtol 1e-12, with 1/n of the (padded) state on each rank."""
    done = run("sharded_equivalence.py", n=n)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"rank (\d+): ok, state (\d+ of \d+ bytes)", done.stdout)
    assert sorted(int(rank) for rank, _ in found) == list(range(n))  # lines may interleave
    assert {state for _, state in found} == {
        f"{288 * (-(-18 // n) * n) // 18 // n} of 288 bytes"}


def test_sharded_on_one_rank_steps_as_the_optimizer_does():
    from optdsl.distributed import ShardedOptimizer

    values = [np.arange(6.0).reshape(2, 3), np.ones(4)]
    plain = [Param(v.copy()) for v in values]
    shard = [Param(v.copy()) for v in values]
    ref, opt = Adam(plain, lr=0.1), ShardedOptimizer(Adam(shard, lr=0.1), MPI.COMM_SELF)
    for step in range(3):
        for p, q in zip(plain, shard, strict=True):
            p.grad = np.full(p.data.shape, step + 1.0)
            q.grad = p.grad.copy()
        ref.step()
        opt.step()
    for p, q in zip(plain, shard, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    assert opt.param_groups[0]["lr"] == 0.1
    assert opt.state_bytes() == 2 * 10 * 8


def test_sharded_refuses_what_it_cannot_shard():
    from optdsl.distributed import ShardedOptimizer
    from optdsl.optim import LAMB

    with pytest.raises(DistributedError, match="needs whole tensors"):
        ShardedOptimizer(LAMB([Param(np.ones(3))]), MPI.COMM_SELF)
    with pytest.raises(TypeError, match="mpi4py communicator"):
        ShardedOptimizer(Adam([Param(np.ones(3))]), object())
    w = Param(np.ones(3))
    w.grad = np.ones(3)
    stepped = Adam([w])
    stepped.step()
    with pytest.raises(DistributedError, match="before its first step"):
        ShardedOptimizer(stepped, MPI.COMM_SELF)
    a, b = Param(np.ones(2)), Param(np.ones(2))
    opt = ShardedOptimizer(Adam([a, b]), MPI.COMM_SELF)
    a.grad = np.ones(2)
    with pytest.raises(DistributedError, match="param 1 of group 0 has no gradient"):
        opt.step()


# --- torch.distributed (gloo) ------------------------------------------------------------------

def test_torch_allreduce_over_gloo_equals_the_whole_batch():
    """optdsl.torch's Adam with TorchAllReduce on 2 processes of torch.distributed.run
    (gloo, CPU): the one-process run on the whole batch, to rtol 1e-12 in float64."""
    pytest.importorskip("torch", reason="the torch.distributed path needs torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(HERE / "torch_allreduce.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"rank (\d+): ok, (\d+) buckets", done.stdout)
    assert sorted(rank for rank, _ in found) == ["0", "1"]


def test_torch_allreduce_needs_an_initialised_process_group():
    torch = pytest.importorskip("torch", reason="the torch.distributed path needs torch")
    from optdsl.distributed import TorchAllReduce

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(DistributedError, match="init_process_group"):
        TorchAllReduce()
