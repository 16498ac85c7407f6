"""Tensor arithmetic on CUDA tensors: the elementwise kernels give the CPU's bits for + - * / and
comparisons (broadcasting, scalars both sides, every float dtype), reductions and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow

FLOATS = [np.float16, np.float32, np.float64]


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "lt", "eq"])
def test_binary_ops_match_the_cpu_bit_for_bit(op, dtype):
    a, b = _data((3, 1, 4), dtype, 1), _data((5, 1), dtype, 2)
    b[0, 0] = 0
    fn = {
        "add": lambda x, y: x + y,
        "sub": lambda x, y: x - y,
        "mul": lambda x, y: x * y,
        "div": lambda x, y: x / y,
        "lt": lambda x, y: x < y,
        "eq": lambda x, y: x == y,
    }[op]
    for left, right in ((a, b), (a, 0.1), (1.5, b)):
        cpu = fn(*(flow.tensor(v) if isinstance(v, np.ndarray) else v for v in (left, right)))
        gpu = fn(*(flow.tensor(v, device="cuda") if isinstance(v, np.ndarray) else v for v in (left, right)))
        assert gpu.is_cuda and gpu.dtype == cpu.dtype
        assert gpu.numpy().tobytes() == cpu.numpy().tobytes()


def test_zero_dim_tensors_and_scalars():
    for dtype in FLOATS:
        t = flow.tensor(np.array(1.25, dtype), device="cuda")
        for got, want in ((t * 0.5, 0.625), (3.0 - t, 1.75), (t / t, 1.0), (t > 1.0, True)):
            assert got.is_cuda and got.shape == () and got.item() == want


def test_mixed_dtypes_and_unary_ops():
    a = flow.tensor(_data((4,), np.float16, 3), device="cuda")
    b = flow.tensor(_data((4,), np.float32, 4), device="cuda")
    assert ((a * b).numpy() == (a.cpu() * b.cpu()).numpy()).all() and (a * b).dtype == flow.float32
    assert (-a).numpy().tobytes() == (-a.cpu()).numpy().tobytes()
    for dtype in FLOATS:  # exp and log: one float64 source on both devices, the same bits
        values = np.array([0.5, 1.0, 2.0, -3.25, 0.0, 1e-3, 40.0], dtype)
        x = flow.tensor(values, device="cuda")
        for method in ("exp", "log"):
            gpu, cpu = getattr(x, method)().numpy(), getattr(flow.tensor(values), method)().numpy()
            assert np.array_equal(gpu, cpu, equal_nan=True) and gpu.dtype == dtype


def test_sums_and_gradients_on_the_device():
    values = _data((3, 5), np.float32, 5)
    x = flow.tensor(values, device="cuda", requires_grad=True)
    assert x.sum().numpy().tobytes() == flow.tensor(values).sum().numpy().tobytes()
    assert x.mean(1).numpy().tobytes() == flow.tensor(values).mean(1).numpy().tobytes()
    w = flow.tensor(_data((5,), np.float32, 6), device="cuda")
    ((x * w).sum(0) ** 2.0).mean().backward()
    xc = flow.tensor(values, requires_grad=True)
    ((xc * w.cpu()).sum(0) ** 2.0).mean().backward()
    assert x.grad.is_cuda and x.grad.numpy().tobytes() == xc.grad.numpy().tobytes()
    assert x.reshape(5, 3).is_cuda and x.reshape(-1).numpy().tolist() == values.ravel().tolist()
    assert x.clone().numpy().tobytes() == values.tobytes()


def test_in_place_ops_on_the_device():
    t = flow.tensor(np.array([1.0, 2.0], np.float32), device="cuda")
    same = t
    t += 1.0
    t *= flow.tensor([2.0, 3.0], device="cuda")
    assert t is same and t.is_cuda and t.tolist() == [4.0, 9.0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_whole_sums_on_the_device_have_the_cpu_bits(dtype):
    rng = np.random.default_rng(7)
    cases = [
        rng.standard_normal(5000),
        np.array([3e38, 1.0, -3e38, 2.0**-149, 7.0]),
        rng.standard_normal(300) * 10.0 ** rng.integers(-20, 20, size=300),
        np.array([1.0, np.nan, 2.0]),
        np.array([np.inf, 1.0]),
        np.array([-0.0, -0.0]),
    ]
    for values in cases:
        with np.errstate(over="ignore"):
            host = values.astype(dtype)
        cpu, gpu = flow.tensor(host), flow.tensor(host, device="cuda")
        for got, want in ((gpu.sum(), cpu.sum()), (gpu.mean(), cpu.mean())):
            assert (
                got.is_cuda
                and got.numpy().tobytes() == want.numpy().tobytes()
                or (np.isnan(got.item()) and np.isnan(want.item()))
            )
