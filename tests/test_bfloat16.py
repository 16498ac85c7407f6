"""bfloat16: conversions rounded once from the wide value, printing, and the loss computed like
float16 (widened, float64 inside, rounded once) against an independent float64 reference.

The reference rounding here is written from the format's definition with exact fractions (8
significant bits, exponents down to -126, subnormal steps of 2**-133, ties to even), independent
of klflow's and of ml_dtypes' conversions."""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import reference
from hypothesis import example, given, settings
from hypothesis import strategies as st

import klflow as flow
import klflow.nn.functional as F
from klflow.kernels.bfloat16 import round_to_bfloat16

BF16 = np.dtype(ml_dtypes.bfloat16)
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def round_reference(value) -> float:
    """``value`` (a float or Fraction) rounded to bfloat16, as a Python float."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return value
    exact = Fraction(value)
    if exact == 0:
        return math.copysign(0.0, value) if isinstance(value, float) else 0.0
    magnitude = abs(exact)
    exponent = max(math.floor(math.log2(magnitude)), -126)
    # floor(log2) of a Fraction through float may be off by one at powers of two: fix it exactly.
    while Fraction(2) ** exponent > magnitude and exponent > -126:
        exponent -= 1
    while Fraction(2) ** (exponent + 1) <= magnitude:
        exponent += 1
    quantum = Fraction(2) ** (exponent - 7)
    steps = magnitude / quantum
    whole = math.floor(steps)
    rest = steps - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    result = whole * quantum
    if result >= Fraction(2) ** 128:
        return math.copysign(math.inf, exact)
    out = float(result)
    return -out if exact < 0 else out


def as_bf16(values) -> np.ndarray:
    """Exactly representable float64 values as a bfloat16 array."""
    values = np.asarray(values, dtype=np.float64)
    out = values.astype(BF16)
    assert np.array_equal(out.astype(np.float64), values, equal_nan=True)
    return out


# ----------------------------------------------------------------- rounding
@settings(deadline=None)  # the first example compiles the rounding kernel
@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
@example(1.0 + 2.0**-8 + 2.0**-40)  # just above a tie: through float32 it would tie to even
@example(1.0 + 2.0**-8)  # a tie: to even
@example(1.0 + 3 * 2.0**-8)  # a tie: to even, upward
@example(3.3895313892515355e38)  # the largest finite bfloat16
@example(3.3961775292304957e38)  # its rounding midpoint to the next power of two: to inf
@example(2.0**-134)  # half the smallest subnormal: a tie, to zero
@example(1.5 * 2.0**-134)
@example(-(2.0**-126) * (1 - 2.0**-9))  # a subnormal that rounds up to the smallest normal
@example(5e-324)
def test_rounding_is_once_to_nearest_even(value):
    got = float(round_to_bfloat16(np.array(value)))
    want = round_reference(value)
    assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want), (value, got, want)


def test_rounding_special_values_and_shapes():
    got = round_to_bfloat16(np.array([[np.inf, -np.inf], [np.nan, -0.0]]))
    assert got.dtype == BF16 and got.shape == (2, 2)
    assert got[0, 0] == np.inf and got[0, 1] == -np.inf and np.isnan(got[1, 0])
    assert np.signbit(got[1, 1].astype(np.float64))
    assert round_to_bfloat16(np.float32(1.5)).shape == ()


# ----------------------------------------------------------------- the dtype
def test_dtype_basics():
    assert repr(flow.bfloat16) == "klflow.bfloat16" and flow.bfloat16.itemsize == 2
    assert flow.bfloat16.is_floating_point
    t = flow.tensor([1.0 + 2.0**-8 + 2.0**-40, 0.1], dtype=flow.bfloat16)
    assert t.dtype == flow.bfloat16 and t.numpy().dtype == BF16
    assert t.tolist() == [1.0078125, round_reference(0.1)]
    wide = flow.tensor([1.0 + 2.0**-8 + 2.0**-40], dtype=flow.float64)
    assert wide.bfloat16().tolist() == [1.0078125]
    assert wide.to(flow.bfloat16).tolist() == [1.0078125]
    assert wide.to(dtype=flow.bfloat16).bfloat16().double().tolist() == [1.0078125]
    assert flow.tensor([0.5], dtype="bfloat16").dtype == flow.bfloat16


def test_from_numpy_shares_memory_and_tensor_keeps_dtype():
    array = as_bf16([1.0, 2.0])
    t = flow.from_numpy(array)
    array[0] = 3.0
    assert t.dtype == flow.bfloat16 and t.tolist() == [3.0, 2.0]
    assert flow.tensor(array).dtype == flow.bfloat16


def test_printing_widens_like_float16():
    assert repr(flow.tensor([1.0, -0.5, 3.140625], dtype=flow.bfloat16)) == (
        "tensor([ 1.0000, -0.5000,  3.1406], dtype=klflow.bfloat16)"
    )
    assert repr(flow.tensor(2.0, dtype=flow.bfloat16)) == "tensor(2., dtype=klflow.bfloat16)"


def test_gradient_flows_back_through_a_cast():
    x = flow.tensor([1.0, 2.0], dtype=flow.float32, requires_grad=True)
    loss = F.kl_div(x.bfloat16(), flow.tensor([0.5, 0.25], dtype=flow.bfloat16), reduction="sum")
    loss.backward()
    assert x.grad.dtype == flow.float32 and x.grad.tolist() == [-0.5, -0.25]


def test_creation_and_module_casts():
    assert flow.zeros(2, dtype=flow.bfloat16).dtype == flow.bfloat16
    assert flow.full((2,), 1.0 + 2.0**-8 + 2.0**-40, dtype=flow.bfloat16).tolist() == [1.0078125] * 2
    flow.manual_seed(0)
    u = flow.rand(1000, dtype=flow.bfloat16).numpy().astype(np.float64)
    assert u.min() >= 0 and u.max() < 1 and np.all(u * 256 == np.floor(u * 256))
    flow.manual_seed(0)
    wide = flow.randn(100, dtype=flow.float64).numpy()
    flow.manual_seed(0)
    got = flow.randn(100, dtype=flow.bfloat16).numpy().astype(np.float64)
    assert got.tolist() == [round_reference(float(v)) for v in wide]
    module = flow.nn.Module()
    module.register_buffer("b", flow.tensor([0.25]))
    assert module.bfloat16().b.dtype == flow.bfloat16


def test_cuda_is_refused_with_the_reason():
    with pytest.raises(TypeError, match=r"bfloat16 tensors are CPU-only .* got a request for cuda:0"):
        flow.tensor([1.0], dtype=flow.bfloat16).to("cuda")
    with pytest.raises(TypeError, match=r"bfloat16 tensors are CPU-only"):
        flow.rand(2, dtype=flow.bfloat16, device="cuda")
    with pytest.raises(TypeError, match=r"bfloat16 tensors are CPU-only"):
        flow.zeros(2, dtype=flow.bfloat16, placement=flow.placement("cuda", [0]), sbp=flow.sbp.broadcast)


# ----------------------------------------------------------------- the loss
def _strict(got: np.ndarray, ref64: np.ndarray, bound, what: str) -> None:
    """``got`` is ``ref64`` rounded once to bfloat16, wherever the reference's own error
    ``bound`` cannot move it to another bfloat16 value (there either neighbour passes)."""
    got = np.asarray(got)
    assert got.dtype == BF16, f"{what}: dtype {got.dtype}"
    ref64 = np.asarray(ref64, dtype=np.float64)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), ref64.shape)
    for index in np.ndindex(ref64.shape):
        value, error, g = float(ref64[index]), float(bound[index]), float(got[index])
        if math.isnan(value):
            assert math.isnan(g), f"{what}[{index}]: got {g}, expected NaN"
            continue
        candidates = {round_reference(value), round_reference(value - error), round_reference(value + error)}
        assert g in candidates, f"{what}[{index}]: got {g}, expected {sorted(candidates)} (from {value!r})"


def _data(shape, log_target, seed):
    rng = np.random.default_rng(seed)
    x = as_bf16(rng.standard_normal(shape).astype(BF16).astype(np.float64))
    if log_target:
        y = as_bf16(rng.standard_normal(shape).astype(BF16).astype(np.float64))
    else:
        y64 = rng.random(shape)
        y64[rng.random(shape) < 0.2] = 0.0
        y64[rng.random(shape) < 0.1] = -0.5  # masked to exactly 0
        y = as_bf16(y64.astype(BF16).astype(np.float64))
    return x, y


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(37,), (6, 11), (0, 3)])
def test_loss_and_gradients_against_the_reference(shape, reduction, log_target):
    x, y = _data(shape, log_target, seed=len(shape) * 100 + shape[0])
    xt = flow.from_numpy(x.copy()).requires_grad_()
    yt = flow.from_numpy(y.copy()).requires_grad_()
    loss = F.kl_div(xt, yt, reduction=reduction, log_target=log_target)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    elements = reference.kl_elements(x64, y64, log_target)
    element_bound = reference.element_error_bound(x64, y64, log_target)
    if reduction == "none":
        _strict(loss.numpy(), elements, element_bound, "none")
        upstream = np.linspace(-1.0, 1.0, max(x.size, 1))[: x.size].reshape(shape).astype(BF16)
        loss.backward(flow.from_numpy(upstream))
        scale, up64 = 1.0, upstream.astype(np.float64)
    else:
        terms = [Fraction(float(t)) for t in elements.reshape(-1)]
        exact = sum(terms, Fraction(0))
        total_bound = float(np.sum(element_bound))
        divisor = reference.reduction_divisor(reduction, shape)
        if reduction == "sum":
            candidates = {
                round_reference(exact + d) for d in (-Fraction(total_bound), 0, Fraction(total_bound))
            }
        else:
            quotients = [
                float(exact + d) / divisor if divisor else math.nan for d in (-total_bound, 0, total_bound)
            ]
            candidates = {round_reference(q) for q in quotients}
        got = float(loss.numpy())
        assert (got in candidates) or (math.isnan(got) and all(math.isnan(c) for c in candidates)), (
            f"{reduction}: got {got}, expected {candidates}"
        )
        assert loss.dtype == flow.bfloat16 and loss.shape == ()
        if x.size == 0 and reduction == "batchmean":
            return
        loss.backward()
        scale, up64 = reference.reduction_scale(reduction, shape), 1.0
    _strict(xt.grad.numpy(), reference.input_grad(x64, y64, log_target, up64, scale), 0.0, "input grad")
    target_bound = reference.target_grad_error_bound(x64, y64, log_target, up64, scale)
    _strict(
        yt.grad.numpy(), reference.target_grad(x64, y64, log_target, up64, scale), target_bound, "target grad"
    )


def test_sum_rounds_the_exact_sum_once():
    # 1 + 2**-8 + 2**-30: through float32 it becomes the tie 1 + 2**-8 and goes to 1.0.
    x = as_bf16([-1.0, -(2.0**-8), -(2.0**-30)])
    got = F.kl_div(flow.from_numpy(x), flow.from_numpy(as_bf16([1.0, 1.0, 1.0])), reduction="sum")
    assert got.item() == 1.0078125


def test_module_on_bfloat16_matches_the_functional_form():
    x, y = _data((4, 5), False, seed=3)
    module = flow.nn.KLDivLoss(reduction="batchmean")
    a = module(flow.from_numpy(x), flow.from_numpy(y))
    b = F.kl_div(flow.from_numpy(x), flow.from_numpy(y), reduction="batchmean")
    assert a.dtype == flow.bfloat16 and a.numpy().tobytes() == b.numpy().tobytes()


def test_rounding_in_pieces_on_worker_threads_is_the_serial_rounding():
    from klflow.kernels import pool

    values = np.random.default_rng(5).standard_normal(200_003) * 3.0
    previous = pool.thread_count()
    try:
        pool.set_thread_count(1)
        serial = round_to_bfloat16(values)
        pool.set_thread_count(3)
        threaded = round_to_bfloat16(values)
    finally:
        pool.set_thread_count(previous)
    assert serial.tobytes() == threaded.tobytes()
    assert [float(v) for v in serial[:50]] == [round_reference(float(v)) for v in values[:50]]


@pytest.mark.parametrize(
    "tail,expected",
    [(0.0, 1.0), (2.0**-60, 1.0078125), (-(2.0**-60), 1.0)],
    ids=["tie-to-even", "just-above", "just-below"],
)
def test_sums_closer_to_a_tie_than_the_bound_are_decided_exactly(tail, expected):
    # 1 + 2**-8 is a bfloat16 tie; a tail of 2**-60 lies far inside the fast path's error bound.
    x = as_bf16([-1.0, -(2.0**-8), -tail])
    ones = as_bf16([1.0, 1.0, 1.0])
    assert F.kl_div(flow.from_numpy(x), flow.from_numpy(ones), reduction="sum").item() == expected
    xt = flow.from_numpy(x.copy()).requires_grad_()
    fused = F.kl_div(xt, flow.from_numpy(ones), reduction="sum")  # the fused-gradient path
    assert fused.item() == expected


def test_programs_without_bfloat16_do_not_load_ml_dtypes():
    import subprocess
    import sys

    program = (
        "import sys, klflow as flow, klflow.nn.functional as F\n"
        "x = flow.tensor([0.5, 1.0], requires_grad=True)\n"
        "F.kl_div(x * 2 - 1, flow.rand(2), reduction='sum').backward()\n"
        "print(flow.randn(2), flow.zeros(2, dtype=flow.float16), x.grad)\n"
        "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes was loaded'\n"
        "assert flow.bfloat16.itemsize == 2 and 'ml_dtypes' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
