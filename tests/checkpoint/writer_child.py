"""Run by test_ckpt_atomic.py: save a large checkpoint over and over to one path (each
save's extra names this writer and the round), until killed."""

from __future__ import annotations

import sys

import numpy as np

import optdsl
from optdsl.optim import Adam


def main(path: str, megabytes: int, tag: str) -> None:
    n = megabytes * (1 << 20) // 4 // 3  # the param, exp_avg and exp_avg_sq, float32
    p = optdsl.Param(np.linspace(-1, 1, n, dtype=np.float32), name="w")
    opt = Adam([p], lr=1e-3)
    p.grad = np.ones(n, np.float32)
    opt.step()
    round_ = 0
    while True:
        round_ += 1
        optdsl.save(path, optimizer=opt, params=[p], extra={"writer": tag, "round": round_})
        print(round_, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
