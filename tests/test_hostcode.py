"""Generated host code: decisions, quiet floating point, many host ifs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import optdsl
from optdsl.compiler import load_spec


def step_once(cls, **hypers):
    w = optdsl.Param(np.ones(3))
    opt = cls([w], **hypers)
    w.grad = np.ones(3)
    opt.step()
    return w.data


def test_unpacking_mixed_host_and_elementwise_items_decides_on_the_host_item():
    R = optdsl.compile("""optimizer R
hyper lr = 0.1
update:
    a, b = (g, lr)
    if b > 0:
        p = p - a
    c, d = (lr, lr * 2)
    e, f = (d, c)
    if e > f:
        p = p - a * e
""")
    np.testing.assert_allclose(step_once(R), 1 - 1 - 0.2)
    np.testing.assert_allclose(step_once(R, lr=-0.1), 1.0)  # neither branch taken


def test_host_code_raises_no_floating_point_warnings():
    R = optdsl.compile("""optimizer R
hyper lr = 0.1
update:
    if log(lr - 0.1) > 0:
        p = p - g
    p = p - lr / (lr - 0.1) * 0 * g
""")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = step_once(R)
    assert np.isnan(data).all()  # inf * 0: computed as the device would, not raised


def test_many_host_ifs_compile_lazily_and_enumeration_says_why_it_stops():
    flags = "".join(f"hyper f{i} = False\n" for i in range(13))
    body = "".join(f"    if f{i}:\n        p = p - g\n" for i in range(13))
    text = f"optimizer Many\n{flags}update:\n{body}"
    Many = optdsl.compile(text)
    np.testing.assert_allclose(step_once(Many, f3=True, f7=True), -1.0)
    with pytest.raises(optdsl.OptdslError, match="more than 4096 combinations"):
        load_spec(text).paths()


def test_diagnostics_show_the_line_the_parser_counted():
    text = "optimizer A\nupdate:\n    x = 1 \x0c+ 2\n    p = p - lr * g\n"
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(text, "a.opt")
    assert info.value.line == 4
    assert info.value.source_line == "    p = p - lr * g"
