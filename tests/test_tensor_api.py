"""Tensor API: flow.Tensor(data) / flow.Tensor(*shape), and the checks of assigning .grad (PyTorch's
messages)."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow


def test_tensor_class_as_constructor():
    t = flow.Tensor([1, 2, 3])
    assert t.dtype == flow.float32 and t.tolist() == [1.0, 2.0, 3.0] and isinstance(t, flow.Tensor)
    data = np.array([1.5, 2.5], dtype=np.float64)
    copied = flow.Tensor(data)
    assert copied.dtype == flow.float32 and copied.tolist() == [1.5, 2.5]
    data[0] = 9.0
    assert copied.tolist() == [1.5, 2.5]  # a copy, as OneFlow's Tensor(data)
    assert flow.Tensor(2, 3).shape == (2, 3) and flow.Tensor(2, 3).dtype == flow.float32
    assert flow.Tensor(flow.Size([4])).shape == (4,) and flow.Tensor().shape == (0,)
    assert flow.Tensor([1.0], requires_grad=True).requires_grad
    with pytest.raises(RuntimeError, match="negative dimension"):
        flow.Tensor(2, -1)
    assert isinstance(flow.nn.Parameter(flow.tensor([1.0])), flow.nn.Parameter)


def test_assigning_grad_checks_type_shape_dtype_device_and_globality():
    x = flow.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(
        TypeError, match="assigned grad expected to be a Tensor or None but got grad of type numpy.ndarray"
    ):
        x.grad = np.zeros(2, np.float32)
    with pytest.raises(TypeError, match="got grad of type int"):
        x.grad = 5
    with pytest.raises(
        RuntimeError, match=r"attempting to assign a gradient of size '\[3\]' to a tensor of size '\[2\]'"
    ):
        x.grad = flow.tensor([1.0, 2.0, 3.0])
    with pytest.raises(
        RuntimeError, match="with dtype 'klflow.float64' to a tensor with dtype 'klflow.float32'"
    ):
        x.grad = flow.tensor([1.0, 2.0], dtype=flow.float64)
    x.grad = flow.tensor([0.5, 0.5])
    (x * 2).sum().backward()
    assert x.grad.tolist() == [2.5, 2.5]
    x.grad = None
    assert x.grad is None
    del x.grad
    g = flow.tensor([1.0, 2.0]).to_global(flow.placement("cpu", [0]), flow.sbp.broadcast)
    with pytest.raises(RuntimeError, match="global gradient to a local tensor"):
        x.grad = g
