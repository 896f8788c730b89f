"""Thousands of fuzzed specs compile here: their kernels go to a throwaway cache directory,
not the user's (the disk cache stays on, so that its path is fuzzed too)."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def fuzz_cache_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("optdsl-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTDSL_CACHE_DIR", str(directory))
        yield directory
