"""softmax/log_softmax on CUDA tensors: the CPU's bits (values and gradients), which
tests/nn/test_softmax.py checks against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow
import klflow.nn.functional as F


def _run(x: np.ndarray, upstream: np.ndarray, dim: int, log: bool, device: str):
    t = flow.tensor(x, device=device, requires_grad=True)
    out = (F.log_softmax if log else F.softmax)(t, dim=dim)
    out.backward(flow.tensor(upstream, device=device))
    return out.numpy(), t.grad.numpy()


@pytest.mark.parametrize("log", [True, False], ids=["log_softmax", "softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_cuda_has_the_cpu_bits(simulated, dtype, log):
    rng = np.random.default_rng(3)
    shapes = [(3, 21), (2, 5, 4), (1,), ()] if simulated else [(64, 4099), (8, 33, 129), (1,), ()]
    for shape in shapes:
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        if x.size > 4:
            x.reshape(-1)[2] = -np.inf
        upstream = rng.standard_normal(shape).astype(dtype)
        # Negative dims name the same rows (normalised before any kernel): the simulator, which
        # runs every GPU thread as Python, takes each dim once.
        first_dim = 0 if simulated else -len(shape)
        for dim in range(first_dim, max(len(shape), 1)) if shape else (0,):
            gpu_out, gpu_grad = _run(x, upstream, dim, log, "cuda")
            cpu_out, cpu_grad = _run(x, upstream, dim, log, "cpu")
            assert gpu_out.tobytes() == cpu_out.tobytes(), (shape, dim)
            assert gpu_grad.tobytes() == cpu_grad.tobytes(), (shape, dim)


def test_cuda_special_rows_are_nan_as_on_the_cpu():
    x = np.array([[np.inf, 0.0, 1.0], [np.nan, 0.0, 0.0], [-np.inf, -np.inf, -np.inf]], np.float32)
    for log in (True, False):
        out = (F.log_softmax if log else F.softmax)(flow.tensor(x, device="cuda"), dim=1)
        assert np.isnan(out.numpy()).all()
    out = F.softmax(flow.tensor([[-np.inf, 0.0]], device="cuda"), dim=1)
    assert out.numpy().tolist() == [[0.0, 1.0]] and out.device.type == "cuda"
