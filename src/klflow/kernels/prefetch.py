"""Software prefetch of the block a kernel reads next, for code with narrow (SSE/AVX2) vectors.

The bounded kernel (:func:`klflow.kernels.cpu.bounded_kernel`) works through its inputs a block
at a time. Code built for AVX-512 reads 64 bytes of each input per loop iteration and the CPU's
own prefetchers keep up; code built for AVX2 (``NUMBA_CPU_NAME=haswell``, or an AVX2-only CPU)
reads 16, and, measured on an AVX-512 Xeon running AVX2 code, its bounded ``sum`` loop took
2.2 to 2.7 ns per element on arrays beyond the caches against 1.2 on a cache-resident block.
Asking for the next block while computing on this one brought it to 1.7 to 1.8; for the AVX-512
build the same prefetches cost 3 to 5 %. So :func:`prefetch_span` emits ``llvm.prefetch`` only
where the code being compiled has no 512-bit vectors. Prefetches never change a result: they
load nothing into registers and never fault.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def first_after_prefetch(values):
...     prefetch_span(values, 0, values.size)
...     return values[0]
>>> float(first_after_prefetch(np.arange(100.0)))
0.0
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from klflow.kernels.jit import inlinable

__all__ = ["CACHE_LINE_BYTES", "prefetch_span", "prefetch_wanted"]

CACHE_LINE_BYTES = 64
# CPU names whose code has 512-bit vectors (LLVM's names; with NUMBA_CPU_FEATURES empty the name
# alone decides the instructions).
_AVX512_CPU_NAMES = frozenset(
    {
        "x86-64-v4",
        "knl",
        "knm",
        "skylake-avx512",
        "skx",
        "cascadelake",
        "cooperlake",
        "cannonlake",
        "icelake-client",
        "icelake-server",
        "rocketlake",
        "tigerlake",
        "sapphirerapids",
        "emeraldrapids",
        "graniterapids",
        "graniterapids-d",
        "diamondrapids",
        "znver4",
        "znver5",
    }
)


def prefetch_wanted(cpu_name: str, features: str) -> bool:
    """Whether code for this LLVM CPU name and feature string gets the prefetches: only where it
    has no AVX-512 (an explicit ``+avx512f`` decides; with no features given, the name does).

    >>> prefetch_wanted("haswell", ""), prefetch_wanted("znver4", "")
    (True, False)
    >>> prefetch_wanted("rocketlake", "+avx2,-avx512f"), prefetch_wanted("generic", "+avx512f")
    (True, False)
    """
    flags = {flag.strip() for flag in features.split(",") if flag.strip()}
    if "+avx512f" in flags:
        return False
    if "-avx512f" in flags:
        return True
    return cpu_name not in _AVX512_CPU_NAMES


def _compiling_for(context) -> tuple[str, str]:
    """(CPU name, feature string) of the code being compiled; unknown parts as empty strings."""
    codegen = context.codegen()
    try:
        name = codegen._get_host_cpu_name()  # numba's private API: the name it gave LLVM
    except Exception:  # noqa: BLE001 - another numba: fall back to prefetching
        name = ""
    return name, getattr(codegen, "_tm_features", "") or ""


@intrinsic
def _prefetch_for_reading(typingctx, array, index):
    """Ask for the cache line holding ``array[index]`` (index within or just past the data)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        if prefetch_wanted(*_compiling_for(context)):
            array_type = signature.args[0]
            data = context.make_array(array_type)(context, builder, args[0])
            pointer = cgutils.get_item_pointer(
                context, builder, array_type, data, [args[1]], wraparound=False, boundscheck=False
            )
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            prefetch_type = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
            prefetch = cgutils.get_or_insert_function(builder.module, prefetch_type, "llvm.prefetch.p0")
            # read (0), keep in every cache level (3), data cache (1)
            address = builder.bitcast(pointer, byte_pointer)
            builder.call(prefetch, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@inlinable
def prefetch_span(array, start, stop):
    """Prefetch ``array[start:stop]`` (a 1-D contiguous array), one request per cache line."""
    step = max(1, CACHE_LINE_BYTES // array.itemsize)
    for index in range(start, stop, step):
        _prefetch_for_reading(array, index)
