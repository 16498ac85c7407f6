"""Random tensors made on a CUDA device hold the CPU's bits (the same Philox source and the same
cosine and log, compiled for the device); under the simulator with 8-thread blocks."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow


@pytest.mark.parametrize("dtype", [flow.float16, flow.float32, flow.float64])
@pytest.mark.parametrize("make", [flow.rand, flow.randn])
def test_device_values_are_the_cpu_bits(make, dtype, sizes):
    for n in sizes[:3]:
        flow.manual_seed(n)
        on_device = make(n, 3, dtype=dtype, device="cuda")
        assert on_device.is_cuda and on_device.dtype == dtype and on_device.shape == (n, 3)
        flow.manual_seed(n)
        on_host = make(n, 3, dtype=dtype)
        np.testing.assert_array_equal(on_device.numpy().view(np.uint8), on_host.numpy().view(np.uint8))


def test_device_constants():
    x = flow.full((5,), 2.5, device="cuda", dtype=flow.float64)
    assert x.is_cuda and x.tolist() == [2.5] * 5
    assert flow.zeros_like(x).is_cuda and flow.zeros_like(x).tolist() == [0.0] * 5
    flow.manual_seed(1)
    r = flow.rand_like(x)
    flow.manual_seed(1)
    np.testing.assert_array_equal(r.numpy(), flow.rand(5, dtype=flow.float64).numpy())


@pytest.mark.parametrize("shape", [(), (0, 4), (2, 1, 3)])
def test_device_shapes(shape):
    flow.manual_seed(2)
    on_device = flow.randn(*shape, device="cuda")
    flow.manual_seed(2)
    assert on_device.shape == shape
    np.testing.assert_array_equal(on_device.numpy(), flow.randn(*shape).numpy())
