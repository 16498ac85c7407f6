"""CUDA results are the CPU's bits, and both are checked against an independent float64 reference.

Every dtype × reduction × log_target, the loss and both gradients, on random data, on sums that
cancel, sit on a rounding tie, overflow the dtype, or hold NaN and infinities. With a
log-probability target of 0 (or a probability target of 1) every term is exactly ``-x``, so the
exact sum is known as a fraction and the reference is exact too. NaN compares as NaN: the CPU
and a GPU make different NaN bit patterns.

Under numba's simulator the arrays are small and blocks have 8 threads, so the multi-block,
grid-stride and tail paths run; on a GPU the same tests run at full size.
"""

from __future__ import annotations

import gc
import weakref
from fractions import Fraction

import numpy as np
import pytest
from data import make_pair
from hypothesis import example, given, settings
from hypothesis import strategies as st
from launches import LaunchCounter
from reference import (
    EPS64,
    assert_close,
    element_error_bound,
    input_grad,
    kl_elements,
    kl_reduce,
    reduction_divisor,
    round_fraction,
    same_bits,
    target_grad,
    target_grad_error_bound,
)

import klflow as flow
import klflow.nn.functional as F
from klflow.kernels import cuda as kernels

DTYPES = [np.float16, np.float32, np.float64]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]
CASES = ["random", "cancelling", "tie", "overflow", "special"]
EXACT_CASES = {"cancelling", "tie", "overflow"}  # every term is exactly -x


@pytest.fixture
def n(simulated):
    return 61 if simulated else (1 << 20) + 3


def _padded(values, n, dtype):
    """``values`` spread over ``n`` elements (zeros elsewhere: terms of exactly 0)."""
    x = np.zeros(n, dtype)
    positions = np.linspace(0, n - 1, len(values)).astype(int)
    x[positions] = np.asarray(values, dtype)
    return x


def case_data(case, dtype, log_target, n, seed=0):
    """(x, y) for one case; in EXACT_CASES every term is exactly -x."""
    rng = np.random.default_rng(seed)
    info = np.finfo(dtype)
    if case in ("random", "special"):
        x, y = make_pair((n,), dtype, log_target, seed)
        if case == "special":
            x[1::9] = np.nan
            x[2::11] = -np.inf
            x[3::13] = np.inf
            y[4::7] = np.nan
            y[5::17] = np.inf
            y[6::19] = -np.inf
        return x, y
    if case == "cancelling":
        # Pairs a, -a over a wide range (whose float64 block sums lose the small terms) plus a few
        # small values: the sum is the small ones' alone.
        scale = 10.0 ** rng.uniform(-2, 4 if dtype == np.float16 else 30, n // 4)
        big = (rng.standard_normal(n // 4) * scale).astype(dtype)
        small = rng.uniform(-1, 1, 3).astype(dtype)
        values = np.concatenate([big, -big[::-1], small])
    elif case == "tie":
        # 1 + half an ulp of 1, plus pairs that cancel: exactly halfway between two values of dtype.
        half_ulp = info.eps / 2
        pairs = rng.uniform(-4, 4, n // 4).astype(dtype)
        values = np.concatenate([[1.0, half_ulp], pairs, -pairs])
    else:  # overflow
        biggest = float(info.max)
        if dtype == np.float32:
            # Exactly the threshold 2**128 - 2**103, which rounds to inf (ties to even).
            values = [1.1342743873830482e38, 1.1342745902071442e38, 1.1342745902071442e38]
        else:
            ulp_of_biggest = biggest - float(np.nextafter(info.max, dtype(0)))
            values = [biggest, ulp_of_biggest / 2]  # the threshold too
        values = np.concatenate([values, -rng.uniform(0, 1, 3) * biggest * 0.5, [biggest * 0.75]])
    x = -_padded(values, n, dtype)
    y = np.zeros(n, dtype) if log_target else np.ones(n, dtype)
    return x, y


def run(x, y, reduction, log_target, device, upstream=None):
    """(the loss, d/d input, d/d target) as host arrays."""
    xt = flow.tensor(x, device=device, requires_grad=True)
    yt = flow.tensor(y, device=device, requires_grad=True)
    out = F.kl_div(xt, yt, reduction=reduction, log_target=log_target)
    value = out.numpy()
    if upstream is not None:
        out.backward(flow.tensor(upstream, device=device))
    else:
        out.backward()
    return value, xt.grad.numpy(), yt.grad.numpy()


def assert_same_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    if same_bits(got, want):
        return
    assert got.dtype == want.dtype and got.shape == want.shape, what
    differ = got.view(f"u{got.itemsize}") != want.view(f"u{want.itemsize}")
    raise AssertionError(
        f"{what}: {int(differ.sum())} of {differ.size} differ; first at "
        f"{np.argwhere(differ)[0].tolist() if differ.ndim else []}: "
        f"cuda {got[differ][:3]}, cpu {want[differ][:3]}"
    )


def exact_reference(x, reduction, dtype):
    """The exact sum of the terms -x, rounded as klflow's contract says."""
    total = sum((Fraction(-float(v)) for v in x.ravel()), Fraction(0))
    divisor = reduction_divisor(reduction, x.shape)
    if divisor == 1.0:
        return round_fraction(total, dtype)
    wide = np.float64(round_fraction(total, np.float64))  # the float64 sum, divided in float64
    with np.errstate(all="ignore"):
        return np.array(wide / np.float64(divisor)).astype(dtype)


def check_against_reference(case, x, y, reduction, log_target, dtype, value, dx, dy, upstream):
    scale = 1.0 if reduction == "none" else 1.0 / reduction_divisor(reduction, x.shape)
    up = 1.0 if upstream is None else upstream.astype(np.float64)
    if reduction == "none":
        bound = element_error_bound(x, y, log_target)
        assert_close(value, kl_elements(x, y, log_target), dtype, bound=bound, what="none")
    elif case in EXACT_CASES:
        assert_same_bits(value, exact_reference(x, reduction, dtype), "exact reduction")
    else:
        slack = element_error_bound(x, y, log_target).sum() * scale
        assert_close(value, np.float64(kl_reduce(x, y, reduction, log_target)), dtype, bound=slack)
    ref_dx = input_grad(x, y, log_target, up, scale)
    assert_close(dx, ref_dx, dtype, bound=4 * EPS64 * np.abs(np.nan_to_num(ref_dx)), what="input grad")
    ref_dy = target_grad(x, y, log_target, up, scale)
    bound = target_grad_error_bound(x, y, log_target, up, scale)
    assert_close(dy, ref_dy, dtype, bound=bound, what="target grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_are_the_cpu_bits(case, dtype, log_target, reduction, n):
    x, y = case_data(case, dtype, log_target, n)
    upstream = np.linspace(0.5, 1.5, n).astype(dtype) if reduction == "none" else None
    with np.errstate(all="ignore"):
        cpu = run(x, y, reduction, log_target, "cpu", upstream)
        gpu = run(x, y, reduction, log_target, "cuda", upstream)
    for got, want, what in zip(gpu, cpu, ("loss", "input grad", "target grad"), strict=True):
        assert_same_bits(got, want, f"{case} {what}")
    with np.errstate(all="ignore"):
        check_against_reference(case, x, y, reduction, log_target, dtype, *gpu, upstream)


@pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
def test_float64_elements_are_the_cpu_bits_where_log_and_exp_round_hardest(log_target, simulated):
    # About one log or exp in a hundred changes if a multiply-add of the shared source is fused
    # differently: enough elements that such a slip shows, in the float64 outputs that keep it.
    n = 3000 if simulated else 1 << 22
    rng = np.random.default_rng(12)
    x = rng.normal(0.0, 2.0, n)
    y = rng.normal(-1.0, 1.5, n) if log_target else rng.uniform(0.0, 3.0, n)
    upstream = np.ones(n)
    cpu = run(x, y, "none", log_target, "cpu", upstream)
    gpu = run(x, y, "none", log_target, "cuda", upstream)
    for got, want, what in zip(gpu, cpu, ("loss", "input grad", "target grad"), strict=True):
        assert_same_bits(got, want, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
def test_an_upstream_gradient_other_than_one_recomputes_the_cpu_bits(dtype, log_target, n):
    x, y = case_data("random", dtype, log_target, n, seed=5)
    grads = []
    for device in ("cpu", "cuda"):
        xt = flow.tensor(x, device=device, requires_grad=True)
        yt = flow.tensor(y, device=device, requires_grad=True)
        F.kl_div(xt, yt, reduction="mean", log_target=log_target).backward(flow.tensor(0.75, device=device))
        grads.append((xt.grad.numpy(), yt.grad.numpy()))
    assert_same_bits(grads[1][0], grads[0][0], "input grad")
    assert_same_bits(grads[1][1], grads[0][1], "target grad")


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_only_sums_the_bound_cannot_prove_take_the_exact_pass(monkeypatch, dtype, n):
    counter = LaunchCounter(kernels.exact_kernel)
    monkeypatch.setattr(kernels, "exact_kernel", counter)
    for case, expected in (("random", 0), ("tie", 1), ("cancelling", 1)):
        x, y = case_data(case, dtype, True, n, seed=3)
        before = counter.launches
        value = F.kl_div(
            flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda"), reduction="sum", log_target=True
        )
        assert_same_bits(value.numpy(), F.kl_div(x, y, reduction="sum", log_target=True).numpy(), case)
        assert counter.launches - before == expected, case


@pytest.mark.parametrize("dtype", DTYPES, ids=["f16", "f32", "f64"])
def test_many_blocks_of_few_terms_give_the_same_bits(monkeypatch, dtype, n):
    # Two terms per thread: many more blocks than resident ones, each a short summation tree.
    monkeypatch.setattr(kernels, "TERMS_PER_THREAD", 2)
    for case in ("random", "cancelling"):
        x, y = case_data(case, dtype, False, n, seed=4)
        for reduction in ("sum", "batchmean"):
            with np.errstate(all="ignore"):
                assert_same_bits(
                    run(x, y, reduction, False, "cuda")[0], run(x, y, reduction, False, "cpu")[0], case
                )


def test_the_exact_pass_over_the_whole_float64_range(n):
    # Terms from subnormals to 1e300 of both signs: each thread's digit window moves often.
    rng = np.random.default_rng(11)
    magnitudes = 10.0 ** rng.uniform(-320, 300, n)
    x = (magnitudes * rng.choice([-1.0, 1.0], n)).astype(np.float64)
    x[::7] = 5e-324
    y = np.zeros(n)
    for reduction in ("sum", "mean"):
        value = F.kl_div(
            flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda"), reduction=reduction, log_target=True
        )
        assert_same_bits(value.numpy(), exact_reference(x, reduction, np.float64), reduction)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
    st.sampled_from(["sum", "mean"]),
)
@example([-1.1342743873830482e38, -1.1342745902071442e38, -1.1342745902071442e38], "sum")
def test_property_float32_sums_are_correctly_rounded(values, reduction):
    x = np.array(values, np.float32)  # terms -x: log-probability targets of 0
    value = F.kl_div(
        flow.tensor(x, device="cuda"),
        flow.tensor(np.zeros_like(x), device="cuda"),
        reduction=reduction,
        log_target=True,
    )
    assert_same_bits(value.numpy(), exact_reference(x, reduction, np.float32), str(values))


def test_an_unread_loss_releases_its_inputs_once_a_later_reduction_runs():
    x, y = case_data("random", np.float32, False, 40, seed=6)
    xd, yd = flow.cuda._cuda().to_device(x), flow.cuda._cuda().to_device(y)
    value, partial, _ = kernels.reduce(xd, yd, False, 1)
    alive = weakref.ref(xd)
    del xd
    gc.collect()
    assert alive() is not None  # kept for a possible exact pass
    kernels.reduce(flow.cuda._cuda().to_device(y), yd, False, 1)  # its states have arrived by now
    gc.collect()
    assert alive() is None
    assert_same_bits(value.copy_to_host(), F.kl_div(x, y, reduction="sum").numpy(), "value")


def test_a_lazy_loss_works_as_a_device_array():
    x, y = case_data("random", np.float32, True, 30, seed=8)
    loss = F.kl_div(
        flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda"), reduction="sum", log_target=True
    )
    expected = F.kl_div(x, y, reduction="sum", log_target=True).numpy()
    assert loss.shape == () and loss.dtype == flow.float32 and loss.is_cuda
    assert_same_bits(loss.double().numpy(), expected.astype(np.float64), "cast on the device")
    assert_same_bits(flow.tensor(loss).numpy(), expected, "copied on the device")
    assert_same_bits(loss.cpu().numpy(), expected, "moved to the host")
    assert float(loss) == float(expected) and repr(loss).startswith("tensor(")


@pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
def test_backward_before_reading_the_loss_writes_the_fused_gradient(log_target, n):
    x, y = case_data("random", np.float32, log_target, n, seed=9)
    grads = []
    for device in ("cpu", "cuda"):
        xt = flow.tensor(x, device=device, requires_grad=True)
        loss = F.kl_div(xt, flow.tensor(y, device=device), reduction="batchmean", log_target=log_target)
        loss.backward()  # the loss value is never read
        grads.append(xt.grad.numpy())
    assert_same_bits(grads[1], grads[0], "fused gradient")
