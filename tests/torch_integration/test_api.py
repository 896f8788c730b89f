"""optdsl.torch's optimizers are torch optimizers: torch's hooks, zero_grad,
add_param_group and GradScaler work with them; from_rule makes one from any rule (text,
path or compiled class); bad input gets a clear error, before anything changes."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from torch_cases import assert_close, copies, loss_of, mlp, torch, train_step, unchanged

import optdsl
import optdsl.torch as ot
from optdsl import GradientTypeError, HyperError, HyperTypeError, ParamGroupTypeError

# DESIGN.md's normative Lion, the demo's user rule.
LION = (Path(__file__).parents[2] / "examples" / "lion.opt").read_text()


def lion_reference(p, g, m, lr, betas, weight_decay):
    """Lion's update in torch ops, in place."""
    b1, b2 = betas
    p.mul_(1 - lr * weight_decay)
    p.add_(torch.sign(b1 * m + (1 - b1) * g), alpha=-lr)
    m.mul_(b2).add_(g, alpha=1 - b2)


@pytest.mark.parametrize("how", ["text", "path", "class"])
def test_from_rule_makes_a_torch_optimizer_from_text_a_path_or_a_class(how, tmp_path):
    rule = {"text": lambda: LION, "class": lambda: optdsl.compile(LION)}.get(how)
    if how == "path":
        (tmp_path / "lion.opt").write_text(LION)
        source = tmp_path / "lion.opt"
    else:
        source = rule()
    Lion = ot.from_rule(source)
    assert Lion.__name__ == "Lion" and issubclass(Lion, torch.optim.Optimizer)
    assert ot.from_rule(Lion) is Lion
    assert "Lion (Chen et al., 2023)" in Lion.__doc__
    signature = inspect.signature(Lion)
    assert list(signature.parameters)[:2] == ["params", "lr"]
    assert signature.parameters["betas"].default == (0.9, 0.99)
    model = mlp()
    opt = Lion(model.parameters(), 0.01, weight_decay=0.1)  # lr by position, as in torch
    expected = copies(model.parameters())
    moments = [torch.zeros_like(p) for p in expected]
    for step in range(3):
        train_step(model, opt, step)
        for p, q, m in zip(expected, model.parameters(), moments, strict=True):
            lion_reference(p, q.grad, m, 0.01, (0.9, 0.99), 0.1)
        assert_close(model.parameters(), expected)


def test_stdlib_classes_are_made_once_and_listed():
    assert ot.Adam is ot.from_rule(optdsl.optim.Adam) is ot.from_rule(ot.Adam)
    assert issubclass(ot.Adam, ot.TorchOptimizer)
    assert {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"} <= set(dir(ot))
    with pytest.raises(AttributeError):
        ot.Lion  # noqa: B018
    with pytest.raises(TypeError, match="is a schedule, not an optimizer"):
        ot.from_rule(Path(__file__).parents[2] / "stdlib" / "schedules" / "steplr.opt")
    with pytest.raises(TypeError, match="sparse gradients"):
        ot.from_rule(optdsl.optim.SparseAdam)
    with pytest.raises(TypeError, match="expected an optdsl optimizer class"):
        ot.from_rule(42)


def test_torch_hooks_run_around_each_step_and_state_dict():
    model = mlp()
    opt = ot.Adam(model.parameters(), lr=0.1)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o)))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o)))
    opt.register_state_dict_pre_hook(lambda o: calls.append(("sd", o)))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "mark": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append(("load", o)))
    opt.register_load_state_dict_post_hook(lambda o: calls.append(("loaded", o)))
    train_step(model, opt, 0)
    assert calls == [("pre", opt), ("post", opt)]
    pre.remove()
    train_step(model, opt, 1)
    sd = opt.state_dict()
    assert sd["mark"] == 1
    opt.load_state_dict(sd)
    assert [c[0] for c in calls] == ["pre", "post", "post", "sd", "load", "loaded"]


def test_zero_grad_drops_or_zeroes_gradients_as_torch_does():
    model = mlp()
    opt = ot.SGD(model.parameters(), lr=0.1)
    loss_of(model, 0).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = copies(model.parameters())
    opt.step()  # no gradients: nothing steps
    assert unchanged(model.parameters(), before)


def test_add_param_group_later_and_groups_edited_by_schedulers():
    ours, theirs = mlp(), mlp()
    opt = ot.Adam(ours[0].parameters(), lr=0.01)
    ref = torch.optim.Adam(theirs[0].parameters(), lr=0.01)
    train_step(ours, opt, 0)
    train_step(theirs, ref, 0)
    opt.add_param_group({"params": ours[2].parameters(), "lr": 0.05, "amsgrad": True})
    ref.add_param_group({"params": theirs[2].parameters(), "lr": 0.05, "amsgrad": True})
    for o in (opt, ref):
        o.param_groups[0]["betas"] = (0.5, 0.9)  # by hand, as a scheduler would
    for step in range(1, 4):
        train_step(ours, opt, step)
        train_step(theirs, ref, step)
    assert_close(ours.parameters(), theirs.parameters())


def test_grad_scaler_unscales_and_skips_steps_with_infs_as_with_torch_optim():
    ours, theirs = mlp(torch.float32), mlp(torch.float32)
    opt = ot.Adam(ours.parameters(), lr=0.01)
    ref = torch.optim.Adam(theirs.parameters(), lr=0.01)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) for _ in range(2)]
    for step in range(4):
        for model, o, scaler in ((ours, opt, scalers[0]), (theirs, ref, scalers[1])):
            o.zero_grad()
            scaler.scale(loss_of(model, step)).backward()
            if step == 2:
                model[0].weight.grad[0, 0] = float("inf")
            before = copies(model.parameters())
            scaler.step(o)
            scaler.update()
            # the inf step is skipped, the others taken
            assert unchanged(model.parameters(), before) == (step == 2)
        assert scalers[0].get_scale() == scalers[1].get_scale()
        assert_close(ours.parameters(), theirs.parameters(), torch.float32)
    assert scalers[0].get_scale() == 2.0 ** 9
    assert opt.state[ours[0].weight]["step"].item() == 3.0


def test_unknown_hypers_and_bad_values_are_refused_clearly():
    params = list(mlp().parameters())
    with pytest.raises(HyperTypeError, match="unknown keyword 'lrr'; did you mean 'lr'"):
        ot.Adam(params, lrr=0.1)
    with pytest.raises(HyperError, match=r"Adam: invalid lr: -1.0; expected in \[0, inf\)"):
        ot.Adam(params, lr=-1)
    with pytest.raises(HyperError, match=r"invalid betas\[1\]"):
        ot.Adam([{"params": params[:2]}, {"params": params[2:], "betas": (0.9, 1.5)}])
    with pytest.raises(HyperTypeError, match="did you mean 'betas'"):
        ot.Adam([{"params": params, "betass": (0.9, 0.9)}])
    with pytest.raises(HyperError, match="capturable=True is not supported"):
        ot.Adam(params, capturable=True)
    with pytest.raises(TypeError, match="only lr may be given by position"):
        ot.Adam(params, 0.1, (0.9, 0.99))
    ot.Adam(params, lr=0.1, foreach=True, fused=False)  # torch's switches: accepted
    with pytest.raises(ParamGroupTypeError, match="floating-point tensors, got torch.int64"):
        ot.SGD([torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        ot.SGD([torch.ones(2, requires_grad=True) * 2])
    opt = ot.SGD(params, lr=0.1)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        copy.deepcopy(opt)


def test_a_bad_hyper_set_in_a_group_raises_at_step_before_anything_changes():
    model = mlp()
    opt = ot.Adam([{"params": model[0].parameters()},
                   {"params": model[2].parameters(), "lr": 0.01}], lr=0.1)
    train_step(model, opt, 0)
    before = copies(model.parameters())
    opt.param_groups[1]["lr"] = float("nan")
    with pytest.raises(HyperError, match=r"invalid lr: nan.*\(in param group 1\)"):
        train_step(model, opt, 1)
    assert unchanged(model.parameters(), before)
    assert opt.state[model[0].weight]["step"].item() == 1.0
    opt.param_groups[1]["lr"] = torch.tensor(0.01)  # torch allows a tensor lr
    train_step(model, opt, 1)
    assert opt.state[model[0].weight]["step"].item() == 2.0


def test_sparse_gradients_are_refused_before_anything_changes():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    dense = torch.nn.Linear(3, 1)
    opt = ot.Adam([*dense.parameters(), emb.weight], lr=0.1)
    before = copies((*dense.parameters(), emb.weight))
    dense(emb(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(GradientTypeError, match=r"param 2 of group 0: a sparse gradient"):
        opt.step()
    assert unchanged((*dense.parameters(), emb.weight), before)


def test_named_parameters_name_the_param_in_errors():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = ot.SGD(emb.named_parameters(), lr=0.1)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(GradientTypeError, match=r"SGD: param 'weight' \(param 0 of group 0\)"):
        opt.step()
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight"]


def test_optdsl_torch_imports_without_torch():
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import optdsl.torch as ot\n"
        "print(ot.from_rule.__name__)\n"
        "try:\n"
        "    ot.Adam\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "from_rule", "optdsl.torch's optimizers need torch (pip install 'optdsl[torch]')"]
