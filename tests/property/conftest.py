"""Keep the thousands of kernels these tests generate out of the on-disk kernel cache."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _no_disk_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTDSL_CACHE_DIR", "off")
        yield
