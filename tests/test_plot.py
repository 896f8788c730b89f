"""``optdsl plot-schedule`` and optdsl.plot: the images it writes and the errors it gives."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="plotting needs matplotlib: pip install "
                    "'optdsl[plot]'")

from optdsl import plot, schedules  # noqa: E402
from optdsl.cli import main  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes)"
    return struct.unpack(">II", data[16:24])


def test_plot_one_schedule(tmp_path, capsys):
    out = tmp_path / "step.png"
    assert main(["plot-schedule", "StepLR", "step_size=30", "gamma=0.5", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    width, height = png_size(out)
    assert width > height  # one panel


def test_onecycle_draws_momentum_in_a_second_panel(tmp_path):
    one, two = tmp_path / "lr_only.png", tmp_path / "with_momentum.png"
    args = ["plot-schedule", "OneCycleLR", "max_lr=0.1", "total_steps=50"]
    assert main([*args, "cycle_momentum=False", "-o", str(one)]) == 0
    assert main([*args, "-o", str(two)]) == 0
    (w1, h1), (w2, h2) = png_size(one), png_size(two)
    assert w1 == w2 and h2 > 1.3 * h1


def test_figure_has_a_momentum_panel_only_where_momentum_changes():
    onecycle = schedules.preview("OneCycleLR", 20, max_lr=0.1, total_steps=20)
    step = schedules.preview("StepLR", 20, step_size=5)
    assert len(plot.schedule_figure(onecycle, "OneCycleLR").axes) == 2
    assert len(plot.schedule_figure(step, "StepLR").axes) == 1


def test_plateau_with_metrics_file(tmp_path):
    metrics = tmp_path / "val_loss.txt"
    metrics.write_text("# validation loss per epoch\n" + "\n".join(["1.0", "0.9"] + ["0.9"] * 20))
    out = tmp_path / "plateau.png"
    assert main(["plot-schedule", "ReduceLROnPlateau", "patience=3", "--metrics", str(metrics),
                 "-o", str(out)]) == 0
    png_size(out)


def test_a_spec_file_and_svg_output(tmp_path):
    spec = tmp_path / "halving.opt"
    spec.write_text("schedule Halving\nhyper every: int = 3\n\nupdate:\n"
                    "    if epoch > 0 and epoch % every == 0:\n        lr = lr / 2\n")
    out = tmp_path / "halving.svg"
    assert main(["plot-schedule", str(spec), "every=4", "--steps", "20", "-o", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_all_draws_every_stdlib_schedule(tmp_path):
    assert {name for name, _ in plot.GALLERY} == set(schedules.STDLIB)
    out = tmp_path / "schedules.png"
    assert main(["plot-schedule", "--all", "-o", str(out)]) == 0
    width, height = png_size(out)
    assert width > 800 and out.stat().st_size < 150_000  # small enough for the README


@pytest.mark.parametrize(("argv", "message"), [
    (["Nope"], "unknown schedule 'Nope'"),
    (["Adam"], "Adam is an optimizer, not a schedule"),
    (["LambdaLR"], "LambdaLR takes Python callables"),
    (["StepLR", "step_size"], "bad hyper 'step_size': write NAME=VALUE"),
    (["StepLR", "step_size=open('x')"], "bad hyper"),
    (["StepLR", "step_size=3,4"], "step_size takes one value, not a list"),
    (["StepLR", "step_size=0"], "StepLR: invalid step_size: 0; expected in [1, inf)"),
    (["StepLR", "step_sz=3"], "unknown keyword 'step_sz'; did you mean 'step_size'?"),
    (["StepLR"], "missing required keyword 'step_size'"),
    (["ReduceLROnPlateau"], "ReduceLROnPlateau reads a metric: give --metrics FILE"),
    (["OneCycleLR", "max_lr=1", "total_steps=10", "--steps", "12"],
     "stepped more than total_steps times"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "x.png"
    assert main(["plot-schedule", *argv, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("optdsl: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
