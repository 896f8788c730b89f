"""reuse_buffers: every tensor value gets a slot; outputs are written in place when safe."""

import numpy as np

from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.hypers import resolve
from optdsl.interp import interpret
from optdsl.optim import Adam
from tests.property.harness import assert_same_bits, run_kernel

NUMPY = get_backend("numpy")


def _adam_path():
    hypers = resolve(Adam._spec.hypers, {}, "Adam")
    return hypers, Adam._spec.host["decide"](hypers, 1)


def test_adam_uses_three_scratch_slots_at_most_and_updates_exp_avg_in_place():
    hypers, path = _adam_path()
    program = Adam._spec.program(path)
    slots = dict(program.slots)
    scratch = {s for s in slots.values() if s[0] == "f" and s[1:].isdigit()}
    assert len(scratch) <= 3
    assert slots[dict(program.outputs)["exp_avg"].id] == "out:exp_avg"
    kernel = Adam._spec.kernel(NUMPY, path)
    assert kernel.scratch[0] <= 3
    assert "copyto(c_exp_avg" not in kernel.source  # written where it is computed


def test_an_output_that_is_an_input_gets_its_own_copy():
    spec = load_spec("optimizer R\nstate buf = 0\nupdate:\n    buf = g\n    p = p - buf\n")
    program = spec.program(())
    out = dict(program.outputs)["buf"]
    (ins,) = [i for i in program.body if i.out == out]
    assert ins.op == "copy"


SWAP = """optimizer Swap
state exp_avg = 0
state exp_avg_sq = 0
update:
    exp_avg, exp_avg_sq = (exp_avg_sq, exp_avg)
    p = p + exp_avg
"""


def test_swapping_two_states_is_correct():
    spec = load_spec(SWAP)
    rng = np.random.default_rng(0)
    buffers = {n: rng.standard_normal(10).astype(np.float32)
               for n in ("p", "g", "exp_avg", "exp_avg_sq")}
    # a swap needs one temporary: one state goes through scratch, the other is in place
    assert spec.kernel(NUMPY, ()).scratch == (1, 0)
    for chunk in (1, 3, 64):
        got = run_kernel(spec.kernel(NUMPY, ()), {}, 1, buffers, chunk)
        assert_same_bits(got["exp_avg"], buffers["exp_avg_sq"], "exp_avg")
        assert_same_bits(got["exp_avg_sq"], buffers["exp_avg"], "exp_avg_sq")
        assert_same_bits(got["p"], buffers["p"] + buffers["exp_avg_sq"], "p")
        want = interpret(spec.unoptimized(()), {}, 1, buffers)
        for name in want:
            assert_same_bits(got[name], want[name], name)


def test_where_never_overwrites_its_condition_or_true_branch():
    """np.copyto-based where writes its false branch first; the result may share a slot
    only with that branch."""
    spec = load_spec("optimizer R\nupdate:\n    c = p > g\n    a = p * 2\n"
                     "    p = where(c, a, g * 3)\n")
    program = spec.program(())
    slots = dict(program.slots)
    (w,) = [i for i in program.body if i.op == "where"]
    assert slots[w.out.id] not in (slots[w.args[0].id], slots[w.args[1].id])
    buffers = {"p": np.arange(-3, 4, dtype=np.float64), "g": np.zeros(7)}
    got = run_kernel(spec.kernel(NUMPY, ()), {}, 1, buffers, 4)
    assert_same_bits(got["p"], np.where(buffers["p"] > 0, buffers["p"] * 2, 0.0), "p")
