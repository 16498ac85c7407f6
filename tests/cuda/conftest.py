"""CUDA tests: under numba's simulator (NUMBA_ENABLE_CUDASIM=1, as scripts/test runs them) they use
tiny sizes and 8-thread blocks so multi-block, grid-stride and tail paths run; on a real GPU the
same tests run at full size with the device's own launch sizes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import klflow as flow

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if flow.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (run with NUMBA_ENABLE_CUDASIM=1 for the simulator)")
    for item in items:
        if _HERE in Path(item.path).resolve().parents:  # only this folder's tests
            item.add_marker(skip)


@pytest.fixture(scope="session")
def simulated() -> bool:
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


@pytest.fixture(autouse=True)
def small_blocks_in_simulator(simulated):
    from klflow.kernels import cuda as kernels

    kernels.set_block_size(8 if simulated else None)
    with warnings.catch_warnings():
        # The simulator evaluates log/exp with NumPy, which warns where the GPU silently
        # returns -inf/NaN/inf; those values are what the tests check.
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
    kernels.set_block_size(None)


@pytest.fixture
def sizes(simulated):
    """Element counts: below one block, a ragged multi-block tail, and past one grid-stride."""
    return [1, 7, 61, 203] if simulated else [1, 7, 1000, (1 << 22) + 3]
