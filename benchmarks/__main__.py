"""python -m benchmarks: optdsl's optimizers against torch.optim, a naive NumPy Adam and the
machine's memory bandwidth, all measured in one run. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optdsl
from benchmarks import report, suite

SMOKE_SIZES = "64K,256K"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--sizes", default="1M,16M,64M",
                        help="parameter counts, comma-separated; K and M are 2**10 and "
                        "2**20 (default: 1M,16M,64M)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a quick check that everything runs: sizes {SMOKE_SIZES}, "
                        "100 x 1000 tensors, few repeats (numbers not meaningful)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="directory for results.md, results.json, results.png "
                        "(default: benchmarks/results/)")
    parser.add_argument("--backends", default=None,
                        help="optdsl backends, comma-separated (default: every available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for optdsl, torch and the bandwidth test (default: "
                        "optdsl.num_threads())")
    parser.add_argument("--no-torch", action="store_true", help="skip torch.optim")
    return parser.parse_args(argv)


def config(args: argparse.Namespace) -> suite.Config:
    available = optdsl.backends("cpu")  # the suite's arrays are NumPy arrays
    backends = available if args.backends is None else [
        b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in available]
    if unknown or not backends:
        raise SystemExit(f"--backends: {', '.join(unknown) or 'none given'} not available "
                         f"here; available: {', '.join(available)}")
    try:
        sizes = [suite.parse_size(s) for s in
                 (SMOKE_SIZES if args.smoke else args.sizes).split(",")]
    except ValueError as exc:
        raise SystemExit(f"--sizes: {exc}") from None
    threads = args.threads if args.threads is not None else optdsl.num_threads()
    if threads < 1:
        raise SystemExit("--threads must be at least 1")
    cfg = suite.Config(sizes=sizes, backends=backends, torch=not args.no_torch,
                       threads=threads, smoke=args.smoke)
    if args.smoke:
        cfg.many = (100, 1000)
        cfg.stream_repeats = 3
        cfg.notes.append("--smoke: tiny sizes and few repeats; the numbers check that the "
                         "suite runs, they are not measurements to quote")
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = suite.run(config(args))
    print(report.markdown(results))
    for path in report.write(results, args.out):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
