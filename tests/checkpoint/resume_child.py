"""Run by test_ckpt_resume.py in a fresh Python process: for every stdlib optimizer, build
the optimizer, schedule, params and scaler anew (params from another seed, so only the
checkpoint can make them right), load the checkpoint saved at step K, run on to step N, and
print one JSON line: the sha256 of the params' bytes after every step, and of the final
optimizer state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ckpt_util import CONFIGS, TinyScaler, build, digest, run

import optdsl


def main(directory: str, k: int, n: int) -> None:
    out = {}
    for name in CONFIGS:
        opt, sched, params = build(name, seed=99)
        scaler = TinyScaler(scale=1.0)
        report = optdsl.load(Path(directory) / f"{name}.safetensors", optimizer=opt,
                             scheduler=sched, params=params, scaler=scaler)
        assert report.by == "name" and not report.added and not report.dropped, report
        trail = run(opt, sched, params, scaler, k + 1, n)
        sd = opt.state_dict()
        state = [digest(v) for i in sorted(sd["state"]) for key, v in sd["state"][i].items()
                 if key != "step"]
        out[name] = {"trail": trail, "state": state,
                     "steps": [sd["state"][i]["step"] for i in sorted(sd["state"])],
                     "lrs": [g["lr"] for g in opt.param_groups],
                     "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                     "extra": report.extra}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
