"""Kernels: the loss's math on flat arrays (CPU ``@njit`` and CUDA ``@cuda.jit``), no validation.

:mod:`formula` holds the scalar formulas both targets compile; :mod:`fastmath` the vectorisable
``log``/``exp``, whose float64 source CUDA compiles too; :mod:`pyfloat` exact Python versions of
their primitives (for numba's CUDA simulator); :mod:`exact_sum` the exact accumulator behind
every reduction; :mod:`bounded_sum` the proven error bound that lets float32/float16 results
skip it where it cannot change them; :mod:`cpu` and :mod:`cuda` the kernels and their launchers
(the same bits on both).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _drop_stale_compiled_kernels() -> None:
    """Empty numba's on-disk cache here when any kernel source changed.

    numba checks only the file that defines a cached function, but the kernels inline helpers
    from their sibling modules (``fastmath``, ``exact_sum``, ``formula``): after an edit of one of
    those, a cached kernel would keep running the old code. A fingerprint of every source here
    decides; a read-only install (whose files change only together) is left alone.
    """
    folder = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(folder.glob("*.py")):
        stat = source.stat()
        digest.update(f"{source.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    fingerprint = digest.hexdigest()
    cache = folder / "__pycache__"
    stamp = cache / "klflow-kernels.fingerprint"
    try:
        if stamp.read_text() == fingerprint:
            return
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for compiled in cache.glob("*.nb[ic]"):
            compiled.unlink(missing_ok=True)
        stamp.write_text(fingerprint)
    except OSError:
        return  # not writable: numba keeps its cache elsewhere, and nothing here can go stale


_drop_stale_compiled_kernels()
