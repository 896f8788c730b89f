"""optdsl.torch: optimizer state moves between torch.optim and optdsl mid-training, and the
run continues with the same numbers, both ways, for every optimizer both libraries have.

For each stdlib optimizer, with non-default hypers in two param groups, in float64 and
float32: (a) torch steps, its state_dict is converted and loaded into optdsl, and both
continue side by side; (b) the same the other way; (c) optdsl -> torch -> optdsl is
lossless and torch -> optdsl -> torch keeps torch's layout. Tolerances are those of
tests/stdlib/test_torch_parity.py, rtol tightened to 1e-12 in float64 (the two agree to a
few ulps here).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))

from rt_util import assert_state_dicts_equal, grad, make_arrays  # noqa: E402

import optdsl  # noqa: E402
from optdsl import Param, StateDictError, optim  # noqa: E402
from optdsl.torch import COUNTERPARTS, state_dict_from_torch, state_dict_to_torch  # noqa: E402

RTOL = {"float64": 1e-12, "float32": 1e-5}
# Absolute tolerance relative to the largest entry of the compared array (see
# test_torch_parity.py: entries crossing zero carry an absolute error of a few ulps).
ATOL_REL = {"float64": 1e-14, "float32": 1e-6}

SHAPES = ((4, 3), (5,), (3,))
BEFORE, AFTER = range(1, 4), range(4, 10)  # steps on the first side, then on both

# Per optimizer: constructor keywords (group 0) and group 1's overrides, non-default
# throughout and turning on every state, valid for torch.
CASES = {
    "SGD": ({"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
            {"lr": 0.02, "nesterov": True, "dampening": 0.0, "maximize": True}),
    "Adam": ({"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1, "amsgrad": True},
             {"lr": 0.003, "eps": 1e-6, "maximize": True, "decoupled_weight_decay": True}),
    "AdamW": ({"lr": 0.01, "weight_decay": 0.1},
              {"amsgrad": True, "lr": 0.005, "betas": (0.85, 0.995), "maximize": True}),
    "RMSprop": ({"lr": 0.01, "alpha": 0.9, "momentum": 0.5},
                {"centered": True, "lr": 0.005, "weight_decay": 0.1, "maximize": True}),
    "Adagrad": ({"lr": 0.1, "eps": 1e-8, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
                {"lr": 0.05, "weight_decay": 0.1, "maximize": True}),
    "Adadelta": ({"lr": 0.5, "rho": 0.8},
                 {"weight_decay": 0.1, "lr": 1.0, "eps": 1e-5, "maximize": True}),
    "Adamax": ({"lr": 0.02, "betas": (0.8, 0.95), "weight_decay": 0.01},
               {"lr": 0.01, "eps": 1e-6, "maximize": True}),
    # betas[1] = 0.6 in group 1: rho_t never exceeds 5 there; group 0 crosses it at step 6
    "RAdam": ({"lr": 0.01, "betas": (0.8, 0.9), "weight_decay": 0.01},
              {"lr": 0.02, "betas": (0.9, 0.6), "weight_decay": 0.1,
               "decoupled_weight_decay": True, "maximize": True}),
    "Rprop": ({"lr": 0.02, "etas": (0.4, 1.3), "step_sizes": (1e-3, 0.05)},
              {"lr": 0.01, "maximize": True}),
    # scalar states: NAdam's mu_product, ASGD's eta and mu (0-d tensors in torch)
    "NAdam": ({"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1, "momentum_decay": 0.01},
              {"lr": 0.005, "decoupled_weight_decay": True, "maximize": True}),
    "ASGD": ({"lr": 0.05, "t0": 2, "lambd": 0.01},
             {"lr": 0.02, "weight_decay": 0.1, "maximize": True}),
    # row and column states for the matrix; eps[0] None (torch) is 0.0 (optdsl)
    "Adafactor": ({"lr": 0.02, "beta2_decay": -0.5},
                  {"lr": 0.01, "d": 1.5, "weight_decay": 0.1, "maximize": True}),
}
DTYPES = ("float64", "float32")
PARAMS = [(name, dtype) for name in CASES for dtype in DTYPES]


@pytest.fixture
def torch():
    """torch, with float64 as its default dtype for the test: torch keeps scalar states
    (NAdam's mu_product, ASGD's eta and mu) in its default dtype, and optdsl in float64,
    so only then do the trajectories agree to the tolerances below."""
    torch = pytest.importorskip("torch", reason="converts to and from torch.optim")
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(before)


def _arrays(dtype: str) -> list[np.ndarray]:
    return make_arrays(np.dtype(dtype), SHAPES, seed=21)


def _torch_side(torch, name: str, dtype: str):
    kwargs, overrides = CASES[name]
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in _arrays(dtype)]
    groups = [{"params": tensors[:1]}, {"params": tensors[1:], **overrides}]
    return getattr(torch.optim, name)(groups, **kwargs), tensors


def _optdsl_side(name: str, dtype: str, values=None):
    """optdsl's optimizer with the same hypers, over copies of ``values`` (the start
    values by default)."""
    kwargs, overrides = CASES[name]
    params = [Param(np.array(v, copy=True)) for v in (values or _arrays(dtype))]
    groups = [{"params": params[:1]}, {"params": params[1:], **overrides}]
    return getattr(optim, name)(groups, **kwargs), params


def _blank_optdsl(name: str, values):
    """optdsl's optimizer over copies of ``values``, all hypers left to load_state_dict."""
    params = [Param(np.array(v, copy=True)) for v in values]
    return getattr(optim, name)([{"params": params[:1]}, {"params": params[1:]}]), params


def _torch_step(torch, opt, tensors, step: int) -> None:
    for i, t in enumerate(tensors):
        t.grad = torch.from_numpy(grad(step, t.detach().numpy(), i))
    opt.step()


def _optdsl_step(opt, params, step: int) -> None:
    for i, p in enumerate(params):
        p.grad = grad(step, p.data, i)
    opt.step()


def _assert_close(actual, expected, dtype: str, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype],
                               atol=ATOL_REL[dtype] * scale, err_msg=what)


def _compare(torch_opt, tensors, opt, params, dtype: str, what: str) -> None:
    """Params, then every state tensor torch keeps, then the step counts."""
    for i, (p, t) in enumerate(zip(params, tensors, strict=True)):
        _assert_close(p.data, t.detach().numpy(), dtype, f"{what}: param {i}")
        theirs = torch_opt.state[t]
        ours = opt.state[p]
        assert set(theirs) | {"step"} == set(ours), f"{what}: param {i} state keys"
        for key, value in theirs.items():
            if key == "step":
                assert ours["step"] == int(value.item()), f"{what}: param {i} step"
            elif value.dim() == 0 and np.ndim(ours[key]) == 0:
                # A scalar state: float64 here; in torch, its default dtype, or the
                # param's dtype once load_state_dict has cast it (float32 params).
                assert np.asarray(ours[key]).dtype == np.float64, f"{what}: {key}"
                np.testing.assert_allclose(float(ours[key]), float(value), rtol=RTOL[dtype],
                                           err_msg=f"{what}: param {i} {key}")
            else:
                _assert_close(ours[key], value.detach().numpy(), dtype,
                              f"{what}: param {i} {key}")


@pytest.mark.parametrize("name, dtype", PARAMS)
def test_torch_state_continues_in_optdsl(torch, name, dtype):
    """(a) torch.optim.X for 3 steps; its converted state_dict loaded into optdsl's X over
    torch's current values; both continue and agree at every step."""
    torch_opt, tensors = _torch_side(torch, name, dtype)
    for step in BEFORE:
        _torch_step(torch, torch_opt, tensors, step)
    sd = state_dict_from_torch(torch_opt.state_dict(), name)
    opt, params = _blank_optdsl(name, [t.detach().numpy() for t in tensors])
    opt.load_state_dict(sd)
    for key, value in CASES[name][1].items():  # the hypers came with the state
        assert opt.param_groups[1][key] == value
    for step in AFTER:
        _torch_step(torch, torch_opt, tensors, step)
        _optdsl_step(opt, params, step)
        _compare(torch_opt, tensors, opt, params, dtype, f"step {step}")


@pytest.mark.parametrize("name, dtype", PARAMS)
def test_optdsl_state_continues_in_torch(torch, name, dtype):
    """(b) optdsl's X for 3 steps; its converted state_dict loaded into torch.optim.X
    (built with default hypers: they come with the state) over optdsl's current values;
    both continue and agree at every step."""
    opt, params = _optdsl_side(name, dtype)
    for step in BEFORE:
        _optdsl_step(opt, params, step)
    sd = state_dict_to_torch(opt.state_dict(), name)
    tensors = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
    torch_opt = getattr(torch.optim, name)([{"params": tensors[:1]}, {"params": tensors[1:]}])
    torch_opt.load_state_dict(sd)
    _compare(torch_opt, tensors, opt, params, dtype, "after loading")
    for step in AFTER:
        _torch_step(torch, torch_opt, tensors, step)
        _optdsl_step(opt, params, step)
        _compare(torch_opt, tensors, opt, params, dtype, f"step {step}")


@pytest.mark.parametrize("name, dtype", PARAMS)
def test_converted_state_has_torchs_own_layout(torch, name, dtype):
    """state_dict_to_torch gives what torch.optim.X's own state_dict() gives after the
    same steps: the same group keys and values, state keys, tensor dtypes and shapes
    (step: torch's float scalar; none for SGD)."""
    opt, params = _optdsl_side(name, dtype)
    torch_opt, tensors = _torch_side(torch, name, dtype)
    for step in BEFORE:
        _optdsl_step(opt, params, step)
        _torch_step(torch, torch_opt, tensors, step)
    ours, theirs = state_dict_to_torch(opt.state_dict(), name), torch_opt.state_dict()
    for mine, real in zip(ours["param_groups"], theirs["param_groups"], strict=True):
        assert mine == real  # the same keys and values (torch's order follows the user's)
    assert set(ours["state"]) == set(theirs["state"])
    for pid, real in theirs["state"].items():
        mine = ours["state"][pid]
        assert set(mine) == set(real), pid
        for key, value in real.items():
            assert isinstance(mine[key], torch.Tensor)
            assert mine[key].dtype == value.dtype and mine[key].shape == value.shape, key
            assert mine[key].device == value.device
            if key == "step":
                assert mine[key].item() == value.item()


@pytest.mark.parametrize("name, dtype", PARAMS)
def test_optdsl_torch_optdsl_round_trip_is_lossless(torch, name, dtype):
    """(c) Bit for bit, hypers and state. SGD is the one exception: torch.optim.SGD keeps
    no step count, so its params come back at step 1 (which SGD reads only as "not the
    first step": the run continues identically)."""
    opt, params = _optdsl_side(name, dtype)
    for step in BEFORE:
        _optdsl_step(opt, params, step)
    sd = opt.state_dict()
    back = state_dict_from_torch(state_dict_to_torch(sd, name), name)
    if name == "SGD":
        for entry in sd["state"].values():
            assert entry["step"] == len(BEFORE)
            entry["step"] = 1
    assert_state_dicts_equal(back, sd)
    again, again_params = _blank_optdsl(name, [p.data for p in params])
    again.load_state_dict(back)
    for step in AFTER:
        _optdsl_step(opt, params, step)
        _optdsl_step(again, again_params, step)
    for p, q in zip(params, again_params, strict=True):
        assert p.data.tobytes() == q.data.tobytes()


@pytest.mark.parametrize("name", list(CASES))
def test_torch_optdsl_torch_round_trip_keeps_torchs_state_dict(torch, name):
    torch_opt, tensors = _torch_side(torch, name, "float64")
    for step in BEFORE:
        _torch_step(torch, torch_opt, tensors, step)
    sd = torch_opt.state_dict()
    back = state_dict_to_torch(state_dict_from_torch(sd, name), name)
    assert back["param_groups"] == sd["param_groups"]
    assert set(back["state"]) == set(sd["state"])
    for pid, entry in sd["state"].items():
        assert set(back["state"][pid]) == set(entry)
        for key, value in entry.items():
            assert torch.equal(back["state"][pid][key], value), key
            assert back["state"][pid][key].dtype == value.dtype, key


# --- what the conversion takes and gives ----------------------------------------------------

def test_from_torch_gives_numpy_int_steps_and_optdsl_hypers(torch):
    torch_opt, tensors = _torch_side(torch, "Adam", "float32")
    for step in BEFORE:
        _torch_step(torch, torch_opt, tensors, step)
    sd = state_dict_from_torch(torch_opt.state_dict(), optim.Adam)
    for group in sd["param_groups"]:
        assert set(group) == set(optim.Adam._spec.hypers) | {"params"}  # no foreach, fused..
        assert isinstance(group["lr"], float) and isinstance(group["betas"], tuple)
    entry = sd["state"][0]
    assert entry["step"] == 3 and type(entry["step"]) is int
    assert type(entry["exp_avg"]) is np.ndarray and entry["exp_avg"].dtype == np.float32
    assert entry["exp_avg"].flags.owndata  # a copy: torch's tensor may change on


@pytest.mark.parametrize("name", list(CASES))
def test_optimizer_is_told_from_the_keys_when_not_given(torch, name):
    """Both ways. torch's AdamW becomes optdsl's Adam with decoupled_weight_decay=True (the
    same update), which optdsl's AdamW also loads (keeping the key as an extra)."""
    torch_opt, tensors = _torch_side(torch, name, "float64")
    for step in BEFORE:
        _torch_step(torch, torch_opt, tensors, step)
    sd = torch_opt.state_dict()
    inferred = state_dict_from_torch(sd)
    named = state_dict_from_torch(sd, "Adam" if name == "AdamW" else name)
    assert_state_dicts_equal(inferred, named)
    if name == "AdamW":
        assert all(g["decoupled_weight_decay"] is True for g in inferred["param_groups"])
    for cls_name in dict.fromkeys([name, "Adam" if name == "AdamW" else name]):
        opt, params = _blank_optdsl(cls_name, [t.detach().numpy() for t in tensors])
        opt.load_state_dict(inferred)
        twin, twin_params = _blank_optdsl(name, [t.detach().numpy() for t in tensors])
        twin.load_state_dict(state_dict_from_torch(sd, name))
        _optdsl_step(opt, params, 4)
        _optdsl_step(twin, twin_params, 4)
        for p, q in zip(params, twin_params, strict=True):
            assert p.data.tobytes() == q.data.tobytes()

    opt, params = _optdsl_side(name, "float64")
    _optdsl_step(opt, params, 1)
    inferred = state_dict_to_torch(opt.state_dict())
    named = state_dict_to_torch(opt.state_dict(), name)
    assert inferred["param_groups"] == named["param_groups"]
    for pid, entry in named["state"].items():
        assert set(inferred["state"][pid]) == set(entry)
        assert all(torch.equal(inferred["state"][pid][k], v) for k, v in entry.items())


def test_optimizer_given_as_class_instance_or_name(torch):
    torch_opt, tensors = _torch_side(torch, "RMSprop", "float64")
    _torch_step(torch, torch_opt, tensors, 1)
    sd = torch_opt.state_dict()
    opt, _ = _optdsl_side("RMSprop", "float64")
    results = [state_dict_from_torch(sd, which) for which in
               ("RMSprop", optim.RMSprop, opt, torch.optim.RMSprop, torch_opt)]
    for result in results[1:]:
        assert_state_dicts_equal(result, results[0])
    back = [state_dict_to_torch(results[0], which)["param_groups"] for which in
            ("RMSprop", torch.optim.RMSprop, torch_opt, optim.RMSprop, opt)]
    assert all(b == back[0] for b in back)


def test_torch_sgd_quirks(torch):
    """torch.optim.SGD keeps no step and, for a param whose momentum buffer was never
    made, may hold momentum_buffer=None: such entries are dropped, so the next step is
    that param's first."""
    sd = {"state": {0: {"momentum_buffer": None}, 1: {"momentum_buffer": torch.ones(2)}},
          "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0,
                            "nesterov": False, "maximize": False, "foreach": None,
                            "differentiable": False, "fused": None, "params": [0, 1]}]}
    out = state_dict_from_torch(sd, "SGD")
    assert list(out["state"]) == [1]
    assert out["state"][1]["step"] == 1
    assert out["param_groups"][0]["momentum"] == 0.9
    back = state_dict_to_torch(out, "SGD")
    assert set(back["state"][1]) == {"momentum_buffer"}


def test_torch_adagrad_state_from_before_its_first_step(torch):
    """torch.optim.Adagrad makes its state (step 0, the initial accumulator) at
    construction; converted, optdsl starts from it."""
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in _arrays("float64")]
    torch_opt = torch.optim.Adagrad(tensors, lr=0.1, initial_accumulator_value=0.3)
    sd = state_dict_from_torch(torch_opt.state_dict(), "Adagrad")
    assert all(e["step"] == 0 for e in sd["state"].values())
    params = [Param(t.detach().numpy().copy()) for t in tensors]
    opt = optim.Adagrad(params)
    opt.load_state_dict(sd)
    for step in (1, 2, 3):
        _torch_step(torch, torch_opt, tensors, step)
        _optdsl_step(opt, params, step)
    for p, t in zip(params, tensors, strict=True):
        _assert_close(p.data, t.detach().numpy(), "float64", "Adagrad")


def test_tensor_hypers_and_scheduler_keys(torch):
    """torch lets lr be a tensor; a torch scheduler adds initial_lr to each group: the
    first becomes a float, the second stays (optdsl's schedules read it too)."""
    tensors = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]
    torch_opt = torch.optim.Adam(tensors, lr=torch.tensor(0.01))
    torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2)
    _torch_step(torch, torch_opt, tensors, 1)
    sd = state_dict_from_torch(torch_opt.state_dict(), "Adam")
    group = sd["param_groups"][0]
    assert group["lr"] == pytest.approx(0.01) and type(group["lr"]) is float
    assert group["initial_lr"] == pytest.approx(0.01)
    assert "initial_lr" in state_dict_to_torch(sd, "Adam")["param_groups"][0]


def test_bfloat16_state_both_ways(torch):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="NumPy's bfloat16")
    values = torch.randn(6, dtype=torch.float32).to(torch.bfloat16)
    sd = {"state": {0: {"step": torch.tensor(2.0), "exp_avg": values,
                        "exp_avg_sq": values.abs()}},
          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                            "weight_decay": 0, "amsgrad": False, "maximize": False,
                            "decoupled_weight_decay": False, "params": [0]}]}
    out = state_dict_from_torch(sd, "Adam")
    assert out["state"][0]["exp_avg"].dtype == ml_dtypes.bfloat16
    back = state_dict_to_torch(out, "Adam")
    assert back["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert torch.equal(back["state"][0]["exp_avg"], values)


# --- errors ---------------------------------------------------------------------------------

def test_errors_name_what_does_not_fit(torch):
    torch_opt, tensors = _torch_side(torch, "Adam", "float64")
    _torch_step(torch, torch_opt, tensors, 1)
    sd = torch_opt.state_dict()
    with pytest.raises(StateDictError, match="state_dict_from_torch: param group 0: "
                       "decoupled_weight_decay is False: this is torch.optim.Adam's state; "
                       "convert it for 'Adam'"):
        state_dict_from_torch(sd, "AdamW")
    with pytest.raises(StateDictError, match=r"state_dict_from_torch: state of param 0: SGD "
                       r"has no state 'exp_avg'"):
        state_dict_from_torch({**sd, "param_groups": [
            {"lr": 0.1, "momentum": 0.9, "params": [0]}, {"lr": 0.1, "params": [1, 2]}]},
            "SGD")
    with pytest.raises(StateDictError, match="'Lion' is not an optimizer that torch.optim and "
                       "optdsl both have"):
        state_dict_from_torch(sd, "Lion")
    with pytest.raises(StateDictError, match="expected a state_dict"):
        state_dict_to_torch({"state": {}}, "Adam")
    with pytest.raises(StateDictError, match="cannot tell which optimizer"):
        state_dict_from_torch({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})
    bad = state_dict_from_torch(sd, "Adam")
    bad["state"][0]["step"] = 2.5
    with pytest.raises(StateDictError, match=r"state of param 0: 'step' must be a whole "
                       r"number >= 0, got 2\.5"):
        state_dict_to_torch(bad, "Adam")
    bad = state_dict_from_torch(sd, "Adam")
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(StateDictError, match="param group 0: torch.optim.Adam refuses these "
                       "hypers: Invalid learning rate"):
        state_dict_to_torch(bad, "Adam")
    sd["param_groups"][1]["lr"] = float("nan")
    with pytest.raises(StateDictError, match="state_dict_from_torch: param group 1: Adam: "
                       "invalid lr: nan"):
        state_dict_from_torch(sd, "Adam")


def test_stdlib_and_counterparts_agree():
    """Every counterpart is a stdlib optimizer and a torch.optim class of the same name.
    The catalogue has optimizers torch lacks (Lion, ...), so the converse does not hold;
    SparseAdam has a torch namesake but takes only sparse gradients, which optdsl's
    state_dict conversion and torch classes do not deal in."""
    assert set(COUNTERPARTS) <= set(optim.STDLIB) - optim.SPARSE_ONLY
    # and every counterpart has its state_dict round trips tested above
    assert set(COUNTERPARTS) == set(CASES)
    torch = pytest.importorskip("torch", reason="checks the names against torch.optim")
    for name in COUNTERPARTS:
        cls = getattr(torch.optim, name, None)
        assert isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer), name


def test_imports_and_converts_without_torch(tmp_path):
    """optdsl.torch imports with torch missing; from_torch takes a torch-layout dict of
    NumPy arrays; to_torch says what it needs."""
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from optdsl.torch import state_dict_from_torch, state_dict_to_torch\n"
        "sd = {'state': {0: {'step': 3.0, 'momentum_buffer': np.ones(2)}},\n"
        "      'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'dampening': 0,\n"
        "                        'weight_decay': 0, 'nesterov': False, 'maximize': False,\n"
        "                        'foreach': None, 'params': [0]}]}\n"
        "out = state_dict_from_torch(sd)\n"
        "assert out['state'][0]['step'] == 3, out\n"
        "assert 'foreach' not in out['param_groups'][0]\n"
        "try:\n"
        "    state_dict_to_torch(out)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "state_dict_to_torch needs torch (pip install " \
                                  "'optdsl[torch]')"
    assert isinstance(optdsl.torch.COUNTERPARTS, tuple)
