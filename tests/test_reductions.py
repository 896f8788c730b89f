"""Per-tensor reductions and scalar states (docs/language.md, "Per-parameter values"):
how the compiler splits a step into passes (optdsl.stages), and that every runtime path
(backends, mixed precision, state_dict, checkpoints, sparse gradients, torch, clipping,
diagnostics, hypergradients) computes what a NumPy transcription of the rule computes."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl import Param, RowSparse, optim
from optdsl.backend import available, get
from optdsl.compiler import load_spec
from optdsl.errors import HyperTypeError, NotAffineError, OptdslError, StateDictError
from tests.fakecupy import fake_cupy  # noqa: F401 - a fixture

# Every reduction, a scalar state, a reduction of a computed value (a reduce kernel) and of
# buffers as loaded (none), a weight decay before norm(p), and a where on a reduction.
TRUST = '''optimizer Trust
"""A LAMB-like rule for the tests."""
hyper lr = 1e-2 in [0, inf)
hyper beta = 0.9 in [0, 1)
hyper weight_decay = 0.01
hyper init = 0.5

state exp_avg = 0
state sq: scalar = init

update:
    p = p * (1 - lr * weight_decay)
    exp_avg = beta * exp_avg + (1 - beta) * g
    sq = beta * sq + (1 - beta) * mean(g * g)
    u = exp_avg / (sqrt(sq) + 1e-8)
    p_norm, u_norm = norm(p), norm(u)
    ratio = where(p_norm > 0, where(u_norm > 0, p_norm / u_norm, 1), 1)
    scale = min(1, 10 / (maxabs(u) + rms(u) + abs(total(u)) + maxabs(g)))
    p = p - lr * ratio * scale * u
'''

SHAPES = ((3, 4), (5,), ())


def trust_reference(p, state, g, h):
    """One step of TRUST, transcribed by hand."""
    lr, beta, wd = h["lr"], h["beta"], h["weight_decay"]
    if not state:
        state.update(exp_avg=np.zeros_like(p), sq=h["init"])
    p = p * (1 - lr * wd)
    state["exp_avg"] = beta * state["exp_avg"] + (1 - beta) * g
    state["sq"] = beta * state["sq"] + (1 - beta) * np.mean(g * g)
    u = state["exp_avg"] / (np.sqrt(state["sq"]) + 1e-8)
    pn, un = np.linalg.norm(p), np.linalg.norm(u)
    ratio = (pn / un if un > 0 else 1.0) if pn > 0 else 1.0
    rms = np.sqrt(np.mean(u * u))
    scale = min(1.0, 10 / (np.max(np.abs(u)) + rms + abs(np.sum(u)) + np.max(np.abs(g))))
    return p - lr * ratio * scale * u


@pytest.fixture(scope="module")
def Trust():
    return optdsl.compile(TRUST)


def _grads(step: int, shapes=SHAPES, seed=1):
    rng = np.random.default_rng(seed + 1000 * step)
    return [np.asarray(rng.standard_normal(s) * (0.1 if step % 3 else 3.0)) for s in shapes]


def _start(shapes=SHAPES, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shapes]


def _run(cls, steps, dtype=np.float64, params=None, **kw):
    params = params or [Param(v) for v in _start(dtype=dtype)]
    opt = cls(params, **kw)
    for step in range(steps):
        for p, g in zip(params, _grads(step), strict=True):
            p.grad = np.asarray(g).astype(dtype)
        opt.step()
    return params, opt


# --- the compiler --------------------------------------------------------------------------

def test_the_stages_are_the_fewest_passes(Trust):
    spec = Trust._spec
    kernel = spec.kernel(get("numpy"), spec.paths()[0])
    # Level 1: mean(g * g), maxabs(g) and norm(p) of the decayed p; level 2: the four
    # reductions of u, which reads sq, which reads mean(g * g).
    assert len(kernel.stages) == 2
    first, second = kernel.stages
    assert sorted((r.kind, r.source.startswith("red:")) for r in first.reductions) == \
        [("maxabs", False), ("sum", True), ("sumsq", True)]
    assert [r.source for r in first.reductions if r.kind == "maxabs"] == ["g"]  # as loaded
    assert len(first.kernel.outputs) == 2  # g * g and the decayed p, and nothing stored
    # norm(u) and rms(u) share one sum of squares; u is computed once, in one kernel
    assert sorted(r.kind for r in second.reductions) == ["maxabs", "sum", "sumsq"]
    assert len({r.source for r in second.reductions}) == 1
    assert second.kernel.outputs == (second.reductions[0].source,)
    assert kernel.host_step is not None and "reduce:" in kernel.source


def test_a_reduction_of_a_reduction_is_a_second_stage():
    spec = load_spec('''optimizer Chain
hyper lr = 0.1
update:
    unit = g / norm(g)
    p = p - lr * unit * norm(unit) / maxabs(p)
''')
    kernel = spec.kernel(get("numpy"), ())
    assert [len(s.reductions) for s in kernel.stages] == [2, 1]
    first, second = kernel.stages
    assert first.kernel is None  # norm(g), maxabs(p): the buffers as loaded
    assert second.kernel is not None and second.reductions[0].kind == "sumsq"
    cls = optdsl.compile(spec.text)
    p = Param(np.array([3.0, -4.0]))
    p.grad = np.array([1.0, 1.0])
    cls([p]).step()
    # unit = g / sqrt(2), norm(unit) = 1, maxabs(p) = 4
    np.testing.assert_allclose(p.data, [3.0 - 0.1 / np.sqrt(2) / 4, -4.0 - 0.1 / np.sqrt(2) / 4],
                               rtol=1e-15)


def test_a_spec_without_reductions_compiles_as_before():
    spec = optim.Adam._spec
    assert not spec.reduces and not spec.per_parameter
    kernel = spec.kernel(get("numpy"), spec.paths()[0])
    assert kernel.stages == () and kernel.host_step is None
    assert "reduce" not in kernel.source and "host_step" not in kernel.source


def test_the_ir_prints_reductions_and_scalar_outputs(Trust):
    text = str(Trust._spec.unoptimized(()))
    assert "reduce['sumsq']" in text and "reduce['maxabs']" in text
    assert "scalar['state:sq']" in text and "scalar['numel']" in text
    assert "scalar outputs: sq = " in text


# --- the numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", available("cpu"))
def test_matches_the_transcription(Trust, backend):
    h = {"lr": 0.05, "beta": 0.8, "weight_decay": 0.1, "init": 0.25}
    params, opt = _run(Trust, 12, backend=backend, **h)
    expect, states = _start(), [{} for _ in SHAPES]
    for step in range(12):
        for i, g in enumerate(_grads(step)):
            expect[i] = trust_reference(expect[i], states[i], g, h)
    for p, want, st in zip(params, expect, states, strict=True):
        np.testing.assert_allclose(p.data, want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(opt.state[p]["exp_avg"], st["exp_avg"], rtol=1e-12)
        assert opt.state[p]["sq"].shape == () and opt.state[p]["sq"].dtype == np.float64
        np.testing.assert_allclose(opt.state[p]["sq"], st["sq"], rtol=1e-13)
        assert opt.state[p]["step"] == 12


def test_float32_params_reduce_in_float64(Trust):
    p32, _ = _run(Trust, 6, dtype=np.float32)
    p64, _ = _run(Trust, 6, params=[Param(v.astype(np.float64))
                                    for v in _start(dtype=np.float32)])
    for a, b in zip(p32, p64, strict=True):
        assert a.data.dtype == np.float32
        np.testing.assert_allclose(a.data, b.data, rtol=2e-6, atol=1e-7)


def test_master_weights_step_as_float32(Trust):
    start = _start(dtype=np.float16)
    half, opt = _run(Trust, 5, dtype=np.float16, master_weights=True,
                     params=[Param(v.copy()) for v in start])
    # The float32 run sees the float16 gradients too.
    full = [Param(v.astype(np.float32)) for v in start]
    ref = Trust(full)
    for step in range(5):
        for p, g in zip(full, _grads(step), strict=True):
            p.grad = np.asarray(g).astype(np.float16).astype(np.float32)
        ref.step()
    for a, b in zip(half, full, strict=True):
        np.testing.assert_array_equal(opt.state[a]["master"], b.data)
        np.testing.assert_array_equal(opt.state[a]["sq"], ref.state[b]["sq"])


def test_groups_keep_their_own_hypers_and_scalars(Trust):
    a, b = Param(np.ones(4)), Param(np.ones(4))
    opt = Trust([{"params": [a]}, {"params": [b], "init": 2.0, "lr": 0.0}])
    a.grad = b.grad = np.full(4, 0.5)
    opt.step()
    assert float(opt.state[a]["sq"]) == pytest.approx(0.9 * 0.5 + 0.1 * 0.25)
    assert float(opt.state[b]["sq"]) == pytest.approx(0.9 * 2.0 + 0.1 * 0.25)
    np.testing.assert_array_equal(b.data, np.ones(4))  # lr 0


# --- state ---------------------------------------------------------------------------------

def test_state_dict_round_trip_continues_exactly(Trust):
    params, opt = _run(Trust, 4)
    sd = opt.state_dict()
    assert isinstance(sd["state"][0]["sq"], np.ndarray) and sd["state"][0]["sq"].shape == ()
    clone = [Param(p.data.copy()) for p in params]
    other = Trust(clone)
    other.load_state_dict(sd)
    for step in range(4, 8):
        for p, q, g in zip(params, clone, _grads(step), strict=True):
            p.grad, q.grad = g, g.copy()
        opt.step()
        other.step()
    for p, q in zip(params, clone, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
        np.testing.assert_array_equal(opt.state[p]["sq"], other.state[q]["sq"])


def test_load_state_dict_checks_scalar_states(Trust):
    params, opt = _run(Trust, 1)
    sd = opt.state_dict()
    sd["state"][0]["sq"] = np.ones(3)
    with pytest.raises(StateDictError, match="scalar state 'sq' must be one number"):
        Trust(params).load_state_dict(sd)
    sd["state"][0]["sq"] = 0.5  # a plain number is fine
    fresh = Trust(params)
    fresh.load_state_dict(sd)
    assert fresh.state[params[0]]["sq"] == 0.5
    sd["state"][0]["sqq"] = sd["state"][0].pop("sq")
    with pytest.raises(StateDictError, match="did you mean 'sq'"):
        Trust(params).load_state_dict(sd)


def test_checkpoints_keep_scalar_states(Trust, tmp_path):
    pytest.importorskip("safetensors", reason="checkpoints need safetensors (optdsl[checkpoint])")
    params, opt = _run(Trust, 3)
    path = tmp_path / "trust.ckpt"
    optdsl.checkpoint.save(path, optimizer=opt)
    fresh = Trust(params)
    optdsl.checkpoint.load(path, optimizer=fresh)
    for p in params:
        assert float(fresh.state[p]["sq"]) == float(opt.state[p]["sq"])


def test_scalar_state_starts_from_its_hyper_expression():
    cls = optdsl.compile('''optimizer Count
hyper lr = 0.1
hyper start = 2.0
state n: scalar = start * 3
state unused: scalar = -1
update:
    n = n + 1
    p = p - lr * n * g
''')
    p = Param(np.zeros(2))
    opt = cls([p], start=1.0)
    p.grad = np.ones(2)
    opt.step()
    assert float(opt.state[p]["n"]) == 4.0 and float(opt.state[p]["unused"]) == -1.0
    np.testing.assert_array_equal(p.data, [-0.4, -0.4])
    assert "Scalar state (one number per parameter):" in cls.__doc__


# --- the rest of the runtime ---------------------------------------------------------------

def test_lazy_is_refused(Trust):
    with pytest.raises(HyperTypeError, match="lazy=True is not possible"):
        Trust([Param(np.zeros(3))], lazy=True)
    with pytest.raises(HyperTypeError, match="param group 0: lazy=True is not possible"):
        Trust([{"params": [Param(np.zeros(3))], "lazy": True}])


def test_row_sparse_gradients_step_densified(Trust):
    dense, sparse = Param(np.ones((4, 2))), Param(np.ones((4, 2)))
    a, b = Trust([dense]), Trust([sparse])
    rows = np.array([[1.0, 2.0], [3.0, -1.0]])
    dense.grad = np.zeros((4, 2))
    dense.grad[[1, 3]] = rows
    sparse.grad = RowSparse(np.array([1, 3]), rows)
    a.step()
    b.step()
    np.testing.assert_array_equal(dense.data, sparse.data)


def test_clipping_comes_before_the_reductions(Trust):
    clipped, _ = _run(Trust, 3, max_grad_norm=0.5)
    by_hand = [Param(v) for v in _start()]
    opt = Trust(by_hand)
    for step in range(3):
        grads = _grads(step)
        total = np.sqrt(sum(float(np.sum(g * g)) for g in grads))
        for p, g in zip(by_hand, grads, strict=True):
            p.grad = np.asarray(g * min(1.0, 0.5 / (total + 1e-6)))
        opt.step()
    for a, b in zip(clipped, by_hand, strict=True):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)


def test_diagnostics_do_not_change_the_step(Trust):
    plain, _ = _run(Trust, 3)
    seen, opt = _run(Trust, 3, diagnostics=True)
    for a, b in zip(plain, seen, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    assert opt.diagnostics() is not None


def test_hypergradients_prove_through_reductions_that_do_not_read_lr(Trust):
    from optdsl.autotune import HypergradientLR

    # p is affine in lr: the reductions read p, g and states, none of which lr touches
    lamb = optdsl.compile(TRUST.replace("p = p * (1 - lr * weight_decay)",
                                        "p = p * (1 - weight_decay)"))
    params, opt = _run(lamb, 1)
    tuner = HypergradientLR(opt, beta=1e-4)
    for p in params:
        p.grad = np.ones_like(p.data)
    opt.step()
    assert tuner.optimizer is opt
    with pytest.raises(NotAffineError, match="line 17 .* condition that depends on lr"):
        HypergradientLR(Trust([Param(np.zeros(2))]), beta=1e-4)  # norm(p) of a decayed p
    with pytest.raises(NotAffineError, match="reduces a value that depends on lr"):
        HypergradientLR(optdsl.compile('''optimizer Bad
hyper lr = 0.1
update:
    p = p - norm(lr * g) * g
''')([Param(np.zeros(2))]), beta=1e-4)
    with pytest.raises(NotAffineError, match="state s depends on lr"):
        HypergradientLR(optdsl.compile('''optimizer Bad2
hyper lr = 0.1
state s: scalar = 0
update:
    s = s + lr
    p = p - lr * g
''')([Param(np.zeros(2))]), beta=1e-4)


def test_a_compiled_module_refuses_per_parameter_specs(Trust):
    from optdsl.export import render_module

    with pytest.raises(OptdslError, match="cannot hold yet"):
        render_module(Trust._spec)


def test_torch_state_dict_holds_scalar_tensors():
    torch = pytest.importorskip("torch", reason="optdsl.torch needs torch (optdsl[torch])")
    from optdsl.torch import from_rule

    w = torch.nn.Parameter(torch.ones(3, 4, dtype=torch.float64))
    opt = from_rule(TRUST)([w], lr=0.1)
    for _ in range(2):
        w.grad = torch.full((3, 4), 0.5, dtype=torch.float64)
        opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["sq"].shape == () and sd["state"][0]["exp_avg"].shape == (3, 4)
    again = from_rule(TRUST)([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    again.load_state_dict(sd)
    assert float(again.state_dict()["state"][0]["sq"]) == float(sd["state"][0]["sq"])


@pytest.mark.parametrize("name", ["numba", "cupy"])
def test_other_backends_match_numpy(Trust, name, request):
    if name == "cupy":  # the stand-in CuPy of tests/fakecupy.py (the CUDA C++ on g++)
        fake = request.getfixturevalue("fake_cupy")
        params = [Param(fake.asarray(v)) for v in _start()]
        opt = Trust(params)
        for step in range(5):
            for p, g in zip(params, _grads(step), strict=True):
                p.grad = fake.asarray(g)
            opt.step()
        got = [fake.asnumpy(p.data) for p in params]
    else:
        if name not in available("cpu"):
            pytest.skip(f"the {name} backend is not installed")
        got = [p.data for p in _run(Trust, 5, backend=name)[0]]
    want = [p.data for p in _run(Trust, 5, backend="numpy")[0]]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backend_reductions_agree_with_numpy_and_keep_nans(dtype):
    """Every CPU backend's reduce(): sum, sum of squares and max |x| in float64, to
    rounding of NumPy's float64 ones, and bit for bit as optdsl.stages.reduce_values
    (numba sums the same chunks in parallel, pairwise as NumPy does), over sizes below
    and above numba's parallel threshold and one chunk; a nan anywhere makes maxabs nan,
    as np.max does; empty gives 0."""
    from optdsl.stages import reduce_values

    rng = np.random.default_rng(3)
    for n in (0, 1, 1000, 131_072, 200_003, 524_288):
        x = rng.standard_normal(n).astype(dtype)
        wide = x.astype(np.float64)
        want = {"sum": wide.sum(), "sumsq": (wide * wide).sum(),
                "maxabs": np.abs(wide).max() if n else 0.0}
        for name in available("cpu"):
            for kind, value in want.items():
                got = get(name).reduce(kind, x)
                assert got == pytest.approx(value, rel=1e-12, abs=1e-12), (name, kind, n)
                assert got == reduce_values(kind, x), (name, kind, n)
            assert reduce_values("sumsq", x) == pytest.approx(want["sumsq"], rel=1e-12)
        if n > 1:
            x[n // 2] = np.nan
            for name in available("cpu"):
                assert np.isnan(get(name).reduce("maxabs", x)), (name, n)
                assert np.isnan(get(name).reduce("sum", x)), (name, n)


def test_numba_reductions_do_not_depend_on_the_thread_count():
    if "numba" not in available("cpu"):
        pytest.skip("the numba backend is not installed")
    x = np.random.default_rng(4).standard_normal(300_000)
    numba = get("numba")
    before = optdsl.num_threads()
    try:
        results = set()
        for threads in (1, 2):
            optdsl.set_num_threads(threads)
            results.add(numba.reduce("sumsq", x))
    finally:
        optdsl.set_num_threads(before)
    assert len(results) == 1


# --- factored states: row and column values (Adafactor) -------------------------------------

FACTORED_SHAPES = ((4, 3), (5,), (), (2, 3, 4))


def _adafactor_run(backend="numpy", steps=6, dtype=np.float64, **kw):
    params = [Param(v) for v in _start(FACTORED_SHAPES, dtype=dtype)]
    opt = optim.Adafactor(params, backend=backend, **kw)
    for step in range(steps):
        for p, g in zip(params, _grads(step, FACTORED_SHAPES), strict=True):
            p.grad = np.asarray(g).astype(dtype)
        opt.step()
    return params, opt


def test_factored_states_have_torchs_shapes_and_the_fallback():
    params, opt = _adafactor_run()
    matrix, vector, scalar, batch = (opt.state[p] for p in params)
    assert matrix["row_var"].shape == (4, 1) and matrix["col_var"].shape == (1, 3)
    assert batch["row_var"].shape == (2, 3, 1) and batch["col_var"].shape == (2, 1, 4)
    assert "variance" not in matrix and "row_var" not in vector
    assert vector["variance"].shape == (5,) and scalar["variance"].shape == ()
    spec = optim.Adafactor._spec
    assert spec.uses_factored and spec.per_parameter and spec.staged
    # the vectors' variance takes no room in the matrices' layout: they lie apart
    names = {key[2]: layout.names for key, layout in opt._layouts.items()}
    assert names == {True: [], False: ["variance"]}
    # every backend: the same bits
    if "numba" in available("cpu"):
        other, _ = _adafactor_run("numba")
        for a, b in zip(params, other, strict=True):
            np.testing.assert_array_equal(a.data, b.data)


def test_factored_state_dict_round_trip_and_checks(tmp_path):
    params, opt = _adafactor_run(steps=3)
    sd = opt.state_dict()
    assert sd["state"][0]["row_var"].shape == (4, 1)
    clone = [Param(p.data.copy()) for p in params]
    other = optim.Adafactor(clone)
    other.load_state_dict(sd)
    for step in range(3, 6):
        for p, q, g in zip(params, clone, _grads(step, FACTORED_SHAPES), strict=True):
            p.grad, q.grad = np.asarray(g), np.asarray(g).copy()
        opt.step()
        other.step()
    for p, q in zip(params, clone, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    bad = opt.state_dict()
    bad["state"][0]["row_var"] = np.zeros((3, 1))
    with pytest.raises(StateDictError, match=r"'row_var' has shape \(3, 1\); a row state of a "
                                             r"parameter of shape \(4, 3\) has \(4, 1\)"):
        optim.Adafactor(params).load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"][1]["col_var"] = np.zeros((1, 5))
    with pytest.raises(StateDictError, match="has none"):
        optim.Adafactor(params).load_state_dict(bad)
    pytest.importorskip("safetensors", reason="checkpoints need safetensors (optdsl[checkpoint])")
    optdsl.checkpoint.save(tmp_path / "a.ckpt", optimizer=opt)
    fresh = optim.Adafactor(params)
    optdsl.checkpoint.load(tmp_path / "a.ckpt", optimizer=fresh)
    np.testing.assert_array_equal(fresh.state[params[3]]["col_var"],
                                  opt.state[params[3]]["col_var"])


def test_factored_and_dtype_eps_in_expressions():
    cls = optdsl.compile('''optimizer Probe
update:
    p = p + where(factored, 1, 0) + dtype_eps
''')
    w32, w64, v = Param(np.zeros((2, 2), np.float32)), Param(np.zeros((2, 2))), Param(np.zeros(2))
    for w in (w32, w64, v):
        w.grad = np.zeros_like(w.data)
    cls([w32, w64, v]).step()
    assert w32.data[0, 0] == np.float32(1 + np.finfo(np.float32).eps)
    assert w64.data[0, 0] == 1 + np.finfo(np.float64).eps
    assert v.data[0] == np.finfo(np.float64).eps


def test_adafactor_diagnostics_and_torch():
    plain, _ = _adafactor_run(steps=2)
    seen, opt = _adafactor_run(steps=2, diagnostics=True)
    for a, b in zip(plain, seen, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    assert opt.diagnostics() is not None
    torch = pytest.importorskip("torch", reason="optdsl.torch needs torch (optdsl[torch])")
    from optdsl.torch import from_rule

    w = torch.nn.Parameter(torch.ones(3, 4, dtype=torch.float64))
    topt = from_rule(optim.Adafactor)([w], lr=0.1)
    w.grad = torch.full((3, 4), 0.5, dtype=torch.float64)
    topt.step()
    state = topt.state_dict()["state"][0]
    assert tuple(state["row_var"].shape) == (3, 1) and tuple(state["col_var"].shape) == (1, 4)
