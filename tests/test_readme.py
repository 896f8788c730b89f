"""The README's tour runs as written."""

from __future__ import annotations

from pathlib import Path

import pytest

import optdsl
from optdsl.compiler import load_spec

README = (Path(__file__).parents[1] / "README.md").read_text()


def blocks(language: str) -> list[str]:
    """The fenced code blocks whose info string is ``language`` ("" for plain fences)."""
    found, current, info = [], None, ""
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_tour_runs(tmp_path, monkeypatch, capsys):
    lion = blocks("")[0]
    assert lion.startswith("optimizer Lion")
    (tmp_path / "lion.opt").write_text(lion)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    python = blocks("python")
    schedules = next(b for b in python if "SequentialLR" in b)
    speed = next(b for b in python if "optdsl.flatten" in b)
    for code in [*python[:2], schedules, speed]:  # the kernel listing is an excerpt
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "100 (784, 10)" in out
    assert "def kernel(" in out and "_np.sign(" in out
    # The schedule block: warm-up from lr / 100, the peak at epoch 5, then the cosine.
    sched = namespace["sched"]
    assert sched.last_epoch == 100
    assert "[1.00000000e-06 1.00000000e-04 5.41289673e-05 2.73371330e-08]" in out
    # The speed block: one buffer, and every layer stepped.
    layers, flat = namespace["layers"], namespace["flat"]
    assert len(flat.buffers) == 1 and flat.is_flat()
    assert all(float(p.data[0, 0]) < 0 for p in layers)


def test_the_gpu_block_runs(tmp_path, monkeypatch, capsys):
    """On a GPU with real CuPy; elsewhere with tests/fakecupy.py, which runs the CUDA
    kernels' C++ on the CPU."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import fakecupy

    code = next(b for b in blocks("python") if "cupy.zeros" in b)
    namespace: dict = {}
    exec(compile(blocks("python")[0], "README.md", "exec"), namespace)  # noqa: S102 - imports
    try:
        import cupy

        real = cupy.is_available()
    except ImportError:
        real = False
    if real:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    else:
        if not fakecupy.cuda_cpu.available():
            pytest.skip("no GPU, and no g++ to run the kernels on the CPU")
        with fakecupy.installed():
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    w = namespace["w"]
    assert float(w.data[0, 0]) == pytest.approx(-1e-3, rel=1e-4)  # Adam's first step: -lr
    assert capsys.readouterr().out.strip().endswith("True")


def test_the_error_shown_is_the_error_raised():
    lion = blocks("")[0]
    shown = next(b for b in blocks("") if "did you mean" in b).strip()
    bad = lion.replace("(1 - b1) * g)", "(1 - bta1) * g)")
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(bad, "lion.opt")
    assert str(info.value) == shown
