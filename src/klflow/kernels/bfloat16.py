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

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_SIGNIFICAND_BITS = 53
_KEPT_BITS = 8
_MIN_NORMAL_EXPONENT = -126
_INF_BITS = 0x7F80
_QUIET_NAN_BITS = 0x7FC0


def is_bfloat16(dtype: np.dtype) -> bool:
    return np.dtype(dtype) == BFLOAT16


def widen(values: np.ndarray) -> np.ndarray:
    """bfloat16 values as float64 (exact); anything else is returned as it is."""
    values = np.asarray(values)
    return values.astype(np.float64) if values.dtype == BFLOAT16 else values


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """``values`` (any real dtype) as bfloat16, each rounded once to nearest-even from its float64
    value; the shape is kept (a 0-d array stays 0-d)."""
    wide = np.asarray(values, dtype=np.float64)
    bits = np.ascontiguousarray(wide).view(np.uint64).astype(np.int64, copy=False)
    sign = (bits >> 48) & 0x8000
    magnitude = bits & 0x7FFFFFFFFFFFFFFF
    exponent = (magnitude >> 52) - 1023
    significand = (magnitude & 0xFFFFFFFFFFFFF) | (1 << 52)  # float64 subnormals round to zero anyway
    # Normal results keep 8 significant bits; subnormal ones keep bits down to 2**-133.
    normal = exponent >= _MIN_NORMAL_EXPONENT
    dropped = np.where(normal, _SIGNIFICAND_BITS - _KEPT_BITS, 45 + (_MIN_NORMAL_EXPONENT - exponent))
    vanishes = dropped > _SIGNIFICAND_BITS + 1  # below half the smallest subnormal: a zero
    shift = np.minimum(dropped, _SIGNIFICAND_BITS + 1)
    kept = significand >> shift
    remainder = significand & ((np.int64(1) << shift) - 1)
    halfway = np.int64(1) << (shift - 1)
    kept += (remainder > halfway) | ((remainder == halfway) & ((kept & 1) == 1))
    # A carry out of the significand moves into the exponent field, up to infinity, as IEEE wants.
    biased = np.where(normal, ((exponent - _MIN_NORMAL_EXPONENT) << 7) + kept, kept)
    biased = np.where(vanishes, 0, np.minimum(biased, _INF_BITS))
    special = magnitude >= 0x7FF0000000000000
    nan = magnitude > 0x7FF0000000000000
    biased = np.where(special, np.where(nan, _QUIET_NAN_BITS, _INF_BITS), biased)
    out = (sign | biased).astype(np.uint16)
    return out.view(BFLOAT16).reshape(wide.shape)
