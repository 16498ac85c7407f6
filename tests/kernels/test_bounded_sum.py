"""``klflow.kernels.bounded_sum``: the error bound of float64 block sums taken in any order.

Each block is summed by a compiled loop built like the kernels' (``add_any_order``, so that LLVM
vectorises it into lanes), and the bound must cover the distance between the exact sum of the
block sums and the exact sum of all terms, computed with ``fractions.Fraction``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from klflow.kernels import bounded_sum
from klflow.kernels.bounded_sum import add_any_order, error_bound

BLOCK = 2048


@njit
def _block_sums(terms, block):
    """(the float64 block sums, their magnitude sums' running total), as the CPU kernels take them."""
    count = (terms.size + block - 1) // block
    sums = np.empty(count)
    magnitude_total = 0.0
    for b in range(count):
        part = terms[b * block : min((b + 1) * block, terms.size)]
        total = 0.0
        magnitude = 0.0
        for i in range(part.size):
            total = add_any_order(total, part[i])
            magnitude = add_any_order(magnitude, abs(part[i]))
        sums[b] = total
        magnitude_total += magnitude
    return sums, magnitude_total


def check_bound(terms: np.ndarray, block: int = BLOCK) -> None:
    sums, magnitude_total = _block_sums(terms, block)
    exact_terms = sum((Fraction(float(t)) for t in terms), Fraction(0))
    exact_sums = sum((Fraction(float(s)) for s in sums), Fraction(0))
    error = abs(exact_sums - exact_terms)
    bound = error_bound(magnitude_total)
    assert error <= Fraction(bound), (float(error), bound)


def test_bound_of_all_zero_terms_is_zero():
    assert error_bound(0.0) == 0.0
    check_bound(np.zeros(5000))
    check_bound(np.array([0.0, -0.0, 0.0]))


def test_bound_is_about_two_to_the_minus_forty_of_the_magnitudes():
    for magnitude in (1.0, 3.5e-300, 7.0e300):
        bound = error_bound(magnitude)
        assert 2.0**-41 * magnitude < bound < 2.0**-39 * magnitude + 5e-324


def test_bound_is_never_zero_for_nonzero_magnitudes_even_underflowing():
    assert error_bound(5e-324) > 0.0
    assert error_bound(1e-310) > 0.0


def test_no_bound_for_non_finite_magnitudes():
    assert math.isnan(error_bound(math.nan))
    assert math.isinf(error_bound(math.inf))


def test_bound_holds_under_heavy_cancellation():
    rng = np.random.default_rng(3)
    big = rng.standard_normal(BLOCK) * 1e20
    terms = np.concatenate([big, rng.standard_normal(BLOCK), -big[::-1]])
    rng.shuffle(terms)
    check_bound(terms)


def test_bound_holds_for_full_blocks_of_equal_terms():
    # Every addition of a long run of equal values rounds: the worst case of the bound's count.
    check_bound(np.full(bounded_sum.BLOCK_LIMIT * 3, 0.1), block=bounded_sum.BLOCK_LIMIT)
    check_bound(np.full(BLOCK * 2 + 17, 1.0 / 3.0))


def test_bound_holds_among_subnormals():
    tiny = np.array([5e-324, 3e-320, -1.5e-321, 2.2250738585072014e-308, -1e-310] * 700)
    check_bound(tiny)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=150, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.integers(min_value=1, max_value=64))
def test_property_bound_holds_for_any_terms_and_block_size(values, block):
    check_bound(np.array(values), block)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=2, max_size=40),
    st.integers(min_value=0, max_value=2**31),
)
def test_property_bound_holds_with_cancelling_large_pairs(small, seed):
    rng = np.random.default_rng(seed)
    large = rng.standard_normal(len(small)) * 10.0 ** rng.integers(10, 200, len(small))
    terms = np.concatenate([small, large, -large])
    rng.shuffle(terms)
    check_bound(terms, block=16)


def test_add_any_order_lets_the_sum_loop_vectorise():
    llvm = pytest.importorskip("llvmlite.binding")
    if "+avx2" not in llvm.get_host_cpu_features().flatten():
        pytest.skip("CPU without AVX2")

    @njit
    def total(values):
        result = 0.0
        for i in range(values.size):
            result = add_any_order(result, values[i])
        return result

    @njit
    def plain_total(values):
        result = 0.0
        for i in range(values.size):
            result += values[i]
        return result

    packed_add = re.compile(r"\bvaddpd\s+[^\n]*%[yz]mm")
    for function, vectorised in ((total, True), (plain_total, False)):
        function(np.ones(64))
        assembly = function.inspect_asm(function.signatures[0])
        assert bool(packed_add.search(assembly)) == vectorised


def test_add_any_order_accepts_only_float64():
    @njit
    def add_integers(a, b):
        return add_any_order(a, b)

    with pytest.raises(Exception, match="add_any_order"):
        add_integers(1, 2)
