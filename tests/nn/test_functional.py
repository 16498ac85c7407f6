"""``klflow.nn.functional.kl_div`` and ``klflow.nn.KLDivLoss`` against the float64 reference.

Expected values come from ``tests/reference.py`` (NumPy float64 and ``math.fsum``), from exact
arithmetic on inputs chosen so that every element is exact, or from OneFlow's documentation.
Tolerances: a float64 element may differ from the reference by the rounding error of its own
formula (``reference.element_error_bound``: about 1e-15 relative unless ``x`` cancels ``log y``)
plus one ulp; float32/float16 results lie within one ulp of their dtype of the float64 reference;
reduced values are the exact sum of the float64 elements rounded once, so a float64 ``sum`` of
exactly computable elements equals ``math.fsum`` bit for bit.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction

import numpy as np
import pytest
from data import make_pair
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import (
    EPS64,
    assert_close,
    element_error_bound,
    exact_sum,
    input_grad,
    kl_elements,
    kl_reduce,
    reduction_divisor,
    reduction_scale,
    target_grad,
    target_grad_error_bound,
)

import klflow as flow
import klflow.nn.functional as F

REDUCTIONS = ["none", "sum", "mean", "batchmean"]
DTYPES = [np.float16, np.float32, np.float64]
FLOW_DTYPE = {
    np.dtype(np.float16): flow.float16,
    np.dtype(np.float32): flow.float32,
    np.dtype(np.float64): flow.float64,
}
SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 4), (2, 1, 3, 2), (2, 3, 1, 2, 3), (0,), (3, 0), (0, 4)]
REDUCTION_SHAPES = [
    pytest.param(r, s, id=f"{r}-{'x'.join(map(str, s)) or 'scalar'}")
    for r in REDUCTIONS
    for s in SHAPES
    if not (r == "batchmean" and s == ())
]
ITEMSIZE_ID = {np.float16: "f16", np.float32: "f32", np.float64: "f64"}
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
log_target_param = pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])

DOC_INPUT = [-0.9021705, 0.08798598, 1.04686249]
DOC_TARGET = [1.22386942, -0.89729659, 0.01615712]


# ---------------------------------------------------------------------------- helpers
def seed_of(*params) -> int:
    return zlib.crc32(repr(params).encode())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes, dtypes and bit patterns, element for element (whatever the layouts)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def make_upstream(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return np.asarray(rng.uniform(-2.0, 2.0, size=shape), dtype=dtype)


def check_loss(out, x, y, reduction, log_target):
    """The output of kl_div(x, y) against the reference, with the tolerance of its dtype."""
    dtype = x.dtype
    assert isinstance(out, flow.Tensor)
    assert out.dtype == FLOW_DTYPE[dtype]
    ref = kl_reduce(x, y, reduction, log_target)
    bounds = element_error_bound(x, y, log_target)
    if reduction == "none":
        assert tuple(out.shape) == x.shape
        assert_close(out.numpy(), ref, dtype, bound=bounds, what="loss")
        return
    assert tuple(out.shape) == ()
    divisor = reduction_divisor(reduction, x.shape)
    bound = bounds.sum() / divisor if divisor else 0.0
    # float64 mean: the float64 sum is divided once more, one more rounding.
    ulps = 2 if (dtype == np.float64 and divisor != 1.0) else 1
    assert_close(out.numpy(), np.float64(ref), dtype, bound=bound, ulps=ulps, what=reduction)


def grads_of(x, y, reduction, log_target, upstream=None):
    """(input.grad, target.grad) as NumPy arrays after one backward pass."""
    xt = flow.tensor(x, requires_grad=True)
    yt = flow.tensor(y, requires_grad=True)
    out = F.kl_div(xt, yt, reduction=reduction, log_target=log_target)
    if upstream is None:
        out.backward()
    else:
        out.backward(flow.tensor(upstream))
    return xt.grad.numpy(), yt.grad.numpy()


def check_input_grad(got, x, y, reduction, log_target, upstream):
    scale = reduction_scale(reduction, x.shape)
    ref = input_grad(x, y, log_target, upstream, scale)
    assert_close(got, ref, x.dtype, bound=4 * EPS64 * np.abs(ref), what="input grad")


def check_target_grad(got, x, y, reduction, log_target, upstream):
    scale = reduction_scale(reduction, x.shape)
    ref = target_grad(x, y, log_target, upstream, scale)
    bound = target_grad_error_bound(x, y, log_target, upstream, scale)
    assert_close(got, ref, x.dtype, bound=bound, what="target grad")


def upstream_for(reduction, shape, dtype, seed):
    """A non-trivial upstream gradient for 'none'; None (the implicit 1) for reduced losses."""
    return make_upstream(shape, dtype, seed) if reduction == "none" else None


# ---------------------------------------------------------------------------- the contract
def test_doc_example_none_repr():
    x = flow.tensor(DOC_INPUT, dtype=flow.float32)
    y = flow.tensor(DOC_TARGET, dtype=flow.float32)
    out = flow.nn.KLDivLoss(reduction="none", log_target=False)(x, y)
    assert repr(out) == "tensor([ 1.3514,  0.0000, -0.0836], dtype=klflow.float32)"


def test_doc_example_mean_repr():
    x = flow.tensor(DOC_INPUT, dtype=flow.float32)
    y = flow.tensor(DOC_TARGET, dtype=flow.float32)
    out = flow.nn.KLDivLoss(reduction="mean", log_target=False)(x, y)
    assert repr(out) == "tensor(0.4226, dtype=klflow.float32)"


def test_doc_example_sum_log_target_repr():
    x = flow.tensor(DOC_INPUT, dtype=flow.float32)
    y = flow.tensor(DOC_TARGET, dtype=flow.float32)
    out = flow.nn.KLDivLoss(reduction="sum", log_target=True)(x, y)
    assert repr(out) == "tensor(5.7801, dtype=klflow.float32)"


def test_doc_example_values_match_reference():
    x = np.array(DOC_INPUT, dtype=np.float32)
    y = np.array(DOC_TARGET, dtype=np.float32)
    for reduction, log_target in [("none", False), ("mean", False), ("sum", True)]:
        check_loss(F.kl_div(x, y, reduction, log_target), x, y, reduction, log_target)


def test_module_default_is_mean_without_log_target():
    loss = flow.nn.KLDivLoss()
    assert loss.reduction == "mean" and loss.log_target is False
    x = np.array(DOC_INPUT, dtype=np.float32)
    y = np.array(DOC_TARGET, dtype=np.float32)
    assert loss(x, y).numpy() == F.kl_div(x, y).numpy()
    assert F.kl_div(x, y).numpy() == F.kl_div(x, y, "mean", False).numpy()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@log_target_param
def test_module_equals_functional(reduction, log_target):
    x, y = make_pair((4, 5), np.float64, log_target, seed_of("module", reduction, log_target))
    module_out = flow.nn.KLDivLoss(reduction=reduction, log_target=log_target)(x, y)
    functional_out = F.kl_div(x, y, reduction=reduction, log_target=log_target)
    np.testing.assert_array_equal(module_out.numpy(), functional_out.numpy())


# ---------------------------------------------------------------------------- forward grid
@dtype_param
@log_target_param
@pytest.mark.parametrize("reduction, shape", REDUCTION_SHAPES)
def test_forward_matches_reference(reduction, shape, log_target, dtype):
    x, y = make_pair(shape, dtype, log_target, seed_of("fwd", shape, log_target, dtype))
    out = F.kl_div(flow.tensor(x), flow.tensor(y), reduction=reduction, log_target=log_target)
    check_loss(out, x, y, reduction, log_target)


@dtype_param
@log_target_param
@pytest.mark.parametrize("reduction, shape", REDUCTION_SHAPES)
def test_input_grad_matches_reference(reduction, shape, log_target, dtype):
    x, y = make_pair(shape, dtype, log_target, seed_of("gx", shape, log_target, dtype))
    upstream = upstream_for(reduction, shape, dtype, seed_of("up", shape))
    gx, _ = grads_of(x, y, reduction, log_target, upstream)
    check_input_grad(gx, x, y, reduction, log_target, 1.0 if upstream is None else upstream)


@dtype_param
@log_target_param
@pytest.mark.parametrize("reduction, shape", REDUCTION_SHAPES)
def test_target_grad_matches_reference(reduction, shape, log_target, dtype):
    x, y = make_pair(shape, dtype, log_target, seed_of("gy", shape, log_target, dtype))
    upstream = upstream_for(reduction, shape, dtype, seed_of("up", shape))
    _, gy = grads_of(x, y, reduction, log_target, upstream)
    check_target_grad(gy, x, y, reduction, log_target, 1.0 if upstream is None else upstream)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
def test_empty_mean_is_zero_and_sum_is_zero(shape, dtype):
    x = np.zeros(shape, dtype)
    for reduction in ("sum", "mean"):
        out = F.kl_div(x, x, reduction=reduction)
        assert out.numpy().dtype == dtype
        assert out.item() == 0.0  # not NaN: OneFlow leaves the empty sum undivided


@pytest.mark.parametrize("shape", [(0,), (0, 4)], ids=str)
def test_batchmean_of_empty_batch_is_nan(shape):
    x = np.zeros(shape, np.float32)
    assert math.isnan(F.kl_div(x, x, reduction="batchmean").item())  # 0 / shape[0] = 0/0


def test_batchmean_of_zero_width_batch_is_zero():
    x = np.zeros((3, 0), np.float64)
    assert F.kl_div(x, x, reduction="batchmean").item() == 0.0  # 0 / 3


def test_batchmean_divides_by_batch_size_not_numel():
    # Elements are exactly -x (y == 1), so the value is (sum of -x) / shape[0] exactly.
    x = np.arange(24, dtype=np.float64).reshape(4, 3, 2)
    y = np.ones_like(x)
    assert F.kl_div(x, y, reduction="batchmean").item() == -x.sum() / 4
    assert F.kl_div(x, y, reduction="mean").item() == -x.sum() / 24


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
def test_none_keeps_shape_and_dtype_of_zero_dim_input(dtype):
    out = F.kl_div(np.array(0.5, dtype), np.array(0.25, dtype), reduction="none")
    assert tuple(out.shape) == () and out.numpy().dtype == dtype


# ---------------------------------------------------------------------------- memory layouts
def relayout(a: np.ndarray, kind: str) -> np.ndarray:
    """An array equal to ``a`` element for element, held in another memory layout."""
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        out = np.asfortranarray(a)
        assert a.ndim < 2 or not out.flags.c_contiguous
        return out
    if kind == "strided":  # every other element of a larger buffer, along every axis
        big = np.full(tuple(2 * n + 1 for n in a.shape), np.nan, dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "reversed":  # negative strides along every axis
        view = np.flip(np.flip(a).copy())
        view_strides = np.array(view.strides)
        assert (view_strides <= 0).all()
        return view
    if kind == "permuted":  # axes stored in a rotated order: neither C nor F for 3-D and up
        stored = np.ascontiguousarray(np.moveaxis(a, 0, -1))
        return np.moveaxis(stored, -1, 0)
    raise ValueError(kind)


LAYOUT_PAIRS = [
    ("F", "F"),
    ("C", "F"),
    ("F", "C"),
    ("strided", "C"),
    ("C", "strided"),
    ("reversed", "F"),
    ("permuted", "strided"),
    ("permuted", "permuted"),
    ("reversed", "reversed"),
]
LAYOUT_SHAPES = [(5, 6), (3, 4, 5), (2, 3, 2, 3, 2)]
layout_param = pytest.mark.parametrize("layouts", LAYOUT_PAIRS, ids=["-".join(p) for p in LAYOUT_PAIRS])
layout_shape_param = pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=str)


@layout_param
@layout_shape_param
@pytest.mark.parametrize("reduction", REDUCTIONS)
@log_target_param
@dtype_param
def test_forward_any_layout_matches_reference(layouts, shape, reduction, log_target, dtype):
    x, y = make_pair(shape, dtype, log_target, seed_of("layout", shape, log_target, dtype))
    xl, yl = relayout(x, layouts[0]), relayout(y, layouts[1])
    out = F.kl_div(flow.from_numpy(xl), flow.from_numpy(yl), reduction, log_target)
    check_loss(out, x, y, reduction, log_target)


@layout_param
@layout_shape_param
@pytest.mark.parametrize("reduction", REDUCTIONS)
@log_target_param
@dtype_param
def test_layout_does_not_change_a_bit(layouts, shape, reduction, log_target, dtype):
    """Loss and both gradients are bitwise those of the C-contiguous inputs."""
    x, y = make_pair(shape, dtype, log_target, seed_of("bits", shape, log_target, dtype))
    upstream = upstream_for(reduction, shape, dtype, seed_of("up", shape))

    def run(xa, ya):
        xt, yt = flow.from_numpy(xa), flow.from_numpy(ya)
        xt.requires_grad = True
        yt.requires_grad = True
        out = F.kl_div(xt, yt, reduction, log_target)
        value = out.numpy().copy()
        if upstream is None:
            out.backward()
        else:
            out.backward(flow.tensor(upstream))
        return value, xt.grad.numpy(), yt.grad.numpy()

    expected = run(np.ascontiguousarray(x), np.ascontiguousarray(y))
    got = run(relayout(x, layouts[0]), relayout(y, layouts[1]))
    for name, want, have in zip(("loss", "input grad", "target grad"), expected, got, strict=False):
        assert same_bits(have, want), name


@log_target_param
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_in_other_layout_than_output(reduction, log_target):
    # 'none' with an F-ordered upstream gradient and C-ordered inputs.
    shape = (6, 5)
    x, y = make_pair(shape, np.float64, log_target, seed_of("uplayout", log_target))
    upstream = make_upstream(shape, np.float64, 5)
    xt, yt = flow.tensor(x, requires_grad=True), flow.tensor(y, requires_grad=True)
    out = F.kl_div(xt, yt, reduction, log_target)
    if reduction == "none":
        out.backward(flow.from_numpy(np.asfortranarray(upstream)))
        up = upstream
    else:
        out.backward()
        up = 1.0
    check_input_grad(xt.grad.numpy(), x, y, reduction, log_target, up)
    check_target_grad(yt.grad.numpy(), x, y, reduction, log_target, up)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_large_non_contiguous_inputs_match_reference(reduction):
    # Large enough that a non-contiguous input is staged in several slabs.
    x, y = make_pair((700, 900), np.float64, False, seed_of("large-strided"))
    xl, yl = relayout(x, "strided"), relayout(y, "F")
    check_loss(F.kl_div(xl, yl, reduction), x, y, reduction, False)


def test_broadcast_view_target_with_zero_strides():
    row = np.array([0.5, 0.25, 0.0, -1.0])
    y = np.broadcast_to(row, (5, 4))  # read-only, stride 0 along the batch axis
    x, _ = make_pair((5, 4), np.float64, False, seed_of("broadcast"))
    for reduction in REDUCTIONS:
        check_loss(F.kl_div(x, y, reduction), x, np.ascontiguousarray(y), reduction, False)


def test_read_only_inputs_with_gradient():
    x, y = make_pair((4, 6), np.float32, False, seed_of("read-only"))
    x.setflags(write=False)
    y.setflags(write=False)
    xt = flow.from_numpy(x)
    xt.requires_grad = True
    F.kl_div(xt, y, reduction="sum").backward()
    check_input_grad(xt.grad.numpy(), x, y, "sum", False, 1.0)


def test_unaligned_float64_inputs():
    buffer = np.zeros(8 * 12 + 1, np.uint8)
    x = np.frombuffer(buffer, dtype=np.float64, offset=1, count=12)
    assert not x.flags.aligned
    x_values, y = make_pair((12,), np.float64, False, seed_of("unaligned"))
    buffer[1:] = np.frombuffer(x_values.tobytes(), np.uint8)
    for reduction in REDUCTIONS:
        check_loss(F.kl_div(x, y, reduction), x_values, y, reduction, False)


def test_non_native_byte_order_float64_is_float64_data():
    # A big-endian float64 array is float64 data in another byte order, not a new dtype.
    x, y = make_pair((3, 4), np.float64, False, seed_of("byte-order"))
    swapped = x.astype(x.dtype.newbyteorder())
    out = F.kl_div(swapped, y, reduction="sum")
    assert out.dtype == flow.float64
    check_loss(out, x, y, "sum", False)


@log_target_param
def test_same_tensor_as_input_and_target(log_target):
    # Both gradients reach the one leaf and add up: d/dx l(x, x) = dl/dx + dl/dy at y = x.
    values = np.array([0.5, 2.0, 1.5, -0.25])
    t = flow.tensor(values, requires_grad=True)
    F.kl_div(t, t, reduction="sum", log_target=log_target).backward()
    expected = input_grad(values, values, log_target) + target_grad(values, values, log_target)
    assert_close(t.grad.numpy(), expected, np.float64, bound=8 * EPS64 * (np.abs(expected) + 2))


# ---------------------------------------------------------------------------- exactness
def wide_range_values(rng, n):
    """float64 values of both signs spread over 120 binades: naive summation loses bits."""
    return rng.choice([-1.0, 1.0], n) * rng.uniform(1.0, 2.0, n) * np.exp2(rng.integers(-60, 60, n))


@pytest.mark.parametrize("n", [1000, 100_000], ids=["serial", "parallel"])
@pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
def test_float64_sum_equals_fsum_of_exact_elements(n, log_target):
    # Targets 1 (log 1 = 0) or, with log_target, 0 (exp 0 = 1) make an element exactly -x;
    # targets 0, negative or NaN make it exactly 0. The sum must be fsum, bit for bit.
    rng = np.random.default_rng(seed_of("fsum", n, log_target))
    x = wide_range_values(rng, n)
    if log_target:
        y = np.zeros(n)
    else:
        y = rng.choice(np.array([1.0, 0.0, -0.5, np.nan]), n)
    x[:3] = [1e300, 1.0, -1e300]  # naive left-to-right summation would lose the 1.0
    y[:3] = 0.0 if log_target else 1.0
    terms = np.where(y == 1.0, -x, 0.0) if not log_target else -x
    expected = math.fsum(terms.tolist())
    assert expected != float(np.sum(terms))  # the data does defeat plain summation
    got = F.kl_div(x, y, reduction="sum", log_target=log_target).item()
    assert got == expected
    assert F.kl_div(x, y, reduction="mean", log_target=log_target).item() == expected / n
    assert F.kl_div(
        x.reshape(n // 10, 10), y.reshape(n // 10, 10), reduction="batchmean", log_target=log_target
    ).item() == expected / (n // 10)


def test_float64_sum_of_cancelling_huge_terms():
    x = np.array([1e300, 1.0, -1e300, 3.0])
    assert F.kl_div(x, np.ones(4), reduction="sum").item() == -4.0


def test_float64_sum_past_fsum_intermediate_overflow():
    # Elements -1e308, -1e308, 1e308: a float64 running sum overflows, the exact sum is -1e308.
    x = np.array([1e308, 1e308, -1e308])
    assert F.kl_div(x, np.ones(3), reduction="sum").item() == -1e308


def test_float64_sum_overflows_to_inf():
    x = np.full(3, -1e308)
    assert F.kl_div(x, np.ones(3), reduction="sum").item() == math.inf


def is_correctly_rounded(got: float, exact: Fraction, dtype) -> bool:
    """``got`` is a nearest ``dtype`` value to the rational ``exact``."""
    value = np.asarray(got, dtype=dtype)
    below = np.nextafter(value, np.asarray(-np.inf, dtype))
    above = np.nextafter(value, np.asarray(np.inf, dtype))
    distance = abs(Fraction(float(value)) - exact)
    return distance <= abs(Fraction(float(below)) - exact) and distance <= abs(Fraction(float(above)) - exact)


def test_float32_sum_rounds_the_exact_sum_once():
    # Elements 1, 2**-24, 2**-60 sum to just above the float32 midpoint 1 + 2**-24. Rounding
    # to float64 first lands on the midpoint and ties to 1.0; rounding once gives 1 + 2**-23.
    x = np.array([-1.0, -(2.0**-24), -(2.0**-60)], np.float32)
    got = F.kl_div(x, np.ones(3, np.float32), reduction="sum").item()
    assert got == 1 + 2.0**-23


def test_float16_sum_rounds_the_exact_sum_once():
    # 1 + 2**-11 + 2**-24: through float32 it would tie to 1.0; rounded once it is 1 + 2**-10.
    x = np.array([-1.0, -(2.0**-11), -(2.0**-24)], np.float16)
    got = F.kl_div(x, np.ones(3, np.float16), reduction="sum").item()
    assert got == 1 + 2.0**-10


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_narrow_sum_is_correctly_rounded_exact_sum(dtype):
    rng = np.random.default_rng(seed_of("narrow", dtype))
    x = np.asarray(rng.uniform(-4, 4, 5000), dtype)
    x[::2] *= np.asarray(2.0**-10, dtype)
    got = F.kl_div(x, np.ones_like(x), reduction="sum").item()
    exact = -sum((Fraction(float(v)) for v in x.tolist()), Fraction(0))
    assert is_correctly_rounded(got, exact, dtype)


@pytest.mark.parametrize(
    "dtype, largest, half_ulp",
    [
        (np.float16, 65504.0, 16.0),
        (np.float32, float(np.finfo(np.float32).max), 2.0**103),
        (np.float64, float(np.finfo(np.float64).max), 2.0**970),
    ],
    ids=["f16", "f32", "f64"],
)
def test_sum_rounds_to_inf_exactly_at_the_overflow_threshold(dtype, largest, half_ulp):
    # largest + half an ulp is the rounding midpoint to the next power of two: ties go to inf
    # (IEEE round-to-nearest-even); anything below it rounds to the largest finite value.
    y = np.ones(2, dtype)
    at_midpoint = np.array([-largest, -half_ulp], dtype)
    below = np.array([-largest, -half_ulp / 2], dtype)
    assert F.kl_div(at_midpoint, y, reduction="sum").item() == math.inf
    assert F.kl_div(below, y, reduction="sum").item() == largest


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_float32_mean_is_finite_when_one_element_overflows_float32(reduction):
    # The element 10 * (log 10 + 3e38) = 3e39 is inf in float32, but the mean divides the
    # float64 sum: 3e39 / 100 (mean) or / 10 (batchmean) fits in float32.
    x = np.zeros((10, 10), np.float32)
    y = np.ones((10, 10), np.float32)
    x[0, 0], y[0, 0] = -3e38, 10.0
    assert F.kl_div(x, y, reduction="none").numpy()[0, 0] == np.inf
    out = F.kl_div(x, y, reduction=reduction)
    check_loss(out, x, y, reduction, False)
    assert np.isfinite(out.item())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
@log_target_param
def test_subnormal_and_extreme_targets(dtype, log_target):
    info = np.finfo(dtype)
    y = np.array(
        [
            info.smallest_subnormal,
            3 * info.smallest_subnormal,
            info.smallest_normal,
            0.75 * info.smallest_normal,
            info.max,
            info.max / 3,
            info.tiny,
        ],
        dtype,
    )
    x = np.zeros_like(y)
    x[-1] = -1.0
    check_loss(F.kl_div(x, y, reduction="none", log_target=log_target), x, y, "none", log_target)


def test_float32_sum_of_four_million_elements():
    n = 1 << 22
    rng = np.random.default_rng(seed_of("2^22"))
    x = np.asarray(rng.normal(-1.0, 1.0, n), np.float32)
    y = np.asarray(rng.uniform(0.0, 1.0, n), np.float32)
    got = F.kl_div(x, y, reduction="sum").item()
    terms = kl_elements(x, y, False)
    ref = exact_sum(terms)
    assert abs(got - ref) <= 1e-6 * abs(ref)
    slack = element_error_bound(x, y, False).sum()
    assert abs(got - ref) <= float(np.spacing(np.float32(abs(ref)))) + slack  # within 1 ulp


# ---------------------------------------------------------------------------- thread counts
@pytest.fixture
def two_thread_counts():
    before = flow.env.get_num_threads()
    yield (1, 2)
    flow.env.set_num_threads(before)


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
@pytest.mark.parametrize("layout", ["C", "strided"])
def test_reductions_bitwise_identical_across_thread_counts(two_thread_counts, reduction, dtype, layout):
    shape = (300, 1000)  # above the serial threshold: the parallel path splits the work
    x, y = make_pair(shape, dtype, False, seed_of("threads", dtype))
    xl, yl = relayout(x, layout), relayout(y, layout)
    results = []
    for threads in two_thread_counts:
        flow.env.set_num_threads(threads)
        xt = flow.from_numpy(xl)
        xt.requires_grad = True
        out = F.kl_div(xt, flow.from_numpy(yl), reduction=reduction)
        out.backward()
        results.append((out.numpy(), xt.grad.numpy()))
    assert same_bits(results[0][0], results[1][0])
    assert same_bits(results[0][1], results[1][1])
    check_loss(out, x, y, reduction, False)


@log_target_param
def test_none_and_gradients_bitwise_identical_across_thread_counts(two_thread_counts, log_target):
    shape = (200, 300)
    x, y = make_pair(shape, np.float64, log_target, seed_of("threads-none", log_target))
    upstream = make_upstream(shape, np.float64, 11)
    results = []
    for threads in two_thread_counts:
        flow.env.set_num_threads(threads)
        xt, yt = flow.tensor(x, requires_grad=True), flow.tensor(y, requires_grad=True)
        out = F.kl_div(xt, yt, reduction="none", log_target=log_target)
        out.backward(flow.tensor(upstream))
        results.append((out.numpy(), xt.grad.numpy(), yt.grad.numpy()))
    for first, second in zip(*results, strict=False):
        assert same_bits(first, second)


# ---------------------------------------------------------------------------- special values
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
def test_nan_and_inf_input_propagate_where_target_positive(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.5], dtype)
    y = np.array([0.5, 0.5, 0.5, 0.5], dtype)
    out = F.kl_div(x, y, reduction="none").numpy()
    assert math.isnan(out[0])
    assert out[1] == -np.inf  # 0.5 * (log 0.5 - inf)
    assert out[2] == np.inf  # 0.5 * (log 0.5 + inf)
    assert np.isfinite(out[3])


def test_inf_input_propagates_into_reductions():
    y = np.full(2, 0.5)
    assert F.kl_div(np.array([-np.inf, 1.0]), y, reduction="sum").item() == np.inf
    assert F.kl_div(np.array([np.inf, 1.0]), y, reduction="mean").item() == -np.inf
    assert math.isnan(F.kl_div(np.array([np.inf, -np.inf]), y, reduction="sum").item())
    assert math.isnan(F.kl_div(np.array([np.nan, 1.0]), y, reduction="batchmean").item())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
def test_non_positive_and_nan_targets_give_exactly_zero(dtype):
    xs = [-np.inf, np.inf, np.nan, 0.0, -3.0, 7.0]
    ys = [0.0, -0.0, -1.0, -np.inf, np.nan]
    x = np.array([a for a in xs for _ in ys], dtype)
    y = np.array([b for _ in xs for b in ys], dtype)
    out = F.kl_div(x, y, reduction="none").numpy()
    assert (out == 0).all(), out
    for reduction in ("sum", "mean", "batchmean"):
        assert F.kl_div(x, y, reduction=reduction).item() == 0.0


def test_zero_targets_do_not_disturb_a_finite_sum():
    x = np.array([-np.inf, np.nan, 0.25, np.inf])
    y = np.array([0.0, -2.0, 1.0, np.nan])
    assert F.kl_div(x, y, reduction="sum").item() == -0.25


def test_positive_infinite_target():
    out = F.kl_div(np.array([1.0, np.inf]), np.array([np.inf, np.inf]), reduction="none").numpy()
    assert out[0] == np.inf  # inf * (inf - 1)
    assert math.isnan(out[1])  # inf * (inf - inf)


def test_log_target_minus_inf_target_follows_the_formula():
    # exp(-inf) * (-inf - x) = 0 * -inf = NaN for every x: OneFlow does not mask log targets.
    x = np.array([0.3, -2.0, -np.inf, np.nan])
    y = np.full(4, -np.inf)
    out = F.kl_div(x, y, reduction="none", log_target=True)
    np.testing.assert_array_equal(out.numpy(), kl_elements(x, y, True))
    assert np.isnan(out.numpy()).all()


def test_log_target_very_negative_target_gives_zero():
    x = np.array([0.3, -2.0, 5.0])
    y = np.full(3, -1000.0)  # exp(-1000) underflows to 0
    out = F.kl_div(x, y, reduction="none", log_target=True).numpy()
    assert (out == 0).all()
    assert F.kl_div(x, y, reduction="sum", log_target=True).item() == 0.0


def test_log_target_plus_inf_target():
    out = F.kl_div(np.array([1.0]), np.array([np.inf]), reduction="none", log_target=True)
    assert out.numpy()[0] == np.inf  # exp(inf) * (inf - 1)


def test_gradients_at_zero_negative_and_nan_targets():
    x = flow.tensor(np.array([0.5, 0.5, 0.5, 0.5]), requires_grad=True)
    y = flow.tensor(np.array([0.0, -1.0, np.nan, 2.0]), requires_grad=True)
    F.kl_div(x, y, reduction="sum").backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0, -2.0])  # masked by y > 0
    gy = y.grad.numpy()
    assert gy[0] == -np.inf  # log 0 + 1 - x: not masked
    assert math.isnan(gy[1]) and math.isnan(gy[2])
    assert gy[3] == pytest.approx(math.log(2.0) + 0.5, rel=1e-15)


def test_log_target_gradients_at_minus_inf_target():
    x = flow.tensor(np.array([0.5]), requires_grad=True)
    y = flow.tensor(np.array([-np.inf]), requires_grad=True)
    F.kl_div(x, y, reduction="sum", log_target=True).backward()
    assert x.grad.numpy()[0] == 0.0  # -exp(-inf)
    assert math.isnan(y.grad.numpy()[0])  # exp(-inf) * (-inf - 0.5 + 1) = 0 * -inf


def test_gradient_with_infinite_input_where_target_zero():
    x = flow.tensor(np.array([-np.inf, np.inf]), requires_grad=True)
    F.kl_div(x, np.array([0.0, 0.0]), reduction="mean").backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


# ---------------------------------------------------------------------------- autograd
def test_grad_fn_names():
    x = flow.tensor(np.ones((2, 3)), requires_grad=True)
    y = flow.tensor(np.full((2, 3), 0.5))
    names = {r: F.kl_div(x, y, reduction=r).grad_fn.name() for r in REDUCTIONS}
    assert names == {
        "none": "kl_div_loss_backward",
        "sum": "reduce_sum_backward",
        "mean": "scalar_mul_backward",
        "batchmean": "scalar_mul_backward",
    }


def test_grad_fn_recorded_when_only_target_requires_grad():
    y = flow.tensor(np.full(3, 0.5), requires_grad=True)
    out = F.kl_div(np.zeros(3), y, reduction="sum")
    assert out.requires_grad and out.grad_fn.name() == "reduce_sum_backward"


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_graph_without_requires_grad(reduction):
    out = F.kl_div(np.zeros(3), np.full(3, 0.5), reduction=reduction)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_grad_stops_recording(reduction):
    x = flow.tensor(np.zeros(3), requires_grad=True)
    with flow.no_grad():
        out = F.kl_div(x, np.full(3, 0.5), reduction=reduction)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_gradients_accumulate_across_two_losses(reduction):
    x_np, y_np = make_pair((4, 3), np.float64, False, seed_of("accumulate"))
    x = flow.tensor(x_np, requires_grad=True)
    y = flow.tensor(y_np, requires_grad=True)
    F.kl_div(x, y, reduction=reduction).backward()
    first_x, first_y = x.grad.numpy().copy(), y.grad.numpy().copy()
    F.kl_div(x, y, reduction=reduction).backward()
    # g + g == 2 * g exactly in binary floating point
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first_x)
    np.testing.assert_array_equal(y.grad.numpy(), 2 * first_y)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_accumulate_with_retain_graph(reduction):
    x_np, y_np = make_pair((4, 3), np.float32, True, seed_of("retain"))
    x = flow.tensor(x_np, requires_grad=True)
    y = flow.tensor(y_np, requires_grad=True)
    out = F.kl_div(x, y, reduction=reduction, log_target=True)
    upstream = None if reduction != "none" else flow.tensor(np.ones((4, 3), np.float32))
    out.backward(upstream, retain_graph=True)
    first_x, first_y = x.grad.numpy().copy(), y.grad.numpy().copy()
    out.backward(upstream)
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first_x)
    np.testing.assert_array_equal(y.grad.numpy(), 2 * first_y)


def test_second_backward_without_retain_graph_fails():
    x = flow.tensor(np.ones(3), requires_grad=True)
    out = F.kl_div(x, np.full(3, 0.5), reduction="sum")
    out.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.backward()


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
@log_target_param
def test_reduced_loss_upstream_power_of_two_scales_gradients_exactly(reduction, dtype, log_target):
    x, y = make_pair((3, 5), dtype, log_target, seed_of("pow2", dtype, log_target))
    gx1, gy1 = grads_of(x, y, reduction, log_target)
    gx4, gy4 = grads_of(x, y, reduction, log_target, upstream=np.array(4.0, dtype))
    np.testing.assert_array_equal(gx4, gx1 * dtype(4))
    np.testing.assert_array_equal(gy4, gy1 * dtype(4))


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
@log_target_param
def test_reduced_loss_non_unit_upstream_matches_reference(reduction, dtype, log_target):
    x, y = make_pair((3, 5), dtype, log_target, seed_of("upstream", dtype, log_target))
    upstream = np.array(-0.3, dtype)
    gx, gy = grads_of(x, y, reduction, log_target, upstream=upstream)
    check_input_grad(gx, x, y, reduction, log_target, upstream)
    check_target_grad(gy, x, y, reduction, log_target, upstream)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
@log_target_param
def test_none_loss_upstream_scales_each_element_exactly(dtype, log_target):
    x, y = make_pair((4, 5), dtype, log_target, seed_of("none-up", dtype, log_target))
    powers = np.asarray(np.exp2(np.random.default_rng(3).integers(-3, 4, (4, 5))), dtype)
    gx1, gy1 = grads_of(x, y, "none", log_target, upstream=np.ones((4, 5), dtype))
    gxp, gyp = grads_of(x, y, "none", log_target, upstream=powers)
    np.testing.assert_array_equal(gxp, gx1 * powers)
    np.testing.assert_array_equal(gyp, gy1 * powers)


def test_none_loss_needs_an_explicit_gradient():
    x = flow.tensor(np.ones(3), requires_grad=True)
    out = F.kl_div(x, np.full(3, 0.5), reduction="none")
    with pytest.raises(RuntimeError):
        out.backward()


def test_none_loss_rejects_gradient_of_wrong_shape():
    x = flow.tensor(np.ones(3), requires_grad=True)
    out = F.kl_div(x, np.full(3, 0.5), reduction="none")
    with pytest.raises(RuntimeError, match=r"\[2\].*\[3\]|\[3\].*\[2\]"):
        out.backward(flow.tensor(np.ones(2)))


def test_input_gradient_does_not_alias_between_losses():
    # The first gradient must not be overwritten when a second loss is computed.
    x = flow.tensor(np.array([0.1, 0.2]), requires_grad=True)
    F.kl_div(x, np.array([0.5, 0.25]), reduction="sum").backward()
    kept = x.grad
    snapshot = kept.numpy().copy()
    x.grad = None
    F.kl_div(x, np.array([0.75, 1.5]), reduction="sum").backward()
    np.testing.assert_array_equal(kept.numpy(), snapshot)


# ---------------------------------------------------------------------------- array-likes
class ArrayHolder:
    """An object that is not an ndarray but converts to one through ``__array__``."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


def test_lists_default_to_float32():
    out = F.kl_div(DOC_INPUT, DOC_TARGET, reduction="none", log_target=False)
    assert out.dtype == flow.float32
    expected = F.kl_div(np.array(DOC_INPUT, np.float32), np.array(DOC_TARGET, np.float32), reduction="none")
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


def test_nested_lists_and_tuples():
    x = [[-1.0, 0.5], [0.25, 2.0]]
    y = ((0.5, 0.5), (0.0, 1.0))
    out = F.kl_div(x, y, reduction="none")
    check_loss(out, np.array(x, np.float32), np.array(y, np.float32), "none", False)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
def test_numpy_arrays_keep_their_dtype(dtype):
    x, y = make_pair((3,), dtype, False, 1)
    assert F.kl_div(x, y, reduction="sum").dtype == FLOW_DTYPE[np.dtype(dtype)]


def test_array_protocol_objects_are_accepted():
    x, y = make_pair((2, 3), np.float64, False, 2)
    out = F.kl_div(ArrayHolder(x), ArrayHolder(y), reduction="sum")
    check_loss(out, x, y, "sum", False)


def test_tensor_and_array_mix():
    x, y = make_pair((2, 3), np.float32, False, 3)
    out = F.kl_div(flow.tensor(x), y, reduction="mean")
    check_loss(out, x, y, "mean", False)


def test_numpy_scalar_inputs():
    out = F.kl_div(np.float64(0.5), np.float64(0.25), reduction="none")
    check_loss(out, np.array(0.5), np.array(0.25), "none", False)


def test_array_like_inputs_are_not_modified():
    x, y = make_pair((3, 4), np.float64, False, 4)
    x_copy, y_copy = x.copy(), y.copy()
    xt = flow.from_numpy(x)
    xt.requires_grad = True
    F.kl_div(xt, y, reduction="sum").backward()
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)


# ---------------------------------------------------------------------------- bad inputs
SHAPE_PATTERN = r"[\[(]2, 3[\])].*[\[(]3, 2[\])]"


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=SHAPE_PATTERN):
        F.kl_div(np.zeros((2, 3)), np.zeros((3, 2)))


def test_shape_mismatch_does_not_broadcast():
    with pytest.raises(ValueError, match=r"[\[(]2, 3[\])].*[\[(]3,?[\])]"):
        F.kl_div(np.zeros((2, 3)), np.zeros(3))


def test_module_shape_mismatch():
    with pytest.raises(ValueError, match=SHAPE_PATTERN):
        flow.nn.KLDivLoss(reduction="sum")(flow.tensor(np.zeros((2, 3))), flow.tensor(np.zeros((3, 2))))


def test_zero_dim_against_one_element_is_a_shape_mismatch():
    with pytest.raises(ValueError):
        F.kl_div(np.zeros(()), np.zeros((1,)))


def test_dtype_mismatch_names_both_dtypes():
    with pytest.raises(TypeError, match=r"float32.*float64"):
        F.kl_div(np.zeros(3, np.float32), np.zeros(3, np.float64))


def test_list_against_float64_array_is_a_dtype_mismatch():
    # The list becomes float32, the array stays float64: no promotion.
    with pytest.raises(TypeError, match=r"float32.*float64|float64.*float32"):
        F.kl_div([0.0, 0.0], np.zeros(2, np.float64))


@pytest.mark.parametrize(
    "bad",
    [np.arange(3), np.ones(3, bool), np.ones(3, np.complex128), np.arange(3, dtype=np.int32)],
    ids=["int64", "bool", "complex128", "int32"],
)
def test_non_floating_input_names_its_dtype(bad):
    with pytest.raises(TypeError, match=bad.dtype.name):
        F.kl_div(bad, np.zeros(3))
    with pytest.raises(TypeError, match=bad.dtype.name):
        F.kl_div(np.zeros(3), bad)


def test_integer_list_is_refused():
    with pytest.raises(TypeError, match="int"):
        F.kl_div([1, 2], [1, 2])


def test_ragged_list_is_refused():
    with pytest.raises(TypeError):
        F.kl_div([[1.0, 2.0], [3.0]], [[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("bad", ["average", "SUM", "", "batch_mean", None, 1])
def test_bad_reduction_is_listed_with_the_valid_ones(bad):
    with pytest.raises(ValueError) as info:
        F.kl_div(np.zeros(3), np.zeros(3), reduction=bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "'none' | 'batchmean' | 'sum' | 'mean'" in message


@pytest.mark.parametrize("bad", ["average", "SUM", None])
def test_module_refuses_bad_reduction_at_construction(bad):
    with pytest.raises(ValueError) as info:
        flow.nn.KLDivLoss(reduction=bad)
    assert repr(bad) in str(info.value)
    assert "'none' | 'batchmean' | 'sum' | 'mean'" in str(info.value)


@pytest.mark.parametrize("bad", [1, 0, "True", None, 1.0])
def test_non_bool_log_target_is_refused(bad):
    with pytest.raises((TypeError, ValueError), match=repr(bad).replace(".", r"\.")):
        F.kl_div(np.zeros(3), np.zeros(3), log_target=bad)
    with pytest.raises((TypeError, ValueError), match=repr(bad).replace(".", r"\.")):
        flow.nn.KLDivLoss(log_target=bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: ITEMSIZE_ID[d])
def test_batchmean_on_zero_dim_is_refused(dtype):
    with pytest.raises(ValueError, match="0-dim|batch"):
        F.kl_div(np.array(0.5, dtype), np.array(0.5, dtype), reduction="batchmean")
    with pytest.raises(ValueError, match="0-dim|batch"):
        flow.nn.KLDivLoss(reduction="batchmean")(flow.tensor(np.array(0.5)), flow.tensor(np.array(0.5)))


def test_zero_dim_mean_and_sum_are_the_element():
    x, y = np.array(-0.5), np.array(0.25)
    element = kl_elements(x, y, False)
    for reduction in ("sum", "mean"):
        out = F.kl_div(x, y, reduction=reduction)
        assert_close(out.numpy(), element, np.float64, bound=element_error_bound(x, y, False))


# ---------------------------------------------------------------------------- properties
@st.composite
def loss_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    width = np.dtype(dtype).itemsize * 8
    log_target = draw(st.booleans())
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    x = draw(hnp.arrays(dtype, shape, elements=st.floats(-30, 30, width=width)))
    if log_target:
        y_elements = st.floats(-20, 3, width=width)
    else:  # zeros, negatives and tiny positives all appear
        y_elements = st.one_of(
            st.just(0.0), st.floats(-3, 8, width=width), st.floats(0, 2.0**-10, width=width)
        )
    y = draw(hnp.arrays(dtype, shape, elements=y_elements))
    return x, y, log_target


property_settings = settings(max_examples=80, deadline=None, derandomize=True, database=None)


@property_settings
@given(case=loss_cases())
def test_property_forward_matches_reference(case):
    x, y, log_target = case
    for reduction in REDUCTIONS:
        if reduction == "batchmean" and x.ndim == 0:
            continue
        check_loss(F.kl_div(x, y, reduction, log_target), x, y, reduction, log_target)


@property_settings
@given(case=loss_cases(), reduction=st.sampled_from(REDUCTIONS), data=st.data())
def test_property_gradients_match_reference(case, reduction, data):
    x, y, log_target = case
    if reduction == "batchmean" and x.ndim == 0:
        reduction = "sum"
    width = x.dtype.itemsize * 8
    if reduction == "none":
        upstream = data.draw(hnp.arrays(x.dtype, x.shape, elements=st.floats(-4, 4, width=width)))
    else:
        upstream = np.asarray(data.draw(st.floats(-4, 4, width=width)), x.dtype)
    gx, gy = grads_of(x, y, reduction, log_target, upstream=upstream)
    check_input_grad(gx, x, y, reduction, log_target, upstream)
    check_target_grad(gy, x, y, reduction, log_target, upstream)
