"""Bit-level reinterpretation for numba CPU kernels.

Numba has no scalar ``view``; these intrinsics lower to a single LLVM ``bitcast`` (or a half-precision
``fpext``/``fptrunc``), so loops that use them still vectorise.

>>> from numba import njit
>>> njit(lambda v: f64_as_i64(v))(1.0) == 0x3FF0000000000000
True
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


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


@intrinsic
def half_bits_to_f32(typingctx, bits):
    """IEEE binary16 bits (uint16) to float32: one ``vcvtph2ps`` on F16C hardware."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(types.uint16), codegen


@njit(cache=True)  # LLVM inlines it; numba-level inlining trips its SSA checks
def f64_to_half_bits(value):
    """float64 to IEEE binary16 bits, rounded once to nearest-even.

    Integer arithmetic only: LLVM has no inline double-to-half conversion on x86 (it would call a
    compiler-rt routine numba does not link), and rounding through float32 would round twice.
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
