"""Fuzz the compiler for longer than CI does: ``python scripts/fuzz.py --minutes 10``.

Runs the generators of ``tests/fuzz/strategies.py`` against the property of
``tests/fuzz/check.py`` (the same ones ``tests/fuzz/test_fuzz_compiler.py`` runs on a fixed
budget), in rounds of a few hundred inputs per generator, each round with its own seed,
until the time is up. Prints how many inputs each generator tried and what they led to,
and every distinct failure, minimised by Hypothesis; writes each failing input and its
traceback under ``--save`` (default ``fuzz-failures/``). Exits 1 if anything failed.

The input being checked is kept in ``SAVE/in-flight.opt``: if a hang in C code makes the
watchdog end the process, that file is the input that did it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fuzz, and optdsl from this checkout

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

ROUND = 200  # inputs per generator per round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the first round (default: from the clock)")
    parser.add_argument("--save", type=Path, default=Path("fuzz-failures"),
                        help="directory for failing inputs (default: fuzz-failures/)")
    parser.add_argument("--generators", default=None,
                        help="comma-separated subset of: text, tokens, mutants, programs")
    args = parser.parse_args(argv)

    # Fuzzed kernels are throwaway: keep them out of the user's cache (the disk cache
    # stays on, so that its code is fuzzed too).
    cache_dir = tempfile.TemporaryDirectory(prefix="optdsl-fuzz-cache-")
    os.environ["OPTDSL_CACHE_DIR"] = cache_dir.name
    import optdsl.api
    from optdsl import cache
    from tests.fuzz.check import check_input, problems
    from tests.fuzz.strategies import GENERATORS

    names = args.generators.split(",") if args.generators else list(GENERATORS)
    unknown = set(names) - set(GENERATORS)
    if unknown:
        parser.error(f"unknown generators {sorted(unknown)}; choose from {list(GENERATORS)}")
    first_seed = args.seed if args.seed is not None else int(time.time())
    args.save.mkdir(parents=True, exist_ok=True)
    in_flight = args.save / "in-flight.opt"
    tried = {name: 0 for name in names}
    outcomes = {name: Counter() for name in names}
    failures: dict[tuple, tuple[str, str, str]] = {}  # key -> (generator, text, traceback)

    def run_round(name: str, round_seed: int) -> None:
        @seed(round_seed)
        @settings(max_examples=ROUND, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(text=GENERATORS[name], problem=problems())
        def fuzz(text, problem):
            tried[name] += 1
            in_flight.write_text(text, encoding="utf-8", errors="surrogatepass")
            try:
                outcomes[name][check_input(text, problem)] += 1
            except Exception as exc:
                key = failure_key(exc)
                # Hypothesis shrinks a failure before it reports it: keep the shortest input
                # seen for each distinct failure.
                if key not in failures or len(text) < len(failures[key][1]):
                    failures[key] = (name, text, traceback.format_exc())
                raise

        try:
            fuzz()
        except Exception:  # recorded above; go on with the next round
            pass

    deadline = time.monotonic() + args.minutes * 60
    last_report = time.monotonic()
    round_index = 0
    print(f"fuzzing {', '.join(names)} for {args.minutes:g} min from seed {first_seed}; "
          f"failing inputs go to {args.save}/", flush=True)
    while time.monotonic() < deadline:
        for i, name in enumerate(names):
            if time.monotonic() >= deadline:
                break
            run_round(name, first_seed + round_index * len(names) + i)
        round_index += 1
        # Every compiled class and kernel source stays cached in memory otherwise.
        optdsl.api._CLASSES.clear()
        cache.clear_memory()
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            counts = ", ".join(f"{n} {tried[n]}" for n in names)
            print(f"  ... {counts}; {len(failures)} distinct failures", flush=True)

    in_flight.unlink(missing_ok=True)
    print(f"\ninputs tried per generator (seeds {first_seed}..."
          f"{first_seed + round_index * len(names) - 1}, {ROUND} per round):")
    for name in names:
        shown = ", ".join(f"{k}: {v}" for k, v in outcomes[name].most_common())
        print(f"  {name:9s} {tried[name]:7d}  ({shown})")
    print(f"  {'total':9s} {sum(tried.values()):7d}")
    if not failures:
        print("no failures")
        if not any(args.save.iterdir()):
            args.save.rmdir()
        return 0
    print(f"\n{len(failures)} distinct failures:")
    for k, (key, (name, text, tb)) in enumerate(sorted(failures.items()), start=1):
        stem = args.save / f"{name}-{k}"
        stem.with_suffix(".opt").write_text(text, encoding="utf-8", errors="surrogatepass")
        stem.with_suffix(".txt").write_text(tb)
        print(f"\n[{k}] {key[0]} at {key[1]} ({name}); saved as {stem}.opt")
        print(f"    input: {text[:400]!r}{' ...' if len(text) > 400 else ''}")
        print("    " + tb.strip().splitlines()[-1][:400])
    return 1


def failure_key(exc: BaseException) -> tuple[str, str, str]:
    """What tells failures apart: the exception type, where it was raised, and its message
    with numbers and quoted text left out."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "optdsl" in f.filename or "tests" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    head = str(exc).split("\n")[0]
    head = re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "_", head)[:80]
    return type(exc).__name__, where, head


if __name__ == "__main__":
    sys.exit(main())
