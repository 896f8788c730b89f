"""Keep the thousands of kernels these tests generate out of the on-disk kernel cache, and
run the backend-parametrized tests once per backend (numba's only where it is installed)."""

import pytest

from optdsl.backend import get as get_backend

BACKENDS = ("numpy", "numba")


@pytest.fixture(autouse=True, scope="module")
def _no_disk_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTDSL_CACHE_DIR", "off")
        yield


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn (module-independent: tests define their @given inside)."""
    if request.param == "numba":
        pytest.importorskip("numba", reason="the numba backend needs numba "
                                            "(pip install 'optdsl[numba]')")
    return get_backend(request.param)
