"""``optdsl demo``: the README's main command, at a small size, and its parts."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optdsl import demo
from optdsl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] = None: hidden, as the tests below hide it
        return False


HAS_SKLEARN, HAS_MATPLOTLIB = installed("sklearn"), installed("matplotlib")
EPOCH_LINE = re.compile(r"^\s*(\w+)  epoch (\d+)/(\d+)  loss ([\d.]+)  test loss ([\d.]+)  "
                        r"test accuracy ([\d.]+)(?:  lr (\S+))?$", re.M)
RESULT_LINE = re.compile(r"^(\w+): test accuracy ([\d.]+) after (\d+) epochs", re.M)


def run_cli(*argv: str, before: str = "") -> subprocess.CompletedProcess:
    """``python -m optdsl ...`` in a fresh interpreter; with ``before``, the same entry point
    (``optdsl.cli.main``) run after that code (to hide a module, say)."""
    cmd = [sys.executable, "-m", "optdsl"]
    if before:
        cmd[1:] = ["-c", f"import sys\n{before}\nfrom optdsl.cli import main\n"
                         "sys.exit(main(sys.argv[1:]))"]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, cwd=ROOT,
                          check=False, timeout=120)


def results(out: str) -> dict[str, float]:
    return {name: float(acc) for name, acc, _ in RESULT_LINE.findall(out)}


def test_the_small_demo_runs_from_the_entry_point(tmp_path):
    plot = tmp_path / "demo.png"
    proc = run_cli("demo", "--small", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    source = "digits from scikit-learn" if HAS_SKLEARN else "generated digits"
    assert out.startswith(f"data: {source}"), out
    epochs = EPOCH_LINE.findall(out)
    assert [(e[0], int(e[1]), int(e[2])) for e in epochs] == [("Adam", k, 3) for k in (1, 2, 3)]
    losses = [float(e[3]) for e in epochs]
    assert losses[0] > losses[1] > losses[2], out  # it learns
    assert results(out)["Adam"] > 0.85, out  # 10 classes: chance is 0.1
    assert "\r" not in out and "[#" not in out  # no progress bar in a pipe
    if HAS_MATPLOTLIB:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"wrote {plot}" in proc.stderr
    else:
        assert not plot.exists() and "no plot drawn" in proc.stderr


def test_compare_a_stdlib_name_an_example_and_a_path(capsys):
    lion = ROOT / "examples" / "lion.opt"
    argv = ["demo", "--small", "--no-plot", "--quiet", "--compare", f"sgd,lion,{lion}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    found = [(name, float(acc)) for name, acc, _ in RESULT_LINE.findall(out)]
    assert [name for name, _ in found] == ["SGD", "Lion", "Lion"]
    assert not EPOCH_LINE.search(out)  # --quiet
    assert min(acc for _, acc in found) > 0.75, out
    # `lion` (examples/lion.opt) and its path are the same rule, so the same run
    assert found[1] == found[2]
    assert "Lion (lr" not in out  # --quiet leaves out the headers


def test_compare_draws_every_optimizer_in_one_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "compare.png"
    assert main(["demo", "--small", "--quiet", "--compare", "adam,adagrad",
                 "--plot", str(plot)]) == 0
    assert f"wrote {plot}" in capsys.readouterr().err
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "adamm"], "unknown optimizer 'adamm': not a stdlib optimizer (SGD, "),
    (["--compare", "adam,nope"], "unknown optimizer 'nope'"),
    (["--compare", "adam,,sgd"], "an empty name in the list"),
    (["--optimizer", "sparseadam"], "SparseAdam steps row-sparse gradients only"),
    (["--optimizer", "sgd", "--compare", "adam,sgd"], "give --optimizer or --compare"),
    (["--optimizer", "stdlib/schedules/steplr.opt"], "is a schedule, not an optimizer"),
    (["--schedule", "NoSuchLR"], "unknown schedule 'NoSuchLR'"),
    (["--schedule", "StepLR", "gamma=0.5"], "step_size"),
    (["--schedule", "StepLR", "step_size=2", "bogus=1"], "bogus"),
])
def test_bad_choices_are_one_line_errors(argv, message, capsys):
    assert main(["demo", "--small", "--no-plot", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("optdsl: error: ") and message in err, err
    assert "Traceback" not in err


def test_a_bad_optimizer_exits_non_zero_from_the_command_line():
    proc = run_cli("demo", "--optimizer", "adamm")
    assert proc.returncode == 1
    assert proc.stderr.startswith("optdsl: error: unknown optimizer 'adamm'"), proc.stderr
    assert proc.stdout == ""  # nothing trained


def test_a_spec_error_in_a_user_rule_is_reported_like_a_compiler_error(tmp_path, capsys):
    rule = tmp_path / "typo.opt"
    rule.write_text((ROOT / "examples" / "lion.opt").read_text().replace("(1 - b1) * g)",
                                                                        "(1 - bta1) * g)"))
    assert main(["demo", "--small", "--no-plot", "--optimizer", str(rule)]) == 1
    err = capsys.readouterr().err
    assert "typo.opt:13:" in err and "did you mean 'b1'?" in err


def test_without_scikit_learn_or_matplotlib_it_trains_on_generated_digits(tmp_path):
    plot = tmp_path / "demo.png"
    proc = run_cli("demo", "--small", "--plot", str(plot),
                   before="sys.modules['sklearn'] = None; sys.modules['matplotlib'] = None")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("data: generated digits (scikit-learn is not installed"), first
    assert "pip install 'optdsl[demo]'" in first
    assert results(proc.stdout)["Adam"] > 0.85, proc.stdout
    assert "no plot drawn: it needs matplotlib (pip install 'optdsl[demo]')" in proc.stderr
    assert not plot.exists()


def test_asking_for_sklearn_without_it_says_how_to_get_it():
    proc = run_cli("demo", "--small", "--dataset", "sklearn",
                   before="sys.modules['sklearn'] = None")
    assert proc.returncode == 1
    assert "needs scikit-learn: pip install 'optdsl[demo]'" in proc.stderr


@pytest.mark.parametrize("words, lrs", [
    (["StepLR", "step_size=1", "gamma=0.5"], [0.01, 0.005, 0.0025]),
    (["cosineannealinglr"], [0.01, 0.0075, 0.0025]),  # T_max defaults to the 3 epochs
    (["ExponentialLR", "gamma=0.1"], [0.01, 0.001, 0.0001]),
])
def test_a_schedule_sets_each_epochs_lr(words, lrs, capsys):
    assert main(["demo", "--small", "--no-plot", "--schedule", *words]) == 0
    out = capsys.readouterr().out
    assert [float(e[6]) for e in EPOCH_LINE.findall(out)] == pytest.approx(lrs)
    assert f"schedule {words[0] if words[0] != 'cosineannealinglr' else 'CosineAnnealingLR'}" \
        in out


def test_a_schedule_that_reads_a_metric_gets_the_training_loss(capsys):
    # ReduceLROnPlateau with patience 0 and an impossible threshold: every epoch is "no
    # better", so the lr drops by the factor after each one.
    argv = ["demo", "--small", "--no-plot", "--schedule", "ReduceLROnPlateau", "patience=0",
            "factor=0.5", "threshold=10", "threshold_mode=abs"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [float(e[6]) for e in EPOCH_LINE.findall(out)] == pytest.approx([0.01, 0.01, 0.005])


def test_the_lr_can_be_given_and_the_spec_default_is_the_fallback(capsys):
    assert main(["demo", "--small", "--no-plot", "--quiet", "--optimizer", "adam",
                 "--lr", "0.003"]) == 0
    assert "Adam (lr 0.003" not in capsys.readouterr().out  # --quiet
    assert main(["demo", "--small", "--no-plot", "--optimizer", "adam", "--lr", "0.003"]) == 0
    assert "Adam (lr 0.003, from stdlib/adam.opt)" in capsys.readouterr().out
    rule = ROOT / "tests" / "examples" / "design_adam.opt"  # a user rule named Adam
    assert demo.default_lr(demo.optimizer_class(str(rule))) == demo.DEFAULT_LR["Adam"]


def test_every_stdlib_optimizer_has_a_tuned_lr():
    from optdsl import optim

    dense = set(optim.STDLIB) - optim.SPARSE_ONLY
    assert dense <= set(demo.DEFAULT_LR), dense - set(demo.DEFAULT_LR)


def test_the_progress_bar_draws_on_a_terminal_only():
    data = demo.load_dataset("generated")
    cls = demo.optimizer_class("sgd")
    tty = io.StringIO()
    demo.train(cls, 0.1, data, epochs=1, batch_size=256, seed=0, hidden=8, out=tty, bar=True)
    text = tty.getvalue()
    assert "\r     SGD [" in text and "6/6 steps" in text and "\033[K" in text
    plain = io.StringIO()
    demo.train(cls, 0.1, data, epochs=1, batch_size=256, seed=0, hidden=8, out=plain)
    assert "\r" not in plain.getvalue() and "epoch 1/1" in plain.getvalue()


def test_the_split_is_fixed_by_the_seed():
    a, b, c = (demo.load_dataset("generated", seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.y_test, b.y_test) and not np.array_equal(a.y_test, c.y_test)
    assert len(a.y_train) + len(a.y_test) == 1797 and len(a.y_test) == 449
    assert a.x_train.dtype == np.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1


def test_generated_digits_look_like_scikit_learns():
    x, y = demo.generated_digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert np.array_equal(x, np.round(x)) and x.min() == 0 and x.max() == 16  # block counts
    assert np.bincount(y).min() >= 179  # balanced
    assert np.array_equal(x, demo.generated_digits()[0])  # deterministic
    # each class has its own shape: the nearest class mean classifies most images
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    assert (nearest == y).mean() > 0.7


def test_the_mlps_backprop_matches_finite_differences():
    mlp = demo.mlp_module()
    model = mlp.MLP((5, 7, 6, 4), seed=1)
    for p in model.params():
        p.data = p.data.astype(np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 5)), rng.integers(0, 4, 9)
    model.loss_and_grads(x, y)
    for p in model.params():
        analytic = p.grad.astype(np.float64)
        numeric = np.zeros_like(p.data)
        for i in np.ndindex(p.data.shape):
            old = p.data[i]
            p.data[i] = old + 1e-6
            up = model.evaluate(x, y)[0]
            p.data[i] = old - 1e-6
            down = model.evaluate(x, y)[0]
            p.data[i] = old
            numeric[i] = (up - down) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6, err_msg=p.name)


def test_the_demo_runs_the_model_in_examples():
    assert Path(demo.mlp_module().__file__) == ROOT / "examples" / "mlp.py"


@pytest.mark.skipif(not HAS_SKLEARN, reason="the README shows a run on scikit-learn's digits")
def test_the_readmes_run_is_what_the_demo_gives(capsys):
    """The accuracies in README.md's main-command output are those of the run it shows
    (to 0.01: another machine's BLAS may round a sum differently and flip a test image)."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("$ optdsl demo --compare ", 1)[1].split("```", 1)[0]
    names = shown.split(" ", 1)[0]
    assert main(["demo", "--quiet", "--no-plot", "--compare", names]) == 0
    got = [(name, float(acc)) for name, acc, _ in RESULT_LINE.findall(capsys.readouterr().out)]
    want = [(name, float(acc)) for name, acc, _ in RESULT_LINE.findall(shown)]
    assert [n for n, _ in got] == [n for n, _ in want] == ["Adam", "SGD", "Lion"]
    for (name, acc), (_, expected) in zip(got, want, strict=True):
        assert acc == pytest.approx(expected, abs=0.01), name
    first = shown.split("\n", 2)[1]
    assert first.startswith("data: digits from scikit-learn")
