"""The random-number kernel for CUDA: :mod:`klflow.kernels.philox`'s functions compiled with
``cuda.jit`` from the same source, with the same fused multiply-add and ``log`` as the loss's
CUDA kernels, so a CUDA component holds the CPU's bits.

>>> import klflow as flow  # a GPU (or numba's simulator) needed: doctest: +SKIP
>>> _ = flow.manual_seed(0); on_gpu = flow.rand(3, device="cuda").numpy()
>>> _ = flow.manual_seed(0); bool((flow.rand(3).numpy() == on_gpu).all())
True
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba import cuda

from klflow.kernels import cuda as kernels
from klflow.kernels import philox

if kernels.SIMULATED:
    from klflow.kernels import pyfloat

    _mul_add = pyfloat.fma
else:

    @cuda.jit(device=True)
    def _mul_add(a, b, c):
        return cuda.fma(a, b, c)  # fma.rn.f64: rounded once, as llvm.fma on the CPU


_shared = philox.compiled_for(
    functools.partial(cuda.jit, device=True), mul_add=_mul_add, log64_normal=kernels.log64_normal
)
_logical_index = _shared.logical_index
_random_element = _shared.random_element


@cuda.jit
def random_kernel(out, starts, extents, strides, key0, key1, offset0, offset1, normal, bits, scale):
    for flat in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        index = _logical_index(flat, starts, extents, strides)
        out[flat] = _random_element(index, key0, key1, offset0, offset1, normal, bits, scale)


def fill(
    out: Any,
    starts: np.ndarray,
    extents: np.ndarray,
    strides: np.ndarray,
    seed: int,
    offset: int,
    normal: bool,
    bits: int,
) -> None:
    """Fill the 1-D device array ``out`` (float32 or float64) as
    :func:`klflow.kernels.philox.fill_kernel` fills a host array."""
    if out.size == 0:
        return
    blocks, threads = kernels.launch_config(out.size)
    random_kernel[blocks, threads](
        out,
        cuda.to_device(np.ascontiguousarray(starts, dtype=np.int64)),
        cuda.to_device(np.ascontiguousarray(extents, dtype=np.int64)),
        cuda.to_device(np.ascontiguousarray(strides, dtype=np.int64)),
        seed & 0xFFFFFFFF,
        seed >> 32,
        offset & 0xFFFFFFFF,
        offset >> 32,
        bool(normal),
        int(bits),
        2.0 ** -int(bits),
    )
