"""Vectorisable ``log`` and ``exp``: one source for the CPU kernels and the CUDA kernels.

Numba lowers ``math.log``/``math.exp`` to scalar libm calls, and a loop containing a call cannot be
vectorised. The functions here use only bit manipulation, polynomials and selects, so LLVM
auto-vectorises loops that call them. They are accurate to within one ulp over the whole domain and
return the IEEE results for zeros, infinities, NaN and subnormals.

``log64``/``exp64`` take and return float64; ``log32``/``exp32`` do the same in float32 arithmetic,
which fits twice as many lanes in a vector register.

The float64 functions are the GPU's too. :func:`compiled_for` compiles their Python source again
with another target's primitives, the only target-specific operations in it: ``_mul_add`` (a
multiply-add rounded once: ``llvm.fma`` here, ``fma.rn.f64`` on CUDA, exact integer arithmetic in
:mod:`klflow.kernels.pyfloat` under numba's simulator), ``_divide`` (IEEE division) and the bit
casts ``f64_as_i64``/``i64_as_f64``. Every other operation is a single IEEE operation on every
target, so a CUDA kernel gets the CPU's bits. That needs one rule of the source: a product whose
rounding matters never feeds an addition directly, because NVVM fuses a plain ``a * b + c`` into
one FMA by default (numba's CPU target never does). Each such step is written as ``_mul_add``;
the remaining products feed only multiplications, divisions or the addend of a ``_mul_add``,
which no compiler can fuse.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def log_all(values):
...     out = np.empty_like(values)
...     for i in range(values.size):
...         out[i] = log64(values[i])
...     return out
>>> log_all(np.array([1.0, np.e, 0.0])).tolist()
[0.0, 1.0, -inf]
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType, SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from klflow.kernels.bits import f32_as_i32, f64_as_i64, i32_as_f32, i64_as_f64
from klflow.kernels.jit import inlinable, jit

__all__ = ["compiled_for", "exp32", "exp64", "log32", "log64", "log64_normal", "log64_positive"]


_FLOAT_TYPES = {types.float32: ir.FloatType(), types.float64: ir.DoubleType()}


@intrinsic
def _mul_add(typingctx, a, b, c):
    """``a * b + c`` rounded once, as ``llvm.fma``: one FMA instruction where the CPU has it, the
    C library's exact ``fma`` where it does not, and ``cuda.fma`` on the GPU, so that every
    target computes the same bits (``llvm.fmuladd`` would fuse or not by CPU).

    Numba never contracts ``a * b + c`` by itself (that needs ``fastmath``, which would also
    break the special-value handling): the fused steps are exactly the ones written so.
    """
    if a not in _FLOAT_TYPES or not a == b == c:
        return None
    llvm_type = _FLOAT_TYPES[a]

    def codegen(context, builder, signature, args):
        signature_type = ir.FunctionType(llvm_type, [llvm_type] * 3)
        fma = builder.module.declare_intrinsic("llvm.fma", [llvm_type], signature_type)
        return builder.call(fma, args)

    return a(a, a, a), codegen


@intrinsic
def _divide(typingctx, numerator, denominator):
    """IEEE ``numerator / denominator`` with no zero check.

    Numba's ``/`` under its default error model tests for a zero divisor and raises, and that
    branch alone stops the loop vectorising.
    """
    if numerator not in _FLOAT_TYPES or numerator != denominator:
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1])

    return numerator(numerator, numerator), codegen


# --- shared float64 constants -------------------------------------------------------------------

_EXPONENT_BIAS = 1023
_MANTISSA_BITS = 52
_MANTISSA_MASK = 0x000FFFFFFFFFFFFF
_POSITIVE_INF_BITS = 0x7FF0000000000000
_SMALLEST_NORMAL_BITS = 0x0010000000000000
_INF = np.inf
_NAN = np.nan

# ln 2 split so that k * _LN2_HI is exact for |k| < 2**21 (the low 21 bits of _LN2_HI are zero).
_LN2_HI = 6.93147180369123816490e-01  # 0x3FE62E42FEE00000
_LN2_LO = 1.90821492927058770002e-10  # 0x3DEA39EF35793C76

# --- log64 ---------------------------------------------------------------------------------------

_TWO_54 = 18014398509481984.0  # lifts subnormals into the normal range
_SUBNORMAL_EXPONENT_OFFSET = 54.0
# Bits of a number just below sqrt(1/2): the reduced argument lies in [sqrt(1/2), sqrt(2)).
_SQRT_HALF_BITS = 0x3FE6A09E00000000
_ONE_BITS = 0x3FF0000000000000

# Minimax coefficients of (log(1+f) - 2s) / s ~ Lg1*s**2 + ... + Lg7*s**14 with s = f / (2 + f),
# from fdlibm's e_log.c; |error| < 2**-58.45 on the reduced range.
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@inlinable
def _log_reduced(x: float, exponent_offset: float) -> float:
    """log(x) - exponent_offset * ln 2 for a positive normal double x (no special values)."""
    # x = 2**k * m with m in [sqrt(1/2), sqrt(2)): offsetting the bits makes the exponent field
    # carry over exactly where m crosses sqrt(1/2).
    shifted = f64_as_i64(x) + (_ONE_BITS - _SQRT_HALF_BITS)
    dk = float((shifted >> _MANTISSA_BITS) - _EXPONENT_BIAS) - exponent_offset
    m = i64_as_f64((shifted & _MANTISSA_MASK) + _SQRT_HALF_BITS)

    # log(1+f) = f - f*f/2 + s*(f*f/2 + R(s*s)) with s = f/(2+f), |s| < 0.1716.
    f = m - 1.0  # exact (Sterbenz)
    half_f = 0.5 * f
    half_f_squared = half_f * f
    s = _divide(f, 2.0 + f)
    z = s * s
    # Plain Horner: the loop is throughput-bound, so fewer operations beat a shorter chain.
    p = _mul_add(z, _LG7, _LG6)
    p = _mul_add(z, p, _LG5)
    p = _mul_add(z, p, _LG4)
    p = _mul_add(z, p, _LG3)
    p = _mul_add(z, p, _LG2)
    p = _mul_add(z, p, _LG1)
    small_terms = _mul_add(s, _mul_add(z, p, half_f_squared), dk * _LN2_LO)
    # Summed from the smallest terms up. Fused, small_terms - f*f/2 rounds once with the square
    # exact, which lowers the largest error from 0.86 to 0.76 ulp at no cost; dk * _LN2_HI is
    # exact, so fusing the last step changes nothing.
    correction = _mul_add(-half_f, f, small_terms)
    return _mul_add(dk, _LN2_HI, f + correction)


@jit(inline="always")
def log64_normal(x: float) -> float:
    """``log64`` for a positive, finite, normal double, such as any float32 or float16 above zero
    widened to float64; other inputs give an unspecified finite value.

    It skips the subnormal scaling and special-value selects, which are a third of ``log64``'s
    work, for callers that mask or rule those inputs out themselves. Same accuracy as ``log64``.
    """
    return _log_reduced(x, 0.0)


@jit(inline="always")
def log64_positive(x: float) -> float:
    """``log64`` for a positive, finite double, subnormals included; other inputs give an
    unspecified finite value. Same accuracy as ``log64``."""
    # Subnormals (and, harmlessly, zeros and negatives) are scaled by 2**54 to become normal.
    is_small = f64_as_i64(x) < _SMALLEST_NORMAL_BITS
    scaled = x * _TWO_54 if is_small else x
    offset = _SUBNORMAL_EXPONENT_OFFSET if is_small else 0.0
    return _log_reduced(scaled, offset)


@jit(inline="always")
def log64(x: float) -> float:
    """Natural logarithm of a float64; branch-free so that loops calling it vectorise.

    Largest error measured (3.6e8 random inputs): 0.760 ulp.
    """
    bits = f64_as_i64(x)
    result = log64_positive(x)
    result = x + x if bits >= _POSITIVE_INF_BITS else result  # +inf and NaN pass through
    result = _NAN if bits < 0 else result  # negative numbers, -inf, NaN with the sign bit set
    return -_INF if x == 0.0 else result  # both signed zeros


# --- exp64 ---------------------------------------------------------------------------------------

_INV_LN2 = 1.4426950408889634
# Adding 1.5 * 2**52 rounds to an integer that then sits in the low mantissa bits. The extra
# 2 * bias leaves k + 2046 there, which is positive and below 2**12 for every clamped x, so that
# both halves of 2**k can be cut out with shifts alone (see exp64).
_ROUND_SHIFTER = 6755399441055744.0 + 2 * _EXPONENT_BIAS
# Beyond these the result is inf or 0 anyway; clamping keeps k small enough for two-step scaling.
_EXP_CLAMP_HIGH = 710.0
_EXP_CLAMP_LOW = -746.0

# Minimax fit of (e**r - 1 - r) / r**2 = C0 + C1*r + ... + C10*r**10 on |r| <= 0.3466, weighted for
# relative error of e**r: |error| < 2**-62.6.
_EXP_C0 = 0.5
_EXP_C1 = 0.16666666666666677
_EXP_C2 = 0.041666666666666644
_EXP_C3 = 0.008333333333321664
_EXP_C4 = 0.0013888888888892636
_EXP_C5 = 0.00019841269885958904
_EXP_C6 = 2.480158731452849e-05
_EXP_C7 = 2.7557244436577994e-06
_EXP_C8 = 2.75572786676952e-07
_EXP_C9 = 2.510894265902683e-08
_EXP_C10 = 2.0914221467010214e-09


@inlinable
def exp64(x: float) -> float:
    """e**x for a float64; branch-free so that loops calling it vectorise.

    Largest error measured (3.6e8 random inputs): 0.653 ulp for normal results, 0.774 ulp (of the
    subnormal spacing) for results below 2**-1022, which are rounded twice.
    """
    # Written so that NaN fails both comparisons and flows through to the result.
    clamped = _EXP_CLAMP_HIGH if x > _EXP_CLAMP_HIGH else x
    clamped = _EXP_CLAMP_LOW if clamped < _EXP_CLAMP_LOW else clamped
    # x = k*ln2 + r with |r| <= ln2/2; k is read from the bits, as a float->int conversion of NaN
    # would be undefined.
    shifted = _mul_add(clamped, _INV_LN2, _ROUND_SHIFTER)
    dk = shifted - _ROUND_SHIFTER
    # Exact: dk * _LN2_HI has at most 32 + 11 significant bits and lies within a factor of two of
    # clamped (Sterbenz), so fusing changes nothing here.
    r_hi = _mul_add(-dk, _LN2_HI, clamped)
    r = _mul_add(-dk, _LN2_LO, r_hi)

    c = _mul_add(r, _EXP_C10, _EXP_C9)
    c = _mul_add(r, c, _EXP_C8)
    c = _mul_add(r, c, _EXP_C7)
    c = _mul_add(r, c, _EXP_C6)
    c = _mul_add(r, c, _EXP_C5)
    c = _mul_add(r, c, _EXP_C4)
    c = _mul_add(r, c, _EXP_C3)
    c = _mul_add(r, c, _EXP_C2)
    c = _mul_add(r, c, _EXP_C1)
    c = _mul_add(r, c, _EXP_C0)
    # e**r = (1 + r_hi) - dk * _LN2_LO + r*r*c; 1 + r_hi is summed exactly as head + tail
    # (Fast2Sum), which keeps the error near 0.6 ulp instead of near 1.
    head = 1.0 + r_hi
    tail = _mul_add(-dk, _LN2_LO, (1.0 - head) + r_hi)
    mantissa = head + _mul_add(r * r, c, tail)

    # 2**k as 2**(k >> 1) * 2**(k - (k >> 1)), both normal, so that only the last product rounds:
    # results in the subnormal range and overflow to inf come out right. With b = k + 2046 in the
    # low bits, (b >> 1) = (k >> 1) + 1023 and b - (b >> 1) = k - (k >> 1) + 1023 are the biased
    # exponents; shifting them into place drops the shifter's high bits.
    biased = f64_as_i64(shifted)
    first_bits = (biased >> 1) << _MANTISSA_BITS
    second_bits = (biased << _MANTISSA_BITS) - first_bits
    result = mantissa * i64_as_f64(first_bits) * i64_as_f64(second_bits)
    # A NaN argument comes back as itself: through the fused steps its sign and payload would
    # depend on the FMA (an instruction, or the C library's where the CPU has none).
    return result if x == x else x


# --- the float64 source for other targets -------------------------------------------------------

_FLOAT64_FUNCTIONS = (_log_reduced, log64_normal, log64_positive, log64, exp64)


def compiled_for(
    decorate: Callable, *, mul_add: Callable, divide: Callable, f64_as_i64: Callable, i64_as_f64: Callable
) -> SimpleNamespace:
    """``log64``, ``log64_normal``, ``log64_positive`` and ``exp64`` compiled from the same Python
    source for another target: the primitives are that target's, ``decorate`` compiles one
    function (``cuda.jit(device=True)``; the identity runs them as Python). The functions call
    each other's compiled versions, so nothing of the CPU's build leaks in.

    >>> from klflow.kernels import pyfloat
    >>> python = compiled_for(
    ...     lambda f: f, mul_add=pyfloat.fma, divide=pyfloat.divide,
    ...     f64_as_i64=pyfloat.f64_as_i64, i64_as_f64=pyfloat.i64_as_f64,
    ... )
    >>> python.log64(1.0), python.exp64(0.0), python.log64(0.0)
    (0.0, 1.0, -inf)
    """
    namespace = dict(globals())
    namespace.update(_mul_add=mul_add, _divide=divide, f64_as_i64=f64_as_i64, i64_as_f64=i64_as_f64)
    compiled = {}
    for dispatcher in _FLOAT64_FUNCTIONS:
        source = getattr(dispatcher, "py_func", None) or dispatcher.__wrapped__  # jit or inlinable
        clone = FunctionType(source.__code__, namespace, source.__name__, source.__defaults__)
        clone.__qualname__, clone.__doc__ = source.__qualname__, source.__doc__
        namespace[source.__name__] = compiled[source.__name__] = decorate(clone)
    return SimpleNamespace(**{name: compiled[name] for name in __all__ if name in compiled})


# --- float32 -------------------------------------------------------------------------------------
# The same algorithms in float32 arithmetic (16 lanes per AVX-512 register instead of 8), with
# shorter polynomials. Constants are np.float32/np.int32 so that numba keeps the arithmetic in
# float32; numba widens int32 arithmetic to int64, so integer results are cast back to int32
# (LLVM then narrows the operations again).

_F32_EXPONENT_BIAS = 127
_F32_MANTISSA_BITS = 23
_F32_MANTISSA_MASK = 0x007FFFFF
_F32_POSITIVE_INF_BITS = 0x7F800000
_F32_SMALLEST_NORMAL_BITS = 0x00800000
_F32_ONE_BITS = 0x3F800000
_F32_SQRT_HALF_BITS = 0x3F3504F3
_F32_INF = np.float32(np.inf)
_F32_NAN = np.float32(np.nan)
_F32_ZERO = np.float32(0.0)
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_TWO = np.float32(2.0)
_F32_TWO_23 = np.float32(8388608.0)
_F32_SUBNORMAL_EXPONENT_OFFSET = np.float32(23.0)

# ln 2 with its low 9 bits zero, so that k * _F32_LN2_HI is exact for |k| < 2**9.
_F32_LN2_HI = np.float32(0.693145751953125)  # 0x3F317200
_F32_LN2_LO = np.float32(1.428606765330187e-06)  # ln 2 - _F32_LN2_HI, 0x35BFBE8E

# Minimax fit of (log((1+s)/(1-s)) - 2s) / s**3 = L1 + L2*s**2 + L3*s**4 for |s| < 0.1716, weighted
# by s**2 (the term's share of the result): |error| < 2**-29.1.
_F32_LG1 = np.float32(0.6666678190231323)
_F32_LG2 = np.float32(0.3997706472873688)
_F32_LG3 = np.float32(0.2988561689853668)


@inlinable
def log32(x: np.float32) -> np.float32:
    """Natural logarithm of a float32; same method as ``log64``.

    Largest error over every float32 input: 0.763 float32 ulp.
    """
    bits = f32_as_i32(x)
    is_small = bits < _F32_SMALLEST_NORMAL_BITS
    scaled = x * _F32_TWO_23 if is_small else x
    shifted = np.int32(f32_as_i32(scaled) + (_F32_ONE_BITS - _F32_SQRT_HALF_BITS))
    dk = np.float32(np.int32((shifted >> _F32_MANTISSA_BITS) - _F32_EXPONENT_BIAS))
    dk = dk - _F32_SUBNORMAL_EXPONENT_OFFSET if is_small else dk
    m = i32_as_f32(np.int32((shifted & _F32_MANTISSA_MASK) + _F32_SQRT_HALF_BITS))

    f = m - _F32_ONE
    half_f = _F32_HALF * f
    half_f_squared = half_f * f
    s = _divide(f, _F32_TWO + f)
    z = s * s
    p = _mul_add(z, _mul_add(z, _F32_LG3, _F32_LG2), _F32_LG1)
    small_terms = _mul_add(s, _mul_add(z, p, half_f_squared), dk * _F32_LN2_LO)
    result = _mul_add(dk, _F32_LN2_HI, f + _mul_add(-half_f, f, small_terms))

    result = x + x if bits >= _F32_POSITIVE_INF_BITS else result
    result = _F32_NAN if bits < 0 else result
    return -_F32_INF if x == _F32_ZERO else result


_F32_INV_LN2 = np.float32(1.4426950408889634)
# 1.5 * 2**23 + 2 * bias: leaves k + 254 (in [104, 382]) in the low bits, as in exp64.
_F32_ROUND_SHIFTER = np.float32(12582912.0 + 2 * _F32_EXPONENT_BIAS)
_F32_EXP_CLAMP_HIGH = np.float32(89.0)
_F32_EXP_CLAMP_LOW = np.float32(-104.0)

# Minimax fit of (e**r - 1 - r) / r**2 on |r| <= 0.3466, weighted for relative error of e**r:
# |error| < 2**-28.3.
_F32_EXP_C0 = np.float32(0.4999999403953552)
_F32_EXP_C1 = np.float32(0.1666652113199234)
_F32_EXP_C2 = np.float32(0.04166838899254799)
_F32_EXP_C3 = np.float32(0.008368715643882751)
_F32_EXP_C4 = np.float32(0.0013814602280035615)


@inlinable
def exp32(x: np.float32) -> np.float32:
    """e**x for a float32; same method as ``exp64``.

    Largest error over every float32 input: 0.689 float32 ulp for normal results, 0.780 in the
    subnormal range.
    """
    clamped = _F32_EXP_CLAMP_HIGH if x > _F32_EXP_CLAMP_HIGH else x
    clamped = _F32_EXP_CLAMP_LOW if clamped < _F32_EXP_CLAMP_LOW else clamped
    shifted = clamped * _F32_INV_LN2 + _F32_ROUND_SHIFTER
    dk = shifted - _F32_ROUND_SHIFTER
    r_hi = clamped - dk * _F32_LN2_HI  # exact
    r_lo = dk * _F32_LN2_LO
    r = r_hi - r_lo

    c = _mul_add(r, _F32_EXP_C4, _F32_EXP_C3)
    c = _mul_add(r, c, _F32_EXP_C2)
    c = _mul_add(r, c, _F32_EXP_C1)
    c = _mul_add(r, c, _F32_EXP_C0)
    head = _F32_ONE + r_hi
    tail = ((_F32_ONE - head) + r_hi) - r_lo
    mantissa = head + _mul_add(r * r, c, tail)

    biased = f32_as_i32(shifted)
    first_bits = np.int32((biased >> 1) << _F32_MANTISSA_BITS)
    second_bits = np.int32((biased << _F32_MANTISSA_BITS) - first_bits)
    return mantissa * i32_as_f32(first_bits) * i32_as_f32(second_bits)
