"""Full-width vectors for klflow's CPU kernels, and for nothing else in the process.

LLVM vectorises with 256-bit registers on AVX-512 CPUs unless told otherwise (its tuning for
Intel's AVX-512 parts, from the days when 512-bit instructions lowered the clock). klflow's
kernels are compute-bound loops of float64 arithmetic, where 512-bit registers do twice the work
per instruction: a kernel that calls :func:`use_full_vector_width` first asks LLVM, through the
``"prefer-vector-width"="512"`` attribute of its own LLVM function, to use them. The attribute
is per function, so other numba code in the process keeps its defaults, and on CPUs without
AVX-512 it changes nothing. Bits do not depend on it: the elementwise results are the same IEEE
operations at any width, and the only sums it reorders are the bounded path's, whose error bound
holds for any order (:mod:`klflow.kernels.bounded_sum`).

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def total(values):
...     use_full_vector_width()
...     result = 0
...     for value in values:
...         result += value
...     return result
>>> int(total(np.arange(10)))
45
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic

__all__ = ["PREFERRED_WIDTH_ATTRIBUTE", "use_full_vector_width"]

PREFERRED_WIDTH_ATTRIBUTE = '"prefer-vector-width"="512"'


@intrinsic
def use_full_vector_width(typingctx):
    """Mark the compiled function that calls this (not the ones it calls) to vectorise with
    512-bit registers where the CPU has them; it emits no instruction."""

    def codegen(context, builder, signature, args):
        # llvmlite's attribute set accepts only the attributes it knows by name; the string
        # attribute is written out as given, which is what LLVM's IR parser reads.
        set.add(builder.function.attributes, PREFERRED_WIDTH_ATTRIBUTE)
        return context.get_dummy_value()

    return types.none(), codegen
