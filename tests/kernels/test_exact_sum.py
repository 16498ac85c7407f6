"""Tests of the exact summation kernel against independent references.

The references are Python's exact rationals (``fractions.Fraction``), ``float(Fraction)`` (correctly
rounded), ``math.fsum`` and a Fraction-based rounding to narrower formats written here; the state's
value is read back from its documented digit layout with Python integers.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klflow.kernels import exact_sum as es
from klflow.kernels.exact_sum import (
    LOW_EXPONENT,
    NAN_COUNT,
    NDIGITS,
    NEG_INF_COUNT,
    POS_INF_COUNT,
    STATE_LEN,
    add_float,
    add_scaled_int,
    add_terms,
    merge,
    new_state,
    normalize,
    round_to_float,
    to_float16,
    to_float32,
    to_float64,
)

FLOAT64 = (53, -1022, 1023)
FLOAT32 = (24, -126, 127)
FLOAT16 = (11, -14, 15)
FORMATS = {"float64": FLOAT64, "float32": FLOAT32, "float16": FLOAT16}
ROUNDERS = {"float64": to_float64, "float32": to_float32, "float16": to_float16}
MAX64 = np.finfo(np.float64).max
TINY64 = 2.0**-1074


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def round_fraction(value: Fraction, precision: int, min_exponent: int, max_exponent: int) -> float:
    """``value`` rounded to nearest-even in the given binary format (subnormals, overflow to inf)."""
    if value == 0:
        return 0.0
    sign = -1.0 if value < 0 else 1.0
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:  # make 2**exponent <= magnitude < 2**(exponent + 1)
        exponent -= 1
    quantum = Fraction(2) ** (max(exponent, min_exponent) - precision + 1)
    scaled = magnitude / quantum
    integer = scaled.numerator // scaled.denominator
    rest = scaled - integer
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and integer % 2 == 1):
        integer += 1
    rounded = integer * quantum
    if rounded >= Fraction(2) ** (max_exponent + 1):
        return sign * math.inf
    return sign * float(rounded)  # exact: the rounded value is a double


def reference_sum(values, fmt=FLOAT64) -> float:
    """IEEE-style specials, else the exact Fraction sum rounded once (exact zero gives +0.0)."""
    values = [float(v) for v in values]
    has_pos_inf = any(v == math.inf for v in values)
    has_neg_inf = any(v == -math.inf for v in values)
    if any(math.isnan(v) for v in values) or (has_pos_inf and has_neg_inf):
        return math.nan
    if has_pos_inf:
        return math.inf
    if has_neg_inf:
        return -math.inf
    return round_fraction(sum((Fraction(v) for v in values), Fraction(0)), *fmt)


def state_value(state: np.ndarray) -> Fraction:
    """The exact value the digits hold, read with Python integers from the documented layout."""
    weights = (Fraction(2) ** (LOW_EXPONENT + 32 * k) for k in range(NDIGITS))
    pairs = zip(state[:NDIGITS], weights, strict=False)
    return sum((int(digit) * weight for digit, weight in pairs), Fraction(0))


def same_float(a: float, b: float) -> bool:
    """Bitwise equality of doubles, NaN equal to NaN (any payload)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return np.float64(a).view(np.int64) == np.float64(b).view(np.int64)


# ---------------------------------------------------------------------------------------------
# Ways of filling a state
# ---------------------------------------------------------------------------------------------


def state_by_add_float(values) -> np.ndarray:
    state = new_state()
    for v in values:
        add_float(state, float(v))
    return state


def state_by_add_terms(values, block: int = 1024) -> np.ndarray:
    state = new_state()
    values = np.asarray(values, dtype=np.float64)
    buf = np.empty(block)
    for start in range(0, values.size, block):
        chunk = values[start : start + block]
        buf[: chunk.size] = chunk
        add_terms(state, buf, chunk.size)
    return state


FILLERS = {
    "add_float": state_by_add_float,
    "add_terms_1024": state_by_add_terms,
    "add_terms_7": lambda v: state_by_add_terms(v, 7),
    "add_terms_4096": lambda v: state_by_add_terms(v, 4096),
}


def check_all_formats(state: np.ndarray, values) -> None:
    for name, rounder in ROUNDERS.items():
        expected = reference_sum(values, FORMATS[name])
        got = rounder(state)
        assert same_float(got, expected), (name, got, expected)


# ---------------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------------


def test_reference_rounding_agrees_with_hardware_conversions():
    """One rounding of a double to float32/float16 by NumPy is correctly rounded: the reference must agree."""
    rng = np.random.default_rng(11)
    samples = np.concatenate(
        [
            rng.standard_normal(3000) * np.exp2(rng.integers(-160, 140, 3000)),
            rng.standard_normal(3000) * np.exp2(rng.integers(-30, 20, 3000)),
            [2.0**-150, 3 * 2.0**-150, 2.0**-25, 3 * 2.0**-25, 65520.0, 65519.0, 2.0**128 - 2.0**103],
        ]
    )
    with np.errstate(over="ignore"):
        for x in samples.tolist():
            assert same_float(round_fraction(Fraction(x), *FLOAT32), float(np.float32(x))), x
            assert same_float(round_fraction(Fraction(x), *FLOAT16), float(np.float16(x))), x
            assert round_fraction(Fraction(x), *FLOAT64) == x
    draw = random.Random(12)
    for _ in range(500):
        value = Fraction(draw.randint(-(10**40), 10**40), draw.randint(1, 10**30))
        assert round_fraction(value, *FLOAT64) == float(value)


# ---------------------------------------------------------------------------------------------
# Known cases
# ---------------------------------------------------------------------------------------------

KNOWN_CASES = {
    "empty": [],
    "cancellation": [1e300, 1.0, -1e300],
    "cancellation_many": [1e300, 1.0, -1e300, 1e-300, 3.0, -1e-300, 2.0**-1074],
    "negative_zeros": [-0.0, -0.0],
    "mixed_zeros": [0.0, -0.0],
    "subnormals": [TINY64] * 3 + [2.0**-1023, -(2.0**-1060)],
    "subnormal_cancel_to_tiny": [2.0**-1022, -(2.0**-1022) + TINY64],
    "overflow": [2.0**1023, 2.0**1023],
    "negative_overflow": [-MAX64, -MAX64],
    "overflow_then_back": [MAX64, MAX64, -MAX64],
    "max_plus_half_ulp_ties_to_inf": [MAX64, 2.0**970],
    "max_plus_under_half_ulp": [MAX64, 2.0**970, -TINY64],
    "near_2_1023": [2.0**1023, -(2.0**1022), 2.0**1022 * 1.5, MAX64 / 3],
    "tie_to_even_down": [1.0, 2.0**-53],
    "tie_broken_by_sticky": [1.0, 2.0**-53, TINY64],
    "tie_to_even_up": [1.0 + 2.0**-52, 2.0**-53],
    "negative_tie": [-1.0, -(2.0**-53)],
    "tenths": [0.1] * 10,
    "nan": [1.0, math.nan],
    "both_infinities": [math.inf, 1.0, -math.inf],
    "pos_inf": [math.inf, -MAX64, -MAX64],
    "neg_inf": [-math.inf, MAX64, MAX64],
    "two_pos_inf": [math.inf, math.inf],
    "nan_and_inf": [math.nan, math.inf],
    "float32_max_tie": [2.0**128 - 2.0**104, 2.0**103],
    "float32_below_max_tie": [2.0**128 - 2.0**104, 2.0**103, -TINY64],
    "float32_min_subnormal_tie": [2.0**-150],
    "float32_subnormal_tie_up": [3 * 2.0**-150],
    "float32_subnormal_to_normal": [2.0**-126, -(2.0**-150)],
    "float32_negative_underflow": [-(2.0**-151)],
    "float16_overflow_tie": [65504.0, 16.0],
    "float16_below_overflow": [65504.0, 16.0, -(2.0**-40)],
    "float16_min_subnormal_tie": [2.0**-25],
    "float16_subnormal_tie_up": [3 * 2.0**-25],
    "float16_subnormal_sticky": [2.0**-25, 2.0**-60],
    "float16_subnormal_to_normal": [2.0**-14, -(2.0**-25)],
}


@pytest.mark.parametrize("filler", sorted(FILLERS))
@pytest.mark.parametrize("case", sorted(KNOWN_CASES))
def test_known_cases(case, filler):
    values = KNOWN_CASES[case]
    state = FILLERS[filler](values)
    check_all_formats(state, values)
    if all(math.isfinite(v) for v in values):
        assert state_value(state) == sum((Fraction(v) for v in values), Fraction(0))


def test_empty_and_zero_sums_are_positive_zero():
    for values in ([], [-0.0], [-1.5, 1.5], [-0.0, -0.0, -0.0]):
        for fill in FILLERS.values():
            for rounder in ROUNDERS.values():
                result = rounder(fill(values))
                assert result == 0.0 and math.copysign(1.0, result) == 1.0


def test_specials_use_counters():
    state = state_by_add_float([math.nan, math.inf, math.inf, -math.inf, 1.0])
    assert (state[NAN_COUNT], state[POS_INF_COUNT], state[NEG_INF_COUNT]) == (1, 2, 1)
    assert STATE_LEN == NDIGITS + 3


def test_fsum_agrees_on_random_scales():
    rng = np.random.default_rng(5)
    for _trial in range(40):
        n = int(rng.integers(1, 5000))
        low, high = sorted(rng.integers(-1070, 1000, 2))
        values = rng.standard_normal(n) * np.exp2(rng.integers(low, high + 1, n).astype(float))
        values = values[np.isfinite(values)]
        expected = math.fsum(values)  # correctly rounded, no overflow at these scales
        for fill in FILLERS.values():
            assert same_float(to_float64(fill(values)), expected)
        assert state_value(state_by_add_terms(values)) == sum(map(Fraction, values.tolist()), Fraction(0))


def test_exact_random_terms_all_formats():
    rng = np.random.default_rng(7)
    for _trial in range(30):
        n = int(rng.integers(1, 3000))
        with np.errstate(over="ignore"):
            values = rng.standard_normal(n) * np.exp2(rng.integers(-1100, 1030, n).astype(float))
        values[rng.random(n) < 0.05] *= -1e-300  # some tiny terms and subnormals
        values = values[np.isfinite(values)]
        state = state_by_add_terms(values, int(rng.integers(1, 5000)))
        check_all_formats(state, values.tolist())


def test_cancelling_terms_near_each_format_boundary():
    """Sums that land on the subnormal and overflow boundaries of every format, built by cancellation."""
    rng = np.random.default_rng(3)
    for precision, min_exponent, max_exponent in (FLOAT64, FLOAT32, FLOAT16):
        largest = math.ldexp(2 - 2.0 ** (1 - precision), max_exponent)
        half_top_ulp = 2.0 ** (max_exponent - precision)  # largest + this is the tie with 2**(max + 1)
        smallest = 2.0 ** (min_exponent - precision + 1)
        smallest_normal = 2.0**min_exponent
        targets = [[largest], [largest, half_top_ulp], [smallest], [smallest / 2], [smallest, smallest / 2]]
        targets += [[smallest_normal], [smallest_normal, -smallest / 2], [smallest_normal, -smallest]]
        for target in targets:
            for nudge in (0.0, TINY64, -TINY64, smallest / 4):
                noise = list(rng.standard_normal(50) * 2.0 ** (max_exponent - 4))
                values = target + [nudge] + noise + [-v for v in noise]
                random.Random(len(values)).shuffle(values)
                for fill in (state_by_add_float, state_by_add_terms):
                    state = fill(values)
                    expected = reference_sum(values, (precision, min_exponent, max_exponent))
                    assert same_float(round_to_float(state, precision, min_exponent, max_exponent), expected)
                    negated = [-v for v in values]
                    expected = reference_sum(negated, (precision, min_exponent, max_exponent))
                    got = round_to_float(fill(negated), precision, min_exponent, max_exponent)
                    assert same_float(got, expected)


# ---------------------------------------------------------------------------------------------
# add_scaled_int, carries, normalize, merge
# ---------------------------------------------------------------------------------------------


def test_add_scaled_int_exact_across_its_range():
    rng = np.random.default_rng(1)
    state = new_state()
    expected = Fraction(0)
    widest = 2**63 - 1
    extremes = [(widest, es.MAX_SCALE_EXPONENT), (-widest, es.MIN_SCALE_EXPONENT), (-widest, 1024)]
    values = rng.integers(-widest, widest, 2000, endpoint=True)
    exponents = rng.integers(es.MIN_SCALE_EXPONENT, es.MAX_SCALE_EXPONENT, 2000, endpoint=True)
    randoms = [(int(v), int(e)) for v, e in zip(values, exponents, strict=False)]
    for value, exponent in extremes + randoms:
        add_scaled_int(state, value, exponent)
        expected += value * Fraction(2) ** exponent
    assert es.MIN_SCALE_EXPONENT <= -1074 - 64 and es.MAX_SCALE_EXPONENT >= 1024
    assert state_value(state) == expected
    with pytest.raises(ValueError):
        add_scaled_int(new_state(), 1, es.MAX_SCALE_EXPONENT + 1)
    with pytest.raises(ValueError):
        add_scaled_int(new_state(), 1, es.MIN_SCALE_EXPONENT - 1)


def test_deferred_carries_never_overflow():
    """Many large additions into the same digits push carries before any digit can overflow."""
    state = new_state()
    value = 2**63 - 1
    for _ in range(40000):  # 40000 * 2**32 per digit would pass CARRY_LIMIT many times over
        add_scaled_int(state, value, 0)
        add_scaled_int(state, -(value // 3), 5)
    expected = 40000 * (value - (value // 3) * 32)
    assert state_value(state) == expected
    assert np.abs(state[: NDIGITS - 1]).max() < es.CARRY_LIMIT
    assert to_float64(state) == float(expected)


def test_normalize_keeps_value_and_digit_ranges():
    rng = np.random.default_rng(2)
    values = rng.standard_normal(3000) * np.exp2(rng.integers(-1074, 1000, 3000).astype(float))
    for sign in (1, -1):
        state = state_by_add_float(sign * values)
        before = state_value(state)
        normalize(state)
        assert state_value(state) == before
        assert state[: NDIGITS - 1].min() >= 0 and state[: NDIGITS - 1].max() < 2**32


def test_merge_doubling_exercises_carries():
    state = state_by_add_float([MAX64, -(2.0**-1074), 1.0])
    expected = state_value(state)
    for _ in range(60):  # the value doubles each time; digits would pass 2**46 without carries
        merge(state, state.copy())
        expected *= 2
    assert state_value(state) == expected
    assert np.abs(state[: NDIGITS - 1]).max() < es.CARRY_LIMIT


def test_merge_carries_negative_and_positive_digits():
    """Any digits within the documented bound (e.g. from other ranks) merge exactly and stay bounded."""
    rng = np.random.default_rng(6)
    state = new_state()
    state[: NDIGITS - 1] = rng.integers(-es.CARRY_LIMIT + 1, es.CARRY_LIMIT, NDIGITS - 1)
    state[10] = -es.CARRY_LIMIT + 1
    expected = state_value(state)
    for _ in range(40):
        merge(state, state.copy())
        expected *= 2
        assert np.abs(state[: NDIGITS - 1]).max() < es.CARRY_LIMIT
    assert state_value(state) == expected


def test_raw_states_sum_digitwise_without_normalizing():
    """Raw states (digits below CARRY_LIMIT) can be all-reduced as int64 arrays: here 4096 of them."""
    rng = np.random.default_rng(10)
    states = np.empty((4096, STATE_LEN), dtype=np.int64)
    states[:, : NDIGITS - 1] = rng.integers(-es.CARRY_LIMIT + 1, es.CARRY_LIMIT, (4096, NDIGITS - 1))
    states[:, NDIGITS - 1] = rng.integers(-5, 5, 4096)
    states[:, NDIGITS:] = 0
    reduced = states.sum(axis=0)
    assert reduced.tolist() == states.astype(object).sum(axis=0).tolist()  # Python ints: no overflow
    expected = state_value(reduced)
    normalize(reduced)
    assert state_value(reduced) == expected
    assert same_float(to_float64(states.sum(axis=0)), round_fraction(expected, *FLOAT64))


def test_rounding_does_not_modify_state():
    state = state_by_add_terms([1e300, -3.5, 2.0**-1070, -(2.0**-1074), math.inf])
    snapshot = state.copy()
    for rounder in ROUNDERS.values():
        rounder(state)
    round_to_float(state, 8, -6, 7)
    assert np.array_equal(state, snapshot)


def test_normalized_states_sum_digitwise_as_mpi_would():
    """Normalized states summed as int64 arrays (an MPI SUM all-reduce) hold the sum of their values."""
    rng = np.random.default_rng(4)
    states = []
    for _ in range(64):
        values = -np.abs(rng.standard_normal(200)) * np.exp2(rng.integers(-1074, 1020, 200).astype(float))
        state = state_by_add_terms(values[np.isfinite(values)])
        normalize(state)
        states.append(state)
    reduced = np.sum(states, axis=0)  # what an integer SUM all-reduce computes
    merged = new_state()
    for state in states:
        merge(merged, state)
    assert state_value(reduced) == state_value(merged) == sum(map(state_value, states), Fraction(0))
    normalize(reduced)
    normalize(merged)
    assert np.array_equal(reduced, merged)


# ---------------------------------------------------------------------------------------------
# add_terms edge cases
# ---------------------------------------------------------------------------------------------


def test_add_terms_integer_sums_at_their_bound():
    """Blocks longer than SUM_CHUNK of terms whose quotients are all 2**53 - 1 stay exact."""
    for value in (MAX64, -MAX64, 2.0**-1022 - TINY64, 1.0 - 2.0**-53, 2.0**-1022):
        values = [value] * 5000
        state = state_by_add_terms(values, 5000)
        assert state_value(state) == 5000 * Fraction(value)
    assert es.SUM_CHUNK * (2**53 - 1) < 2**63


def test_add_terms_uses_only_count_terms():
    buf = np.array([1.0, 2.0**-60, -3.0, 7.0, 9.0])
    state = new_state()
    add_terms(state, buf, 3)
    assert state_value(state) == Fraction(1) + Fraction(2) ** -60 - 3
    assert buf[3] == 7.0 and buf[4] == 9.0
    add_terms(state, buf, 0)
    assert state_value(state) == Fraction(1) + Fraction(2) ** -60 - 3


def test_add_terms_two_level_pass_and_general_loop_per_chunk():
    """A chunk whose terms all lie within 2**-53 of the block's largest is taken by the two-grid
    pass; a chunk holding a term with bits further down falls back to the general loop. Blocks mix
    both kinds of chunk in either order, and the sum stays exact."""
    rng = np.random.default_rng(10)
    near = rng.standard_normal(es.SUM_CHUNK) * 2.0**40
    far = near.copy()
    far[17] = float(near[3]) * 2.0**-70 * (1 + 2.0**-40)
    largest_bits = int(np.abs(np.concatenate([near, far])).view(np.int64).max())
    grid_exponent = max((largest_bits >> 52) - 1075, -1074)
    assert es._add_two_levels(new_state(), near.copy(), grid_exponent)
    assert not es._add_two_levels(new_state(), far.copy(), grid_exponent)
    for block in ([near, far], [far, near], [near, near], [far]):
        values = np.concatenate(block)
        state = state_by_add_terms(values.tolist(), values.size)
        assert state_value(state) == sum(map(Fraction, values.tolist()), Fraction(0))


def test_add_terms_block_with_specials_and_finite_terms():
    values = [1.0, math.inf, 2.0**-1074, -5.0]
    state = state_by_add_terms(values)
    assert state_value(state) == Fraction(-4) + Fraction(2) ** -1074
    assert state[POS_INF_COUNT] == 1 and to_float64(state) == math.inf


def test_add_terms_every_exponent_of_the_largest_term():
    """Grids from the subnormal range to 2**971: each largest exponent with terms spanning below it."""
    rng = np.random.default_rng(9)
    for biased in range(0, 2047, 3):
        bits = (biased << 52) | int(rng.integers(0, 2**52))
        largest = np.array([bits], dtype=np.int64).view(np.float64)[0]
        values = [largest, -largest / 3, largest * 2.0**-60, TINY64 * 7, -0.0]
        state = state_by_add_terms(values)
        assert state_value(state) == sum(map(Fraction, values), Fraction(0)), biased


# ---------------------------------------------------------------------------------------------
# Order and partition independence
# ---------------------------------------------------------------------------------------------


def partitioned_state(values, rng: random.Random) -> np.ndarray:
    """Shuffle, cut into random chunks, fill each chunk's state in a random way, merge in random order."""
    values = list(values)
    rng.shuffle(values)
    cuts = sorted(rng.sample(range(len(values) + 1), min(len(values) + 1, rng.randint(1, 8))))
    pieces = [values[a:b] for a, b in zip([0] + cuts, cuts + [len(values)], strict=False)]
    states = []
    for piece in pieces:
        if rng.random() < 0.3:
            states.append(state_by_add_float(piece))
        else:
            states.append(state_by_add_terms(piece, rng.choice([1, 3, 64, 1024, 2048, 4096])))
    rng.shuffle(states)
    total = new_state()
    for state in states:
        merge(total, state)
    return total


def test_order_and_partition_independence():
    rng = np.random.default_rng(8)
    values = rng.standard_normal(6000) * np.exp2(rng.integers(-1074, 1020, 6000).astype(float))
    values = np.concatenate([values[np.isfinite(values)], [1e308, 1e308, -1e308, TINY64, -0.0]])
    reference = {name: reference_sum(values.tolist(), fmt) for name, fmt in FORMATS.items()}
    canonical = None
    for seed in range(12):
        state = partitioned_state(values.tolist(), random.Random(seed))
        for name, rounder in ROUNDERS.items():
            assert same_float(rounder(state), reference[name])
        normalize(state)
        if canonical is None:
            canonical = state
        assert np.array_equal(state, canonical)


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

any_floats = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=60)
finite_floats = st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=60)
narrow_floats = st.lists(
    st.floats(min_value=-70000.0, max_value=70000.0) | st.floats(min_value=-(2.0**-10), max_value=2.0**-10),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(any_floats)
def test_property_matches_reference(values):
    for fill in (state_by_add_float, state_by_add_terms):
        check_all_formats(fill(values), values)


@settings(max_examples=200, deadline=None)
@given(finite_floats)
def test_property_exact_value_and_fsum(values):
    state = state_by_add_terms(values, 16)
    exact = sum(map(Fraction, values), Fraction(0))
    assert state_value(state) == exact
    try:
        expected = math.fsum(values)
    except OverflowError:  # fsum gives up when a partial sum overflows, even if the total is finite
        expected = round_fraction(exact, *FLOAT64)
    if expected == 0.0:
        expected = 0.0  # the exact zero is +0.0 here
    assert same_float(to_float64(state), expected)


@settings(max_examples=200, deadline=None)
@given(narrow_floats)
def test_property_float32_float16_near_their_ranges(values):
    check_all_formats(state_by_add_terms(values, 5), values)


@settings(max_examples=150, deadline=None)
@given(any_floats, st.randoms(use_true_random=False))
def test_property_partition_independence(values, rng):
    first = partitioned_state(values, rng)
    second = partitioned_state(values, rng)
    for rounder in ROUNDERS.values():
        assert same_float(rounder(first), rounder(second))
    assert np.array_equal(first[NDIGITS:], second[NDIGITS:])
    normalize(first)
    normalize(second)
    assert np.array_equal(first, second)


# ---------------------------------------------------------------------------------------------
# Vectorisation
# ---------------------------------------------------------------------------------------------


def test_add_terms_compiles_to_vector_instructions():
    llvm = pytest.importorskip("llvmlite.binding")
    if "+avx2" not in llvm.get_host_cpu_features().flatten():
        pytest.skip("CPU without AVX2")
    from numba import njit

    # The cached dispatcher cannot show its assembly, so compile the same function afresh.
    fresh = njit(es.add_terms.py_func)
    fresh(new_state(), np.ones(8), 8)
    assembly = fresh.inspect_asm(fresh.signatures[0])
    assert re.search(r"%[yz]mm\d+", assembly)
    if "+avx512dq" in llvm.get_host_cpu_features().flatten():
        # The level loop's double-to-int64 conversion: vectorised only if the whole level loop is.
        assert re.search(r"vcvttpd2qq\s+[^\n]*%[yz]mm", assembly)
