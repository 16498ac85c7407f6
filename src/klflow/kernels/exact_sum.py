"""Exact, reproducible summation of float64 terms.

A *state* is an exact fixed-point accumulator (a "superaccumulator", in the spirit of Neal's xsum and
of ReproBLAS): a 1-D ``np.int64`` array of ``STATE_LEN`` entries.

* ``state[0:NDIGITS]`` are signed digits ``d_k``; the value held is
  ``sum(d_k * 2**(LOW_EXPONENT + 32*k))``. Every digit but the top one stays below ``CARRY_LIMIT``
  in magnitude (carries are deferred until then); ``normalize`` brings each of them into
  ``[0, 2**32)``, and the top digit carries the sign.
* ``state[NAN_COUNT]``, ``state[POS_INF_COUNT]``, ``state[NEG_INF_COUNT]`` count the NaN, +inf and
  -inf terms, which have no place in the fixed-point value.

>>> import numpy as np
>>> state = new_state()
>>> terms = np.array([1e300, 1.0, -1e300])
>>> add_terms(state, terms.copy(), terms.size)
>>> to_float64(state), sum(terms.tolist())
(1.0, 0.0)

Why the result depends on neither the order nor the partition of the terms
--------------------------------------------------------------------------
Every operation on the digits is an exact integer operation: ``add_float`` splits a double into its
integer significand and power-of-two scale and adds that integer into (at most) three 32-bit-aligned
digits; ``add_terms`` splits terms with error-free steps (power-of-two scaling, truncation to an
integer, exact subtraction) into integers it sums in int64; ``merge`` adds digits. No step rounds, so
the state always holds the exact sum of everything added, and any two states holding the same sum
round to the same double: ``round_to_float`` rounds the exact value once, to nearest-even. Integer
addition is associative and commutative, so thread states combine with ``merge`` and MPI ranks with
an integer ``SUM`` all-reduce of the arrays, in any order and tree shape, with bit-identical results.

Bounds
------
* ``LOW_EXPONENT = -1280``, ``NDIGITS = 80``: the digits span ``[2**-1280, 2**1280)``. The smallest bit
  of a double is ``2**-1074``, and ``2**62`` doubles below ``2**1024`` sum to less than ``2**1086``, so
  every such sum fits with room to spare. ``add_scaled_int`` places an int64 (63 bits) shifted by up
  to 31 bits across three digits, so it accepts exponents in
  ``[MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT] = [-1280, 1215]``, a superset of the ``[-1138, 1024]``
  needed for products of a double with a 64-bit integer scale.
* Deferred carries: each addition moves less than ``2**32`` into a digit, and a digit reaching
  ``CARRY_LIMIT = 2**46`` in magnitude has its carry pushed upward at once, so no digit overflows
  however many terms are added. Digitwise sums of up to ``2**16`` raw states, or of up to ``2**31``
  normalized states (digits below ``2**32``), cannot overflow int64; ``normalize`` (and rounding)
  copes with such sums. Normalize a state that came from such a sum before adding more into it.
* ``add_terms`` sums integers below ``2**53`` in int64 in chunks of ``SUM_CHUNK = 1024``:
  ``1024 * (2**53 - 1) < 2**63``. There is therefore no limit on ``count``; blocks of 1024 to 4096
  terms keep the buffer in the L1 cache.

Kernels and host
----------------
The functions that kernels call (``add_terms``, ``add_terms_bounded``, ``add_scaled_int``,
``add_float``) are compiled; no function here may be compiled with ``fastmath``: it would let LLVM
reassociate or drop the error-free steps that make the sum exact. What runs once per reduction on
a finished state (``round_to_float`` and the ``to_float*`` roundings, ``normalize``, ``merge``,
``sum_states``, and ``add_float`` called from Python) is Python integer arithmetic on the value
the digits hold: exact as well, and nothing to compile before the first result.
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import overload

from klflow.kernels.bits import f64_as_i64, i64_as_f64
from klflow.kernels.jit import inlinable, jit

NDIGITS = 80
LOW_EXPONENT = -1280
STATE_LEN = NDIGITS + 3
NAN_COUNT = NDIGITS
POS_INF_COUNT = NDIGITS + 1
NEG_INF_COUNT = NDIGITS + 2

DIGIT_BITS = 32
MIN_SCALE_EXPONENT = LOW_EXPONENT
MAX_SCALE_EXPONENT = LOW_EXPONENT + DIGIT_BITS * (NDIGITS - 2) - 1
CARRY_LIMIT = 1 << 46
SUM_CHUNK = 1024  # int64 sums of this many integers below 2**53 cannot overflow
RAW_STATES_SUMMABLE = 1 << 16  # digitwise sums of this many raw states cannot overflow int64

_DIGIT_MASK = (1 << DIGIT_BITS) - 1
_ABS_MASK = 0x7FFFFFFFFFFFFFFF
_EXPONENT_ALL_ONES = 0x7FF0000000000000
_SIGNIFICAND_MASK = (1 << 52) - 1


def new_state() -> np.ndarray:
    """A state holding the empty sum (zero, no NaN or infinity).

    >>> new_state().shape == (STATE_LEN,)
    True
    """
    return np.zeros(STATE_LEN, dtype=np.int64)


@inlinable
def _carry_from(state: np.ndarray, start: int) -> None:
    """Push carries up from digit ``start`` until the digits above ``start + 2`` are within limits."""
    for k in range(start, NDIGITS - 1):
        carry = state[k] >> DIGIT_BITS
        state[k] -= carry << DIGIT_BITS
        state[k + 1] += carry
        if k >= start + 2 and -CARRY_LIMIT < state[k + 1] < CARRY_LIMIT:
            break


def scaled_int_digits(value: int, exponent: int) -> tuple[int, int, int, int]:
    """Where ``value * 2**exponent`` goes in a state: ``(k, low, middle, high)`` such that adding
    ``low``, ``middle`` and ``high`` to digits ``k``, ``k + 1`` and ``k + 2`` adds the value exactly.
    Each part is below ``2**32`` in magnitude (``low`` and ``middle`` are non-negative).

    Arguments as for :func:`add_scaled_int`, which does not check them here. Plain Python, so the
    CPU and the CUDA kernels compile the same source (the GPU's digits take the parts with integer
    atomics).

    >>> scaled_int_digits(5, LOW_EXPONENT + 32)
    (1, 5, 0, 0)
    >>> k, low, middle, high = scaled_int_digits(-1, LOW_EXPONENT)
    >>> k, low + middle * 2**32 + high * 2**64
    (0, -1)
    """
    offset = exponent - LOW_EXPONENT
    k = offset >> 5
    shift = offset & 31
    # value * 2**shift = low + rest * 2**32, split without shifting bits out of the int64.
    low = (value & ((1 << (DIGIT_BITS - shift)) - 1)) << shift
    rest = value >> (DIGIT_BITS - shift)
    return k, low, rest & _DIGIT_MASK, rest >> DIGIT_BITS


def float_parts(bits: int) -> tuple[int, int, int]:
    """``(special, significand, exponent)`` of the double with these int64 bits: a finite double
    is ``significand * 2**exponent`` with ``special = -1`` (``significand = 0`` for both zeros);
    NaN and the infinities give the index of their counter in a state as ``special``.

    Plain Python, like :func:`scaled_int_digits`.

    >>> float_parts(0x3FF8000000000000)  # 1.5 = 3 * 2**51 * 2**-52
    (-1, 6755399441055744, -52)
    """
    biased_exponent = (bits >> 52) & 0x7FF
    significand = bits & _SIGNIFICAND_MASK
    if biased_exponent == 0x7FF:
        if significand:
            return NAN_COUNT, 0, 0
        return (NEG_INF_COUNT if bits < 0 else POS_INF_COUNT), 0, 0
    if biased_exponent == 0:  # subnormal or zero: no implicit bit, scale 2**-1074
        exponent = -1074
    else:
        significand |= 1 << 52
        exponent = biased_exponent - 1075
    return -1, (-significand if bits < 0 else significand), exponent


def normalize_digits(state: np.ndarray) -> None:
    """:func:`normalize` as a loop over the int64 digits, for device code (plain Python that the
    CUDA kernels compile; the host uses the Python-integer :func:`normalize`)."""
    for k in range(NDIGITS - 1):
        carry = state[k] >> DIGIT_BITS  # arithmetic shift: floor division, so the rest is >= 0
        state[k] -= carry << DIGIT_BITS
        state[k + 1] += carry


_scaled_int_digits = jit(inline="always")(scaled_int_digits)
_float_parts = jit(inline="always")(float_parts)


@jit
def add_scaled_int(state: np.ndarray, value: int, exponent: int) -> None:
    """Add ``value * 2**exponent`` exactly.

    ``value`` is any int64 but ``-2**63``; ``exponent`` lies in
    ``[MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT]`` (a ``ValueError`` otherwise).

    >>> state = new_state()
    >>> add_scaled_int(state, -3, -2)
    >>> to_float64(state)
    -0.75
    """
    if exponent < MIN_SCALE_EXPONENT or exponent > MAX_SCALE_EXPONENT:
        raise ValueError("add_scaled_int: exponent out of range")
    _add_scaled(state, value, exponent)


@jit(inline="always")
def _add_scaled(state: np.ndarray, value: int, exponent: int) -> None:
    """:func:`add_scaled_int` for kernels, whose exponents lie in range by construction (the
    check and its exception cost compile time in every kernel)."""
    k, low, middle, high = _scaled_int_digits(value, exponent)
    d0 = state[k] + low
    d1 = state[k + 1] + middle
    d2 = state[k + 2] + high
    state[k] = d0
    state[k + 1] = d1
    state[k + 2] = d2
    # Magnitude test without branches per digit: x ^ (x >> 63) is |x| - (x < 0).
    if ((d0 ^ (d0 >> 63)) | (d1 ^ (d1 >> 63)) | (d2 ^ (d2 >> 63))) >= CARRY_LIMIT:
        _carry_from(state, k)


def add_float(state: np.ndarray, x: float) -> None:
    """Add one double exactly; NaN and infinities go to their counters. Compiled code calls the
    same name (numba uses :func:`_add_float_compiled`); from Python it is integer arithmetic.

    >>> state = new_state()
    >>> for x in (0.1, 0.2, -0.3):
    ...     add_float(state, x)
    >>> to_float64(state)  # the exact sum of the three doubles, rounded once
    2.7755575615628914e-17
    """
    x = float(x)  # float32 and integer arguments widen exactly
    if math.isnan(x):
        state[NAN_COUNT] += 1
    elif math.isinf(x):
        state[NEG_INF_COUNT if x < 0 else POS_INF_COUNT] += 1
    elif x != 0.0:
        _set_value(state, exact_value(state) + units(x))


def _add_float_compiled(state, x):
    # float32 and integer arguments widen exactly
    special, significand, exponent = _float_parts(f64_as_i64(np.float64(x)))
    if special >= 0:
        state[special] += 1
    elif significand != 0:
        _add_scaled(state, significand, exponent)


@overload(add_float)
def _add_float_overload(state, x):
    return _add_float_compiled


def merge(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst += src``: digits and special counters; ``src`` is unchanged. ``dst`` ends normalized.

    The value is what a digitwise integer sum (an MPI ``SUM`` all-reduce) of the arrays holds.

    >>> a, b = new_state(), new_state()
    >>> add_float(a, 1.5); add_float(b, -0.25)
    >>> merge(a, b)
    >>> to_float64(a)
    1.25
    """
    dst[NDIGITS:] += src[NDIGITS:]
    _set_value(dst, exact_value(dst) + exact_value(src))


def normalize(state: np.ndarray) -> None:
    """Propagate carries: every digit but the top one ends in ``[0, 2**32)``; the value is unchanged.

    Normalized states can be summed digitwise (``merge``, MPI ``SUM``) ``2**31`` at a time.

    >>> state = new_state()
    >>> add_float(state, -1.0)
    >>> normalize(state)
    >>> int(state[NDIGITS - 1]), int(state[:NDIGITS - 1].min()) >= 0
    (-1, True)
    """
    _set_value(state, exact_value(state))


def sum_states(states: list[np.ndarray]) -> np.ndarray:
    """A new normalized state holding the sum of ``states`` (at most ``2**16`` raw states).

    >>> a, b = new_state(), new_state()
    >>> add_float(a, 2.0); add_float(b, 0.5)
    >>> to_float64(sum_states([a, b]))
    2.5
    """
    total = np.sum(states, axis=0, dtype=np.int64) if len(states) > 1 else states[0].copy()
    normalize(total)
    return total


# ------------------------------------------------------------------ the value as a Python integer
_WORDS_BELOW_TOP = NDIGITS - 1
_BELOW_TOP_MASK = (1 << (DIGIT_BITS * _WORDS_BELOW_TOP)) - 1


def exact_value(state: np.ndarray) -> int:
    """The integer ``N`` with ``N * 2**LOW_EXPONENT`` the value the digits hold (any int64 digits).

    >>> state = new_state()
    >>> add_float(state, -0.75)
    >>> exact_value(state) == -3 * 2**(-2 - LOW_EXPONENT)
    True
    """
    digits = state[:NDIGITS]
    nonzero = np.flatnonzero(digits)  # a sum spans a few digits: add only those
    value = 0
    for k, digit in zip(nonzero.tolist(), digits[nonzero].tolist(), strict=True):
        value += digit << (DIGIT_BITS * k)
    return value


def _set_value(state: np.ndarray, value: int) -> None:
    """Write ``value * 2**LOW_EXPONENT`` into the digits, normalized (counters untouched)."""
    below_top = (value & _BELOW_TOP_MASK).to_bytes(4 * _WORDS_BELOW_TOP, "little")
    state[:_WORDS_BELOW_TOP] = np.frombuffer(below_top, dtype="<u4")
    state[_WORDS_BELOW_TOP] = value >> (DIGIT_BITS * _WORDS_BELOW_TOP)


def units(x: float) -> int:
    """The integer ``N`` with ``N * 2**LOW_EXPONENT == x`` for a finite double ``x``."""
    numerator, denominator = x.as_integer_ratio()  # the denominator is a power of two
    return numerator << (-LOW_EXPONENT - (denominator.bit_length() - 1))


@jit(inline="always")
def _pow2(exponent: int) -> float:
    """``2.0**exponent`` for a normal exponent in ``[-1022, 1023]``."""
    return i64_as_f64((exponent + 1023) << 52)


def round_to_float(state: np.ndarray, precision_bits: int, min_exponent: int, max_exponent: int) -> float:
    """The state's exact sum rounded to nearest-even in a binary floating format.

    The format has ``precision_bits`` significant bits (at most 53), smallest normal
    ``2**min_exponent``, largest finite ``(2 - 2**(1 - precision_bits)) * 2**max_exponent`` (at most
    1023), gradual underflow and overflow to infinity; its values must all be doubles
    (``min_exponent - precision_bits + 1 >= -1074``). Any NaN term, or both infinities, give NaN;
    otherwise an infinite term gives that infinity. An exact zero sum gives ``+0.0``; a nonzero sum
    that rounds to zero keeps its sign. The state is not modified.

    >>> state = new_state()
    >>> add_float(state, 1.0); add_float(state, 2.0**-24)
    >>> round_to_float(state, 24, -126, 127)  # a tie in float32: to even
    1.0
    """
    fits_float64 = min_exponent - precision_bits + 1 >= -1074 and max_exponent <= 1023
    if not (2 <= precision_bits <= 53 and min_exponent <= max_exponent and fits_float64):
        raise ValueError("round_to_float: the format's values must all be float64 values")
    if state[NAN_COUNT] > 0 or (state[POS_INF_COUNT] > 0 and state[NEG_INF_COUNT] > 0):
        return math.nan
    if state[POS_INF_COUNT] > 0:
        return math.inf
    if state[NEG_INF_COUNT] > 0:
        return -math.inf
    return round_value(exact_value(state), precision_bits, min_exponent, max_exponent)


def round_value(value: int, precision_bits: int, min_exponent: int, max_exponent: int) -> float:
    """``value * 2**LOW_EXPONENT`` rounded to nearest-even in the format of
    :func:`round_to_float` (whose checks it skips); 0 gives ``+0.0``.

    >>> round_value(3 << (-LOW_EXPONENT - 2), 53, -1022, 1023)
    0.75
    """
    if value == 0:
        return 0.0
    negative = value < 0
    magnitude = -value if negative else value
    # The magnitude lies in [2**leading, 2**(leading + 1)).
    leading = LOW_EXPONENT + magnitude.bit_length() - 1
    if leading > max_exponent:
        return -math.inf if negative else math.inf
    # Weight of the last kept bit: p bits below the leading one, never finer than the subnormal step.
    lowest = max(leading, min_exponent) - precision_bits + 1
    dropped = lowest - LOW_EXPONENT  # > 0: every format's last bit lies above 2**LOW_EXPONENT
    significand = magnitude >> dropped
    rest = magnitude - (significand << dropped)
    half = 1 << (dropped - 1)
    if rest > half or (rest == half and significand & 1):
        significand += 1
        if significand >> precision_bits and lowest + precision_bits > max_exponent:
            return -math.inf if negative else math.inf
    rounded = math.ldexp(float(significand), lowest)  # exact: a double of at most 54 bits
    return -rounded if negative else rounded


def to_float64(state: np.ndarray) -> float:
    """The exact sum correctly rounded to float64.

    >>> state = new_state()
    >>> add_float(state, 2.0**1023); add_float(state, 2.0**1023)
    >>> to_float64(state)
    inf
    """
    return round_to_float(state, 53, -1022, 1023)


def to_float32(state: np.ndarray) -> float:
    """The exact sum correctly rounded to float32 (returned as the float64 holding that value).

    >>> state = new_state()
    >>> add_float(state, 0.1)
    >>> to_float32(state) == float(np.float32(0.1))
    True
    """
    return round_to_float(state, 24, -126, 127)


def to_float16(state: np.ndarray) -> float:
    """The exact sum correctly rounded to float16 (returned as the float64 holding that value).

    >>> state = new_state()
    >>> add_float(state, 65520.0)  # halfway between float16's largest finite and 2**16: overflows
    >>> to_float16(state)
    inf
    """
    return round_to_float(state, 11, -14, 15)


@jit
def add_terms(state: np.ndarray, buf: np.ndarray, count: int) -> None:
    """Add the exact sum of ``buf[0:count]`` (float64) to the state; ``buf`` is used as scratch.

    The fast path for blocks of terms: a vectorised integer maximum finds the largest magnitude, then
    each level splits every term ``t`` on a power-of-two grid ``g`` into ``q * g + r`` with ``q`` an
    integer below ``2**53`` (error-free: exact scaling, truncation and subtraction), sums the ``q``
    in int64 (exact, so order is irrelevant), stores the remainders ``r`` back into ``buf`` and moves
    to the grid of their maximum until nothing remains; in the usual case two levels take every
    term and run in registers, without stores. Blocks holding NaN or infinities take the scalar
    ``add_float`` path. On return ``buf[0:count]`` holds unspecified values (scratch). ``count``
    has no upper limit beyond ``buf.size`` (the int64 sums run over chunks of ``SUM_CHUNK``); 1024
    to 4096 terms is a good block (L1-resident).

    >>> state = new_state()
    >>> add_terms(state, np.array([0.1] * 10), 10)
    >>> to_float64(state), sum([0.1] * 10)
    (1.0, 0.9999999999999999)
    """
    if count > buf.size:
        raise ValueError("add_terms: count exceeds the buffer")
    largest = np.int64(0)
    for i in range(count):
        largest = max(largest, f64_as_i64(buf[i]) & _ABS_MASK)
    add_terms_bounded(state, buf, count, largest)


@jit(inline="always")
def _grid_exponent(largest: int) -> int:
    """The exponent of the coarsest grid on which every term splits with an integer below 2**53.

    With biased exponent E of the largest |t| < 2**(E - 1022), the grid 2**(E - 1075) keeps
    |t / g| < 2**53. Subnormal maxima (E = 0) share the grid 2**-1074 of E = 1: one exact level.
    """
    return max((largest >> 52) - 1075, -1074)


@inlinable
def add_terms_bounded(state: np.ndarray, buf: np.ndarray, count: int, largest: int) -> None:
    """:func:`add_terms` for a caller that already knows ``largest``, the maximum of
    ``f64_as_i64(t) & 0x7FFF_FFFF_FFFF_FFFF`` over the terms (computed while producing them,
    it saves a pass over the buffer). ``count`` must not exceed ``buf.size`` (not checked here:
    kernels pass their own buffer)."""
    if largest >= _EXPONENT_ALL_ONES:
        for i in range(count):
            add_float(state, buf[i])
        return
    if largest == 0:
        return
    grid_exponent = _grid_exponent(largest)
    if grid_exponent - 53 < -1022:  # tiny terms: the grids or their inverses leave the normal range
        _add_levels(state, buf, count, largest)
        return
    for start in range(0, count, SUM_CHUNK):
        # A view indexed from 0 vectorises; indexing buf[start + i] does not (wraparound checks).
        chunk = buf[start : min(start + SUM_CHUNK, count)]
        if not _add_two_levels(state, chunk, grid_exponent):
            _add_levels(state, chunk, chunk.size, largest)


@jit(inline="always")
def _add_two_levels(state: np.ndarray, chunk: np.ndarray, grid_exponent: int) -> bool:
    """The usual case in one read-only pass: add the chunk's exact sum and return True if every
    term is a multiple of the second grid, ``2**(grid_exponent - 53)``; else add nothing, return
    False. Both grids and their inverses are normal doubles (the caller checks).

    Each term splits exactly as ``q1 * g1 + q2 * g2 + r`` (the steps of :func:`_add_levels`, done
    twice in registers), so the terms within ``2**-53`` of the largest, nearly all of them, need
    no second pass and no store.
    """
    first_grid = _pow2(grid_exponent)
    first_inverse = _pow2(-grid_exponent)
    second_grid = _pow2(grid_exponent - 53)
    second_inverse = _pow2(53 - grid_exponent)
    first_sum = np.int64(0)
    second_sum = np.int64(0)
    leftover = np.int64(0)
    for i in range(chunk.size):
        term = chunk[i]
        first = np.int64(term * first_inverse)
        remainder = term - np.float64(first) * first_grid  # |remainder| < g1: |remainder/g2| < 2**53
        second = np.int64(remainder * second_inverse)
        first_sum += first
        second_sum += second
        leftover |= f64_as_i64(remainder - np.float64(second) * second_grid) & _ABS_MASK
    if leftover != 0:
        return False
    _add_scaled(state, first_sum, grid_exponent)
    _add_scaled(state, second_sum, grid_exponent - 53)
    return True


@inlinable
def _add_levels(state: np.ndarray, buf: np.ndarray, count: int, largest: int) -> None:
    """The general splitting loop of :func:`add_terms` for finite terms with ``|t|`` at most the
    double whose bits are ``largest`` (a bound, not necessarily attained); ``buf[0:count]`` ends
    as zeros."""
    while largest != 0:
        grid_exponent = _grid_exponent(largest)
        # 1/g can exceed the double range; two normal power-of-two factors scale exactly instead.
        # (Scaling up never rounds; scaling down only rounds products below 1, which truncate to 0.)
        half_inverse_exponent = -grid_exponent // 2  # both halves lie in [-486, 537]
        inverse_first = _pow2(half_inverse_exponent)
        inverse_second = _pow2(-grid_exponent - half_inverse_exponent)
        if grid_exponent < -1022:  # a subnormal power of two
            grid = i64_as_f64(np.int64(1) << (grid_exponent + 1074))
        else:
            grid = _pow2(grid_exponent)
        # Usually 1/g is a normal double and one multiplication scales exactly.
        single = -1022 <= -grid_exponent <= 1023
        inverse = _pow2(-grid_exponent) if single else 1.0
        largest = np.int64(0)
        for start in range(0, count, SUM_CHUNK):
            # A view indexed from 0 vectorises; indexing buf[start + i] does not (wraparound checks).
            chunk = buf[start : min(start + SUM_CHUNK, count)]
            partial = np.int64(0)
            if single:
                for i in range(chunk.size):
                    term = chunk[i]
                    quotient = np.int64(term * inverse)
                    partial += quotient
                    remainder = term - np.float64(quotient) * grid
                    chunk[i] = remainder
                    largest = max(largest, f64_as_i64(remainder) & _ABS_MASK)
            else:
                for i in range(chunk.size):
                    term = chunk[i]
                    quotient = np.int64((term * inverse_first) * inverse_second)
                    partial += quotient
                    remainder = term - np.float64(quotient) * grid
                    chunk[i] = remainder
                    largest = max(largest, f64_as_i64(remainder) & _ABS_MASK)
            _add_scaled(state, partial, grid_exponent)
