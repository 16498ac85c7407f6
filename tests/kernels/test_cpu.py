"""The CPU launchers of ``klflow.kernels.cpu`` against the float64 reference.

``pointwise``, ``reduce_sum`` (with and without the fused input gradient), ``input_grad_array`` and
``target_grad_array`` are called directly with NumPy arrays: contiguous (C and F), non-contiguous
(staged through contiguous slabs; ``SLAB_ELEMENTS`` is lowered so that small arrays need many
slabs), float16 (carried as its bit pattern) and both sides of ``SERIAL_BELOW``. The exact-sum state
that ``reduce_sum`` returns is read with ``klflow.kernels.exact_sum``'s rounding functions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from data import make_pair
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import (
    EPS64,
    assert_close,
    element_error_bound,
    input_grad,
    kl_elements,
    target_grad,
    target_grad_error_bound,
)
from reference import (
    exact_sum as reference_sum,
)

from klflow.kernels import cpu, exact_sum, fastmath, pool, rounding
from klflow.kernels.bounded_sum import BoundedSum

DTYPES = [np.float16, np.float32, np.float64]
DTYPE_IDS = ["f16", "f32", "f64"]
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
log_target_param = pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
# Element counts on both sides of the serial/parallel threshold (and of one BLOCK).
SIZES = [pytest.param(n, id=f"n{n}") for n in (1, 100, 5000, cpu.SERIAL_BELOW + 12_345)]
ROUND_STATE = {
    np.dtype(np.float16): exact_sum.to_float16,
    np.dtype(np.float32): exact_sum.to_float32,
    np.dtype(np.float64): exact_sum.to_float64,
}


def strided(a: np.ndarray) -> np.ndarray:
    """``a``'s values as every other element of a larger buffer (neither C nor F contiguous)."""
    big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def state_value(state: np.ndarray, dtype) -> float:
    return float(ROUND_STATE[np.dtype(dtype)](state))


def check_sum(state, x, y, log_target):
    """The state's value rounded to x's dtype, against the exact sum of the reference elements."""
    dtype = x.dtype
    got = np.asarray(state_value(state, dtype), dtype=dtype)
    ref = reference_sum(kl_elements(x, y, log_target))
    slack = element_error_bound(x, y, log_target).sum()
    assert_close(got, np.float64(ref), dtype, bound=slack, what="sum")


@pytest.fixture
def tiny_slabs(monkeypatch):
    """Make staging cut arrays into slabs of at most 7 elements and count the slabs."""
    monkeypatch.setattr(cpu, "SLAB_ELEMENTS", 7)
    counter = {"slabs": 0}
    original = cpu._slabs

    def counting(shape, limit):
        for index in original(shape, limit):
            counter["slabs"] += 1
            yield index

    monkeypatch.setattr(cpu, "_slabs", counting)
    return counter


# ---------------------------------------------------------------------------- pointwise
@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_pointwise_contiguous(n, log_target, dtype):
    x, y = make_pair((n,), dtype, log_target, n)
    out = cpu.pointwise(x, y, log_target)
    assert_close(out, kl_elements(x, y, log_target), dtype, bound=element_error_bound(x, y, log_target))


@log_target_param
@dtype_param
def test_pointwise_fortran_order(log_target, dtype):
    x, y = make_pair((13, 17), dtype, log_target, 1)
    xf, yf = np.asfortranarray(x), np.asfortranarray(y)
    out = cpu.pointwise(xf, yf, log_target)
    assert out.shape == x.shape
    assert_close(out, kl_elements(x, y, log_target), dtype, bound=element_error_bound(x, y, log_target))


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5), (2, 3, 2, 4)], ids=str)
@log_target_param
@dtype_param
def test_pointwise_staged_in_many_slabs(tiny_slabs, shape, log_target, dtype):
    x, y = make_pair(shape, dtype, log_target, 2)
    out = cpu.pointwise(strided(x), np.asfortranarray(y), log_target)
    assert tiny_slabs["slabs"] > 1
    assert_close(out, kl_elements(x, y, log_target), dtype, bound=element_error_bound(x, y, log_target))


@log_target_param
@dtype_param
def test_pointwise_mixed_c_and_f_orders(log_target, dtype):
    x, y = make_pair((9, 8, 3), dtype, log_target, 3)
    out = cpu.pointwise(np.ascontiguousarray(x), np.asfortranarray(y), log_target)
    assert_close(out, kl_elements(x, y, log_target), dtype, bound=element_error_bound(x, y, log_target))


@log_target_param
def test_pointwise_staging_at_default_slab_size(log_target):
    # 600 x 1000 strided elements: more than one slab of SLAB_ELEMENTS.
    x, y = make_pair((600, 1000), np.float32, log_target, 4)
    assert x.size > cpu.SLAB_ELEMENTS
    out = cpu.pointwise(strided(x), y, log_target)
    assert_close(out, kl_elements(x, y, log_target), np.float32, bound=element_error_bound(x, y, log_target))


def test_pointwise_empty_and_zero_dim():
    empty = np.zeros((3, 0), np.float32)
    assert cpu.pointwise(empty, empty, False).shape == (3, 0)
    out = cpu.pointwise(np.array(-1.0), np.array(1.0), False)
    assert out.shape == () and out == 1.0  # 1 * (log 1 - (-1))


def test_pointwise_float16_rounds_once_from_float64():
    # Every float16 input pair; the element is computed from the widened values and rounded once.
    rng = np.random.default_rng(5)
    x = np.asarray(rng.uniform(-8, 8, 4096), np.float16)
    y = np.asarray(rng.uniform(2.0**-14, 4, 4096), np.float16)
    out = cpu.pointwise(x, y, False)
    assert out.dtype == np.float16
    assert_close(out, kl_elements(x, y, False), np.float16, bound=element_error_bound(x, y, False))


def test_pointwise_float16_overflow_is_inf():
    # 8 * (log 8 + 65504) far exceeds the float16 range.
    x = np.array([-65504.0], np.float16)
    y = np.array([8.0], np.float16)
    assert cpu.pointwise(x, y, False)[0] == np.inf


def test_pointwise_masks_non_positive_targets():
    x = np.array([-np.inf, np.nan, np.inf, 1.0])
    y = np.array([0.0, -1.0, np.nan, -0.0])
    np.testing.assert_array_equal(cpu.pointwise(x, y, False), np.zeros(4))


# ---------------------------------------------------------------------------- reduce_sum
@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_reduce_sum_without_gradient(n, log_target, dtype):
    x, y = make_pair((n,), dtype, log_target, 10 + n)
    state, grad = cpu.reduce_sum(x, y, log_target)
    assert grad is None
    check_sum(state, x, y, log_target)


@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_reduce_sum_with_fused_gradient(n, log_target, dtype):
    x, y = make_pair((n,), dtype, log_target, 20 + n)
    coef = 1.0 / 3.0
    state, grad = cpu.reduce_sum(x, y, log_target, coef)
    check_sum(state, x, y, log_target)
    ref = input_grad(x, y, log_target, 1.0, coef)
    assert_close(grad, ref, dtype, bound=4 * EPS64 * np.abs(ref), what="fused grad")


@dtype_param
def test_fused_gradient_is_the_product_rounded_once(dtype):
    # Without log_target the gradient is coef * (-y) (0 where y <= 0): one float64 product,
    # rounded once, so it equals the reference bit for bit.
    x, y = make_pair((3000,), dtype, False, 30)
    coef = 0.1
    _, grad = cpu.reduce_sum(x, y, False, coef)
    expected = (np.where(y > 0, -y.astype(np.float64), 0.0) * coef).astype(dtype)
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("with_grad", [False, True], ids=["sum", "sum+grad"])
@log_target_param
@dtype_param
def test_reduce_sum_staged_in_many_slabs(tiny_slabs, with_grad, log_target, dtype):
    x, y = make_pair((4, 5, 6), dtype, log_target, 40)
    coef = 0.25 if with_grad else None
    state, grad = cpu.reduce_sum(strided(x), np.asfortranarray(y), log_target, coef)
    assert tiny_slabs["slabs"] > 1
    check_sum(state, x, y, log_target)
    if with_grad:
        assert grad.shape == x.shape
        ref = input_grad(x, y, log_target, 1.0, coef)
        assert_close(grad, ref, dtype, bound=4 * EPS64 * np.abs(ref), what="fused grad")


@pytest.mark.parametrize("with_grad", [False, True], ids=["sum", "sum+grad"])
def test_reduce_sum_large_staged_above_serial_threshold(with_grad):
    # Slabs of the default size that are themselves above SERIAL_BELOW (parallel per slab).
    x, y = make_pair((700, 900), np.float64, False, 41)
    coef = 2.0 if with_grad else None
    state, grad = cpu.reduce_sum(strided(x), y, False, coef)
    check_sum(state, x, y, False)
    if with_grad:
        ref = input_grad(x, y, False, 1.0, coef)
        assert_close(grad, ref, np.float64, bound=4 * EPS64 * np.abs(ref))


@dtype_param
def test_reduce_sum_layout_independent_bits(dtype):
    x, y = make_pair((40, 30), dtype, False, 42)
    expected_state, expected_grad = cpu.reduce_sum(x, y, False, 0.5)
    for xl, yl in [(np.asfortranarray(x), np.asfortranarray(y)), (strided(x), y), (x, np.asfortranarray(y))]:
        state, grad = cpu.reduce_sum(xl, yl, False, 0.5)
        assert state_value(state, np.float64) == state_value(expected_state, np.float64)
        assert state_value(state, dtype) == state_value(expected_state, dtype)
        np.testing.assert_array_equal(grad, expected_grad)


def test_reduce_sum_of_exact_elements_is_fsum():
    # y = 1: each element is exactly -x; the state must hold their exact sum.
    rng = np.random.default_rng(43)
    n = 70_000
    x = rng.choice([-1.0, 1.0], n) * rng.uniform(1, 2, n) * np.exp2(rng.integers(-70, 70, n))
    x[:3] = [1e300, 3.0, -1e300]
    state, _ = cpu.reduce_sum(x, np.ones(n), False)
    assert exact_sum.to_float64(state) == math.fsum((-x).tolist())


def test_reduce_sum_float32_state_is_correctly_rounded():
    # 1 + 2**-24 + 2**-60: just above a float32 tie; rounding through float64 would tie to 1.
    x = np.array([-1.0, -(2.0**-24), -(2.0**-60)], np.float32)
    state, _ = cpu.reduce_sum(x, np.ones(3, np.float32), False)
    assert exact_sum.to_float32(state) == 1 + 2.0**-23


def test_reduce_sum_float16_state_is_correctly_rounded():
    rng = np.random.default_rng(44)
    x = np.asarray(rng.uniform(-2, 2, 3000), np.float16)
    state, _ = cpu.reduce_sum(x, np.ones_like(x), False)
    got = np.float16(exact_sum.to_float16(state))
    exact = -sum((Fraction(float(v)) for v in x.tolist()), Fraction(0))
    neighbours = [np.nextafter(got, np.float16(-np.inf)), np.nextafter(got, np.float16(np.inf))]
    distance = abs(Fraction(float(got)) - exact)
    assert all(distance <= abs(Fraction(float(v)) - exact) for v in neighbours)


def test_reduce_sum_empty():
    empty = np.zeros((0, 4), np.float32)
    state, grad = cpu.reduce_sum(empty, empty, False)
    assert grad is None and exact_sum.to_float64(state) == 0.0
    state, grad = cpu.reduce_sum(empty, empty, False, 1.0)
    assert grad.shape == (0, 4) and grad.dtype == np.float32


def test_reduce_sum_counts_nan_and_infinities():
    state, _ = cpu.reduce_sum(np.array([-np.inf, 1.0]), np.array([0.5, 0.5]), False)
    assert exact_sum.to_float64(state) == np.inf
    state, _ = cpu.reduce_sum(np.array([-np.inf, np.inf]), np.array([0.5, 0.5]), False)
    assert math.isnan(exact_sum.to_float64(state))


# ---------------------------------------------------------------------------- reduce: bounded fast path
# IEEE 754 round-to-nearest overflows at FLT_MAX + half an ulp (2**128 - 2**103): a tie there goes
# to the "even" neighbour 2**128, which is out of range, so the result is infinite (§4.3.1, §7.4).
FLOAT32_OVERFLOW_THRESHOLD = Fraction(2**128 - 2**103)


def round_to_float32(value: Fraction) -> np.float32:
    """``value`` correctly rounded to float32 (nearest, ties to even), by comparing fractions."""
    if abs(value) >= FLOAT32_OVERFLOW_THRESHOLD:
        return np.float32(np.inf if value > 0 else -np.inf)
    candidate = np.float32(float(value))
    neighbours = [np.nextafter(candidate, np.float32(-np.inf)), candidate]
    neighbours.append(np.nextafter(candidate, np.float32(np.inf)))
    finite = [c for c in neighbours if np.isfinite(c)]
    return min(finite, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.uint32)) & 1))


def exact_reduce(x, y, log_target, divisor=1, coef=None):
    """(value, exact state, fused gradient) with every term added exactly: the reference path."""
    state, grad = cpu.reduce_sum(x, y, log_target, coef)
    return rounding.finish(state, divisor, x.dtype), state, grad


def fast_and_exact(x, y, log_target, divisor=1, coef=None):
    return cpu.reduce(x, y, log_target, divisor, coef), exact_reduce(x, y, log_target, divisor, coef)


def test_round_to_float32_helper_ties_to_even():
    assert round_to_float32(Fraction(1) + Fraction(1, 2**24)) == np.float32(1.0)
    assert round_to_float32(Fraction(1) + Fraction(3, 2**24)) == np.float32(1.0 + 2.0**-22)
    assert round_to_float32(Fraction(1, 3)) == np.float32(1 / 3)


def test_round_to_float32_helper_overflows_at_the_ieee_threshold():
    flt_max = np.finfo(np.float32).max
    assert round_to_float32(Fraction(2**128 - 2**103)) == np.float32(np.inf)
    assert round_to_float32(-Fraction(2**128 - 2**103)) == np.float32(-np.inf)
    assert round_to_float32(Fraction(2**128 - 2**103) - 1) == flt_max
    assert round_to_float32(Fraction(int(flt_max))) == flt_max


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("divisor", [1, 7])
@pytest.mark.parametrize("with_grad", [False, True], ids=["sum", "sum+grad"])
@log_target_param
@dtype_param
def test_reduce_fast_path_gives_the_exact_paths_bits(n, divisor, with_grad, log_target, dtype):
    x, y = make_pair((n,), dtype, log_target, 70 + n)
    coef = 0.5 if with_grad else None
    (value, state, grad), (exact_value, exact_state, exact_grad) = fast_and_exact(
        x, y, log_target, divisor, coef
    )
    assert value.tobytes() == exact_value.tobytes()
    assert isinstance(exact_state, np.ndarray)
    if dtype == np.float64:
        assert isinstance(state, np.ndarray)  # no float64 result can be proven: always the exact path
    if with_grad:
        np.testing.assert_array_equal(grad, exact_grad)
        ref_grad = input_grad(x, y, log_target, 1.0, coef)
        assert_close(grad, ref_grad, dtype, bound=4 * EPS64 * np.abs(ref_grad), what="fused grad")
    ref = reference_sum(kl_elements(x, y, log_target)) / divisor
    slack = element_error_bound(x, y, log_target).sum() / divisor
    assert_close(value, np.float64(ref), dtype, bound=slack, what="fast sum")


def test_reduce_fast_path_returns_its_partial_when_it_proves_the_value():
    x, y = make_pair((50_000,), np.float32, False, 80)
    value, partial, _ = cpu.reduce(x, y, False, 1)
    assert isinstance(partial, BoundedSum) and value.dtype == np.float32
    # Its parts give the value again, and the exact state rounds to the same bits.
    again = rounding.bounded_value(partial.state, partial.magnitude_total, 1, np.float32)
    assert again.tobytes() == value.tobytes()
    exact_state, _ = cpu.reduce_sum(x, y, False)
    assert rounding.finish(exact_state, 1, np.float32).tobytes() == value.tobytes()


def test_reduce_fast_path_returns_the_exact_state_when_not_proven():
    x = -np.array([1.0, 2.0**-24], np.float32)  # a rounding tie (log_target, y = 0: terms are -x)
    value, partial, _ = cpu.reduce(x, np.zeros_like(x), True, 1)
    assert isinstance(partial, np.ndarray) and value == np.float32(1.0)


@dtype_param
def test_reduce_fast_path_for_fortran_and_strided_inputs(dtype):
    x, y = make_pair((40, 30), dtype, False, 81)
    for xs, ys in ((np.asfortranarray(x), np.asfortranarray(y)), (strided(x), strided(y))):
        (value, _, grad), (exact_value, _, exact_grad) = fast_and_exact(xs, ys, False, 1, 0.25)
        assert value.tobytes() == exact_value.tobytes()
        np.testing.assert_array_equal(grad, exact_grad)
        assert grad.flags.f_contiguous == xs.flags.f_contiguous


def _bounded(x, y, log_target):
    state = exact_sum.new_state()
    magnitudes = cpu.bounded_kernel(log_target, False)(x, y, 0.0, np.empty(0, x.dtype), state)
    return rounding.bounded_value(state, magnitudes, 1, x.dtype)


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        ([1.0, 2.0**-24], 1.0),  # the midpoint: ties to even
        ([1.0, 2.0**-24, 2.0**-40], 1.0 + 2.0**-23),  # just above it
    ],
    ids=["tie", "above-tie"],
)
def test_a_sum_at_a_rounding_tie_is_not_proven_and_rounds_exactly(terms, expected):
    # With log_target and y = 0 each term is exactly -x. 1 + 2**-24 is the midpoint between two
    # float32 values: an error interval around a sum there rounds both ways, so the exact path
    # decides.
    x = -np.array(terms, np.float32)
    y = np.zeros_like(x)
    assert _bounded(x, y, True) is None
    value, _, _ = cpu.reduce(x, y, True, 1)
    exact = sum((Fraction(t) for t in terms), Fraction(0))
    assert value == np.float32(expected) == round_to_float32(exact)


def test_a_cancelling_sum_is_not_proven_and_comes_out_exact():
    # (1e20 + 1) - 1e20 is 0 in float64 in any order that adds the 1 first to a 1e20.
    x = np.array([-1e20, -1.0, 1e20], np.float32)
    y = np.zeros(3, np.float32)
    assert _bounded(x, y, True) is None
    value, _, _ = cpu.reduce(x, y, True, 1)
    assert value == np.float32(1.0)


def test_a_zero_sum_keeps_its_positive_sign():
    y = np.zeros(2, np.float32)
    cancelling = np.array([-1.0, 1.0], np.float32)  # terms 1 and -1: both ends of the interval differ in sign
    assert _bounded(cancelling, y, True) is None
    all_zero = np.array([0.5, -3.0], np.float32)  # probability targets 0: every term is exactly 0
    for x, log_target in ((cancelling, True), (all_zero, False)):
        value, _, _ = cpu.reduce(x, y, log_target, 1)
        assert value.tobytes() == np.float32(0.0).tobytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_terms_take_the_exact_path(bad):
    x = np.array([-1.0, bad, 0.5], np.float32)
    y = np.full(3, 0.5, np.float32)
    assert _bounded(x, y, False) is None
    (value, _, _), (exact_value, _, _) = fast_and_exact(x, y, False)
    assert value.tobytes() == exact_value.tobytes()
    expected = {np.nan: np.nan, np.inf: -np.inf, -np.inf: np.inf}[bad]
    np.testing.assert_equal(float(value), expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_infinite_targets_take_the_exact_path_and_give_its_terms(dtype):
    # The bounded kernel skips the +inf select of the term: for y = +inf its stand-in log is a
    # finite number (log(2**1024) here), and where x equals it the term there is NaN instead of
    # inf * (inf - x) = inf. A non-finite term sends the sum to the exact path, which gives inf.
    stand_in = float(fastmath.log64_normal(np.inf))
    x = np.array([-1.0, stand_in, 0.5, 2.0], dtype)
    y = np.array([0.5, np.inf, np.inf, 0.25], dtype)
    if dtype == np.float32:  # (the helper takes float32 arrays only)
        assert _bounded(x, y, False) is None
    for with_grad in (False, True):
        coef = 1.0 if with_grad else None
        (value, _, grad), (exact_value, _, exact_grad) = fast_and_exact(x, y, False, 1, coef)
        assert value.tobytes() == exact_value.tobytes()
        assert float(value) == reference_sum(kl_elements(x, y, False)) == np.inf
        if with_grad:
            np.testing.assert_array_equal(grad, exact_grad)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=200),
    st.integers(min_value=1, max_value=5),
)
# Exact sum -(2**128 - 2**103): exactly the float32 overflow threshold, which rounds to -inf.
@example([-1.1342743873830482e38, -1.1342745902071442e38, -1.1342745902071442e38], 1)
def test_property_fast_sum_is_correctly_rounded(values, divisor):
    # Terms are exactly -x (log_target, y = 0), so the exact sum is known as a fraction.
    x = np.array(values, np.float32)
    y = np.zeros_like(x)
    value, _, _ = cpu.reduce(x, y, True, divisor)
    exact = sum((Fraction(-float(v)) for v in x), Fraction(0))
    if divisor == 1:
        expected = round_to_float32(exact)
    else:  # the quotient of the correctly rounded float64 sum, rounded to float32
        expected = np.float32(np.float64(float(exact)) / np.float64(divisor))
    assert value.tobytes() == np.asarray(expected, np.float32).tobytes()


# ---------------------------------------------------------------------------- serial vs parallel
@pytest.mark.parametrize("with_grad", [False, True], ids=["sum", "sum+grad"])
@log_target_param
@dtype_param
def test_serial_and_parallel_paths_agree_bitwise(monkeypatch, with_grad, log_target, dtype):
    x, y = make_pair((50_000,), dtype, log_target, 50)  # many BLOCKs, so several chunks
    coef = 0.125 if with_grad else None
    results = []
    monkeypatch.setattr(cpu, "MIN_CHUNK", cpu.BLOCK)
    monkeypatch.setattr(pool, "_thread_count", 3)  # whatever the machine's cores: three threads
    for threshold in (1 << 40, 0):  # everything serial, then everything parallel
        monkeypatch.setattr(cpu, "SERIAL_BELOW", threshold)
        assert len(cpu._spans(x.size)) == 1 if threshold else len(cpu._spans(x.size)) >= 6
        state, grad = cpu.reduce_sum(x, y, log_target, coef)
        results.append((state_value(state, np.float64), state_value(state, dtype), grad))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    if with_grad:
        np.testing.assert_array_equal(results[0][2], results[1][2])
    check_sum(state, x, y, log_target)


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_input_grad_array_scalar_upstream(n, log_target, dtype):
    _, y = make_pair((n,), dtype, log_target, 60 + n)
    got = cpu.input_grad_array(y, -1.5, 0.2, log_target)
    ref = input_grad(None, y, log_target, -1.5, 0.2)
    assert_close(got, ref, dtype, bound=4 * EPS64 * np.abs(ref), what="input grad")


@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_input_grad_array_elementwise_upstream(n, log_target, dtype):
    _, y = make_pair((n,), dtype, log_target, 70 + n)
    upstream = np.asarray(np.random.default_rng(n).uniform(-2, 2, n), dtype)
    got = cpu.input_grad_array(y, upstream, 1.0, log_target)
    ref = input_grad(None, y, log_target, upstream, 1.0)
    assert_close(got, ref, dtype, bound=4 * EPS64 * np.abs(ref), what="input grad")


@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_target_grad_array_scalar_upstream(n, log_target, dtype):
    x, y = make_pair((n,), dtype, log_target, 80 + n)
    got = cpu.target_grad_array(x, y, 0.75, 0.5, log_target)
    ref = target_grad(x, y, log_target, 0.75, 0.5)
    assert_close(
        got, ref, dtype, bound=target_grad_error_bound(x, y, log_target, 0.75, 0.5), what="target grad"
    )


@pytest.mark.parametrize("n", SIZES)
@log_target_param
@dtype_param
def test_target_grad_array_elementwise_upstream(n, log_target, dtype):
    x, y = make_pair((n,), dtype, log_target, 90 + n)
    upstream = np.asarray(np.random.default_rng(n + 1).uniform(-2, 2, n), dtype)
    got = cpu.target_grad_array(x, y, upstream, 1.0, log_target)
    ref = target_grad(x, y, log_target, upstream, 1.0)
    assert_close(
        got, ref, dtype, bound=target_grad_error_bound(x, y, log_target, upstream), what="target grad"
    )


@log_target_param
@dtype_param
def test_gradients_staged_in_many_slabs(tiny_slabs, log_target, dtype):
    shape = (3, 4, 5)
    x, y = make_pair(shape, dtype, log_target, 100)
    upstream = np.asarray(np.random.default_rng(7).uniform(-2, 2, shape), dtype)
    gx = cpu.input_grad_array(strided(y), np.asfortranarray(upstream), 1.0, log_target)
    gy = cpu.target_grad_array(np.asfortranarray(x), strided(y), upstream, 1.0, log_target)
    assert tiny_slabs["slabs"] > 1
    ref_x = input_grad(x, y, log_target, upstream)
    ref_y = target_grad(x, y, log_target, upstream)
    assert_close(gx, ref_x, dtype, bound=4 * EPS64 * np.abs(ref_x), what="input grad")
    assert_close(
        gy, ref_y, dtype, bound=target_grad_error_bound(x, y, log_target, upstream), what="target grad"
    )


@log_target_param
def test_gradients_keep_shape_for_fortran_inputs(log_target):
    x, y = make_pair((7, 3, 2), np.float64, log_target, 110)
    gx = cpu.input_grad_array(np.asfortranarray(y), 2.0, 1.0, log_target)
    gy = cpu.target_grad_array(np.asfortranarray(x), np.asfortranarray(y), 2.0, 1.0, log_target)
    assert gx.shape == gy.shape == x.shape
    ref_y = target_grad(x, y, log_target, 2.0)
    assert_close(gy, ref_y, np.float64, bound=target_grad_error_bound(x, y, log_target, 2.0))


def test_target_grad_is_not_masked():
    x = np.array([0.5, 0.5, 0.5])
    y = np.array([0.0, -1.0, 1.0])
    got = cpu.target_grad_array(x, y, 1.0, 1.0, False)
    assert got[0] == -np.inf and math.isnan(got[1]) and got[2] == 0.5  # log 1 + 1 - 0.5


def test_input_grad_is_masked():
    y = np.array([0.0, -1.0, np.nan, 2.0])
    np.testing.assert_array_equal(cpu.input_grad_array(y, 1.0, 1.0, False), [0, 0, 0, -2.0])


def test_gradients_of_empty_arrays():
    empty = np.zeros((0, 3), np.float16)
    assert cpu.input_grad_array(empty, 1.0, 1.0, False).shape == (0, 3)
    assert cpu.target_grad_array(empty, empty, empty, 1.0, True).shape == (0, 3)


@pytest.mark.parametrize(("special", "expected"), [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, -np.inf)])
def test_bounded_value_lets_special_terms_decide(special, expected):
    """A rank that fell back to the exact path hands over an exact state with a zero magnitude
    total: its NaN or infinity counters must decide the combined value, whatever the bound."""
    state = exact_sum.new_state()
    exact_sum.add_float(state, 12.0)
    exact_sum.add_float(state, special)
    value = rounding.bounded_value(state, 3.0, 1, np.float32)
    assert value is not None and value.tobytes() == np.float32(expected).tobytes()
