"""The fuzzed compiler (issue 6): for any text, ``optdsl.compile`` gives a class that runs
and agrees with the reference interpreter, or a located ``OptdslError``; nothing else, never
a hang, never user text in generated code. The property is ``tests/fuzz/check.py``'s; the
generators are ``tests/fuzz/strategies.py``'s, which ``scripts/fuzz.py`` runs for longer.

CI runs a fixed budget: ``derandomize=True``, so every run draws the same inputs, sized to
take about a minute on two cores.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from optdsl import cache
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.errors import ParseError, SourceFile, Span
from optdsl.parse_errors import error
from tests.fuzz.check import Hang, check_input, check_rejection, problems, time_limit
from tests.fuzz.strategies import GENERATORS, STDLIB

# Examples per generator. Mutants of the stdlib and generated programs reach the checker,
# the kernels and the interpreter, so they get most of the budget.
EXAMPLES = {"text": 1000, "tokens": 500, "mutants": 2000, "programs": 1000}
# What each generator must reach within its budget, so that a generator that drifted (say,
# mutants that no longer parse) fails here instead of fuzzing nothing.
REACHES = {"text": {"rejected (parse)"}, "tokens": {"rejected (parse)"},
           "mutants": {"rejected (parse)", "rejected (check)", "ran"},
           "programs": {"rejected (check)", "ran"}}
NUMPY = get_backend("numpy")


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_compile_runs_and_agrees_or_raises_a_located_error(generator):
    outcomes: Counter[str] = Counter()

    # No hypothesis deadline: check_input's time_limit bounds every input, and unlike a
    # deadline it interrupts a hang instead of timing it afterwards.
    @settings(derandomize=True, max_examples=EXAMPLES[generator], deadline=None,
              database=None, suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large,
                                                    HealthCheck.filter_too_much])
    @given(text=GENERATORS[generator], problem=problems())
    def check(text, problem):
        outcomes[check_input(text, problem)] += 1

    check()
    assert sum(outcomes.values()) >= EXAMPLES[generator] * 0.9, outcomes
    assert REACHES[generator] <= set(outcomes), outcomes


# Every stdlib file runs, but OneCycleLR: its total_steps (or epochs and steps_per_epoch)
# defaults to 0, which its first require line refuses.
REFUSED = {"schedules/onecyclelr.opt": "compiled (stopped: HyperError)"}


@pytest.mark.parametrize("name", sorted(STDLIB))
def test_stdlib_files_compile_run_and_agree(name):
    assert check_input(STDLIB[name]) == REFUSED.get(name, "ran")


# --- the checks would catch what they are for -------------------------------------------

def test_an_error_outside_the_text_fails_the_check():
    text = "optimizer A\nupdate:\n    p = g\n"
    source = SourceFile("<string>", text)
    check_rejection(error(source, Span(3, 9, 3, 10), "fine"), text)
    for span in (Span(5, 1, 5, 2), Span(3, 11, 3, 12), Span(0, 1, 0, 2)):
        with pytest.raises(AssertionError, match="outside"):
            check_rejection(error(source, span, "somewhere else"), text)
    with pytest.raises(AssertionError, match="internals"):
        check_rejection(error(source, Span(1, 1, 1, 2), "expected _NL or Token(NAME)"), text)
    with pytest.raises(AssertionError, match="without a location"):
        from optdsl.errors import HyperError

        check_rejection(HyperError("bad"), text)
    assert isinstance(error(source, Span(1, 1, 1, 2), "x"), ParseError)


def test_a_hang_is_interrupted():
    start = time.perf_counter()
    with pytest.raises(Hang), time_limit(0.2):
        while True:
            pass
    assert time.perf_counter() - start < 2


def test_a_stale_kernel_from_the_cache_would_be_caught(fuzz_cache_dir):
    """The kernel cache is keyed by a hash of the text, so one spec cannot get another's
    kernel; if it did, the comparison with the interpreter would fail. Here a cache file
    for spec B holds spec A's kernel under B's key, with a valid header."""
    a = "optimizer PoisonA\nupdate:\n    p = p - 0.25 * g\n"
    b = "optimizer PoisonB\nupdate:\n    p = p - 0.5 * g\n"
    spec_a, spec_b = load_spec(a), load_spec(b)
    path = spec_a.paths()[0]
    body = spec_a.kernel(NUMPY, path).source
    key_b = cache.key(spec_b.spec_hash, NUMPY.name, repr(path))
    assert key_b != cache.key(spec_a.spec_hash, NUMPY.name, repr(path))
    poisoned = fuzz_cache_dir / f"{key_b}.py"
    cache.write_atomically(poisoned, cache._header(key_b, body) + "\n" + body)
    cache.clear_memory()
    try:
        with pytest.raises(AssertionError, match="p: .* elements differ"):
            check_input(b)
    finally:
        poisoned.unlink()
        cache.clear_memory()


def test_the_disk_cache_is_keyed_by_the_text(fuzz_cache_dir):
    """Two texts one character apart: two cache files, each read back as its own."""
    a = "optimizer Keyed\nupdate:\n    p = p - 0.25 * g\n"
    b = a.replace("0.25", "0.75")
    before = set(fuzz_cache_dir.glob("*.py"))
    sources = {}
    for text in (a, b):
        spec = load_spec(text)
        sources[text] = spec.kernel(NUMPY, spec.paths()[0]).source
    assert sources[a] != sources[b]
    assert len(set(fuzz_cache_dir.glob("*.py")) - before) == 2
    cache.clear_memory()  # the next reads come from disk
    for text in (b, a):
        spec = load_spec(text)
        assert spec.kernel(NUMPY, spec.paths()[0]).source == sources[text]
        assert check_input(text) == "ran"
