"""The loss on CUDA tensors against the float64 reference; the same semantics as on the CPU.

(``test_cuda_bits.py`` checks that the results are the CPU's bits.)"""

from __future__ import annotations

import numpy as np
import pytest
from reference import input_grad, kl_elements, kl_reduce, target_grad

import klflow as flow
import klflow.nn.functional as F

REDUCTIONS = ["none", "sum", "mean", "batchmean"]
# Elements are computed in float64 and rounded once to the dtype, as on the CPU.
TOLERANCE = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}


def _data(n, dtype, log_target, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    y = (rng.standard_normal(n) if log_target else rng.random(n)).astype(dtype)
    if not log_target and n > 2:
        y[::5] = 0
        y[1::7] = -0.5
    return x, y


def _close(got, expected, dtype):
    got = np.asarray(got, np.float64)
    # Compare with the reference rounded to the dtype: a float16 sum of 4M terms is inf.
    expected = np.asarray(expected, np.float64).astype(dtype).astype(np.float64)
    if not np.array_equal(np.isfinite(got), np.isfinite(expected)):
        return False
    finite = np.isfinite(expected)
    got, expected = got[finite], expected[finite]
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-30)
    return float(np.max(np.abs(got - expected))) / scale <= TOLERANCE[dtype] if expected.size else True


def _within_term_rounding(got, x, y, reduction, log_target, dtype):
    """A reduced value off the reference by at most what the float64 terms' own errors (a few
    float64 ulps of each |term|) can add up to, plus one rounding of the result."""
    terms = np.abs(kl_elements(x, y, log_target))
    divisor = {"sum": 1, "mean": x.size, "batchmean": x.shape[0]}[reduction]
    expected = kl_reduce(x, y, reduction, log_target)
    eps = np.finfo(np.float64).eps
    bound = 4 * eps * float(np.sum(terms)) / divisor + abs(float(np.spacing(np.asarray(expected, dtype))))
    rounded = np.asarray(expected).astype(dtype)
    if not np.isfinite(rounded):
        return bool(np.asarray(got) == rounded)
    return abs(float(got) - float(expected)) <= bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_matches_reference(sizes, dtype, log_target, reduction):
    for n in sizes:
        x, y = _data(n, dtype, log_target)
        out = F.kl_div(
            flow.tensor(x, device="cuda"),
            flow.tensor(y, device="cuda"),
            reduction=reduction,
            log_target=log_target,
        )
        assert out.device == flow.device("cuda:0") and out.dtype == flow.tensor(x).dtype
        expected = kl_reduce(x, y, reduction, log_target)
        if reduction == "none":
            assert _close(out.numpy(), expected, dtype), (n, out.numpy(), expected)
        else:
            assert _within_term_rounding(out.numpy(), x, y, reduction, log_target, dtype), (
                n,
                out.numpy(),
                expected,
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_reference(sizes, dtype, log_target, reduction):
    n = sizes[-1]
    x, y = _data(n, dtype, log_target, seed=1)
    if not log_target:
        y = np.abs(y) + np.asarray(0.01, dtype)  # the target gradient's log needs y > 0
    xc = flow.tensor(x, device="cuda", requires_grad=True)
    yc = flow.tensor(y, device="cuda", requires_grad=True)
    out = F.kl_div(xc, yc, reduction=reduction, log_target=log_target)
    upstream = np.linspace(0.5, 1.5, n).astype(dtype) if reduction == "none" else np.asarray(1.0)
    out.backward(flow.tensor(upstream, device="cuda") if reduction == "none" else None)
    scale = {"none": 1, "sum": 1, "mean": n, "batchmean": n}[reduction]
    assert xc.grad.device == flow.device("cuda:0")
    assert _close(xc.grad.numpy(), input_grad(x, y, log_target, upstream, 1 / scale), dtype)
    assert _close(yc.grad.numpy(), target_grad(x, y, log_target, upstream, 1 / scale), dtype)


def test_special_values_follow_oneflow():
    x = np.array([-np.inf, np.nan, 0.5, 0.5, np.nan], np.float32)
    y = np.array([0.0, -1.0, np.nan, 0.25, 0.5], np.float32)
    out = F.kl_div(flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda"), reduction="none").numpy()
    assert out[:3].tolist() == [0.0, 0.0, 0.0]  # target 0, negative or NaN: exactly 0
    assert np.isclose(out[3], 0.25 * (np.log(0.25) - 0.5))
    assert np.isnan(out[4])  # NaN input where y > 0 propagates


def test_reductions_are_deterministic(sizes):
    x, y = _data(sizes[-1], np.float32, False, seed=3)
    xc, yc = flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda")
    first = F.kl_div(xc, yc, reduction="sum").numpy().tobytes()
    assert all(F.kl_div(xc, yc, reduction="sum").numpy().tobytes() == first for _ in range(3))


def test_fused_forward_backward_writes_the_gradient_in_the_loss_pass(sizes):
    x, y = _data(sizes[-1], np.float32, False, seed=4)
    xc = flow.tensor(x, device="cuda", requires_grad=True)
    loss = F.kl_div(xc, flow.tensor(y, device="cuda"), reduction="batchmean")
    assert loss.grad_fn.fused_input_grad is not None  # written by the forward kernel
    loss.backward()
    assert _close(xc.grad.numpy(), np.where(y > 0, -y, 0) / x.size, np.float32)


def test_empty_and_zero_dim():
    empty = flow.tensor(np.zeros(0, np.float32), device="cuda")
    assert F.kl_div(empty, empty, reduction="mean").item() == 0.0
    assert np.isnan(F.kl_div(empty, empty, reduction="batchmean").item())
    scalar = flow.tensor(0.5, device="cuda")
    assert F.kl_div(scalar, scalar, reduction="sum").item() == pytest.approx(0.5 * (np.log(0.5) - 0.5))


def test_reference_examples_print_with_the_device():
    x = flow.tensor([-0.9021705, 0.08798598, 1.04686249], device="cuda")
    y = flow.tensor([1.22386942, -0.89729659, 0.01615712], device="cuda")
    assert repr(F.kl_div(x, y, reduction="none")) == (
        "tensor([ 1.3514,  0.0000, -0.0836], device='cuda:0', dtype=klflow.float32)"
    )
    assert repr(F.kl_div(x, y, reduction="mean")) == "tensor(0.4226, device='cuda:0', dtype=klflow.float32)"
    assert repr(F.kl_div(x, y, reduction="sum", log_target=True)) == (
        "tensor(5.7801, device='cuda:0', dtype=klflow.float32)"
    )
