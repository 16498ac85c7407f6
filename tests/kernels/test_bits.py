"""The half-precision conversions of kernels/bits.py against NumPy, on every binary16 value and on
the rounding edge cases of float32 and float64 inputs.

Both conversions are integer arithmetic (no F16C instruction, no compiler-rt routine), so they
give these bits on every x86-64 CPU; tests/kernels/test_isa_levels.py runs the loss itself under
each ``NUMBA_CPU_NAME``.
"""

from __future__ import annotations

import numpy as np
import pytest
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from klflow.kernels.bits import f64_to_half_bits, half_bits_to_f32

ALL_HALVES = np.arange(1 << 16, dtype=np.uint16)
QUIET_BIT_F32 = 0x00400000


@njit
def widen_all(bits):
    out = np.empty(bits.size, dtype=np.float32)
    for i in range(bits.size):
        out[i] = half_bits_to_f32(bits[i])
    return out


@njit
def narrow_all(values):
    out = np.empty(values.size, dtype=np.uint16)
    for i in range(values.size):
        out[i] = f64_to_half_bits(values[i])
    return out


def test_every_half_widens_to_numpys_float32():
    got = widen_all(ALL_HALVES).view(np.uint32)
    expected = ALL_HALVES.view(np.float16).astype(np.float32).view(np.uint32)
    nan = np.isnan(ALL_HALVES.view(np.float16))
    assert nan.sum() == 2 * 1023 * 1  # 2 signs x 1023 nonzero payloads
    np.testing.assert_array_equal(got[~nan], expected[~nan])
    # NaNs: sign and payload kept, and quiet (as F16C's vcvtph2ps gives them).
    half_nan = ALL_HALVES[nan].astype(np.uint32)
    np.testing.assert_array_equal(got[nan] >> 31, half_nan >> 15)
    np.testing.assert_array_equal((got[nan] >> 13) & 0x1FF, half_nan & 0x1FF)
    assert np.all(got[nan] & QUIET_BIT_F32) and np.all((got[nan] >> 23) & 0xFF == 0xFF)


@intrinsic
def _llvm_half_to_float(typingctx, bits):
    """LLVM's own conversion (one vcvtph2ps with F16C): what the kernels used before."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def test_every_half_gives_the_bits_of_the_f16c_instruction():
    llvm = pytest.importorskip("llvmlite.binding")
    if "+f16c" not in llvm.get_host_cpu_features().flatten():
        pytest.skip("CPU without F16C: LLVM's conversion would call a routine numba does not link")

    @njit
    def hardware_all(bits):
        out = np.empty(bits.size, dtype=np.float32)
        for i in range(bits.size):
            out[i] = _llvm_half_to_float(bits[i])
        return out

    np.testing.assert_array_equal(
        widen_all(ALL_HALVES).view(np.uint32), hardware_all(ALL_HALVES).view(np.uint32)
    )


def test_every_half_value_narrows_back_to_itself():
    finite = ALL_HALVES[np.isfinite(ALL_HALVES.view(np.float16))]
    values = finite.view(np.float16).astype(np.float64)
    np.testing.assert_array_equal(narrow_all(values), finite)


def _edge_cases() -> np.ndarray:
    """Halfway points between neighbouring halves (ties go to even), one ulp of float32 and of
    float64 either side of them, the subnormal and overflow boundaries, zeros and specials."""
    halves = ALL_HALVES[np.isfinite(ALL_HALVES.view(np.float16))].view(np.float16)
    ordered = np.unique(halves.astype(np.float64))
    midpoints = (ordered[:-1] + ordered[1:]) / 2  # exact in float64
    top = np.float64(np.finfo(np.float16).max)
    midpoints = np.concatenate([midpoints, [top + 16.0, -(top + 16.0)]])  # 65520: rounds to inf
    cases = [midpoints, np.nextafter(midpoints, np.inf), np.nextafter(midpoints, -np.inf)]
    as_f32 = midpoints.astype(np.float32)
    cases += [
        as_f32.astype(np.float64),
        np.nextafter(as_f32, np.float32(np.inf)).astype(np.float64),
        np.nextafter(as_f32, np.float32(-np.inf)).astype(np.float64),
    ]
    tiny = [2.0**-25, 2.0**-26, 3 * 2.0**-26, 2.0**-24, 2.0**-14, 2.0**-14 - 2.0**-25, 5e-324, 1e-300]
    specials = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 1e5, -1e300, 1e300]
    cases.append(np.array(tiny + [-t for t in tiny] + specials))
    return np.concatenate(cases)


def test_float64_and_float32_rounding_edge_cases_narrow_like_numpy():
    values = _edge_cases()
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)  # NumPy rounds float64 once
    np.testing.assert_array_equal(narrow_all(values), expected)


def test_nan_narrows_to_a_quiet_nan_of_its_sign():
    got = narrow_all(np.array([np.nan, -np.nan, np.float64(np.float32(np.nan))]))
    assert [int(g) for g in got] == [0x7E00, 0xFE00, 0x7E00]
