"""Atomic writes: a writer killed with SIGKILL in the middle of a save leaves the old
checkpoint at the path intact and verifiable; the half-written temp file is never taken for
a checkpoint, and the next save removes it. A save that fails before writing leaves no
trace."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

import optdsl  # noqa: E402
from optdsl.checkpoint import inspect  # noqa: E402
from optdsl.optim import Adam  # noqa: E402

HERE = Path(__file__).parent
MEGABYTES = 48


def _temps(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f".{name}.")
            and p.name.endswith(".tmp")]


def _kill_mid_save(path: Path, when: str = "writing") -> bool:
    """Start a writer looping over ``path`` and SIGKILL it: "writing", once a temp file of
    its has begun to fill; "renamed", as soon as the path is a new file (its rename has
    happened: anything a save does after it must leave the path whole too); "random", at a
    random moment of its third save. Then check that the path holds a whole checkpoint:
    the one it held before, or one of this writer's. Whether the kill left a temp file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    inode, before = path.stat().st_ino, inspect(path)["extra"]
    child = subprocess.Popen([sys.executable, str(HERE / "writer_child.py"), str(path),
                              str(MEGABYTES), when], stdout=subprocess.PIPE, env=env)
    try:
        read = 0
        if when == "random":
            child.stdout.readline()  # its first save is done
            start = time.monotonic()
            child.stdout.readline()  # and its second: how long one takes
            read = 2
            time.sleep(random.uniform(0, time.monotonic() - start))
        else:
            deadline = time.monotonic() + 30
            while not _begun(path, when, inode):
                if time.monotonic() > deadline:
                    pytest.fail(f"the writer never got to {when!r}")
                time.sleep(0.0002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        out = child.communicate()[0]
    assert child.returncode == -signal.SIGKILL
    _check_intact(path, before, when, read + len(out.split()))
    # A temp file left behind: the kill landed between its creation and its rename.
    return bool(_temps(path.parent, path.name))


def _begun(path: Path, when: str, inode: int) -> bool:
    if when == "writing":
        return any(_size(t) > 0 for t in _temps(path.parent, path.name))
    try:
        return path.stat().st_ino != inode
    except FileNotFoundError:
        return True  # gone: as wrong as can be, let the check after the kill say so


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _check_intact(path: Path, before: dict, writer: str, finished: int) -> None:
    """The path holds one whole checkpoint, which verifies (checksums) and loads: the one
    it held before the writer started, or one of the writer's rounds."""
    doc = inspect(path)
    assert doc["extra"] == before or (doc["extra"]["writer"] == writer
                                      and 1 <= doc["extra"]["round"] <= finished + 1)
    big = optdsl.Param(np.zeros(doc["params"][0]["shape"], np.float32), name="w")
    report = optdsl.load(path, params=[big], optimizer=Adam([big]))
    assert report.matched == ("w",)


def test_sigkill_mid_save_leaves_the_old_checkpoint_intact(tmp_path):
    path = tmp_path / "run.safetensors"
    p = optdsl.Param(np.arange(6, dtype=np.float32), name="w")
    opt = Adam([p])
    p.grad = np.ones(6, np.float32)
    opt.step()
    optdsl.save(path, optimizer=opt, params=[p], extra={"writer": "test", "round": 0})
    for _ in range(3):  # a kill landing just after a rename leaves no temp file: retry
        mid_write = _kill_mid_save(path)
        if mid_write:
            break
    assert mid_write, "no kill landed in the middle of a save in three tries"
    # A leftover is not taken for a checkpoint: its name does not end in .safetensors (so
    # globs for checkpoints skip it). A partial one does not load; one killed between its
    # fsync and its rename is whole, and verifies.
    leftovers = _temps(tmp_path, path.name)
    assert leftovers
    assert [q.name for q in tmp_path.glob("*.safetensors")] == [path.name]
    for leftover in leftovers:
        try:
            inspect(leftover)
        except optdsl.CheckpointCorruptError as exc:
            assert "truncated" in str(exc)
    # Kills just after a rename, and at a random moment: the path is always whole.
    for when in ("renamed", "random"):
        _kill_mid_save(path, when)
    # The next save to the path removes leftovers of writers that are gone.
    optdsl.save(path, params=[p], extra={"round": "after"})
    assert _temps(tmp_path, path.name) == []
    assert inspect(path)["extra"] == {"round": "after"}


def test_leftovers_of_live_writers_and_other_paths_are_kept(tmp_path):
    path = tmp_path / "run.safetensors"
    p = optdsl.Param(np.zeros(3))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from optdsl.checkpoint import _host_tag

        mine = tmp_path / f".run.safetensors.{_host_tag()}-{live.pid}-00000000.tmp"
        other = tmp_path / f".other.safetensors.{_host_tag()}-999999999-00000000.tmp"
        for f in (mine, other):
            f.write_bytes(b"partial")
        optdsl.save(path, params=[p])
        assert mine.exists() and other.exists()
    finally:
        live.kill()
        live.wait()
    optdsl.save(path, params=[p])
    assert not mine.exists() and other.exists()


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "run.safetensors"
    p = optdsl.Param(np.ones(3), name="w")
    optdsl.save(path, params=[p], extra={"v": 1})
    before = path.read_bytes()
    with pytest.raises(optdsl.CheckpointError, match=r"extra\['bad'\] holds a object"):
        optdsl.save(path, params=[p], extra={"bad": object()})
    with pytest.raises(optdsl.CheckpointError,
                       match="param group 0.*holds a builtin_function_or_method"):
        opt = Adam([p])
        opt.param_groups[0]["callback"] = len
        optdsl.save(path, optimizer=opt)
    assert path.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == [path.name]
