"""Errors at construction: bad keywords, types, ranges and cross-hyper ``require`` lines.

These are not spec errors (there is no line to point at) but ``HyperError`` (a ValueError)
or ``HyperTypeError`` (also a TypeError), with the optimizer's name and a message that
says what is wrong and, where it can, what was meant.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import optdsl
from optdsl import HyperError, HyperTypeError
from optdsl.optim import SGD, Adam

STEP_RULE = """optimizer StepRule
hyper step_size
hyper scale = 1.0 in [0, inf)

update:
    p = p - step_size * scale * g
"""


@pytest.fixture
def params():
    w = optdsl.Param(np.zeros(3, np.float32), name="w")
    w.grad = np.ones(3, np.float32)
    return [w]


def _raises(exc_type, message, build):
    """Assert ``build()`` raises exactly ``exc_type`` with exactly ``message``."""
    with pytest.raises(exc_type, match="^" + re.escape(message) + "$") as info:
        build()
    return info.value


def test_unknown_keyword_suggests_the_close_one(params):
    exc = _raises(HyperTypeError,
                  "Adam: unknown keyword 'lrr'; did you mean 'lr'? (accepted: lr, betas, eps, "
                  "weight_decay, amsgrad, maximize, decoupled_weight_decay)",
                  lambda: Adam(params, lrr=0.1))
    assert isinstance(exc, TypeError) and isinstance(exc, optdsl.OptdslError)


def test_unknown_keyword_without_a_close_one_lists_what_is_accepted(params):
    _raises(HyperTypeError,
            "SGD: unknown keyword 'velocity' (accepted: lr, momentum, dampening, "
            "weight_decay, nesterov, maximize)",
            lambda: SGD(params, velocity=0.9))


def test_missing_required_hyper(params):
    Rule = optdsl.compile(STEP_RULE)
    _raises(HyperTypeError, "StepRule: missing required keyword 'step_size'",
            lambda: Rule(params))
    Rule(params, step_size=0.5).step()  # and given, it works
    np.testing.assert_allclose(params[0].data, -0.5)


def test_tuple_hyper_given_a_number(params):
    _raises(HyperTypeError, "Adam: betas must be a tuple of 2 numbers, got 0.9",
            lambda: Adam(params, betas=0.9))


def test_tuple_hyper_of_the_wrong_length(params):
    _raises(HyperTypeError, "Adam: betas must be a tuple of 2 numbers, got (0.9, 0.99, 0.999)",
            lambda: Adam(params, betas=(0.9, 0.99, 0.999)))


def test_bool_hyper_given_a_string(params):
    _raises(HyperTypeError, "Adam: amsgrad must be True or False, got 'yes'",
            lambda: Adam(params, amsgrad="yes"))


def test_number_hyper_given_a_string_or_a_bool(params):
    _raises(HyperTypeError, "Adam: lr must be a number, got '0.1'",
            lambda: Adam(params, lr="0.1"))
    _raises(HyperTypeError, "Adam: lr must be a number, got True",
            lambda: Adam(params, lr=True))


def test_negative_learning_rate(params):
    exc = _raises(HyperError, "Adam: invalid lr: -1.0; expected in [0, inf)",
                  lambda: Adam(params, lr=-1))
    assert isinstance(exc, ValueError) and not isinstance(exc, TypeError)


def test_beta_out_of_range_names_the_item(params):
    _raises(HyperError, "Adam: invalid betas[0]: 1.0; expected in [0, 1)",
            lambda: Adam(params, betas=(1.0, 0.999)))
    _raises(HyperError, "Adam: invalid betas[1]: -0.5; expected in [0, 1)",
            lambda: Adam(params, betas=(0.9, -0.5)))


def test_failing_require_line(params):
    exc = _raises(HyperError, "SGD: Nesterov momentum requires a momentum and zero dampening",
                  lambda: SGD(params, nesterov=True))
    assert not isinstance(exc, TypeError)
    _raises(HyperError, "SGD: Nesterov momentum requires a momentum and zero dampening",
            lambda: SGD(params, nesterov=True, momentum=0.9, dampening=0.1))
    SGD(params, nesterov=True, momentum=0.9)  # satisfied: no error


def test_param_group_overrides_are_validated(params):
    _raises(HyperError, "Adam: invalid lr: -0.1; expected in [0, inf)",
            lambda: Adam([{"params": params, "lr": -0.1}]))
    _raises(HyperTypeError, "Adam: unknown param group key 'lrr'; did you mean 'lr'?",
            lambda: Adam([{"params": params, "lrr": 0.1}]))


def test_bad_value_written_into_param_groups_is_caught_at_step(params):
    opt = Adam(params)
    opt.param_groups[0]["lr"] = -1.0
    _raises(HyperError, "Adam: invalid lr: -1.0; expected in [0, inf)", opt.step)


def test_string_hyper_outside_its_choices(params):
    Rule = optdsl.compile('optimizer Modal\nhyper mode = "fast" in {"fast", "slow"}\n'
                          'update:\n    if mode == "fast":\n        p = p - g\n')
    _raises(HyperError, "Modal: invalid mode: 'medium'; expected one of 'fast', 'slow'",
            lambda: Rule(params, mode="medium"))
