"""``optdsl plot-diagnostics``: it draws a real log, and says clearly what is wrong with a
missing or bad one (exit code 1)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl.cli import main
from optdsl.diagnostics import JSONLLogger
from optdsl.optim import Adam

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _log(path: Path, steps: int = 30, groups: int = 2) -> Path:
    rng = np.random.default_rng(0)
    w = optdsl.Param(rng.standard_normal((16, 8)).astype(np.float32), name="w")
    b = optdsl.Param(np.zeros(8, np.float32), name="b")
    spec = [{"params": [w]}, {"params": [b], "lr": 0.003}] if groups == 2 else [w, b]
    opt = Adam(spec, lr=0.01, diagnostics=True, skip_nonfinite=True)
    with JSONLLogger(path) as log:
        for step in range(steps):
            w.grad = (w.data - 1 + 0.1 * rng.standard_normal(w.data.shape)).astype(np.float32)
            b.grad = (b.data + 0.5).astype(np.float32)
            if step == 5:
                b.grad[0] = np.inf  # a skipped step in the log
            opt.step()
            log.log(opt)
    return path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_a_log(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = _log(tmp_path / "diag.jsonl")
    out = tmp_path / "diag.png"
    assert main(["plot-diagnostics", str(log), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    width, height = _png_size(out)
    assert height > width > 400 and out.stat().st_size > 20_000  # four panels
    assert main(["plot-diagnostics", str(log), "--group", "1", "-o",
                 str(tmp_path / "g1.svg")]) == 0
    assert (tmp_path / "g1.svg").read_text().lstrip().startswith("<?xml")


def test_the_figure_has_four_panels_and_one_line_per_group(tmp_path):
    pytest.importorskip("matplotlib")
    from optdsl import plot
    from optdsl.diagnostics import read_jsonl

    records = read_jsonl(_log(tmp_path / "diag.jsonl", steps=8))
    fig = plot.diagnostics_figure(records)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    assert len(panels[0].get_lines()) == 2 and len(panels[1].get_lines()) == 2
    assert [line.get_label() for line in panels[2].get_lines()] == [
        "effective_lr (group 0) mean", "effective_lr (group 1) mean"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read {path}: No such file or directory"),
    ("", "{path} holds no diagnostics records"),
    ("hello\nworld\n", "{path}:1: not a JSON line"),
    ('{"a": 1}\n', "{path}:1: not a diagnostics record"),
])
def test_missing_or_bad_logs_are_clear_errors(tmp_path, capsys, content, message):
    path = tmp_path / "log.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["plot-diagnostics", str(path), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("optdsl: error: " + message.format(path=path)), err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()


def test_a_group_that_is_not_in_the_log(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = _log(tmp_path / "diag.jsonl", steps=3, groups=1)
    assert main(["plot-diagnostics", str(log), "--group", "3", "-o",
                 str(tmp_path / "x.png")]) == 1
    assert "group 3 is in no record of" in capsys.readouterr().err


def test_without_matplotlib_it_says_what_to_install(tmp_path, monkeypatch, capsys):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    log = _log(tmp_path / "diag.jsonl", steps=2)
    assert main(["plot-diagnostics", str(log), "-o", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == ("optdsl: error: plotting needs matplotlib: pip install "
                                       "'optdsl[plot]'\n")


def test_help_shows_an_example_and_the_console_script_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "optdsl", "plot-diagnostics", "--help"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "optdsl plot-diagnostics runs/diag.jsonl -o diag.png" in proc.stdout
    assert "JSONLLogger" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "optdsl", "plot-diagnostics",
                           str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "x.png")],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "No such file or directory" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "optdsl", "plot-diagnostics",
                           str(tmp_path / "none.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "-o/--output" in proc.stderr  # argparse: -o is required


def test_a_log_of_one_skipped_all_nan_step_still_plots(tmp_path):
    """Nothing positive for the log axes, one heat-map column, no finite gradient."""
    pytest.importorskip("matplotlib")
    w = optdsl.Param(np.ones(3), name="w")
    opt = Adam([w], diagnostics=True, skip_nonfinite=True)
    w.grad = np.full(3, np.nan)
    opt.step()
    with JSONLLogger(tmp_path / "one.jsonl") as log:
        log.log(opt)
    assert main(["plot-diagnostics", str(tmp_path / "one.jsonl"), "-o",
                 str(tmp_path / "one.png")]) == 0
    _png_size(tmp_path / "one.png")
