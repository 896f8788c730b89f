"""optdsl.param_groups: weight decay off for biases and norm weights, layer-wise lr decay."""

from __future__ import annotations

import numpy as np
import pytest

import optdsl
from optdsl import Param
from optdsl.errors import HyperError, ParamGroupTypeError
from optdsl.groups import layer_id, no_decay_match
from optdsl.optim import AdamW

NAMES = ["embed.weight", "blocks.0.attn.weight", "blocks.0.attn.bias", "blocks.0.norm1.weight",
         "blocks.1.mlp.weight", "blocks.1.norm1.bias", "head.weight", "head.bias",
         "final_LayerNorm.weight"]


def _named():
    return [(n, Param(np.ones(2), name=n)) for n in NAMES]


def _names(group):
    return group["param_names"]


def test_biases_and_norm_weights_get_no_weight_decay():
    groups = optdsl.param_groups(_named(), weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert _names(groups[0]) == ["embed.weight", "blocks.0.attn.weight", "blocks.1.mlp.weight",
                                 "head.weight"]
    assert _names(groups[1]) == ["blocks.0.attn.bias", "blocks.0.norm1.weight",
                                 "blocks.1.norm1.bias", "head.bias", "final_LayerNorm.weight"]
    # The groups hold the params themselves, in the order given, and an optimizer takes
    # them as they are: decay applies to the first group only.
    named = dict(_named())
    groups = optdsl.param_groups(named, weight_decay=0.5)
    assert groups[0]["params"][0] is named["embed.weight"]
    opt = AdamW(groups, lr=0.1)
    for p in named.values():
        p.grad = np.zeros(2)
    opt.step()
    assert named["embed.weight"].data[0] == pytest.approx(1 - 0.1 * 0.5)
    assert named["head.bias"].data[0] == 1.0


@pytest.mark.parametrize("name, patterns, expected", [
    ("fc.bias", ("bias",), True),
    ("fc.BIAS", ("bias",), True),
    ("norm1.weight", ("norm",), True),
    ("bn.weight", ("norm",), False),
    ("fc2.weight", ("fc",), True),
    ("fc2.weight", ("fc.*",), False),
    ("fc.weight", ("fc.*",), True),
    ("a.bias_scale", ("*.bias",), False),
    ("a.bias", ("*.bias",), True),
    ("weight", (), False),
])
def test_matching_rules(name, patterns, expected):
    assert no_decay_match(name, patterns) is expected


def test_no_decay_can_be_a_single_pattern_or_empty():
    assert len(optdsl.param_groups(_named(), weight_decay=0.1, no_decay=())) == 1
    groups = optdsl.param_groups(_named(), weight_decay=0.1, no_decay="head")
    assert _names(groups[1]) == ["head.weight", "head.bias"]


def test_layer_decay_scales_lr_by_depth():
    groups = optdsl.param_groups(_named(), weight_decay=0.05, layer_decay=0.5, lr=1e-3)
    by_name = {n: g for g in groups for n in g["param_names"]}
    # embed: layer 0; blocks.0: 1; blocks.1: 2; head and the final norm: 3 (the deepest).
    assert [layer_id(n) for n in NAMES[:3]] == [None, 1, 1]
    expected = {"embed.weight": 0, "blocks.0.attn.weight": 1, "blocks.1.mlp.weight": 2,
                "head.weight": 3, "final_LayerNorm.weight": 3}
    for name, layer in expected.items():
        g = by_name[name]
        assert g["layer"] == layer
        assert g["lr_scale"] == 0.5 ** (3 - layer)
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** (3 - layer))
    assert by_name["blocks.0.attn.bias"]["weight_decay"] == 0.0
    assert by_name["blocks.0.attn.bias"] is not by_name["blocks.0.attn.weight"]
    opt = AdamW(groups)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 8)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weight_decay": -1.0}, HyperError, "weight_decay must be a number >= 0"),
    ({"weight_decay": float("nan")}, HyperError, "weight_decay"),
    ({"layer_decay": 0.0}, HyperError, r"layer_decay must be a number in \(0, 1\]"),
    ({"layer_decay": 1.5}, HyperError, "layer_decay"),
    ({"lr": -1.0}, HyperError, "lr must be"),
    ({"no_decay": ("",)}, ParamGroupTypeError, "non-empty strings"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        optdsl.param_groups(_named(), **kwargs)


def test_bad_named_params():
    with pytest.raises(ParamGroupTypeError, match="named_parameters"):
        optdsl.param_groups([Param(np.ones(2))])
    with pytest.raises(ParamGroupTypeError, match="named_parameters"):
        optdsl.param_groups(3)
    p = Param(np.ones(2))
    with pytest.raises(ParamGroupTypeError, match="given twice"):
        optdsl.param_groups([("a", p), ("a", Param(np.ones(2)))])


def test_torch_named_parameters():
    torch = pytest.importorskip("torch", reason="a torch.nn model's named_parameters()")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    groups = optdsl.param_groups(model.named_parameters(), weight_decay=0.1,
                                 no_decay=("bias", "1.*"))
    # Sequential numbers its layers: "1.weight" is the LayerNorm's.
    assert _names(groups[0]) == ["0.weight", "2.weight"]
    assert _names(groups[1]) == ["0.bias", "1.weight", "1.bias", "2.bias"]
    torch_opt = torch.optim.AdamW(groups, lr=0.1)
    assert [g["weight_decay"] for g in torch_opt.param_groups] == [0.1, 0.0]
