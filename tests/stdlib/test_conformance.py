"""The conformance suite: every optimizer of the standard library (``optdsl.optim.STDLIB``),
the same checks for each.

* its ``.opt`` file parses and checks clean, with no warning, into an optimizer of that name;
* its docstring cites a paper (authors, year);
* it matches its reference for STEPS steps in float64 to rtol 1e-9, parameters and state
  every step: torch.optim's class for torch's optimizers (skipped without torch), else the
  NumPy transcription in ``tests/stdlib/references.py`` (see that file for the interface);
* its ``state_dict()`` taken after 5 steps, loaded into a fresh optimizer, continues
  exactly as the original does;
* every CPU backend (``optdsl.backends("cpu")``) gives the NumPy backend's results, to rtol
  1e-12 in float64;
* it reports its state bytes per parameter, which match the state it keeps.

SparseAdam and the other SPARSE_ONLY optimizers get ``optdsl.RowSparse`` gradients (torch:
sparse COO tensors), with repeated rows; the others dense ones. The gradients are
``0.5 * p + noise`` with noise of three scales, so they change sign and size often.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
import warnings
from typing import Any

import numpy as np
import pytest

import optdsl
from optdsl import Param, RowSparse, optim
from optdsl._resources import data_dir
from optdsl.api import factored_state_bytes, scalar_state_bytes
from optdsl.compiler import load_spec
from tests.stdlib.catalogue import state_bytes_per_param
from tests.stdlib.references import EXTRA_HYPERS, REFERENCES, TORCH_REFERENCES

NAMES = list(optim.STDLIB)
STEPS = 45
BACKEND_STEPS = 12
SAVE_AT, CONTINUE = 5, 8
TORCH_VERSION = "2.13.0"
RTOL, ATOL_REL = 1e-9, 1e-12  # as tests/stdlib/test_torch_parity.py, in float64
BACKEND_RTOL = 1e-12
DENSE_SHAPES = ((4, 3), (5,), ())
SPARSE_SHAPES = ((6, 3), (5,))  # a row-sparse gradient needs rows


# --- the reference each optimizer is checked against ----------------------------------------


def hyper_sets(name: str) -> list[dict[str, Any]]:
    """The hypers the suite builds ``name`` with: its reference's, then any extra sets."""
    if name in TORCH_REFERENCES:
        main = TORCH_REFERENCES[name][1]
    elif name in REFERENCES:
        main = REFERENCES[name][0]
    else:
        pytest.fail(f"{name} has no reference: add it to TORCH_REFERENCES (a torch.optim class) "
                    "or REFERENCES (a NumPy step function) in tests/stdlib/references.py")
    return [main, *EXTRA_HYPERS.get(name, [])]


CASES = [(name, i) for name in NAMES for i in range(1 + len(EXTRA_HYPERS.get(name, [])))]


def case_id(case: tuple[str, int]) -> str:
    return f"{case[0]}-{case[1]}"


# --- the problem ------------------------------------------------------------------------------


def sparse(name: str) -> bool:
    return name in optim.SPARSE_ONLY


def initial_values(name: str) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    shapes = SPARSE_SHAPES if sparse(name) else DENSE_SHAPES
    return [np.asarray(rng.uniform(0.5, 1.5, s) * np.where(rng.random(s) < 0.5, -1.0, 1.0))
            for s in shapes]


def noise(step: int, which: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(1000 * which + step)
    return rng.standard_normal(shape) * rng.choice([1e-2, 1.0, 10.0], size=shape)


def dense_grad(step: int, which: int, p: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * p + noise(step, which, np.shape(p)))  # an array, 0-d too


def sparse_rows(step: int, which: int, rows: int) -> np.ndarray:
    """Rows named by the step's gradient: some missing, some repeated (unsorted)."""
    rng = np.random.default_rng(5000 + 1000 * which + step)
    return rng.integers(0, rows, size=rows)


def sparse_grad(step: int, which: int, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of a row-sparse gradient: ``0.5 * p + noise`` in each row named."""
    rows = sparse_rows(step, which, p.shape[0])
    values = 0.5 * p[rows] + noise(step, which, (len(rows), *p.shape[1:]))
    return rows, values


# --- runners: one optimizer over the problem's params, stepped the same way -----------------


class OptdslRunner:
    def __init__(self, name: str, hypers: dict[str, Any], backend: str = "numpy",
                 values: list[np.ndarray] | None = None):
        self.name = name
        self.params = [Param(np.array(v, dtype=np.float64)) for v in
                       (values if values is not None else initial_values(name))]
        self.opt = optim.load(name)(self.params, backend=backend, **hypers)

    def step(self, step: int) -> None:
        for i, p in enumerate(self.params):
            if sparse(self.name):
                p.grad = RowSparse(*sparse_grad(step, i, p.data))
            else:
                p.grad = dense_grad(step, i, p.data)
        self.opt.step()

    def values(self) -> list[np.ndarray]:
        return [np.asarray(p.data) for p in self.params]

    def states(self) -> list[dict[str, Any]]:
        return [dict(self.opt.state[p]) for p in self.params]


class TorchRunner:
    """torch.optim's class in float64. torch keeps scalar states (NAdam's mu_product,
    ASGD's eta and mu) in its default dtype: float64 while it builds and steps, too."""

    def __init__(self, torch: Any, name: str, hypers: dict[str, Any]):
        self.torch, self.name = torch, name
        cls = getattr(torch.optim, TORCH_REFERENCES[name][0])
        self.params = [torch.tensor(v, dtype=torch.float64) for v in initial_values(name)]
        if "foreach" in inspect.signature(cls.__init__).parameters:
            hypers = {**hypers, "foreach": False}  # torch's single-tensor reference
        with self._float64():
            self.opt = cls(self.params, **hypers)

    @contextlib.contextmanager
    def _float64(self):
        before = self.torch.get_default_dtype()
        self.torch.set_default_dtype(self.torch.float64)
        try:
            yield
        finally:
            self.torch.set_default_dtype(before)

    def step(self, step: int) -> None:
        with self._float64():
            self._step(step)

    def _step(self, step: int) -> None:
        torch = self.torch
        for i, p in enumerate(self.params):
            data = p.detach().numpy()
            if sparse(self.name):
                rows, values = sparse_grad(step, i, data)
                p.grad = torch.sparse_coo_tensor(torch.from_numpy(rows)[None],
                                                 torch.from_numpy(values), p.shape,
                                                 check_invariants=True)
            else:
                p.grad = torch.from_numpy(dense_grad(step, i, data))
        self.opt.step()

    def values(self) -> list[np.ndarray]:
        return [p.detach().numpy() for p in self.params]

    def states(self) -> list[dict[str, Any]]:
        out = []
        for p in self.params:
            state = {}
            for key, value in self.opt.state.get(p, {}).items():
                if key == "step":
                    state[key] = int(value.item()) if hasattr(value, "item") else int(value)
                elif value is not None:
                    state[key] = value.detach().numpy()
            out.append(state)
        return out


class NumpyRunner:
    def __init__(self, name: str, hypers: dict[str, Any]):
        _, self.step_fn = REFERENCES[name]
        # the hypers as the optimizer resolves them: its defaults, with these applied
        group = optim.load(name)([Param(np.zeros(1))], **hypers).param_groups[0]
        self.hypers = {k: v for k, v in group.items() if k != "params"}
        self.params = [{"p": v.copy()} for v in initial_values(name)]
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.t = 0

    def step(self, step: int) -> None:
        self.t += 1
        for i, (param, state) in enumerate(zip(self.params, self.state, strict=True)):
            g = dense_grad(step, i, param["p"])
            g.flags.writeable = False  # the reference must not write to its gradient
            self.step_fn(param, state, g, self.t, self.hypers)

    def values(self) -> list[np.ndarray]:
        return [np.asarray(param["p"]) for param in self.params]

    def states(self) -> list[dict[str, Any]]:
        return [{"step": self.t, **state} for state in self.state]


def reference_runner(name: str, hypers: dict[str, Any]) -> Any:
    if name in TORCH_REFERENCES:
        torch = pytest.importorskip("torch", reason=f"{name}'s reference is torch.optim's")
        if not torch.__version__.startswith(TORCH_VERSION):
            pytest.skip(f"matched to torch {TORCH_VERSION}, found {torch.__version__}")
        return TorchRunner(torch, name, hypers)
    return NumpyRunner(name, hypers)


# --- comparisons --------------------------------------------------------------------------------


def assert_close(actual: Any, expected: Any, what: str, rtol: float = RTOL,
                 atol_rel: float = ATOL_REL) -> None:
    """rtol, plus an atol scaled to the expected array's magnitude (entries crossing zero
    carry a few ulps of the array's scale)."""
    actual, expected = np.asarray(actual), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.float64, f"{what}: dtype {actual.dtype}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol_rel * scale, err_msg=what)


def assert_same_run(ours: Any, theirs: Any, what: str, **tol: float) -> None:
    """Parameters, state names, step counts and state values."""
    for i, (a, b) in enumerate(zip(ours.values(), theirs.values(), strict=True)):
        assert_close(a, b, f"{what}: param {i}", **tol)
    for i, (mine, ref) in enumerate(zip(ours.states(), theirs.states(), strict=True)):
        assert set(mine) == set(ref) | {"step"}, f"{what}: param {i} state {sorted(mine)} " \
                                                 f"!= reference's {sorted(ref)}"
        if "step" in ref:
            assert mine["step"] == ref["step"], f"{what}: param {i} step"
        for key in set(ref) - {"step"}:
            assert_close(mine[key], ref[key], f"{what}: param {i} state {key!r}", **tol)


# --- the checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_parses_and_checks_clean(name):
    path = data_dir("stdlib") / optim.STDLIB[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning anywhere in parse or check fails
        spec = load_spec(path.read_text(), f"stdlib/{path.name}")
    assert (spec.kind, spec.name) == ("optimizer", name)
    assert spec.paths(), "no kernel path"
    assert optim.load(name).__name__ == name


# "(Kingma & Ba, 2015", "(Liu et al., 2020", "(Duchi, Hazan & Singer, 2011", "(Hinton, 2012"
CITATION = re.compile(r"\([A-Z][\w-]+(?:(?:,| &| and) [A-Z][\w-]+| et al\.)*, (?:19|20)\d\d\b")


@pytest.mark.parametrize("name", NAMES)
def test_docstring_cites_a_paper(name):
    doc = optim.load(name)._spec.spec.doc or ""
    assert CITATION.search(doc), f"{name}'s docstring cites no paper (authors, year): {doc!r}"
    assert optim.load(name).__doc__.startswith(doc)


def test_every_optimizer_has_one_reference():
    torch_named, numpy_named = set(TORCH_REFERENCES), set(REFERENCES)
    assert not torch_named & numpy_named, "two references for one optimizer"
    assert (torch_named | numpy_named) - set(NAMES) == set(), "a reference for no optimizer"
    assert set(EXTRA_HYPERS) <= set(NAMES)
    missing = set(NAMES) - torch_named - numpy_named
    assert not missing, f"no reference for {sorted(missing)} in tests/stdlib/references.py"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_its_reference(case):
    name, i = case
    hypers = hyper_sets(name)[i]
    ref = reference_runner(name, hypers)
    ours = OptdslRunner(name, hypers)
    for step in range(1, STEPS + 1):
        ref.step(step)
        ours.step(step)
        assert_same_run(ours, ref, f"{name} {hypers} step {step}")
    assert not np.allclose(ours.values()[0], initial_values(name)[0]), "it did not move"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_state_dict_round_trips(case):
    """Saved after SAVE_AT steps (a deep copy, as a checkpoint would hold), loaded into a
    fresh optimizer built with default hypers over the same values: both continue alike,
    to the bit."""
    name, i = case
    hypers = hyper_sets(name)[i]
    original = OptdslRunner(name, hypers)
    for step in range(1, SAVE_AT + 1):
        original.step(step)
    saved = copy.deepcopy(original.opt.state_dict())
    fresh = OptdslRunner(name, {}, values=original.values())
    fresh.opt.load_state_dict(saved)
    for key, value in hypers.items():
        assert fresh.opt.param_groups[0][key] == value, key  # the hypers came with it
    for step in range(SAVE_AT + 1, SAVE_AT + CONTINUE + 1):
        original.step(step)
        fresh.step(step)
    for a, b in zip(original.values(), fresh.values(), strict=True):
        assert a.tobytes() == b.tobytes()
    for mine, theirs in zip(original.states(), fresh.states(), strict=True):
        assert set(mine) == set(theirs) and mine["step"] == theirs["step"] == SAVE_AT + CONTINUE
        for key in set(mine) - {"step"}:
            assert np.asarray(mine[key]).tobytes() == np.asarray(theirs[key]).tobytes(), key


BACKENDS = [b for b in optdsl.backends("cpu") if b != "numpy"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_cpu_backend_matches_numpy(case, backend):
    name, i = case
    hypers = hyper_sets(name)[i]
    ours, ref = OptdslRunner(name, hypers, backend), OptdslRunner(name, hypers, "numpy")
    for step in range(1, BACKEND_STEPS + 1):
        ours.step(step)
        ref.step(step)
        assert_same_run(ours, ref, f"{backend} step {step}", rtol=BACKEND_RTOL, atol_rel=0)


def test_there_is_a_cpu_backend_besides_numpy_or_a_reason():
    # numba is an optional extra: without it the backend test has no case, and says so here
    if not BACKENDS:
        pytest.skip("only the numpy backend is available here (pip install 'optdsl[numba]')")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_state_bytes_per_param_counts_the_state_kept(case):
    """What the catalogue reports is what a float32 run holds: the bytes of every state
    buffer over the parameter's elements."""
    name, i = case
    hypers = hyper_sets(name)[i]
    values = [v.astype(np.float32) for v in initial_values(name)]
    params = [Param(v.copy()) for v in values]
    opt = optim.load(name)(params, **hypers)
    for p, v in zip(params, values, strict=True):
        p.grad = RowSparse(np.arange(v.shape[0]), v) if sparse(name) else v.copy()
    opt.step()
    spec = optim.load(name)._spec
    scalars = {s.name for s in spec.spec.scalars}
    factored = {s.name for s in spec.spec.factored}
    for p in params:  # row and column states, for a param with 2 or more dimensions
        kept = sum(np.asarray(opt.state[p][key]).nbytes for key in factored if key in
                   opt.state[p])
        want = factored_state_bytes(spec, p.data.shape) if p.data.ndim >= 2 else 0
        assert kept == want, (p.data.shape, kept, want)
    p = next(p for p in params if p.data.ndim < 2) if factored else params[0]
    kept = sum(np.asarray(value).nbytes for key, value in opt.state[p].items()
               if key != "step" and key not in scalars | factored)
    assert state_bytes_per_param(name, hypers) == kept / p.data.size
    assert state_bytes_per_param(optim.load(name), hypers) == kept / p.data.size
    # a scalar state is one float64 per tensor, whatever the param's dtype and size
    per_tensor = sum(np.asarray(opt.state[p][key]).nbytes for key in scalars)
    assert per_tensor == scalar_state_bytes(optim.load(name)._spec) == 8 * len(scalars)


@pytest.mark.parametrize(("name", "hypers", "expected"), [
    ("SGD", {}, 0),
    ("SGD", {"momentum": 0.9}, 4),
    ("Adam", {}, 8),
    ("Adam", {"amsgrad": True}, 12),
    ("Rprop", {}, 8),
])
def test_state_bytes_per_param_values(name, hypers, expected):
    assert state_bytes_per_param(name, hypers) == expected
