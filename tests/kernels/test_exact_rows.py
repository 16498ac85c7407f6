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
