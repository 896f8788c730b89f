"""Every example in docs/language.md compiles, or fails as the page says it does.

The page's code blocks marked ``opt`` are whole specs (starting with ``optimizer`` or
``schedule``) or fragments of an update block, which are compiled after the page's
``opt-prelude`` block. Optimizers take three steps, schedules three steps of an SGD.
A block preceded by ``<!-- error -->`` must raise SpecError; if a ``text`` block follows it
directly, that is the exact message (reported under the file name ``fragment.opt``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl.api import make_class
from optdsl.compiler import load_spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "language.md"
# A code block, and for an error example the message block after one short paragraph.
BLOCK = re.compile(r"(?P<error><!-- error -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)```\n"
                   r"(?:\n(?:[^`\n][^\n]*\n)+\n```text\n(?P<message>.*?)```)?", re.S)


def _blocks():
    text = DOC.read_text()
    prelude = None
    found = []
    for m in BLOCK.finditer(text):
        if m["lang"] == "opt-prelude":
            prelude = m["body"]
        elif m["lang"] == "opt":
            found.append((m["body"], bool(m["error"]), m["message"]))
    assert prelude is not None and found
    return prelude, found


PRELUDE, BLOCKS = _blocks()
IDS = [f"{i}-{body.split(chr(10), 1)[0][:30]}" for i, (body, _, _) in enumerate(BLOCKS)]


def _spec_text(body: str) -> str:
    if body.startswith(("optimizer ", "schedule ")):
        return body
    return PRELUDE + "".join("    " + line + "\n" if line else "\n"
                             for line in body.splitlines())


@pytest.mark.parametrize(("body", "error", "message"), BLOCKS, ids=IDS)
def test_example(body, error, message, monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")
    text = _spec_text(body)
    if error:
        with pytest.raises(optdsl.SpecError) as info:
            load_spec(text, "fragment.opt")
        if message is not None:
            assert str(info.value) + "\n" == message
        return
    spec = load_spec(text, "example.opt")
    cls = make_class(spec)
    required = {name: (1.0, 2.0) if info.type == "tuple" else 1.0
                for name, info in spec.hypers.items() if info.required}
    w = optdsl.Param(np.linspace(-1, 1, 5).astype(np.float32))
    w.grad = np.linspace(1, -1, 5).astype(np.float32)
    if spec.kind == "schedule":
        from optdsl.optim import SGD

        opt = SGD([w], lr=0.1, momentum=0.9)
        sched = cls(opt, **required)
        for _ in range(3):
            if sched.needs_metric:
                sched.step(1.0)
            else:
                sched.step()
        assert np.all(np.isfinite(sched.get_last_lr()))
        return
    opt = cls([w], **required)
    for _ in range(3):
        opt.step()
    assert np.all(np.isfinite(w.data))


def test_the_page_has_error_examples_with_messages():
    assert sum(error for _, error, _ in BLOCKS) >= 3
    assert any(message for _, _, message in BLOCKS)


def test_normative_examples_behave_as_written():
    """DESIGN.md's Adam on this page steps exactly like the stdlib Adam with the same
    settings (the stdlib one adds options, which default to off)."""
    adam = next(body for body, _, _ in BLOCKS if body.startswith("optimizer Adam"))
    from optdsl.optim import Adam

    DocAdam = make_class(load_spec(adam, "adam.opt"))
    results = []
    for cls in (DocAdam, Adam):
        w = optdsl.Param(np.linspace(-1, 1, 9).astype(np.float32))
        opt = cls([w], lr=0.01, weight_decay=0.1, amsgrad=True)
        for k in range(5):
            w.grad = np.cos(np.arange(9, dtype=np.float32) + k)
            opt.step()
        results.append(w.data.copy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)
