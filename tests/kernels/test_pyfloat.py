"""The pure-Python primitives of ``klflow.kernels.pyfloat`` against exact rational arithmetic.

``fma`` must be IEEE 754's fusedMultiplyAdd: the exact ``a * b + c`` (a ``Fraction``) rounded once to
nearest-even, with IEEE's signed zeros, gradual underflow, overflow and special values. The
reference rounds with CPython's ``int / int`` division, which is correctly rounded and independent
of the integer rounding in ``pyfloat``.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from klflow.kernels import pyfloat

LARGEST = np.finfo(np.float64).max
SMALLEST = 5e-324


def reference_fma(a: float, b: float, c: float) -> float:
    """IEEE fusedMultiplyAdd by rational arithmetic, special cases written out from the standard."""
    if math.isnan(a) or math.isnan(b) or math.isnan(c):
        return math.nan
    if math.isinf(a) or math.isinf(b):
        if a == 0 or b == 0:
            return math.nan  # inf * 0
        product = math.copysign(math.inf, a) * math.copysign(1.0, b)
        return math.nan if math.isinf(c) and c != product else product
    if math.isinf(c):
        return c
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        product_negative = math.copysign(1.0, a) * math.copysign(1.0, b) < 0
        exactly_zero_terms = (a == 0 or b == 0) and c == 0
        # x + y of zeros is -0 only for two negative zeros; an exact cancellation is +0.
        return -0.0 if exactly_zero_terms and product_negative and math.copysign(1.0, c) < 0 else 0.0
    try:
        rounded = exact.numerator / exact.denominator  # correctly rounded by CPython
    except OverflowError:
        return math.inf if exact > 0 else -math.inf
    return rounded if rounded != 0 else math.copysign(0.0, exact)  # underflow keeps the sign


def same_bits(got: float, want: float) -> bool:
    return (math.isnan(got) and math.isnan(want)) or struct.pack("<d", got) == struct.pack("<d", want)


def from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits % (1 << 64)))[0]


any_double = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
finite_double = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@settings(max_examples=3000, deadline=None)
@given(any_double, any_double, any_double)
@example(0.1, 10.0, -1.0)  # the fused product keeps what the rounded one loses
@example(1e308, 10.0, -math.inf)  # a finite product beyond the range does not make inf - inf
@example(1e308, 10.0, -1e308)  # nor overflow on the way
@example(-0.0, 5.0, -0.0)
@example(0.0, -5.0, -0.0)
@example(-0.0, 5.0, 0.0)
@example(math.inf, 0.0, 1.0)
@example(math.inf, 2.0, -math.inf)
@example(SMALLEST, 0.5, 0.0)  # half the smallest subnormal: a tie, to even (+0)
@example(-SMALLEST, 0.5, 0.0)  # and to -0 on the negative side
@example(SMALLEST, 0.75, 0.0)  # rounds up to the smallest subnormal
@example(LARGEST, 1.0 + 2.0**-52, 0.0)  # beyond the threshold: inf
@example(1.0 + 2.0**-52, 1.0 - 2.0**-53, -1.0)
def test_fma_is_the_exact_sum_rounded_once(a, b, c):
    assert same_bits(pyfloat.fma(a, b, c), reference_fma(a, b, c)), (a, b, c)


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(1, 2**27 - 1),
    st.integers(1, 2**27 - 1),
    st.integers(-(2**30), 2**30),
    st.integers(-1100, 1000),
    st.sampled_from([1, -1]),
)
def test_fma_at_and_near_rounding_ties(m1, m2, k, exponent, sign):
    # A product of two 27-bit integers has up to 54 bits: with its last bit set it is exactly
    # halfway between two doubles, and adding a small multiple of its last place moves it off
    # the tie by a known amount. Scaled across the exponent range, into the subnormals too.
    a = math.ldexp(sign * m1, exponent // 2)
    b = math.ldexp(m2, exponent - exponent // 2)
    c = math.ldexp(k, exponent + 54 - 60) if k else 0.0
    if not all(math.isfinite(v) for v in (a, b, c)):
        return
    assert same_bits(pyfloat.fma(a, b, c), reference_fma(a, b, c)), (a, b, c)


@settings(max_examples=2000, deadline=None)
@given(finite_double, finite_double, st.integers(-8, 8))
def test_fma_under_cancellation(a, b, offset_ulps):
    # c within a few ulps of -a*b: the result is the product's rounding error, often subnormal.
    product = a * b
    if not math.isfinite(product):
        return
    c = -product
    for _ in range(abs(offset_ulps)):
        c = math.nextafter(c, math.copysign(math.inf, offset_ulps))
    assert same_bits(pyfloat.fma(a, b, c), reference_fma(a, b, c)), (a, b, c)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_bit_casts_round_trip_and_wrap_like_int64(bits):
    value = from_bits(bits)
    signed = bits - (1 << 64) if bits >= 1 << 63 else bits
    assert pyfloat.f64_as_i64(value) == signed or math.isnan(value)  # NaN payloads may be quieted
    assert same_bits(pyfloat.i64_as_f64(signed), value)
    assert same_bits(pyfloat.i64_as_f64(signed + 5 * (1 << 64)), value)  # taken modulo 2**64


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        (1.0, 0.0, math.inf),
        (-1.0, 0.0, -math.inf),
        (1.0, -0.0, -math.inf),
        (0.0, 0.0, math.nan),
        (math.nan, 0.0, math.nan),
        (1e308, 1e-308, math.inf),
        (1.0, 3.0, 1.0 / 3.0),
    ],
)
def test_divide_follows_ieee_where_python_raises(numerator, denominator, expected):
    assert same_bits(pyfloat.divide(numerator, denominator), expected)


def test_add_is_float_addition_even_for_numpy_scalars():
    assert pyfloat.add(np.float32(0.1), np.float64(0.2)) == float(np.float32(0.1)) + 0.2
    assert pyfloat.add(1e308, 1e308) == math.inf
