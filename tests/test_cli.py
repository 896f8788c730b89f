"""The optdsl command line and the self-contained modules it writes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl.cli import main

EXAMPLES = Path(__file__).parent / "examples"
ROOT = Path(__file__).parents[1]


def test_list_shows_every_stdlib_optimizer_with_hypers_and_state_bytes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"):
        assert f"{name}  (" in out
    assert "Adam  (adam.opt; 8 state bytes per fp32 parameter" in out
    assert "SGD  (sgd.opt; 0 state bytes" in out
    assert "betas: tuple[2] = (0.9, 0.999) in [0, 1)" in out


def test_list_shows_the_catalogue_paper_reference_and_lines(capsys):
    from optdsl import optim

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in optim.STDLIB:
        assert f"\n{name}  (" in out
    assert "Adam  (adam.opt; 8 state bytes per fp32 parameter with defaults)\n" \
           "    Kingma & Ba, 2015; matches torch 2.13; " in out
    assert "\nLion  (lion.opt; 4 state bytes" in out
    assert "    Chen et al., 2023; matches optax; " in out
    assert "    Xie et al., 2022; matches the paper; " in out
    lines = len((ROOT / "stdlib" / "adan.opt").read_text().splitlines())
    assert f"matches the paper; {lines} lines of .opt" in out


def test_list_shows_every_schedule(capsys):
    from optdsl import schedules

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, path in schedules.STDLIB.items():
        assert f"{name}  ({path})" in out
    assert "milestones: tuple (required) in [0, inf)" in out
    assert "anneal_strategy: str = 'cos' one of 'cos', 'linear'" in out
    python_part = out.split("schedules written in Python", 1)[1]
    for name in schedules.PYTHON_SCHEDULES:
        assert f"\n{name}(" in python_part
    assert "LambdaLR(optimizer, lr_lambda, last_epoch=-1)\n    lr = base_lr * lr_lambda(epoch)" \
        in python_part
    assert "ChainedScheduler(schedulers, optimizer=None)" in python_part


def _printed(capsys) -> list[list[str]]:
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


def test_plot_schedule_print_reads_hypers_safely(capsys):
    # a single milestone is a 1-tuple; an option between hypers; a bare word is a string
    assert main(["plot-schedule", "MultiStepLR", "milestones=2", "--steps", "4", "--print",
                 "gamma=0.5"]) == 0
    assert _printed(capsys) == [["step", "lr"], ["0", "0.1"], ["1", "0.1"], ["2", "0.05"],
                                ["3", "0.05"]]
    assert main(["plot-schedule", "MultiStepLR", "milestones=1,3,3", "--steps", "4",
                 "--lr", "1", "--print"]) == 0
    assert [row[1] for row in _printed(capsys)[1:]] == ["1.0", "0.1", "0.1",
                                                       repr(0.1 * 0.1 ** 2)]
    assert main(["plot-schedule", "OneCycleLR", "max_lr=1.0", "total_steps=10",
                 "anneal_strategy=linear", "three_phase=false", "--print"]) == 0
    rows = _printed(capsys)
    assert rows[0] == ["step", "lr", "momentum"] and len(rows) == 11  # total_steps by default
    assert rows[3][1:] == ["1.0", "0.85"]
    assert main(["plot-schedule", "OneCycleLR", "max_lr=1.0", "total_steps=10",
                 "anneal_strategy='linear'", "--steps", "11", "--print"]) == 0
    assert float(_printed(capsys)[-1][1]) < 0  # the trap value documented in onecyclelr.opt


def test_plot_schedule_print_with_metrics(tmp_path, capsys):
    metrics = tmp_path / "loss.txt"
    metrics.write_text("1.0\n0.9\n\n0.9  # flat from here\n0.9\n0.9\n")
    assert main(["plot-schedule", "ReduceLROnPlateau", "patience=1", "factor=0.5",
                 "--metrics", str(metrics), "--print"]) == 0
    assert [row[1] for row in _printed(capsys)[1:]] == ["0.1", "0.1", "0.1", "0.1", "0.05",
                                                       "0.05"]
    metrics.write_text("1.0\nnan?\n")
    assert main(["plot-schedule", "ReduceLROnPlateau", "--metrics", str(metrics),
                 "--print"]) == 1
    assert f"{metrics}:2: not a number: 'nan?'" in capsys.readouterr().err
    metrics.write_text("1.0\n")
    assert main(["plot-schedule", "ReduceLROnPlateau", "--metrics", str(metrics),
                 "--steps", "5", "--print"]) == 1
    assert "holds 1 values; 5 steps need 4" in capsys.readouterr().err
    assert main(["plot-schedule", "StepLR", "step_size=2", "--metrics", str(metrics),
                 "--print"]) == 1
    assert "StepLR reads no metric" in capsys.readouterr().err


def test_plot_schedule_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "lr.png"
    assert main(["plot-schedule", "StepLR", "step_size=3", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == "optdsl: error: plotting needs matplotlib: pip install 'optdsl[plot]'\n"
    assert not out.exists()
    assert main(["plot-schedule", "StepLR", "step_size=3", "--print"]) == 0  # no plot needed


def test_plot_schedule_needs_an_output(capsys):
    assert main(["plot-schedule", "StepLR", "step_size=3"]) == 1
    assert "give -o FILE.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot-schedule", "StepLR", "step_size=3", "--print", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_check_ok_and_error(tmp_path, capsys):
    good = EXAMPLES / "design_lion.opt"
    bad = tmp_path / "bad.opt"
    bad.write_text(good.read_text().replace("(1 - b1) * g)", "(1 - bta1) * g)"))
    assert main(["check", str(good)]) == 0
    assert capsys.readouterr().out.strip().endswith("design_lion.opt: ok")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:13:43: unknown name 'bta1'" in err
    assert "^^^^" in err
    assert main(["check", str(tmp_path / "missing.opt")]) == 1


def test_compile_prints_kernel_and_ir(capsys):
    assert main(["compile", str(EXAMPLES / "design_lion.opt")]) == 0
    out = capsys.readouterr().out
    assert "def kernel(" in out and "def host_args(" in out and "_np.sign(" in out
    assert main(["compile", "Adam", "--emit", "ir"]) == 0
    ir = capsys.readouterr().out
    assert ir.startswith("program Adam") and "host:" in ir and "-> out:exp_avg" in ir


def test_show_prints_spec_ir_and_kernel(capsys):
    assert main(["show", "Adam"]) == 0
    out = capsys.readouterr().out
    assert "optimizer Adam" in out and "program Adam" in out and "def kernel(" in out


def test_show_prints_the_reduce_passes_before_the_update(capsys):
    """LAMB's reduce pass computes its direction (a kernel), and reads p as loaded; LARS's
    reduces p and g as loaded (no kernel)."""
    assert main(["show", "LAMB"]) == 0
    out = capsys.readouterr().out
    assert "reduce pass 1 of 1 (numpy): reduce:r0 = sumsq(p), reduce:r1 = sumsq(red:r1)" in out
    assert out.index("reduce pass 1") < out.index("update kernel (numpy)")
    assert out.count("def kernel(") == 2
    assert main(["show", "LARS"]) == 0
    out = capsys.readouterr().out
    assert "reduce:r0 = sumsq(p), reduce:r1 = sumsq(g)" in out
    assert "(no kernel: it reduces buffers as they are loaded)" in out
    assert out.count("def kernel(") == 1


def test_show_unknown_name_is_a_clean_error(capsys):
    assert main(["show", "Adamm"]) == 1
    assert "not a stdlib optimizer" in capsys.readouterr().err


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,hypers", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "maximize": True}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
])
def test_compiled_module_runs_without_parsing_and_matches(tmp_path, monkeypatch, name, hypers):
    out = tmp_path / f"{name.lower()}_module.py"
    assert main(["compile", name, "-o", str(out)]) == 0
    # Importing the module must not parse: make the parser unusable first.
    from optdsl import frontend

    monkeypatch.setattr(frontend, "parse", lambda *a, **k: pytest.fail("parsed"))
    module = _import(out, f"exported_{name}")
    exported = getattr(module, name)
    original = optdsl.optim.load(name)
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((7, 3))
    results = []
    for cls in (exported, original):
        p = optdsl.Param(p0.copy())
        opt = cls([p], **hypers)
        for step in range(6):
            p.grad = np.random.default_rng(step).standard_normal(p0.shape)
            opt.step()
        results.append((p.data.copy(), opt.state_dict()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert exported.__doc__ == original.__doc__.replace(
        f"from stdlib/{optdsl.optim.STDLIB[name]}", f"from {out}")
    with pytest.raises(optdsl.HyperError):
        exported([optdsl.Param(np.ones(2))], lr=-1.0)
    assert "def kernel(" in exported.source("numpy", **hypers)


def test_exported_module_holds_no_spec_text(tmp_path):
    out = tmp_path / "sgd_module.py"
    assert main(["compile", "SGD", "-o", str(out)]) == 0
    text = out.read_text()
    assert "Nesterov momentum requires" not in text  # the require message, as code points
    assert "Stochastic gradient descent" not in text
    compile(text, str(out), "exec")


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "optdsl", "list"], capture_output=True,
                            text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert "Adadelta" in result.stdout


def test_schedules_in_list_show_and_compile(capsys):
    assert main(["list"]) == 0
    assert "StepLR  (schedules/steplr.opt)" in capsys.readouterr().out
    assert main(["show", "StepLR"]) == 0
    out = capsys.readouterr().out
    assert "schedule StepLR" in out and "def schedule_step(" in out
    assert main(["compile", str(EXAMPLES / "design_steplr.opt")]) == 0
    assert "_np.floor(" in capsys.readouterr().out
    assert main(["compile", "StepLR", "--emit", "ir"]) == 1
    assert "has no kernel or IR" in capsys.readouterr().err
