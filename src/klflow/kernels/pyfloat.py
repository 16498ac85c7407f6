"""The kernels' target-specific float64 primitives in plain Python, exact to the bit.

numba's CUDA simulator runs device functions as ordinary Python. The kernels' shared source
(:mod:`klflow.kernels.fastmath`, :mod:`klflow.kernels.exact_sum`) uses a few primitives that each
target supplies: a multiply-add rounded once, an IEEE division and the int64 bit casts. These are
their Python versions, so that simulated kernels produce exactly the bits a GPU (or the CPU)
produces and the simulator tests compare bits, not approximations.

``fma`` is exact: the product and the sum are formed in integer arithmetic and rounded once to
nearest-even, with IEEE 754's special cases (signed zeros, overflow, infinities, NaN).

>>> fma(0.1, 10.0, -1.0)  # 0.1 * 10 is not exactly 1: the fused result keeps the difference
5.551115123125783e-17
>>> 0.1 * 10.0 - 1.0
0.0
>>> i64_as_f64(f64_as_i64(-2.5) + (1 << 64))  # bit patterns wrap like int64
-2.5
"""

from __future__ import annotations

import functools
import math
import struct
from types import SimpleNamespace

_LOWEST_EXPONENT = -1074  # weight of the last bit of a subnormal
_SIGNIFICAND_BITS = 53


def f64_as_i64(value: float) -> int:
    """The bits of a float64 as a signed 64-bit integer."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


def i64_as_f64(bits: int) -> float:
    """The float64 with these bits; any integer is taken modulo 2**64, as int64 arithmetic wraps."""
    wrapped = (int(bits) + (1 << 63)) % (1 << 64) - (1 << 63)
    return struct.unpack("<d", struct.pack("<q", wrapped))[0]


def divide(numerator: float, denominator: float) -> float:
    """IEEE ``numerator / denominator`` (Python raises on a zero divisor and on overflow)."""
    numerator, denominator = float(numerator), float(denominator)
    if denominator == 0.0:
        if numerator == 0.0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)
    try:
        return numerator / denominator
    except OverflowError:
        return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)


def add(a: float, b: float) -> float:
    """IEEE ``a + b`` rounded to nearest-even (Python's own float addition)."""
    return float(a) + float(b)


def _scaled_integer(value: float) -> tuple[int, int]:
    """(m, e) with value == m * 2**e exactly, for a finite double."""
    numerator, denominator = value.as_integer_ratio()  # the denominator is a power of two
    return numerator, 1 - denominator.bit_length()


def _round_scaled(total: int, exponent: int) -> float:
    """``total * 2**exponent`` (total a nonzero integer) rounded once to the nearest double."""
    magnitude = abs(total)
    leading = exponent + magnitude.bit_length() - 1  # the value lies in [2**leading, 2**(leading+1))
    quantum = max(leading - (_SIGNIFICAND_BITS - 1), _LOWEST_EXPONENT)  # weight of the last kept bit
    if quantum > exponent:
        dropped = quantum - exponent
        kept = magnitude >> dropped
        remainder = magnitude - (kept << dropped)
        halfway = 1 << (dropped - 1)
        if remainder > halfway or (remainder == halfway and kept & 1):
            kept += 1
    else:
        kept = magnitude << (exponent - quantum)  # exact: fewer than 54 bits
    try:
        result = math.ldexp(float(kept), quantum)  # kept <= 2**53 converts exactly
    except OverflowError:  # rounded beyond the largest double: inf, as round-to-nearest gives
        result = math.inf
    return -result if total < 0 else result


def fma(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once (IEEE 754 fusedMultiplyAdd, round to nearest-even)."""
    a, b, c = float(a), float(b), float(c)
    if not (math.isfinite(a) and math.isfinite(b)):
        return a * b + c  # an infinite or NaN factor: the unfused expression has the same value
    if not math.isfinite(c):
        return c  # a finite product cannot change an infinite or NaN addend
    if a == 0.0 or b == 0.0:
        if c != 0.0:
            return c
        # Both are zeros: -0 only when the exact product and c are both -0.
        product_negative = math.copysign(1.0, a) != math.copysign(1.0, b)
        return -0.0 if product_negative and math.copysign(1.0, c) < 0 else 0.0
    mantissa_a, exponent_a = _scaled_integer(a)
    mantissa_b, exponent_b = _scaled_integer(b)
    product, product_exponent = mantissa_a * mantissa_b, exponent_a + exponent_b
    if c == 0.0:
        return _round_scaled(product, product_exponent)
    mantissa_c, exponent_c = _scaled_integer(c)
    exponent = min(product_exponent, exponent_c)
    total = (product << (product_exponent - exponent)) + (mantissa_c << (exponent_c - exponent))
    if total == 0:
        return 0.0  # an exact cancellation is +0 when rounding to nearest
    return _round_scaled(total, exponent)


@functools.cache
def compiled_fastmath() -> SimpleNamespace:
    """:mod:`klflow.kernels.fastmath`'s float64 functions running as Python on these primitives,
    as numba's CUDA simulator runs them.

    >>> compiled_fastmath().log64(1.0), compiled_fastmath().exp64(0.0)
    (0.0, 1.0)
    """
    from klflow.kernels import fastmath

    return fastmath.compiled_for(
        lambda function: function, mul_add=fma, divide=divide, f64_as_i64=f64_as_i64, i64_as_f64=i64_as_f64
    )
