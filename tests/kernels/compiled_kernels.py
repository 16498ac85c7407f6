"""The CPU kernels compiled afresh for inspection, and arguments to run each kind once: shared by
the tests that read the kernels' LLVM IR and assembly (FMA contraction, vector width)."""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm
from numba import njit

from klflow.kernels import cpu, exact_sum

HOST_FEATURES = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


def kernel_arguments(kind: str, dtype=np.float64, upstream: np.ndarray | None = None) -> tuple:
    """Arguments for one run of a kernel of ``kind`` on 64 elements of ``dtype``; the gradient
    kernels take ``upstream`` (one value, ``np.ones(1)``, unless given)."""
    a = np.linspace(0.1, 2.0, 64).astype(dtype)
    upstream = np.ones(1) if upstream is None else upstream
    if kind == "bounded":
        return a, a, 0.5, a.copy(), exact_sum.new_state()
    if kind == "sum":
        return a, a, 0.5, a.copy(), exact_sum.new_state(), np.empty(cpu.BLOCK)
    if kind == "pointwise":
        return a, a, a.copy()
    if kind == "input-grad":
        return a, upstream, 0.5, a.copy()
    if kind == "target-grad":
        return a, a, upstream, 0.5, a.copy()
    raise ValueError(f"unknown kernel kind {kind!r}")


def compiled_afresh(make, flags: tuple, kind: str, dtype=np.float64, upstream: np.ndarray | None = None):
    """(the kernel ``make(*flags)`` compiled afresh and run once, its signature): a cached
    dispatcher cannot show its IR or assembly."""
    kernel = njit(nogil=True)(make(*flags))
    kernel(*kernel_arguments(kind, dtype, upstream))
    return kernel, kernel.signatures[0]
