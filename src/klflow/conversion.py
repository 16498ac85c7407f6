"""Differentiable dtype/device conversion and the two small array operations autograd needs.

>>> import klflow as flow
>>> x = flow.tensor([1.0, 2.0], requires_grad=True)
>>> y = x.double(); y.dtype, y.grad_fn
(klflow.float64, <cast_backward>)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klflow import dtypes
from klflow.autograd import graph
from klflow.device import CPU
from klflow.device import device as Device
from klflow.tensor import Tensor


def _move(data: Any, source: Device, target: Device) -> Any:
    if source == target:
        return data
    if target.type == "cuda":
        dtypes.check_device_supports(dtypes.from_numpy_dtype(data.dtype), target)
    from klflow import cuda

    if target.type == "cpu":
        return cuda.to_host(data)
    if source.type == "cpu":
        return cuda.to_device(data, target)
    return cuda.to_device(cuda.to_host(data), target)


def _cast(data: Any, dtype: dtypes.dtype, on: Device) -> Any:
    if data.dtype == dtype.numpy:
        return data
    if on.type == "cpu":
        return dtypes.cast_host(data, dtype)  # bfloat16: rounded once from the float64 value
    from klflow import cuda

    return cuda.cast(data, dtype.numpy)


class CastNode(graph.Node):
    """Gradient of a dtype/device conversion: the same values converted back."""

    def __init__(self, source: Tensor) -> None:
        super().__init__([source])
        self.op_name = "cast" if source.device.type == "cpu" else "copy"
        self.source_dtype = source.dtype
        self.source_device = source.device

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (convert(grad_output, self.source_dtype, self.source_device),)


def convert(t: Tensor, dtype: dtypes.dtype, device: Device) -> Tensor:
    """``t`` as ``dtype`` on ``device`` (a new tensor; recorded for autograd when needed)."""
    data = t._data
    if device.type != "cpu" and t.device.type == "cpu":
        data = _move(_cast(data, dtype, t.device), t.device, device)  # cast on the host first
    else:
        data = _cast(_move(data, t.device, device), dtype, device)
    record = t.requires_grad and graph.is_grad_enabled()
    out = Tensor(data, device=device, global_info=t._global)
    if record:
        out.grad_fn = CastNode(t)
        out._requires_grad = True
    return out


def gradient_seed(t: Tensor) -> Tensor:
    """The implicit gradient of a one-element tensor: 1 (a *logical* 1 for a global tensor).

    The gradient of a partial-sum value reaches every component whole, so it is a broadcast 1.
    """
    if t._global is not None:
        from klflow.ops import global_tensors as api

        return api.gradient_seed(t)
    seed = Tensor(full(t._data.shape, 1.0, t.dtype, t.device), device=t.device)
    seed._fill_value = 1.0  # lets the loss's backward skip reading it back from a GPU
    return seed


def full(shape: tuple[int, ...], value: float, dtype: dtypes.dtype, device: Device) -> Any:
    """A new local array of ``shape`` filled with ``value``."""
    if device.type == "cpu":
        return np.full(shape, dtypes.cast_host(np.array(value), dtype), dtype=dtype.numpy)
    from klflow import cuda

    return cuda.full(shape, value, dtype.numpy, device)


def add(a: Tensor, b: Tensor) -> Tensor:
    """a + b elementwise, for summing gradients of the same shape and dtype."""
    if a._global is not None or b._global is not None:
        from klflow.ops import global_tensors as api

        return api.add(a, b)
    if a.device != b.device:
        b = b.to(a.device)
    if b.dtype != a.dtype:
        b = b.to(a.dtype)
    if a.device.type == "cpu":
        return Tensor(np.add(a._data, b._data), device=a.device)
    from klflow import cuda

    return Tensor(cuda.add(a._data, b._data), device=a.device)


def host_values(t: Tensor) -> np.ndarray:
    """This rank's local data on the host (no communication)."""
    if t.device == CPU:
        return t._data
    from klflow import cuda

    return cuda.to_host(t._data)
