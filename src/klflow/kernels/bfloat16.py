"""bfloat16 on the host: widening (exact) and rounding once to nearest-even from float64.

bfloat16 is float32's upper half: 8 significant bits and float32's exponent range. Values are
rounded straight from float64 with integer arithmetic, never through float32 (which would round
twice: a float64 just above a bfloat16 tie becomes the tie in float32, then goes to even).
NaN stays NaN (quiet, sign kept), overflow goes to infinity, tiny values to bfloat16's
subnormals (steps of 2**-133) or to a zero of their sign.

>>> import numpy as np
>>> round_to_bfloat16(np.array([1.0 + 2.0**-8, 1.0 + 2.0**-8 + 2.0**-40])).tolist()  # a tie, then not
[1.0, 1.0078125]
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from klflow.kernels import pool
from klflow.kernels.bits import f64_as_i64
from klflow.kernels.jit import inlinable, jit

_MIN_NORMAL_EXPONENT = -126
_SERIAL_BELOW = 1 << 16  # elements under which the worker threads cost more than they save
_INF_BITS = 0x7F80
_QUIET_NAN_BITS = 0x7FC0


@functools.cache
def bfloat16_dtype() -> np.dtype:
    """ml_dtypes' NumPy bfloat16, loaded on first use (its extension takes a while to load)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def __getattr__(name: str) -> Any:
    if name == "BFLOAT16":
        return bfloat16_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_NATIVE_CHARS = frozenset("efd?")  # NumPy's own float16/32/64 and bool


def is_bfloat16(dtype: Any) -> bool:
    """Whether a klflow or NumPy dtype is bfloat16, without loading ml_dtypes to ask (NumPy's
    own dtypes are told apart by their one-letter code first: their ``name`` is slow Python)."""
    if isinstance(dtype, np.dtype) and dtype.char in _NATIVE_CHARS:
        return False
    return getattr(dtype, "name", None) == "bfloat16"


def widen(values: np.ndarray) -> np.ndarray:
    """bfloat16 values as float64 (exact); anything else is returned as it is."""
    values = np.asarray(values)
    return values.astype(np.float64) if is_bfloat16(values.dtype) else values


@inlinable  # numba-level inlining trips numba's SSA checks on such bit code (see bits.py)
def f64_to_bfloat16_bits(value):
    """A float64 as bfloat16 bits (uint16), rounded once to nearest-even: integer operations and
    selects only, so loops calling it vectorise."""
    bits = f64_as_i64(value)
    sign = (bits >> 48) & 0x8000
    magnitude = bits & 0x7FFFFFFFFFFFFFFF
    exponent = (magnitude >> 52) - 1023
    significand = (magnitude & 0xFFFFFFFFFFFFF) | 0x10000000000000  # float64 subnormals vanish anyway
    normal = exponent >= _MIN_NORMAL_EXPONENT
    # Normal results keep 8 significant bits; subnormal ones keep bits down to 2**-133.
    dropped = 45 if normal else 45 + (_MIN_NORMAL_EXPONENT - exponent)
    shift = min(dropped, 54)  # from 54 on, nothing is kept and the remainder is under half a step
    kept = significand >> shift
    remainder = significand & ((np.int64(1) << shift) - 1)
    halfway = np.int64(1) << (shift - 1)
    kept += np.int64((remainder > halfway) | ((remainder == halfway) & ((kept & 1) == 1)))
    # A carry out of the significand moves into the exponent field, up to inf, as IEEE wants.
    biased = ((exponent - _MIN_NORMAL_EXPONENT) << 7) + kept if normal else kept
    biased = min(biased, _INF_BITS)
    biased = 0 if dropped > 54 else biased
    special = _QUIET_NAN_BITS if magnitude > 0x7FF0000000000000 else _INF_BITS  # NaN stays NaN
    biased = special if magnitude >= 0x7FF0000000000000 else biased
    return np.uint16(sign | biased)


@jit(nogil=True)
def _round_into(source, out):
    for i in range(source.size):
        out[i] = f64_to_bfloat16_bits(np.float64(source[i]))


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """``values`` (any real dtype) as bfloat16, each rounded once to nearest-even from its float64
    value; the shape is kept (a 0-d array stays 0-d)."""
    values = np.asarray(values)
    if values.dtype not in (np.float64, np.float32):
        values = values.astype(np.float64)
    flat = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(flat.size, dtype=np.uint16)
    threads = pool.thread_count()
    pieces = 1 if flat.size < _SERIAL_BELOW else threads
    step = -(-flat.size // pieces) if flat.size else 0

    def piece(i: int) -> None:
        _round_into(flat[i * step : (i + 1) * step], out[i * step : (i + 1) * step])

    if flat.size:
        pool.run(piece, pieces)
    return out.view(bfloat16_dtype()).reshape(values.shape)
