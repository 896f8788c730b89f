"""examples/hypergradient_demo.py runs, at a tiny size, and prints its table (and draws its
plot where matplotlib is installed)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parents[2] / "examples" / "hypergradient_demo.py"


def _load():
    spec = importlib.util.spec_from_file_location("hypergradient_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_prints_a_row_per_run(capsys, tmp_path):
    demo = _load()
    argv = ["--steps", "25", "--samples", "150", "--batch", "32"]
    plot = tmp_path / "curves.png"
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    if has_matplotlib:
        argv += ["--plot", str(plot)]
    results = demo.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "lr", "tuning", "final", "loss", "test", "acc", "lr",
                                "reached"]
    rows = [line for line in lines[1:] if not line.startswith("saved")]
    assert len(rows) == 2 + 2 * len(demo.RUNS)
    for row in rows:
        loss, accuracy, reached = (float(x) for x in row.split()[-3:])
        assert math.isfinite(loss) and 0 <= accuracy <= 1 and reached >= 0
    assert [label for label, *_ in results] == [label for label, *_ in demo.RUNS]
    for _, _, fixed, tuned in results:
        assert len(fixed["lrs"]) == 25 and len(set(fixed["lrs"])) == 1  # fixed: unchanged
        assert len(set(tuned["lrs"])) > 1  # tuned: moved
    if has_matplotlib:
        assert plot.stat().st_size > 10_000
        assert lines[-1] == f"saved {plot}"


def test_the_demo_runs_without_matplotlib_when_no_plot_is_asked(capsys, monkeypatch):
    demo = _load()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it fails
    demo.main(["--steps", "3", "--samples", "40"])
    assert "saved" not in capsys.readouterr().out
    with pytest.raises(SystemExit):  # at once, before training
        demo.main(["--steps", "3", "--samples", "40", "--plot", "x.png"])
    captured = capsys.readouterr()
    assert captured.out == "" and "--plot needs matplotlib" in captured.err
