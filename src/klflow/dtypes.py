"""klflow's dtypes: float16/32/64 for data, and ``bool`` for the results of comparisons.

>>> import klflow as flow
>>> flow.float32, flow.float32.itemsize, flow.bool.is_floating_point
(klflow.float32, 4, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=True)
class dtype:
    """A floating element type; compares, hashes and prints like ``oneflow.float32``."""

    name: str
    numpy: np.dtype

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_floating_point(self) -> bool:
        return self.name != "bool"  # (ml_dtypes' bfloat16 is not of NumPy's kind "f")

    def __repr__(self) -> str:
        return f"klflow.{self.name}"

    __str__ = __repr__


float16 = dtype("float16", np.dtype(np.float16))
float32 = dtype("float32", np.dtype(np.float32))
float64 = dtype("float64", np.dtype(np.float64))
bool_ = dtype("bool", np.dtype(np.bool_))  # what comparisons return (``klflow.bool``)
half, float, double = float16, float32, float64  # OneFlow's aliases

_BY_NUMPY = {d.numpy: d for d in (float16, float32, float64)}
_NAMES = "float16, float32, float64, bfloat16"


def _bfloat16() -> dtype:
    """``klflow.bfloat16``, made on first use: host arrays of bfloat16 use ml_dtypes' NumPy dtype,
    whose extension takes a while to load, so programs that never touch bfloat16 do not load it.
    Losses compute on bfloat16 as on float16."""
    found = globals().get("bfloat16")
    if found is None:
        import ml_dtypes

        found = dtype("bfloat16", np.dtype(ml_dtypes.bfloat16))
        _BY_NUMPY[found.numpy] = found
        globals()["bfloat16"] = found  # later lookups are plain attribute reads
    return found


def __getattr__(name: str) -> Any:
    if name == "bfloat16":
        return _bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_bfloat16(value: Any) -> bool:
    """Whether a klflow or NumPy dtype is bfloat16 (without loading ml_dtypes to ask)."""
    if isinstance(value, np.dtype) and value.char in "efd?":  # NumPy's own: ``name`` is slow
        return False
    return getattr(value, "name", None) == "bfloat16"


def of_array(np_dtype: Any) -> dtype:
    """The klflow dtype of an array a tensor holds: a floating dtype, or bool."""
    np_dtype = np.dtype(np_dtype)
    if np_dtype == np.bool_:
        return bool_
    return from_numpy_dtype(np_dtype)


def from_numpy_dtype(np_dtype: Any) -> dtype:
    """The klflow dtype for a NumPy dtype; anything but float16/32/64 is a ``TypeError``."""
    np_dtype = np.dtype(np_dtype)
    found = _BY_NUMPY.get(np_dtype)  # the common case first: every tensor made asks this
    if found is not None:
        return found
    if is_bfloat16(np_dtype):
        return _bfloat16()
    try:
        return _BY_NUMPY[np_dtype.newbyteorder("=")]  # '>f8' is float64 data too
    except KeyError:
        raise TypeError(
            f"klflow tensors hold floating-point data only ({_NAMES}); "
            f"got data of dtype {np_dtype.name}. Convert it first, e.g. with .astype('float32')."
        ) from None


def resolve(value: Any) -> dtype:
    """Accept a klflow dtype, a NumPy dtype or its name; refuse the rest with a ``TypeError``."""
    if isinstance(value, dtype):
        return value
    if value is None:
        raise TypeError(
            "dtype must be klflow.float16, klflow.float32, klflow.float64 or klflow.bfloat16, not None"
        )
    if value == "bfloat16":  # NumPy knows the name only once ml_dtypes is loaded
        return _bfloat16()
    try:
        np_dtype = np.dtype(value)
    except TypeError:
        raise TypeError(
            f"dtype must be klflow.float16, klflow.float32, klflow.float64 or klflow.bfloat16; got {value!r}"
        ) from None
    return from_numpy_dtype(np_dtype)  # klflow.bool itself is accepted above, not NumPy's bool


def check_device_supports(value: dtype, device: Any) -> None:
    """bfloat16 tensors live on the host: numba's CUDA target has no bfloat16 arrays."""
    if is_bfloat16(value) and getattr(device, "type", device) == "cuda":
        raise TypeError(
            f"klflow.bfloat16 tensors are CPU-only (numba's CUDA target has no bfloat16 arrays); "
            f"got a request for {device}. Use float16 or float32 on the GPU."
        )


def cast_host(values: np.ndarray, dtype: dtype) -> np.ndarray:
    """A host array of real ``values`` as ``dtype``, each element rounded once to nearest-even
    (``values`` itself if it already has that dtype). bfloat16 is rounded straight from the
    float64 value, never through float32."""
    if values.dtype == dtype.numpy:
        return values
    if is_bfloat16(dtype):
        from klflow.kernels.bfloat16 import round_to_bfloat16

        return round_to_bfloat16(values)
    return values.astype(dtype.numpy)


bool = bool_  # noqa: A001 - OneFlow's name; after every use of the builtin above
