"""The kernel cache on disk: where it lives, that it is written once and reused, that it can be
turned off or be unwritable, that concurrent writers leave whole files, and that a damaged
file is ignored and rewritten, never executed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl import cache
from optdsl.api import make_class
from optdsl.backend.numpy_backend import NumpyBackend
from optdsl.compiler import load_spec

REPO = Path(__file__).resolve().parents[1]


def spec_text(tag: str | None = None) -> str:
    """A small optimizer with one host if (two kernels), unique per call unless tagged."""
    tag = tag or uuid.uuid4().hex
    return textwrap.dedent(f'''\
        optimizer Probe
        """A cache probe ({tag})."""

        hyper lr = 0.1
        hyper flip = False

        state buf = 0

        update:
            if flip:
                g = -g
            buf = 0.5 * buf + g
            p = p - lr * buf
        ''')


def fresh(text: str):
    """A class with its own kernel table: compiling goes through the cache, not the class."""
    return make_class(load_spec(text))


def kernels(directory: Path) -> dict[str, str]:
    # Kernel entries only: the parser's tables (lark-*.json) share the directory.
    return {f.name: f.read_text() for f in sorted(directory.glob("*.py")) if f.is_file()}


def assert_whole(directory: Path, sources: set[str] | None = None) -> None:
    """Every file is a finished entry: named by its key, a matching header, no temp files."""
    names = [f.name for f in directory.iterdir() if not f.name.startswith("lark-")]
    assert names, "nothing was written"
    for name in names:
        assert not name.startswith(".tmp"), f"temp file left behind: {name}"
        assert name.endswith(".py"), name
        head, _, body = (directory / name).read_text().partition("\n")
        key = name[:-3]
        assert (
            head == f"# optdsl-cache-key: {key} sha256:{hashlib.sha256(body.encode()).hexdigest()}"
        ), name
        assert "def kernel(" in body
        if sources is not None:
            assert body in sources, f"{name} holds a source no process produced"


@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(directory))
    cache.clear_memory()
    yield directory
    cache.clear_memory()


def step_once(cls, **hypers) -> np.ndarray:
    # The numpy backend's entries are what these tests count (numba, where installed, keeps
    # its modules in a subfolder; tests/backend covers those).
    p = optdsl.Param(np.ones(4), grad=np.full(4, 2.0))
    cls([p], backend="numpy", **hypers).step()
    return p.data


# --- where -------------------------------------------------------------------------------------


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("OPTDSL_CACHE_DIR")
    assert cache.cache_dir() == tmp_path / "xdg" / "optdsl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "optdsl"
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "~/kernels")  # as written in a .env file
    assert cache.cache_dir() == tmp_path / "home" / "kernels"
    for off in ("off", "OFF", "0", "none", "", " off "):
        monkeypatch.setenv("OPTDSL_CACHE_DIR", off)
        assert cache.cache_dir() is None, off


def test_entries_are_written_to_the_configured_dir(cache_in):
    text = spec_text()
    cls = fresh(text)
    src_plain = cls.source("numpy")
    assert [f.name for f in cache_in.iterdir()] and len(kernels(cache_in)) == 1
    src_flip = cls.source("numpy", flip=True)
    assert len(kernels(cache_in)) == 2
    assert_whole(cache_in, {src_plain, src_flip})


def test_entries_are_reused_in_process(cache_in, monkeypatch):
    text = spec_text()
    expected = step_once(fresh(text))
    before = {f.name: f.stat().st_mtime_ns for f in cache_in.iterdir()}
    cache.clear_memory()

    def refuse(*args, **kwargs):
        raise AssertionError("rendered a kernel that is on disk")

    monkeypatch.setattr(NumpyBackend, "render", refuse)
    assert np.array_equal(step_once(fresh(text)), expected)
    assert {f.name: f.stat().st_mtime_ns for f in cache_in.iterdir()} == before


CHILD = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path

    import numpy as np

    text_file, mode = sys.argv[1], sys.argv[2]
    import optdsl
    from optdsl.backend.numpy_backend import NumpyBackend

    if mode == "no-render":
        def refuse(*args, **kwargs):
            raise SystemExit("rendered a kernel that is on disk")
        NumpyBackend.render = refuse
    if mode.startswith("wait:"):
        ready, go = mode[5:].split(",")
        Path(ready).touch()
        deadline = time.monotonic() + 30
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.0005)
    sources = []
    for text in json.loads(Path(text_file).read_text()):
        cls = optdsl.compile(text)
        sources += [cls.source("numpy"), cls.source("numpy", flip=True)]
        p = optdsl.Param(np.ones(4), grad=np.full(4, 2.0))
        cls([p], backend="numpy").step()
    print(json.dumps(sources))
""")


def run_child(
    tmp_path: Path, directory: Path, texts: list[str], mode: str = "plain", wait: bool = True
):
    text_file = tmp_path / f"texts-{uuid.uuid4().hex}.json"
    text_file.write_text(json.dumps(texts))
    script = tmp_path / "child.py"
    if not script.exists():  # written once: a running child may be reading it
        script.write_text(CHILD)
    env = {
        **os.environ,
        "OPTDSL_CACHE_DIR": str(directory),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(text_file), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_a_fresh_process_reuses_the_entries(tmp_path, cache_in):
    texts = [spec_text()]
    first = run_child(tmp_path, cache_in, texts)
    assert len(kernels(cache_in)) == 2
    before = {f.name: (f.stat().st_mtime_ns, f.read_text()) for f in cache_in.iterdir()}
    second = run_child(tmp_path, cache_in, texts, mode="no-render")
    assert second == first
    after = {f.name: (f.stat().st_mtime_ns, f.read_text()) for f in cache_in.iterdir()}
    assert after == before


def test_concurrent_writers_leave_whole_identical_files(tmp_path):
    texts = [spec_text(), spec_text()]
    for round_ in range(3):
        directory = tmp_path / f"round{round_}"
        ready = [tmp_path / f"ready-{round_}-{i}" for i in range(2)]
        go = tmp_path / f"go-{round_}"
        procs = [
            run_child(tmp_path, directory, texts, mode=f"wait:{r},{go}", wait=False) for r in ready
        ]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.005)
        go.touch()  # both start compiling into the same empty directory at once
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
        assert results[0] == results[1]
        assert len(kernels(directory)) == 4
        assert_whole(directory, set(results[0]))


# --- off and unwritable ------------------------------------------------------------------------


def test_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cache.clear_memory()
    cls = fresh(spec_text())
    assert np.array_equal(step_once(cls), np.full(4, 0.8))
    cls.source("numpy", flip=True)
    assert list(tmp_path.rglob("*")) == []


def test_unwritable_dir_does_not_break_compiling(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("OPTDSL_CACHE_DIR", str(blocker / "cache"))
    cache.clear_memory()
    assert np.array_equal(step_once(fresh(spec_text())), np.full(4, 0.8))
    assert blocker.read_text() == "not a directory"


def test_read_only_dir_does_not_break_compiling(tmp_path, monkeypatch):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        monkeypatch.setenv("OPTDSL_CACHE_DIR", str(directory))
        cache.clear_memory()
        assert np.array_equal(step_once(fresh(spec_text())), np.full(4, 0.8))
    finally:
        directory.chmod(0o700)


def test_failed_write_leaves_no_temp_file(cache_in, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", fail)
    assert np.array_equal(step_once(fresh(spec_text())), np.full(4, 0.8))
    assert list(cache_in.iterdir()) == []


# --- damaged files -----------------------------------------------------------------------------


def _entry(directory: Path, text: str) -> Path:
    fresh(text).source("numpy")
    (path,) = directory.glob("*.py")
    return path


def _marker_body(marker: Path) -> str:
    return (
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed')\n"
        "BUFFERS = OUTPUTS = ()\nSCRATCH = (0, 0)\n"
        "def host_args(h, t):\n    return ()\n"
        "def kernel(*args, **kwargs):\n    pass\n"
    )


@pytest.mark.parametrize(
    "damage",
    ["garbage", "binary", "empty", "truncated", "old-header", "tampered-body", "other-key"],
)
def test_damaged_file_is_ignored_and_rewritten(cache_in, tmp_path, damage):
    text = spec_text()
    path = _entry(cache_in, text)
    good = path.read_text()
    key = path.stem
    head = good.partition("\n")[0]
    marker = tmp_path / "marker"
    content = {
        "garbage": "this is not python at all (\n" * 3,
        "binary": None,
        "empty": "",
        "truncated": good[: len(good) // 2],
        "old-header": f"# optdsl-cache-key: {key}\n" + _marker_body(marker),
        "tampered-body": head + "\n" + _marker_body(marker),
        "other-key": good.replace(key, "0" * len(key)),
    }[damage]
    if content is None:
        path.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    else:
        path.write_text(content)
    cache.clear_memory()
    cls = fresh(text)
    assert np.array_equal(step_once(cls), np.full(4, 0.8))
    assert not marker.exists(), "a cache file with a bad header was executed"
    assert path.read_text() == good  # rewritten whole
    assert_whole(cache_in)


def test_a_valid_entry_is_what_runs(cache_in):
    """The converse of the damage tests: the header check does accept a good file, and the
    body on disk is exactly the source the kernel was built from."""
    text = spec_text()
    path = _entry(cache_in, text)
    cache.clear_memory()
    body = path.read_text().partition("\n")[2]
    assert fresh(text).source("numpy") == body


def test_parser_tables_are_cached_as_json_and_a_damaged_file_is_rebuilt(tmp_path):
    """A fresh process writes lark-*.json once; garbage there is ignored and rewritten."""
    env = {**os.environ, "OPTDSL_CACHE_DIR": str(tmp_path)}
    code = "from optdsl.compiler import load_spec; load_spec(open('stdlib/sgd.opt').read())"
    root = Path(__file__).parents[1]
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True)
    (tables,) = tmp_path.glob("lark-*.json")
    assert json.loads(tables.read_text())["data"]["parser"]
    tables.write_text("{not json")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True)
    assert json.loads(tables.read_text())["data"]["parser"]


def test_compiled_classes_are_cached_per_text_and_module():
    """compile() returns the same class for the same text, and a class of the module asked
    for: the class cache once ignored ``module``, so a second module got the first's."""
    text = spec_text()
    assert optdsl.compile(text) is optdsl.compile(text)
    a, b = optdsl.compile(text, module="pkg.a"), optdsl.compile(text, module="pkg.b")
    assert (a.__module__, b.__module__) == ("pkg.a", "pkg.b")
    assert optdsl.compile(text, module="pkg.a") is a
