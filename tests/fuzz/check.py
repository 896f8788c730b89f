"""The property every fuzzed input must have, shared by ``tests/fuzz`` and ``scripts/fuzz.py``.

``optdsl.compile(text)`` either

- raises an :class:`optdsl.SpecError` (an ``OptdslError``) whose every diagnostic points at
  a line and column inside the text, rendered as ``<string>:LINE:COL: message`` with no
  parser internals; or
- returns a class whose generated sources (NumPy, and the CuPy and numba kernels
  rendered) hold no user text (the injection checkers of ``tests/security``), and which
  runs: an optimizer takes two steps on a small random problem with its default hypers
  (a required hyper gets the first of a few plain values that its type and range
  accept), and ``p`` and every state agree bit for bit with the reference interpreter
  (:func:`optdsl.interp.interpret`) on the unoptimised IR; a schedule takes three steps
  on an SGD optimizer. (A spec whose required hyper accepts none of those values, or
  whose ``require`` lines fail, compiles and is checked but does not run. Schedules have
  no reference interpreter: they must run, and a ScheduleError or HyperError they raise
  while stepping is a user error.)

Nothing else may escape, and no input may take longer than :data:`SOFT_LIMIT_S` (a
SIGALRM raises in the compiler's Python code) or :data:`HARD_LIMIT_S` (faulthandler dumps
the stacks and ends the process, for a hang in C code that a signal cannot interrupt).
"""

from __future__ import annotations

import ast
import faulthandler
import importlib.util
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

import optdsl
from optdsl import arrays
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.errors import HyperError, OptdslError, ScheduleError, SpecError
from optdsl.hypers import coerce, resolve
from optdsl.interp import interpret
from optdsl.runtime import factored_shape
from tests.errors.test_golden_messages import LEAKS
from tests.property.harness import assert_same_bits, make_buffers
from tests.security.test_injection import (
    CUPY,
    _docstrings,
    all_sources,
    check_cupy_source,
    check_generated,
)

SOFT_LIMIT_S = 10.0
HARD_LIMIT_S = 60.0
STEPS = 2
FILENAME = "<string>"  # what compile() reports text under


class Hang(Exception):
    """An input took longer than the soft limit."""


@contextmanager
def time_limit(seconds: float = SOFT_LIMIT_S, hard: float = HARD_LIMIT_S):
    """Raise :class:`Hang` after ``seconds``; exit the process after ``hard`` (a hang that
    the signal cannot interrupt). Also raises if the compiler swallowed the alarm."""
    fired: list[bool] = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise Hang(f"an input took more than {seconds:g} s")

    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(hard, exit=True, file=sys.__stderr__)
    start = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    if fired or elapsed > seconds:
        raise Hang(f"an input took {elapsed:.1f} s (limit {seconds:g} s)")


@dataclass(frozen=True)
class Problem:
    """The small random problem a compiled optimizer steps on."""

    shape: tuple[int, ...]
    dtype: str
    seed: int
    specials: bool  # inf, nan, zeros and huge values mixed into p and g


def problems() -> st.SearchStrategy[Problem]:
    return st.builds(Problem, st.sampled_from([(5,), (), (0,), (2, 3), (70,)]),
                     st.sampled_from(["float32", "float64"]), st.integers(0, 2**32 - 1),
                     st.booleans())


def as_text(text: str) -> str:
    """``text``, made sure to be read as spec text: compile() reads one line ending in
    ``.opt``, or naming a file, as a path; such a line gets the newline that the parser
    would add anyway."""
    if "\n" in text:
        return text
    try:
        is_file = Path(text).is_file()
    except OSError:
        is_file = False
    return text + "\n" if text.endswith(".opt") or is_file else text


def check_input(text: str, problem: Problem = Problem((5,), "float32", 0, False)) -> str:
    """Check the property for one input; return what happened (for the fuzzer's counts).
    Raises AssertionError or whatever escaped the compiler when the property fails."""
    text = as_text(text)
    with time_limit():
        try:
            cls = optdsl.compile(text)
        except OptdslError as exc:
            check_rejection(exc, text)
            return f"rejected ({getattr(exc, 'stage', type(exc).__name__)})"
        spec = cls._spec
        check_sources(spec)
        if spec.kind == "schedule":
            return run_schedule(cls)
        return run_optimizer(cls, problem)


def check_rejection(exc: OptdslError, text: str) -> None:
    """A located error: every diagnostic inside the text, rendered like a compiler's."""
    assert isinstance(exc, SpecError), \
        f"compile() raised {type(exc).__name__} without a location: {exc}"
    lines = text.split("\n")
    assert exc.diagnostics, "a SpecError without diagnostics"
    for d in exc.diagnostics:
        where = f"{d.span.line}:{d.span.column} ({d.message})"
        assert d.source.name == FILENAME, d.source.name
        assert 1 <= d.span.line <= len(lines), f"line {where} is outside the text"
        assert 1 <= d.span.column <= len(lines[d.span.line - 1]) + 1, \
            f"column {where} is outside line {lines[d.span.line - 1]!r}"
        # The golden tests' list of what must never reach a user, outside quoted user text.
        own = re.sub(r"'[^']*'|\"[^\"]*\"", "''", f"{d.message} {d.hint or ''}")
        assert not LEAKS.search(own), f"parser internals in the message: {d.message!r}"
    rendered = str(exc)
    assert rendered.startswith(f"{FILENAME}:{exc.line}:{exc.column}: "), rendered


_SCHEDULE_PROBE = "schedule Probe\nhyper gamma = 0.5\nupdate:\n    lr = base_lr * gamma\n"
SCHEDULE_DOCSTRINGS = {d.value for d in _docstrings(ast.parse(
    load_spec(_SCHEDULE_PROBE, "probe.opt").host_source))}


def _numba_check():
    """tests/backend's checker of numba sources, where numba is installed (its test module
    needs numba to import; rendering itself does not run numba)."""
    if importlib.util.find_spec("numba") is None:
        return None
    from tests.backend.test_numba_backend import NUMBA, check_numba_source

    return NUMBA, check_numba_source


NUMBA_CHECK = _numba_check()
MAX_PATHS = 8  # specialisations rendered for the CUDA and numba backends
NUMPY = get_backend("numpy")


def check_sources(spec) -> None:
    """No user text in what is generated (tests/security's checkers): the host module and
    every NumPy kernel of an optimizer, its CuPy and numba kernels (rendered, not run) for
    up to MAX_PATHS specialisations; the step module of a schedule."""
    if spec.kind == "schedule":
        check_generated(spec.host_source, fixed_docstrings=SCHEDULE_DOCSTRINGS)
        return
    try:
        paths = spec.paths()
    except OptdslError:  # too many to list (each step compiles its own; run_optimizer
        paths = []       # checks those)
    for source in all_sources(spec) if paths else [spec.host_source]:
        check_generated(source)
    for path in paths[:MAX_PATHS]:
        program = spec.program(path)
        check_cupy_source(CUPY.render(program, kind=spec.kind, path=path))
        if NUMBA_CHECK is not None:
            numba, check_numba_source = NUMBA_CHECK
            check_numba_source(numba.render(program, kind=spec.kind, path=path))


# Values tried, in order, for a required hyper (one without a default) of each type.
CANDIDATES = {"float": (10.0, 1.0, 0.5, 100.0, 0.0), "int": (10, 1, 2, 100, 0),
              "bool": (False, True), "str": ("a",)}


def required_values(infos) -> dict[str, Any] | None:
    """A value for every required hyper: the first candidate its type and range accept
    (a string hyper's first choice); None if some hyper accepts none."""
    given = {}
    for name, info in infos.items():
        if not info.required:
            continue
        if info.type == "tuple":
            n = info.n if info.n >= 0 else 2
            candidates = [tuple(c * (i + 1) for i in range(n)) for c in CANDIDATES["float"]]
        else:
            candidates = [*(info.choices or ()), *CANDIDATES[info.type]]
        for value in candidates:
            try:
                coerce(info, value)
            except HyperError:
                continue
            given[name] = value
            break
        else:
            return None
    return given


def run_optimizer(cls, problem: Problem) -> str:
    """Two steps of ``cls`` with default hypers (and :func:`required_values`), all given as
    keywords; p and states == the interpreter's."""
    spec = cls._spec
    given = required_values(spec.hypers)
    if given is None:
        return "compiled (not run: no value for a required hyper)"
    values = resolve(spec.hypers, given, spec.name)
    if spec.host["requires"](values) >= 0:
        return "compiled (not run: a require fails at these hypers)"
    buffers = make_buffers(("p", "g"), problem.shape, np.dtype(problem.dtype), problem.seed,
                           problem.specials)
    buffers = {k: np.array(v) for k, v in buffers.items()}  # 0-d arrays, not scalars
    w = optdsl.Param(buffers["p"].copy(), name="w")
    w.grad = buffers["g"].copy()
    # Every hyper given as a keyword, so that one that cannot be given shows up.
    opt = cls([w], backend="numpy", **values)
    states: dict[str, np.ndarray] = {}
    for t in range(1, STEPS + 1):
        before = w.data.copy()
        with np.errstate(all="ignore"):
            path = spec.host["decide"]({**values, "factored": w.data.ndim >= 2}, t)
            check_generated(spec.kernel(NUMPY, path).source)
            opt.step()
            state = opt.state[w]
            assert state["step"] == t, f"step count {state['step']} after step {t}"
            scalars = {s.name for s in spec.spec.scalars}
            factored = {s.name: s.kind for s in spec.spec.factored}
            for name in state.keys() - {"step"} - states.keys():  # created by this step
                if name in scalars:  # one float64 per parameter
                    states[name] = np.float64(spec.host["init_" + name](values, None))
                    continue
                if name in factored:  # a row or column state, in the dtype it is kept in
                    states[name] = np.full(factored_shape(factored[name], before.shape),
                                           spec.host["init_" + name](values, None),
                                           np.asarray(state[name]).dtype)
                    continue
                states[name] = np.array(spec.host["init_" + name](
                    values, arrays.for_host_code(before)), dtype=before.dtype)
                states[name] = np.broadcast_to(states[name], before.shape).copy()
            want = interpret(spec.unoptimized(path), values, t,
                             {"p": before, "g": buffers["g"], **states})
        what = f"step {t}, path {path}"
        assert_same_bits(w.grad, buffers["g"], f"{what}: g")
        assert_same_bits(w.data, want.get("p", before), f"{what}: p")
        assert set(want) - {"p"} <= states.keys(), \
            f"{what}: the kernel writes {sorted(set(want) - {'p'})}, the runtime keeps " \
            f"{sorted(states)}"
        for name in states:
            got = np.asarray(opt.state[w][name])
            assert_same_bits(got, want.get(name, states[name]), f"{what}: state {name}")
            states[name] = got.copy()
    return "ran"


def run_schedule(cls) -> str:
    """Three steps of a schedule on SGD with momentum (there is no reference interpreter
    for schedules: it must run, and its learning rates must be floats)."""
    given = required_values(cls._spec.hypers)
    if given is None:
        return "compiled (not run: no value for a required hyper)"
    w = optdsl.Param(np.zeros(3, np.float32), name="w")
    w.grad = np.zeros(3, np.float32)
    opt = optdsl.optim.SGD([w], lr=0.1, momentum=0.9)
    values = resolve(cls._spec.hypers, given, cls.__name__)
    try:
        sched = cls(opt, **values)  # every hyper given as a keyword, as for optimizers
        for _ in range(3):
            with np.errstate(all="ignore"):
                sched.step(1.0 if sched.needs_metric else None)
    except (HyperError, ScheduleError) as exc:
        return f"compiled (stopped: {type(exc).__name__})"
    lrs = sched.get_last_lr()
    assert len(lrs) == 1 and isinstance(lrs[0], float), lrs
    return "ran"
