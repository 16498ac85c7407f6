"""Accuracy, special values and vectorisation of ``klflow.kernels.fastmath``.

float64 errors are measured against NumPy's ``longdouble`` functions (x87 80-bit extended precision
here, 64-bit significand), which are independent of the code under test and about 2**11 times more
precise than float64; float32 errors against NumPy's float64 functions, 2**29 times more precise
than float32. Errors are in units of the ulp of the exact result in the output format.
"""

from __future__ import annotations

import math
import platform
import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from klflow.kernels.fastmath import exp32, exp64, log32, log64, log64_normal, log64_positive

# Largest errors over these tests, a little above the measured maxima (0.76 and 0.77 ulp for
# float64, 0.76 and 0.78 float32 ulp over every float32 input); tighter than the one-ulp contract
# so that a regression shows before it breaks the contract.
# Without FMA hardware the fused steps round twice and log reaches 0.86 ulp.
_FUSED_MULTIPLY_ADD = llvm.get_host_cpu_features().get("fma", False) or platform.machine().lower() in (
    "aarch64",
    "arm64",
)
LOG64_MAX_ULP = 0.8 if _FUSED_MULTIPLY_ADD else 0.9
EXP64_MAX_ULP = 0.8
LOG32_MAX_ULP = 0.8 if _FUSED_MULTIPLY_ADD else 0.9
EXP32_MAX_ULP = 0.8
CONTRACT_MAX_ULP = 1.0

SMALLEST_SUBNORMAL = 5e-324
SMALLEST_NORMAL = 2.2250738585072014e-308
LARGEST_FINITE = 1.7976931348623157e308
# exp(x) is finite up to this x and inf beyond; e**x rounds to 0 below EXP_ZERO_BELOW.
EXP_OVERFLOW_THRESHOLD = 709.782712893384
EXP_ZERO_BELOW = -745.1332191019412

needs_extended_longdouble = pytest.mark.skipif(
    np.finfo(np.longdouble).nmant < 63, reason="needs an 80-bit or wider np.longdouble reference"
)
pytestmark = needs_extended_longdouble


# Not cached on purpose: numba's cache is keyed on this file alone, so after a change to fastmath.py
# a cached loop would go on testing the old inlined code. Compiling them all takes about 2 s.
@njit
def _log_all(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(values.size):
        out[i] = log64(values[i])
    return out


@njit
def _log_normal_all(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size, dtype=np.float64)
    for i in range(values.size):
        out[i] = log64_normal(np.float64(values[i]))
    return out


@njit
def _log_positive_all(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(values.size):
        out[i] = log64_positive(values[i])
    return out


@njit
def _exp_all(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(values.size):
        out[i] = exp64(values[i])
    return out


@njit
def _log32_all(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(values.size):
        out[i] = log32(values[i])
    return out


@njit
def _exp32_all(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(values.size):
        out[i] = exp32(values[i])
    return out


@njit
def _log_one(x: float) -> float:
    return log64(x)


@njit
def _exp_one(x: float) -> float:
    return exp64(x)


def ulp_errors(got: np.ndarray, exact: np.ndarray, float_type: type = np.float64) -> np.ndarray:
    """|got - exact| in ulps of ``exact`` in ``float_type`` (the spacing of the binade holding it).

    Taking the binade of the exact value, not of its rounding, keeps the unit right next to
    powers of two; below the normal range the unit is the subnormal spacing.
    """
    info = np.finfo(float_type)
    wide = np.longdouble if float_type is np.float64 else np.float64
    exact = np.asarray(exact, dtype=wide)
    _, exponent = np.frexp(np.abs(exact))
    smallest_exponent = int(np.log2(info.smallest_subnormal))
    unit = np.ldexp(wide(1.0), np.maximum(exponent.astype(np.int64) - info.nmant - 1, smallest_exponent))
    return np.abs(np.asarray(got, dtype=wide) - exact) / unit


def exact_log(x: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(x, dtype=np.float64).astype(np.longdouble))


def exact_exp(x: np.ndarray) -> np.ndarray:
    return np.exp(np.asarray(x, dtype=np.float64).astype(np.longdouble))


def max_log_error(x: np.ndarray) -> float:
    return float(ulp_errors(_log_all(x), exact_log(x)).max())


def max_exp_error(x: np.ndarray) -> float:
    return float(ulp_errors(_exp_all(x), exact_exp(x)).max())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


# --- log64 accuracy -------------------------------------------------------------------------------


def test_log_whole_exponent_range_including_subnormals(rng: np.random.Generator) -> None:
    x = np.exp2(rng.uniform(-1074.0, 1024.0, 400_000))
    x = x[(x > 0) & np.isfinite(x)]
    assert np.any(x < SMALLEST_NORMAL)
    assert max_log_error(x) <= LOG64_MAX_ULP


def test_log_reduced_range_where_rounding_is_worst(rng: np.random.Generator) -> None:
    # The reduced argument spans [sqrt(1/2), sqrt(2)); the largest errors sit near its ends.
    x = np.concatenate([rng.uniform(0.70, 1.42, 400_000), rng.uniform(1.40, 1.4143, 200_000)])
    assert max_log_error(x) <= LOG64_MAX_ULP


def test_log_near_one(rng: np.random.Generator) -> None:
    steps = np.arange(1, 2000, dtype=np.float64)
    x = np.concatenate(
        [
            1.0 + steps * np.finfo(np.float64).eps,
            1.0 - steps * np.finfo(np.float64).epsneg,
            1.0 + rng.uniform(-(2.0**-20), 2.0**-20, 100_000),
            1.0 + rng.uniform(-(2.0**-6), 2.0**-6, 100_000),
        ]
    )
    assert max_log_error(x) <= LOG64_MAX_ULP
    assert _log_one(1.0) == 0.0 and not math.copysign(1.0, _log_one(1.0)) < 0


def test_log_subnormals(rng: np.random.Generator) -> None:
    x = np.concatenate(
        [
            rng.uniform(0.0, SMALLEST_NORMAL, 100_000),
            np.arange(1, 4096) * SMALLEST_SUBNORMAL,
            [SMALLEST_NORMAL - SMALLEST_SUBNORMAL],
        ]
    )
    x = x[x > 0]
    assert max_log_error(x) <= LOG64_MAX_ULP


def test_log_powers_of_two_and_extremes() -> None:
    x = np.ldexp(1.0, np.arange(-1074, 1024))
    x = np.concatenate([x, [LARGEST_FINITE, SMALLEST_NORMAL, np.nextafter(1.0, 0.0)]])
    assert max_log_error(x) <= LOG64_MAX_ULP


def test_log_of_widened_float32_skipping_special_values() -> None:
    # log64_normal's whole domain in the kernels: every positive finite float32 (subnormals
    # included: widened, they are normal doubles), sampled with a prime stride, plus all
    # mantissas of the binade around 1.
    x = np.concatenate([float32_sample(991, 1, 0x7F800000), float32_sample(1, 0x3F700000, 0x3F900000)])
    wide = x.astype(np.float64)
    got = _log_normal_all(x)
    assert float(ulp_errors(got, exact_log(wide)).max()) <= LOG64_MAX_ULP
    np.testing.assert_array_equal(got, _log_all(wide))  # the same bits as the full log64


def test_log_positive_matches_log64_on_positive_doubles(rng: np.random.Generator) -> None:
    x = np.exp2(rng.uniform(-1074.0, 1024.0, 200_000))
    x = np.concatenate([x[(x > 0) & np.isfinite(x)], np.arange(1, 512) * SMALLEST_SUBNORMAL])
    np.testing.assert_array_equal(_log_positive_all(x), _log_all(x))


# --- exp64 accuracy -------------------------------------------------------------------------------


def test_exp_whole_finite_range(rng: np.random.Generator) -> None:
    x = rng.uniform(-745.0, EXP_OVERFLOW_THRESHOLD, 400_000)
    assert max_exp_error(x) <= EXP64_MAX_ULP


def test_exp_moderate_and_tiny_arguments(rng: np.random.Generator) -> None:
    x = np.concatenate(
        [
            rng.uniform(-2.0, 2.0, 200_000),
            # Around +-ln2/2, where the reduced argument is largest.
            rng.uniform(0.34, 0.36, 50_000),
            rng.uniform(-0.36, -0.34, 50_000),
            rng.uniform(-1e-9, 1e-9, 20_000),
            [0.0, -0.0, SMALLEST_SUBNORMAL, -SMALLEST_SUBNORMAL, 1e-300],
        ]
    )
    assert max_exp_error(x) <= EXP64_MAX_ULP


def test_exp_gradual_underflow_into_subnormals(rng: np.random.Generator) -> None:
    # Results below 2**-1022 carry fewer bits and are measured in the subnormal spacing 2**-1074.
    x = np.concatenate([rng.uniform(-745.13, -708.3, 200_000), np.linspace(-708.5, -708.3, 5000)])
    assert max_exp_error(x) <= EXP64_MAX_ULP


def test_exp_near_overflow_threshold() -> None:
    below = EXP_OVERFLOW_THRESHOLD - np.arange(2000) * 2.0**-43
    got = _exp_all(below)
    assert np.all(np.isfinite(got))
    assert float(ulp_errors(got, exact_exp(below)).max()) <= EXP64_MAX_ULP
    above = np.array(
        [np.nextafter(EXP_OVERFLOW_THRESHOLD, np.inf), 709.8, 710.0, 711.0, 1e4, 1e300, LARGEST_FINITE]
    )
    assert np.all(_exp_all(above) == np.inf)


def test_exp_near_underflow_threshold() -> None:
    # Within one subnormal ulp of the exact value right at the threshold, exactly 0 below it.
    near = EXP_ZERO_BELOW + np.arange(-200, 200) * 2.0**-40
    assert float(ulp_errors(_exp_all(near), exact_exp(near)).max()) <= CONTRACT_MAX_ULP
    far = np.array([-745.2, -746.0, -800.0, -1e4, -1e300, -LARGEST_FINITE])
    got = _exp_all(far)
    assert np.all(got == 0.0) and not np.any(np.signbit(got))
    assert _exp_one(-745.0) == 5e-324


def test_exp_of_integers_and_ln2_multiples() -> None:
    x = np.concatenate([np.arange(-745.0, 710.0), np.arange(-1074, 1024) * math.log(2.0)])
    x = x[(x > EXP_ZERO_BELOW) & (x < EXP_OVERFLOW_THRESHOLD)]
    assert max_exp_error(x) <= EXP64_MAX_ULP
    assert _exp_one(0.0) == 1.0 and _exp_one(-0.0) == 1.0


# --- special values -------------------------------------------------------------------------------


def test_log_special_values() -> None:
    assert _log_one(0.0) == -np.inf
    assert _log_one(-0.0) == -np.inf
    assert _log_one(np.inf) == np.inf
    for not_in_domain in (-SMALLEST_SUBNORMAL, -1.0, -LARGEST_FINITE, -np.inf):
        assert math.isnan(_log_one(not_in_domain))
    quiet_nan_with_payload = np.array([0x7FF8000000000123], dtype=np.int64).view(np.float64)[0]
    for nan in (np.nan, -np.nan, quiet_nan_with_payload, -quiet_nan_with_payload):
        assert math.isnan(_log_one(nan))
    assert _log_one(SMALLEST_SUBNORMAL) == pytest.approx(-744.4400719213812, rel=2e-16)
    assert _log_one(LARGEST_FINITE) == pytest.approx(709.782712893384, rel=2e-16)


def test_exp_special_values() -> None:
    assert _exp_one(-np.inf) == 0.0
    assert _exp_one(np.inf) == np.inf
    quiet_nan_with_payload = np.array([0x7FF8000000000123], dtype=np.int64).view(np.float64)[0]
    for nan in (np.nan, -np.nan, quiet_nan_with_payload, -quiet_nan_with_payload):
        assert math.isnan(_exp_one(nan))


def test_special_values_inside_a_vectorised_loop() -> None:
    # The same inputs through the vector body (8 lanes and a remainder) as through scalar calls.
    x = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            -1.0,
            1.0,
            SMALLEST_SUBNORMAL,
            2.0,
            0.5,
            -SMALLEST_NORMAL,
            LARGEST_FINITE,
            710.0,
            -746.0,
            3.0,
            np.e,
            -2.0,
        ]
        * 3
    )
    got_log = _log_all(x)
    got_exp = _exp_all(x)
    for i, value in enumerate(x):
        assert got_log[i] == _log_one(value) or (np.isnan(got_log[i]) and np.isnan(_log_one(value)))
        assert got_exp[i] == _exp_one(value) or (np.isnan(got_exp[i]) and np.isnan(_exp_one(value)))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(np.isnan(got_log), np.isnan(np.log(x)))
        np.testing.assert_array_equal(np.isinf(got_log), np.isinf(np.log(x)))
    np.testing.assert_array_equal(np.isnan(got_exp), np.isnan(x))


# --- float32 --------------------------------------------------------------------------------------

FLOAT32_SMALLEST_NORMAL = np.finfo(np.float32).smallest_normal
FLOAT32_SMALLEST_SUBNORMAL = np.finfo(np.float32).smallest_subnormal
FLOAT32_LARGEST_FINITE = np.finfo(np.float32).max
# The float32 next to ln(FLT_MAX): exp32 is finite at the first, inf at the second, and e**x is
# 61 ulps and 2.5 ulps away from the rounding boundary there, so these are clear-cut.
FLOAT32_EXP_LAST_FINITE = np.float32(88.72283)
FLOAT32_EXP_FIRST_INFINITE = np.nextafter(FLOAT32_EXP_LAST_FINITE, np.float32(np.inf))


def float32_sample(stride: int, low_bits: int, high_bits: int) -> np.ndarray:
    """Every ``stride``-th float32 bit pattern in [low_bits, high_bits), as float32 values."""
    return np.arange(low_bits, high_bits, stride, dtype=np.int64).astype(np.uint32).view(np.float32)


def max_log32_error(x: np.ndarray) -> float:
    return float(ulp_errors(_log32_all(x), np.log(x.astype(np.float64)), np.float32).max())


def max_exp32_error(x: np.ndarray) -> float:
    return float(ulp_errors(_exp32_all(x), np.exp(x.astype(np.float64)), np.float32).max())


def test_log32_sampled_over_every_positive_float32() -> None:
    # A prime stride walks through all binades, subnormals included, with scattered mantissas.
    x = float32_sample(997, 1, 0x7F800000)
    assert max_log32_error(x) <= LOG32_MAX_ULP


def test_log32_dense_near_one_and_in_subnormals() -> None:
    one = 0x3F800000
    x = np.concatenate(
        [
            float32_sample(1, one - 2**20, one + 2**20),
            float32_sample(1, 1, 2**20),
            float32_sample(1, 0x3F340000, 0x3F360000),  # near sqrt(1/2)
            float32_sample(1, 0x3FB40000, 0x3FB60000),
        ]
    )  # near sqrt(2)
    assert max_log32_error(x) <= LOG32_MAX_ULP


def test_exp32_sampled_over_its_finite_range() -> None:
    positive = float32_sample(331, 0, int(np.array(FLOAT32_EXP_LAST_FINITE).view(np.uint32)) + 1)
    negative = -float32_sample(331, 0, int(np.array(np.float32(103.9)).view(np.uint32)))
    x = np.concatenate([positive, negative])
    assert max_exp32_error(x) <= EXP32_MAX_ULP


def test_exp32_thresholds_and_special_values() -> None:
    assert np.isfinite(_exp32_all(np.array([FLOAT32_EXP_LAST_FINITE]))[0])
    overflowing = np.array(
        [FLOAT32_EXP_FIRST_INFINITE, 89.0, 1e4, FLOAT32_LARGEST_FINITE, np.inf], dtype=np.float32
    )
    assert np.all(_exp32_all(overflowing) == np.inf)
    vanishing = np.array([-104.0, -150.0, -FLOAT32_LARGEST_FINITE, -np.inf], dtype=np.float32)
    got = _exp32_all(vanishing)
    assert np.all(got == 0) and not np.any(np.signbit(got))
    # Gradual underflow, in units of the float32 subnormal spacing.
    x = np.linspace(-103.97, -87.0, 100_000, dtype=np.float32)
    assert max_exp32_error(x) <= EXP32_MAX_ULP
    nans = np.array([np.nan, -np.nan], dtype=np.float32)
    assert np.all(np.isnan(_exp32_all(nans)))
    assert np.all(_exp32_all(np.array([0.0, -0.0], dtype=np.float32)) == 1)


def test_log32_special_values() -> None:
    x = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            -np.nan,
            -1.0,
            -FLOAT32_SMALLEST_SUBNORMAL,
            1.0,
            FLOAT32_SMALLEST_SUBNORMAL,
            FLOAT32_LARGEST_FINITE,
        ],
        dtype=np.float32,
    )
    got = _log32_all(x)
    assert got.dtype == np.float32
    assert got[0] == -np.inf and got[1] == -np.inf and got[2] == np.inf
    assert np.all(np.isnan(got[3:8]))
    assert got[8] == 0
    assert got[9] == np.float32(np.log(FLOAT32_SMALLEST_SUBNORMAL.astype(np.float64)))
    assert got[10] == np.float32(np.log(FLOAT32_LARGEST_FINITE.astype(np.float64)))


# --- properties -----------------------------------------------------------------------------------

positive_floats = st.floats(
    min_value=SMALLEST_SUBNORMAL, max_value=LARGEST_FINITE, allow_nan=False, allow_infinity=False
)
exp_arguments = st.floats(
    min_value=-745.0, max_value=EXP_OVERFLOW_THRESHOLD, allow_nan=False, allow_infinity=False
)


@settings(max_examples=400, deadline=None)
@given(positive_floats)
def test_log_ulp_bound_property(x: float) -> None:
    assert float(ulp_errors(_log_one(x), exact_log(x))) <= CONTRACT_MAX_ULP


@settings(max_examples=400, deadline=None)
@given(exp_arguments)
def test_exp_ulp_bound_property(x: float) -> None:
    assert float(ulp_errors(_exp_one(x), exact_exp(x))) <= CONTRACT_MAX_ULP


@settings(max_examples=300, deadline=None)
@given(positive_floats, positive_floats)
def test_log_is_monotonic(a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    assert _log_one(low) <= _log_one(high)
    assert _log_one(low) <= _log_one(float(np.nextafter(low, LARGEST_FINITE)))


@settings(max_examples=300, deadline=None)
@given(exp_arguments, exp_arguments)
def test_exp_is_monotonic(a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    assert _exp_one(low) <= _exp_one(high)
    assert _exp_one(low) <= _exp_one(float(np.nextafter(low, np.inf)))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-700.0, max_value=700.0, allow_nan=False))
def test_log_inverts_exp(x: float) -> None:
    # exp's relative error becomes an absolute error of log, so small |x| is judged at scale 1.
    scale = max(abs(x), 1.0)
    assert abs(_log_one(_exp_one(x)) - x) <= 4 * float(np.spacing(scale))


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=float(FLOAT32_SMALLEST_SUBNORMAL), max_value=float(FLOAT32_LARGEST_FINITE), width=32)
)
def test_log32_ulp_bound_property(x: float) -> None:
    value = np.array([x], dtype=np.float32)
    error = ulp_errors(_log32_all(value), np.log(value.astype(np.float64)), np.float32)
    assert float(error[0]) <= CONTRACT_MAX_ULP


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=float(np.float32(-103.9)), max_value=float(np.float32(88.72)), width=32))
def test_exp32_ulp_bound_property(x: float) -> None:
    value = np.array([x], dtype=np.float32)
    error = ulp_errors(_exp32_all(value), np.exp(value.astype(np.float64)), np.float32)
    assert float(error[0]) <= CONTRACT_MAX_ULP


# --- vectorisation --------------------------------------------------------------------------------

_HAS_AVX2 = llvm.get_host_cpu_features().get("avx2", False)
_LIBM_REFERENCE = re.compile(r"(?:\$|\bcallq?\s+|\bjmpq?\s+)_*(?:log|exp)\w*")
_VECTOR_ARITHMETIC = re.compile(r"\bv(?:fmadd\w*|mul|add|sub)p[sd]\s+[^\n]*%[yz]mm")


def _assembly_of_loop(function, dtype: type = np.float64) -> str:
    # Compiled afresh (no cache) so that the assembly text is available.
    @njit
    def loop(values: np.ndarray, out: np.ndarray) -> None:
        for i in range(values.size):
            out[i] = function(values[i])

    values = np.ones(64, dtype=dtype)
    loop(values, np.empty_like(values))
    return loop.inspect_asm(loop.signatures[0])


@pytest.mark.skipif(not _HAS_AVX2, reason="host CPU has no AVX2")
@pytest.mark.parametrize(
    ("function", "dtype"),
    [(log64, np.float64), (exp64, np.float64), (log32, np.float32), (exp32, np.float32)],
    ids=["log64", "exp64", "log32", "exp32"],
)
def test_loop_compiles_to_vector_instructions_without_libm_calls(function, dtype: type) -> None:
    assembly = _assembly_of_loop(function, dtype)
    assert _VECTOR_ARITHMETIC.search(assembly), "the loop was not vectorised"
    assert not _LIBM_REFERENCE.search(assembly), "the loop calls a libm log/exp"


@pytest.mark.skipif(not _HAS_AVX2, reason="host CPU has no AVX2")
def test_libm_detector_flags_a_math_log_loop() -> None:
    @njit(inline="always")
    def libm_log(x: float) -> float:
        return math.log(x)

    assert _LIBM_REFERENCE.search(_assembly_of_loop(libm_log))
