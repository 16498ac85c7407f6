"""Counter-based random numbers: Philox4x32-10 (Random123) and the one mapping from its bits to
uniform and normal values, compiled for the CPU here and for CUDA by
:mod:`klflow.kernels.cuda_random` from the same source.

**Bits.** Element ``i`` of a random call gets one Philox4x32-10 block: counter
``(i mod 2**32, i div 2**32, offset mod 2**32, offset div 2**32)``, key
``(seed mod 2**32, seed div 2**32)``, where ``offset`` numbers the random calls since the last
``manual_seed`` (see :mod:`klflow.random`). An element's value depends only on the seed, the
call's number and the element's *logical* index, never on which rank or thread computes it.

**Uniform in [0, 1)**, exact in the result dtype: float64 takes 53 bits, ``(w0 · 2**21 +
w1 div 2**11) · 2**-53``; a dtype with ``p`` significant bits (24 for float32, 11 for float16,
8 for bfloat16) takes ``(w0 div 2**(32 - p)) · 2**-p``.

**Normal** (Box-Muller, the cosine branch), in float64 then rounded once to the dtype:
``u1 = (b(w0, w1) + 1) · 2**-53`` in (0, 1], ``u2 = b(w2, w3) · 2**-53`` in [0, 1),
``z = sqrt(-2 log u1) · cos(2π u2)``, with klflow's own ``log`` (:mod:`klflow.kernels.fastmath`)
and the cosine below (quarter-turn reduction, exact, then fixed polynomials with fused
multiply-adds), so the values do not depend on the platform's libm.

>>> [hex(w) for w in philox4x32(0, 0, 0, 0, 0, 0, 10)]
['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from types import FunctionType, SimpleNamespace

import numpy as np

from klflow.kernels.fastmath import _mul_add, log64_normal
from klflow.kernels.jit import jit, variant

# Random123's constants: the multipliers and the Weyl sequence that bumps the key.
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SHIFT21 = np.uint64(21)
_SHIFT11 = np.uint64(11)
_TWO_M53 = 2.0**-53
ROUNDS = 10

# Significant bits of a uniform value per dtype name (see the module docstring).
UNIFORM_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


@jit(inline="always")
def philox4x32(c0, c1, c2, c3, k0, k1, rounds):
    """The Philox4x32 block of counter (c0..c3) and key (k0, k1) after ``rounds`` rounds: four
    32-bit words (held in uint64)."""
    c0, c1, c2, c3 = np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3)
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(rounds):
        product0 = _M0 * c0  # 32 × 32 bits: exact in 64
        product1 = _M1 * c2
        c0, c1, c2, c3 = (
            (product1 >> _SHIFT32) ^ c1 ^ k0,
            product1 & _LOW32,
            (product0 >> _SHIFT32) ^ c3 ^ k1,
            product0 & _LOW32,
        )
        k0 = (k0 + _W0) & _LOW32
        k1 = (k1 + _W1) & _LOW32
    return c0, c1, c2, c3


@jit(inline="always")
def bits53(high, low):
    """53 random bits from two words, as an exact float64 integer."""
    return np.float64(np.int64((high << _SHIFT21) | (low >> _SHIFT11)))  # signed: converts in vectors


@jit(inline="always")
def uniform(w0, w1, bits, scale):
    """A uniform value in [0, 1) with ``bits`` significant bits; ``scale`` is ``2**-bits``."""
    if bits == 53:
        return bits53(w0, w1) * _TWO_M53
    return np.float64(np.int64(w0 >> np.uint64(32 - bits))) * scale


def _series(odd: bool, terms: int) -> tuple[float, ...]:
    """Coefficients c_k of sin(π/2 s) = s Σ c_k s^2k (``odd``) or cos(π/2 s) = Σ c_k s^2k,
    from π to 60 digits, each rounded once to float64."""
    getcontext().prec = 60
    half_pi = Decimal("3.14159265358979323846264338327950288419716939937510582097494") / 2
    out, factorial = [], Decimal(1)
    for n in range(2 * terms):
        factorial *= n if n else 1
        if n % 2 == (1 if odd else 0):
            k = n // 2
            out.append(float((-1) ** k * half_pi**n / factorial))
    return tuple(out)


# Ten terms each: for |s| <= 1/2 the first term left out is below 2**-62 of the result.
_SIN = _series(True, 10)
_COS = _series(False, 10)
(_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8, _S9) = _SIN
(_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9) = _COS


@jit(inline="always")
def sin_quarter(s):
    """sin(π/2 · s) for 0 <= s <= 1/2."""
    z = s * s
    p = _mul_add(z, _S9, _S8)
    p = _mul_add(z, p, _S7)
    p = _mul_add(z, p, _S6)
    p = _mul_add(z, p, _S5)
    p = _mul_add(z, p, _S4)
    p = _mul_add(z, p, _S3)
    p = _mul_add(z, p, _S2)
    p = _mul_add(z, p, _S1)
    p = _mul_add(z, p, _S0)
    return s * p


@jit(inline="always")
def cos_quarter(s):
    """cos(π/2 · s) for 0 <= s <= 1/2."""
    z = s * s
    p = _mul_add(z, _C9, _C8)
    p = _mul_add(z, p, _C7)
    p = _mul_add(z, p, _C6)
    p = _mul_add(z, p, _C5)
    p = _mul_add(z, p, _C4)
    p = _mul_add(z, p, _C3)
    p = _mul_add(z, p, _C2)
    p = _mul_add(z, p, _C1)
    return _mul_add(z, p, _C0)


@jit(inline="always")
def cos_two_pi(u):
    """cos(2π · u) for 0 <= u < 1: the quarter turn and the fraction are exact (u is dyadic)."""
    t = u * 4.0
    quarter = int(t)
    r = t - quarter
    # cos and sin of (π/2) r, each from the polynomial whose argument stays within [0, 1/2].
    if r <= 0.5:
        c, s = cos_quarter(r), sin_quarter(r)
    else:
        c, s = sin_quarter(1.0 - r), cos_quarter(1.0 - r)
    if quarter == 0:
        return c
    if quarter == 1:
        return -s
    if quarter == 2:
        return -c
    return s


@jit(inline="always")
def standard_normal(w0, w1, w2, w3):
    """One standard normal value from four words (Box-Muller, cosine branch), in float64."""
    u1 = (bits53(w0, w1) + 1.0) * _TWO_M53
    u2 = bits53(w2, w3) * _TWO_M53
    return math.sqrt(-2.0 * log64_normal(u1)) * cos_two_pi(u2)


@jit(inline="always")
def random_element(index, key0, key1, offset0, offset1, normal, bits, scale):
    """Element ``index`` of a random call (see the module docstring), in float64."""
    counter = np.uint64(index)
    w0, w1, w2, w3 = philox4x32(counter & _LOW32, counter >> _SHIFT32, offset0, offset1, key0, key1, ROUNDS)
    if normal:
        return standard_normal(w0, w1, w2, w3)
    return uniform(w0, w1, bits, scale)


@jit(inline="always")
def logical_index(flat, starts, extents, strides):
    """The logical flat index of element ``flat`` (C order) of a component that starts at
    ``starts`` and has ``extents``, in a tensor with C-order ``strides``."""
    rest = flat
    index = 0
    for d in range(len(extents) - 1, -1, -1):
        extent = extents[d]
        index += (starts[d] + rest % extent) * strides[d]
        rest //= extent
    return index


def _make_fill_kernel(normal: bool, bits: int):
    """The host kernel ``(out, lo, hi, starts, extents, strides, key0, key1, offset0, offset1)``
    for one case: elements ``lo <= flat < hi`` (C order) of a component that starts at ``starts``
    and has ``extents``, in a tensor with C-order ``strides``. It walks the component's rows, so
    the inner loop runs over consecutive logical indices (and vectorises)."""
    scale = 2.0**-bits

    def fill(out, lo, hi, starts, extents, strides, key0, key1, offset0, offset1):
        ndim = len(extents)
        if ndim == 0:
            if hi > lo:
                out[0] = random_element(0, key0, key1, offset0, offset1, normal, bits, scale)
            return
        inner = extents[ndim - 1]
        flat = lo
        while flat < hi:
            row = flat // inner
            column = flat - row * inner
            base = starts[ndim - 1] + column
            rest = row
            for d in range(ndim - 2, -1, -1):
                extent = extents[d]
                base += (starts[d] + rest % extent) * strides[d]
                rest //= extent
            stop = min(hi, flat + inner - column)
            for k in range(stop - flat):
                out[flat + k] = random_element(base + k, key0, key1, offset0, offset1, normal, bits, scale)
            flat = stop

    return fill


def fill_kernel(normal: bool, bits: int):
    """The compiled host kernel of one case (see :func:`_make_fill_kernel`), built on first use."""
    return variant(_make_fill_kernel, normal, bits)


_SHARED_FUNCTIONS = (
    philox4x32,
    bits53,
    uniform,
    sin_quarter,
    cos_quarter,
    cos_two_pi,
    standard_normal,
    random_element,
    logical_index,
)


def compiled_for(decorate, *, mul_add, log64_normal) -> SimpleNamespace:
    """The shared functions compiled from the same source for another target, with that target's
    fused multiply-add and ``log64_normal`` (as :func:`klflow.kernels.fastmath.compiled_for`);
    the identity as ``decorate`` runs them as Python.

    >>> from klflow.kernels import pyfloat
    >>> python = compiled_for(lambda f: f, mul_add=pyfloat.fma,
    ...                       log64_normal=pyfloat.compiled_fastmath().log64_normal)
    >>> python.cos_two_pi(0.5)
    -1.0
    """
    namespace = dict(globals())
    namespace.update(_mul_add=mul_add, log64_normal=log64_normal)
    compiled = {}
    for function in _SHARED_FUNCTIONS:
        source = getattr(function, "py_func", None) or function.__wrapped__  # jit or inlinable
        clone = FunctionType(source.__code__, namespace, source.__name__, source.__defaults__)
        clone.__qualname__, clone.__doc__ = source.__qualname__, source.__doc__
        namespace[source.__name__] = compiled[source.__name__] = decorate(clone)
    return SimpleNamespace(**compiled)
