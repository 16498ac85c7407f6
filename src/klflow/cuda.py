"""``klflow.cuda``: GPU availability and the device-array plumbing behind CUDA tensors.

CUDA tensors hold numba device arrays. Anything exporting ``__cuda_array_interface__`` (numba,
CuPy, PyTorch CUDA tensors) is wrapped without a copy. Without a GPU, or without ``numba-cuda``
(``pip install klflow[cuda]``), every CUDA request raises a ``RuntimeError`` that says why, and
the rest of klflow keeps working.

>>> import klflow as flow
>>> isinstance(flow.cuda.is_available(), bool)
True
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from klflow.device import device as Device


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Any, str | None]:
    """(numba.cuda module or None, reason it is unusable)."""
    try:
        from numba import cuda
    except Exception as err:  # pragma: no cover - depends on the installation
        return None, f"numba's CUDA target could not be imported ({err})"
    try:
        if not cuda.is_available():
            return None, "no CUDA driver or GPU was found"
    except Exception as err:  # pragma: no cover - depends on the driver
        return None, f"the CUDA driver failed to initialise ({err})"
    return cuda, None


def is_available() -> bool:
    """Whether CUDA tensors can be created here (a GPU, or numba's simulator when enabled)."""
    return _probe()[0] is not None


def _cuda() -> Any:
    module, reason = _probe()
    if module is None:
        raise RuntimeError(
            f"CUDA tensors need an NVIDIA GPU and numba-cuda (pip install 'klflow[cuda]'): {reason}"
        )
    return module


def device_count() -> int:
    if not is_available():
        return 0
    return len(_cuda().gpus)


def _select(device: Device) -> Any:
    cuda = _cuda()
    count = len(cuda.gpus)
    if device.index >= count:
        raise RuntimeError(f"{device} was requested but this machine has {count} CUDA device(s)")
    cuda.select_device(device.index)
    return cuda


def rank_device() -> Device:
    """The GPU for this rank in a global CUDA placement: node-local rank mod GPU count."""
    from klflow import env

    count = device_count()
    if count == 0:
        _cuda()  # raises with the reason
    return Device("cuda", env.get_local_rank() % count)


def device_of(array: Any) -> Device:
    """The device holding a CUDA device array (the current device in numba's context)."""
    cuda = _cuda()
    get_device = getattr(cuda, "get_current_device", None)  # absent from numba's simulator
    return Device("cuda", getattr(get_device(), "id", 0) if get_device is not None else 0)


def _simulated_array_type() -> type | None:
    from numba.core import config

    if not config.ENABLE_CUDASIM:
        return None
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return FakeCUDAArray


def is_device_array(obj: Any) -> bool:
    """Whether ``obj`` is GPU data: it exports ``__cuda_array_interface__`` (or is a simulator array)."""
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    simulated = _simulated_array_type()
    return simulated is not None and isinstance(obj, simulated)


def wrap_interface(obj: Any) -> Any:
    """A numba device array viewing the memory of any ``__cuda_array_interface__`` exporter."""
    cuda = _cuda()
    simulated = _simulated_array_type()
    if simulated is not None and isinstance(obj, simulated):
        return obj  # the simulator's arrays have no interface to view through
    array = cuda.as_cuda_array(obj)
    np.dtype(array.dtype)  # validates the dtype is one NumPy knows
    return array


def to_device(host: np.ndarray, device: Device) -> Any:
    cuda = _select(device)
    return cuda.to_device(np.asarray(host, order="C"))  # keeps 0-d arrays 0-d


def to_host(array: Any) -> np.ndarray:
    return array.copy_to_host()


def copy(array: Any) -> Any:
    from klflow.kernels import cuda as kernels

    return kernels.copy(array)


def cast(array: Any, dtype: np.dtype) -> Any:
    from klflow.kernels import cuda as kernels

    return kernels.cast(array, dtype)


def full(shape: tuple[int, ...], value: float, dtype: np.dtype, device: Device) -> Any:
    from klflow.kernels import cuda as kernels

    _select(device)
    return kernels.full(shape, value, dtype)


def fill_zeros(array: Any) -> None:
    from klflow.kernels import cuda as kernels

    kernels.fill(array, 0.0)


def add(a: Any, b: Any) -> Any:
    from klflow.kernels import cuda as kernels

    return kernels.add(a, b)


def empty_cache() -> None:
    """Give klflow's cached, unused GPU buffers back to the driver (like torch.cuda.empty_cache)."""
    if is_available():
        from klflow.kernels import cuda as kernels

        kernels.empty_cache()
