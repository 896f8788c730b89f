"""optdsl's CuPy backend against torch's fused Adam and AdamW on one GPU, and both against
the GPU's measured device-to-device copy bandwidth. Needs a CUDA GPU, CuPy and torch with
CUDA; benchmarks/gpu_check.sh runs it on the device machine.

    python -m benchmarks.gpu_bench [--sizes 10M,100M,1B] [--out DIR] [--rounds 5]

For each size (decimal: 10M = 10,000,000 float32 parameters) and optimizer, optdsl's step
(one flat param: one ElementwiseKernel launch) and torch's ``fused=True`` step run
alternately in rounds, each round timing a burst of steps with CUDA events, so both see
the same clocks and neighbours; the table gives the median of the rounds. Adam and AdamW
move 28 bytes per float32 parameter (p, g, exp_avg, exp_avg_sq read; p and both moments
written): the fraction of copy bandwidth is 28 * n / time over the copy's bytes (read
plus written) per second. At 100M it also times variants of optdsl's launch (block
sizes, and the multi-tensor RawKernel over the same flat buffer), and a model-shaped case:
the same 100M parameters as 1000 separate tensors (optdsl's multi-tensor launch against
torch's fused multi-tensor apply).

Writes gpu_bench.json and gpu_bench.md to --out and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

BYTES_PER_PARAM = 28  # Adam / AdamW in float32: 4 arrays read, 3 written


def parse_size(text: str) -> int:
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}
    return int(float(text[:-1]) * scale[text[-1]]) if text[-1] in scale else int(text)


def burst_ms(cupy, step, steps: int) -> float:
    """Milliseconds per step over a burst of ``steps``, timed with CUDA events on the
    legacy default stream (torch's and CuPy's default)."""
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(steps):
        step()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / steps


def copy_bandwidth(cupy, nbytes: int = 1 << 31, rounds: int = 10) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written."""
    buffers = [cupy.random.standard_normal(nbytes // 4, dtype=cupy.float32)]
    buffers.append(cupy.empty_like(buffers[0]))

    def copy():
        buffers[1].data.copy_from_device_async(buffers[0].data, nbytes)

    copy()
    times = [burst_ms(cupy, copy, 5) for _ in range(rounds)]
    buffers.clear()
    return 2 * nbytes / (statistics.median(times) * 1e-3)


def steps_for(n: int) -> int:
    """Steps per burst: about 50 ms of work, at least 5."""
    return max(5, min(200, int(50e-3 / (BYTES_PER_PARAM * n / 4.0e12))))


def alternate(cupy, steps: dict, burst: int, rounds: int) -> dict:
    """Median ms per step of each callable, run in turn, ``rounds`` times."""
    for step in steps.values():  # warm up: compile, plan, allocate
        for _ in range(3):
            step()
    cupy.cuda.Device().synchronize()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(burst_ms(cupy, step, burst))
    return {k: statistics.median(v) for k, v in times.items()}


def make_optdsl(cupy, name: str, sizes: list[int], **kw):
    import optdsl
    from optdsl import optim

    params = [optdsl.Param(cupy.random.standard_normal(n, dtype=cupy.float32) * 0.1,
                           grad=cupy.random.standard_normal(n, dtype=cupy.float32))
              for n in sizes]
    return getattr(optim, name)(params, lr=1e-4, weight_decay=0.01, **kw)


def make_torch(torch, name: str, sizes: list[int]):
    params = []
    for n in sizes:
        p = (torch.randn(n, device="cuda") * 0.1).requires_grad_()
        p.grad = torch.randn(n, device="cuda")
        params.append(p)
    return getattr(torch.optim, name)(params, lr=1e-4, weight_decay=0.01, fused=True)


def free(cupy, torch) -> None:
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,100M,1B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/gpu")
    args = parser.parse_args(argv)
    import cupy
    import torch

    from optdsl.backend import cupy_backend

    begin = time.time()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    copy_bw = copy_bandwidth(cupy)
    result = {
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "cupy": cupy.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "copy_TBps": copy_bw / 1e12, "rows": [], "variants": [],
    }
    print(f"# {result['gpu']}: device-to-device copy {copy_bw / 1e12:.2f} TB/s", flush=True)

    def row(kind: str, name: str, n: int, layout: str, ms: dict) -> dict:
        entry = {"kind": kind, "optimizer": name, "params": n, "layout": layout,
                 **{f"{k}_ms": round(v, 4) for k, v in ms.items()}}
        for k, v in ms.items():
            entry[f"{k}_bw_fraction"] = round(BYTES_PER_PARAM * n / (v * 1e-3) / copy_bw, 4)
        if "optdsl" in ms and "torch_fused" in ms:
            entry["speedup_vs_torch"] = round(ms["torch_fused"] / ms["optdsl"], 3)
        print(json.dumps(entry), flush=True)
        return entry

    for text in args.sizes.split(","):
        n = parse_size(text)
        for name in ("Adam", "AdamW"):
            ours = make_optdsl(cupy, name, [n])
            theirs = make_torch(torch, name, [n])
            ms = alternate(cupy, {"optdsl": ours.step, "torch_fused": theirs.step},
                           steps_for(n), args.rounds)
            result["rows"].append(row("flat", name, n, "1 tensor", ms))
            if n == parse_size("100M") and name == "Adam":
                # Launch variants over the same flat buffer, in one alternation.
                variants = {}
                for block in (128, 512, 1024):
                    def step(block=block, ours=ours):
                        saved = cupy_backend.BLOCK_SIZE
                        cupy_backend.BLOCK_SIZE = block
                        try:
                            ours.step()
                        finally:
                            cupy_backend.BLOCK_SIZE = saved
                    variants[f"elementwise_block{block}"] = step
                variants[f"elementwise_block{cupy_backend.BLOCK_SIZE}"] = ours.step
                variants["multi_rawkernel"] = _multi_step(ours)
                ms = alternate(cupy, variants, steps_for(n), args.rounds)
                result["variants"].append(row("variant", name, n, "1 tensor", ms))
            del ours, theirs
            free(cupy, torch)
        if n == parse_size("100M"):
            sizes = [n // 1000] * 1000
            ours = make_optdsl(cupy, "Adam", sizes)
            theirs = make_torch(torch, "Adam", sizes)
            ms = alternate(cupy, {"optdsl": ours.step, "torch_fused": theirs.step},
                           steps_for(n), args.rounds)
            result["rows"].append(row("multi", "Adam", n, "1000 tensors", ms))
            del ours, theirs
            free(cupy, torch)
    result["seconds"] = round(time.time() - begin, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    (out / "gpu_bench.md").write_text(markdown)
    print(markdown)
    return result


def _multi_step(opt):
    """A step of ``opt``'s single flat param through the multi-tensor RawKernel instead
    of the ElementwiseKernel (same kernel body; the pointer table built once)."""
    (p,) = opt.param_groups[0]["params"]
    values = opt._group_hypers(0)
    kernel = None
    launch = None

    def step():
        nonlocal kernel, launch
        t = opt.state[p]["step"] + 1
        k, args, _ = opt._kernel(values, t, np.dtype(p.data.dtype),
                                 opt._plans[0].backend, {})
        if k is not kernel:
            kernel = k
            buffers = [p.data if b == "p" else p.grad if b == "g" else opt.state[p][b]
                       for b in k.buffers]
            launch = k.many([[b.reshape(-1) for b in buffers]])
        launch(args)  # the step count stays: bias corrections do not change the work

    return step


def render(result: dict) -> str:
    copy_tb = result["copy_TBps"]
    lines = [f"GPU: {result['gpu']}; CuPy {result['cupy']}, torch {result['torch']}; "
             f"device-to-device copy {copy_tb:.2f} TB/s (read + written). "
             f"{BYTES_PER_PARAM} bytes per param; median of rounds; "
             f"{result.get('seconds', '?')} s in all.", "",
             "| optimizer | params | layout | optdsl ms | torch fused ms | optdsl / torch "
             "speed | optdsl % of copy bw | torch % of copy bw |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['optimizer']} | {r['params']:,} | {r['layout']} | "
                     f"{r['optdsl_ms']:.3f} | {r['torch_fused_ms']:.3f} | "
                     f"{r['speedup_vs_torch']:.2f}x | {100 * r['optdsl_bw_fraction']:.1f}% | "
                     f"{100 * r['torch_fused_bw_fraction']:.1f}% |")
    for v in result["variants"]:
        lines += ["", f"Launch variants, {v['optimizer']} at {v['params']:,} params "
                  "(ms per step, % of copy bandwidth):", ""]
        for key in v:
            if key.endswith("_ms"):
                name = key[:-3]
                lines.append(f"- {name}: {v[key]:.3f} ms, "
                             f"{100 * v[name + '_bw_fraction']:.1f}%")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
