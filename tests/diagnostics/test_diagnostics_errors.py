"""``opt.diagnostics()`` raises a clear DiagnosticsError when there are none to give."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl.diagnostics import DiagnosticsError
from optdsl.optim import SGD, Adam


def _opt(**kwargs):
    w = optdsl.Param(np.ones(3), name="w")
    w.grad = np.full(3, 0.5)
    return Adam([w], **kwargs), w


def test_diagnostics_off_says_how_to_turn_them_on():
    opt, _ = _opt()
    opt.step()
    with pytest.raises(DiagnosticsError, match=r"Adam: diagnostics are off; build the "
                       r"optimizer with diagnostics=True, or set opt.diagnostics_enabled"):
        opt.diagnostics()
    assert opt._last_diagnostics is None
    assert issubclass(DiagnosticsError, optdsl.OptdslError)
    assert issubclass(DiagnosticsError, RuntimeError)


def test_no_step_yet_is_an_error():
    opt, _ = _opt(diagnostics=True)
    with pytest.raises(DiagnosticsError, match="no step has run since diagnostics were "
                       r"turned on; call opt.step\(\) first"):
        opt.diagnostics()


def test_turned_on_mid_run_needs_a_step_first():
    opt, _ = _opt()
    opt.step()
    opt.diagnostics_enabled = True
    with pytest.raises(DiagnosticsError, match="no step has run since"):
        opt.diagnostics()
    opt.step()
    assert opt.diagnostics().step == 2


def test_steps_taken_while_off_make_the_last_diagnostics_stale():
    opt, _ = _opt(diagnostics=True)
    opt.step()
    assert opt.diagnostics().step == 1
    opt.diagnostics_enabled = False
    opt.step()  # not collected
    opt.diagnostics_enabled = True
    with pytest.raises(DiagnosticsError, match="no step has run since"):
        opt.diagnostics()
    opt.step()
    assert opt.diagnostics().step == 3


def test_a_skipped_step_while_off_makes_them_stale_too():
    w = optdsl.Param(np.ones(2), name="w")
    opt = SGD([w], lr=0.1, skip_nonfinite=True, diagnostics=True)
    w.grad = np.ones(2)
    opt.step()
    opt.diagnostics_enabled = False
    w.grad = np.array([np.nan, 1.0])
    opt.step()  # skipped: no step count moves, but the skip is counted
    opt.diagnostics_enabled = True
    with pytest.raises(DiagnosticsError, match="no step has run since"):
        opt.diagnostics()


def test_off_then_on_without_a_step_keeps_the_last_step():
    opt, _ = _opt(diagnostics=True)
    opt.step()
    first = opt.diagnostics()
    opt.diagnostics_enabled = False
    opt.diagnostics_enabled = True
    assert opt.diagnostics() is first


def test_unknown_param_lookup_names_the_params():
    opt, _ = _opt(diagnostics=True)
    opt.step()
    with pytest.raises(KeyError, match=r"no stepped param 'v' in these diagnostics \(params: w\)"):
        opt.diagnostics().param("v")
