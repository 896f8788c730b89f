"""Exact resume across a process boundary: for every stdlib optimizer (non-default hypers,
two param groups, a schedule, a stand-in loss scaler), K steps, save, then a fresh Python
process builds everything anew, loads, and runs on. Every param after every later step,
the final state, lrs, schedule and scaler equal the uninterrupted run's bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

from ckpt_util import CONFIGS, TinyScaler, build, digest, run  # noqa: E402

import optdsl  # noqa: E402

HERE = Path(__file__).parent
K, N = 5, 12


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    expected = {}
    for name in CONFIGS:
        # The uninterrupted run.
        opt, sched, params = build(name)
        scaler = TinyScaler(scale=1.0)
        trail = run(opt, sched, params, scaler, 1, N)
        sd = opt.state_dict()
        expected[name] = {
            "trail": trail[K:],
            "state": [digest(v) for i in sorted(sd["state"])
                      for key, v in sd["state"][i].items() if key != "step"],
            "steps": [sd["state"][i]["step"] for i in sorted(sd["state"])],
            "lrs": [g["lr"] for g in opt.param_groups],
            "sched": json.loads(json.dumps(sched.state_dict())),
            "scaler": scaler.state_dict(), "extra": {"name": name, "step": K},
        }
        # The interrupted one: K steps, then save.
        opt, sched, params = build(name)
        scaler = TinyScaler(scale=1.0)
        run(opt, sched, params, scaler, 1, K)
        optdsl.save(tmp_path / f"{name}.safetensors", optimizer=opt, scheduler=sched,
                    params=params, scaler=scaler, extra={"name": name, "step": K})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE / "resume_child.py"), str(tmp_path),
                           str(K), str(N)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(resumed) == set(CONFIGS)
    for name in CONFIGS:
        got, want = resumed[name], expected[name]
        assert len(got["trail"]) == N - K
        for step, (a, b) in enumerate(zip(got["trail"], want["trail"], strict=True), K + 1):
            assert a == b, f"{name}: the params differ after step {step}"
        assert got == want, name
