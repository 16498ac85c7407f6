"""Bit-level reinterpretation for numba CPU kernels.

Numba has no scalar ``view``; these intrinsics lower to a single LLVM ``bitcast``, so loops that use
them still vectorise. The half-precision conversions are integer arithmetic only: LLVM's own
``half`` conversions need F16C, and without it (``NUMBA_CPU_NAME=generic``, ``x86-64-v2``) they
call compiler-rt routines (``__extendhfsf2``) that numba does not link.

>>> from numba import njit
>>> njit(lambda v: f64_as_i64(v))(1.0) == 0x3FF0000000000000
True
>>> float(half_bits_to_f32(np.uint16(0x3555)))  # 0.333 in binary16
0.333251953125
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from klflow.kernels.jit import inlinable


def _bitcast(from_type, to_type, to_llvm):
    def make(typingctx, value):
        if value != from_type:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], to_llvm)

        return to_type(from_type), codegen

    return intrinsic(make)


f64_as_i64 = _bitcast(types.float64, types.int64, ir.IntType(64))
i64_as_f64 = _bitcast(types.int64, types.float64, ir.DoubleType())
f32_as_i32 = _bitcast(types.float32, types.int32, ir.IntType(32))
i32_as_f32 = _bitcast(types.int32, types.float32, ir.FloatType())


_F32_QUIET_BIT = 0x00400000


@inlinable  # numba-level inlining trips numba's SSA checks here
def half_bits_to_f32(bits):
    """IEEE binary16 bits (uint16) to the float32 of the same value, with integer operations and
    selects only (so loops calling it vectorise on any x86-64). NaNs keep their sign and payload
    and come out quiet, as F16C's ``vcvtph2ps`` gives them.
    """
    half = np.int32(bits)
    sign = np.int32((half & 0x8000) << 16)
    exponent = np.int32((half >> 10) & 0x1F)
    mantissa = np.int32(half & 0x3FF)
    normal = np.int32(((exponent + 112) << 23) | (mantissa << 13))  # rebias 15 -> 127
    quiet = _F32_QUIET_BIT if mantissa != 0 else 0
    special = np.int32(0x7F800000 | (mantissa << 13) | quiet)  # inf, or NaN made quiet
    magnitude = i32_as_f32(special if exponent == 31 else normal)
    # Zeros and subnormals are mantissa * 2**-24: an exact conversion and an exact product.
    tiny = np.float32(mantissa) * np.float32(2.0**-24)
    magnitude = tiny if exponent == 0 else magnitude
    return i32_as_f32(np.int32(f32_as_i32(magnitude) | sign))


@inlinable  # numba-level inlining trips numba's SSA checks here
def f64_to_half_bits(value):
    """float64 to IEEE binary16 bits, rounded once to nearest-even.

    Integer arithmetic only: LLVM has no inline double-to-half conversion on x86 (it would call a
    compiler-rt routine numba does not link), and rounding through float32 would round twice.

    >>> f64_to_half_bits(1.0 + 2.0**-11) == 0x3C00  # a tie: to even
    True
    """
    bits = f64_as_i64(value)
    sign = np.uint16((bits >> 48) & 0x8000)
    magnitude = bits & 0x7FFFFFFFFFFFFFFF
    if magnitude >= 0x7FF0000000000000:  # inf stays inf, NaN stays a quiet NaN
        return sign | (np.uint16(0x7E00) if magnitude > 0x7FF0000000000000 else np.uint16(0x7C00))
    exponent = (magnitude >> 52) - 1023
    significand = (magnitude & 0xFFFFFFFFFFFFF) | 0x10000000000000  # 53 bits with the implicit one
    if exponent >= 16:
        return sign | np.uint16(0x7C00)
    # Normal halves keep 11 significant bits; subnormal ones keep bits down to 2**-24.
    dropped = 42 if exponent >= -14 else 42 + (-14 - exponent)
    if dropped > 54:
        return sign
    kept = significand >> dropped
    remainder = significand & ((np.int64(1) << dropped) - 1)
    halfway = np.int64(1) << (dropped - 1)
    kept += (remainder > halfway) | ((remainder == halfway) & ((kept & 1) == 1))
    # A carry out of the significand moves into the exponent field, up to inf, as IEEE wants.
    biased = ((exponent + 14) << 10) + kept if exponent >= -14 else kept
    return sign | np.uint16(min(biased, 0x7C00))
