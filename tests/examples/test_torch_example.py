"""examples/torch_mnist_like.py runs at its small size: a conv net learns the synthetic
digits with the example's own .opt rule (flattened: one kernel call a step), and with a
rule from a .opt file, stepping the tensors one by one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the example trains a torch model")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location(
        "torch_mnist_like", ROOT / "examples" / "torch_mnist_like.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_small_run_learns_the_digits_with_its_own_rule(example, capsys):
    result = example.main(["--small"])
    out = capsys.readouterr().out
    assert out.startswith("rule Signum, 9,098 params in one flat buffer, 2,000 training")
    assert out.count("test accuracy") == 2
    assert result["accuracy"] > 0.5  # ten classes: chance is 0.1


def test_a_rule_from_a_file_steps_the_tensors_one_by_one(example, capsys):
    lion = ROOT / "tests" / "examples" / "design_lion.opt"
    result = example.main(["--small", "--epochs", "1", "--rule", str(lion), "--no-flatten"])
    out = capsys.readouterr().out
    assert out.startswith("rule Lion, 9,098 params, 2,000 training images")
    assert result["accuracy"] > 0.3
