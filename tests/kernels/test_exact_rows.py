"""Row sums and the compensated whole-array fast path: exact against rational references."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import round_fraction

from klflow.kernels import exact_rows, rounding

float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(deadline=None)
@given(st.lists(float32s, min_size=1, max_size=300), st.sampled_from([1, 3, 7]))
@example([3.0e38, 3.0e38, -3.0e38, 1.0, 2.0**-149], 1)
@example([2.0**100, 1.0, -(2.0**100), 2.0**-100], 1)
def test_fast_path_decides_only_what_the_exact_sum_gives(values, divisor):
    array = np.array(values, dtype=np.float32)
    partial = exact_rows.bounded_total(array)
    value = rounding.bounded_value(partial.state, partial.magnitude_total, divisor, np.dtype(np.float32))
    exact = sum((Fraction(float(v)) for v in array), Fraction(0))
    if divisor == 1:
        want = round_fraction(exact, np.float32)
    else:
        want = np.array(float(round_fraction(exact, np.float64)) / divisor).astype(np.float32)
    states = exact_rows.row_states(array.reshape(1, -1))
    assert exact_rows.round_rows(states, divisor, np.dtype(np.float32))[0].tobytes() == want.tobytes()
    if value is not None:
        assert value.tobytes() == want.tobytes()


def test_fast_path_decides_zero_mean_data():
    values = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)
    partial = exact_rows.bounded_total(values)
    assert rounding.bounded_value(partial.state, partial.magnitude_total, 1, np.dtype(np.float32)) is not None


@settings(deadline=None)
@given(
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.integers(0, 4),
    st.integers(0, 40),  # row lengths around the lane count, and tails
    st.sampled_from([1, 3]),
    st.integers(0, 2**16),
)
@example(np.float64, 2, 3, 1, 0)
def test_fast_row_sums_equal_the_exact_states(dtype, rows, n, divisor, seed):
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # float16 overflows to infinities, which the sums must handle
        values = (rng.standard_normal((rows, n)) * 10.0 ** rng.integers(-30, 30, size=(rows, n))).astype(
            dtype
        )
    if values.size and seed % 2 == 0:
        values.flat[seed % values.size] = [np.nan, np.inf, -0.0][seed % 3]
    if rows and seed % 5 == 0:
        values[0] = -0.0  # an exact zero of negative zeros is +0.0 on both paths
    with np.errstate(all="ignore"):
        want = exact_rows.round_rows(exact_rows.row_states(values), divisor, np.dtype(dtype))
        got = exact_rows.round_row_sums(values, divisor, np.dtype(dtype))
        by_columns = exact_rows.round_row_sums(
            np.ascontiguousarray(values.T), divisor, np.dtype(dtype), columns=True
        )
    for result in (got, by_columns):
        assert result.dtype == want.dtype and result.shape == want.shape
        assert np.array_equal(result, want, equal_nan=True)
        assert np.array_equal(np.signbit(result), np.signbit(want))
