"""Tensor arithmetic: values against float64 NumPy references (bit for bit where IEEE fixes them),
broadcasting and its gradients, dtype promotion, comparisons, reshape/view/clone; PyTorch where
installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import klflow as flow

FLOATS = [np.float16, np.float32, np.float64]
OPS = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.true_divide),
}


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def _exact(ufunc, a, b, dtype):
    """The correctly rounded result of an IEEE operation: float64 holds more than twice the
    precision of float32/float16, so rounding its result once more is the single rounding."""
    with np.errstate(all="ignore"):
        return ufunc(
            np.float64(a) if np.ndim(a) == 0 else a.astype(np.float64), np.asarray(b, np.float64)
        ).astype(dtype)


def _bits(a):
    a = np.asarray(a)
    return a.dtype, a.shape, a.tobytes()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", list(OPS))
def test_tensor_op_tensor_is_the_correctly_rounded_ieee_result(op, dtype):
    a, b = _data((4, 5), dtype, 1), _data((4, 5), dtype, 2)
    b[0, 0] = 0  # division by zero gives inf/nan, as IEEE says
    got = OPS[op][0](flow.from_numpy(a), flow.from_numpy(b))
    assert got.dtype == flow.tensor(a).dtype
    assert _bits(got.numpy()) == _bits(_exact(OPS[op][1], a, b, dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("scalar", [0.1, 3, -2.5, True])
def test_python_scalars_keep_the_tensor_dtype_both_ways(op, dtype, scalar):
    a = _data((3, 2), dtype, 3)
    # The scalar is first rounded to the tensor's dtype (OneFlow's scalar ops, NumPy's rule).
    s = np.float64(dtype(scalar))
    left = OPS[op][0](flow.from_numpy(a), scalar)
    right = OPS[op][0](scalar, flow.from_numpy(a))
    with np.errstate(all="ignore"):
        want_left = OPS[op][1](a.astype(np.float64), s).astype(dtype)
        want_right = OPS[op][1](s, a.astype(np.float64)).astype(dtype)
    assert _bits(left.numpy()) == _bits(want_left)
    assert _bits(right.numpy()) == _bits(want_right)


@pytest.mark.parametrize(
    "a_dtype,b_dtype,a_shape,b_shape,want",
    [
        (np.float16, np.float32, (2,), (2,), np.float32),
        (np.float64, np.float32, (2,), (2,), np.float64),
        (np.float64, np.float32, (), (2,), np.float32),  # a 0-dim tensor does not widen
        (np.float16, np.float64, (2,), (), np.float16),
        (np.float32, np.float64, (), (), np.float64),
    ],
)
def test_dtype_promotion_between_tensors(a_dtype, b_dtype, a_shape, b_shape, want):
    a = flow.tensor(np.ones(a_shape, a_dtype))
    b = flow.tensor(np.full(b_shape, 0.1, b_dtype))
    out = a * b
    assert out.dtype == flow.tensor(np.zeros(1, want)).dtype
    ref = (np.ones(a_shape, np.float64) * np.float64(np.full(b_shape, 0.1, b_dtype))).astype(want)
    assert _bits(out.numpy()) == _bits(ref)


@st.composite
def broadcastable(draw):
    out = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))

    def operand():
        keep = draw(st.integers(0, len(out)))
        shape = out[len(out) - keep :]
        return tuple(1 if draw(st.booleans()) else n for n in shape)

    return operand(), operand()


@settings(deadline=None)  # first calls compile kernels
@given(broadcastable(), st.sampled_from(list(OPS)))
@example(((3, 1), (1, 4)), "mul")
@example(((), (2, 3)), "div")
def test_broadcasting_values_and_gradients(shapes_pair, op):
    a_shape, b_shape = shapes_pair
    a = _data(a_shape, np.float64, 4) + 5  # away from zero for div
    b = _data(b_shape, np.float64, 5) + 5
    ta = flow.tensor(a, requires_grad=True)
    tb = flow.tensor(b, requires_grad=True)
    out = OPS[op][0](ta, tb)
    want = OPS[op][1](a, b)
    assert out.shape == want.shape and np.array_equal(out.numpy(), want)
    g = _data(want.shape, np.float64, 6)
    out.backward(flow.tensor(g))
    local_a = {"add": g, "sub": g, "mul": g * b, "div": g / b}[op]
    local_b = {"add": g, "sub": -g, "mul": g * a, "div": -g * a / (b * b)}[op]

    def reduce_to(values, shape):
        lead = values.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(shape) if n == 1 and values.shape[lead + i] != 1
        )
        return np.sum(values, axis=axes).reshape(shape) if axes else values

    assert ta.grad.shape == a_shape and tb.grad.shape == b_shape
    np.testing.assert_allclose(ta.grad.numpy(), reduce_to(local_a, a_shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tb.grad.numpy(), reduce_to(local_b, b_shape), rtol=1e-12, atol=1e-12)


def test_incompatible_shapes_name_both():
    with pytest.raises(RuntimeError, match=r"\[2, 3\].*\[4\]"):
        flow.tensor(np.ones((2, 3))) + flow.tensor(np.ones(4))


@pytest.mark.parametrize("dtype", FLOATS)
def test_unary_ops_and_their_gradients(dtype):
    x = np.array([0.5, 1.0, 2.0, 3.0], dtype=dtype)
    t = flow.tensor(x, requires_grad=True)
    assert _bits((-t).numpy()) == _bits(-x)
    for method, ref in (("exp", np.exp), ("log", np.log)):
        got = getattr(t, method)().numpy()
        want = ref(x.astype(np.float64))
        tolerance = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
        assert got.dtype == dtype and np.all(np.abs(got - want) <= tolerance)
    (t.exp() + t.log() - t**2.0 + 2.0**t).sum().backward()
    x64 = x.astype(np.float64)
    want = np.exp(x64) + 1 / x64 - 2 * x64 + np.log(2.0) * 2.0**x64
    np.testing.assert_allclose(
        t.grad.numpy(), want, rtol={np.float16: 3e-3, np.float32: 2e-6, np.float64: 1e-14}[dtype]
    )


def test_pow_by_scalar_matches_pytorch_rules():
    t = flow.tensor([0.0, 1.5, -2.0], dtype=flow.float64, requires_grad=True)
    (t**0).sum().backward()
    assert t.grad.tolist() == [0.0, 0.0, 0.0]  # exponent 0: zero gradient, even at 0
    t.grad = None
    (t**3).sum().backward()
    assert t.grad.tolist() == [0.0, 3 * 1.5**2, 3 * 4.0]
    assert (t**0.5).numpy()[1] == math.sqrt(1.5)


def test_comparisons_return_bool_tensors_and_hash_by_identity():
    a = flow.tensor([1.0, 2.0, 3.0])
    b = flow.tensor([3.0, 2.0, 1.0])
    for got, want in (
        (a == b, [False, True, False]),
        (a != b, [True, False, True]),
        (a < b, [True, False, False]),
        (a <= 2.0, [True, True, False]),
        (a > b, [False, False, True]),
        (2.0 >= a, [True, True, False]),
    ):
        assert got.dtype == flow.bool and got.tolist() == want and not got.requires_grad
    assert repr(a == b) == "tensor([False,  True, False], dtype=klflow.bool)"
    assert (a == b).float().tolist() == [0.0, 1.0, 0.0]
    one = flow.tensor([2.0]) == 2.0
    assert (
        one.item() is True and bool(one) and repr(flow.tensor(1.0) > 2) == "tensor(False, dtype=klflow.bool)"
    )
    assert hash(a) == object.__hash__(a)
    assert len({a, b, a}) == 2
    half = flow.tensor([0.1], dtype=flow.float16)
    assert (half == 0.1).tolist() == [True]  # the scalar takes the tensor's dtype, as in PyTorch
    assert ((a > 1.5) * a).tolist() == [0.0, 2.0, 3.0] and ((a > 1.5) * a).dtype == flow.float32
    with pytest.raises(TypeError, match="bool tensor is not supported"):
        -(a > 1)


def test_reshape_view_clone():
    x = flow.tensor(np.arange(6.0), requires_grad=True)
    y = x.reshape(2, 3)
    assert y.shape == (2, 3) and x.view(-1, 2).shape == (3, 2) and x.reshape((3, 2)).shape == (3, 2)
    with pytest.raises(RuntimeError, match=r"shape '\[4, -1\]' is invalid for input of size 6"):
        x.reshape(4, -1)
    c = y.clone()
    assert c.numpy().ctypes.data != y.numpy().ctypes.data and c.grad_fn.name() == "clone_backward"
    (c * flow.tensor(np.arange(6.0).reshape(2, 3))).sum().backward()
    assert x.grad.tolist() == list(np.arange(6.0))


def test_functions_and_numpy_operands():
    x = flow.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert flow.sum(x).item() == 10.0 and flow.mean(x, dim=1).tolist() == [1.5, 3.5]
    assert np.allclose(flow.exp(x).numpy(), np.exp(x.numpy())) and flow.log(x).dtype == flow.float32
    out = np.array([1.0, 1.0], dtype=np.float32) + x  # NumPy defers to the tensor
    assert isinstance(out, flow.Tensor) and out.tolist() == [[2.0, 3.0], [4.0, 5.0]]
    with pytest.raises(TypeError, match="unsupported operand"):
        x + "a"


def test_matches_pytorch_where_installed():
    torch = pytest.importorskip("torch")
    a = _data((3, 4), np.float32, 7)
    b = _data((4,), np.float32, 8) + 4
    h = _data((3, 4), np.float16, 9)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    fa, fb = flow.tensor(a, requires_grad=True), flow.tensor(b, requires_grad=True)
    t_out = ((ta * tb - 0.3) / tb + ta**2 - (-ta).exp()).mean()
    f_out = ((fa * fb - 0.3) / fb + fa**2 - (-fa).exp()).mean()
    t_out.backward()
    f_out.backward()
    np.testing.assert_allclose(f_out.item(), t_out.item(), rtol=1e-6)
    np.testing.assert_allclose(fa.grad.numpy(), ta.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fb.grad.numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-7)
    for scalar in (0.1, 1 / 3, 7.0):
        assert (flow.tensor(h) + scalar).numpy().tobytes() == (torch.tensor(h) + scalar).numpy().tobytes()
        # (For float16, PyTorch's CPU mul keeps a float32 scalar and its scalar / tensor is
        # tensor.reciprocal() * scalar, rounded twice; klflow rounds the scalar to the tensor's
        # dtype and divides once, as test_python_scalars_keep_the_tensor_dtype_both_ways checks.)
        a32 = flow.tensor(a)
        assert (a32 * scalar).numpy().tobytes() == (torch.tensor(a) * scalar).numpy().tobytes()
    assert ((flow.tensor(a) > 0) == flow.tensor(a > 0, dtype=flow.bool)).tolist() == [[True] * 4] * 3


def test_in_place_ops_write_into_the_tensor():
    data = np.array([1.0, 2.0], dtype=np.float32)
    t = flow.from_numpy(data)
    same = t
    t += 1.0
    t *= flow.tensor([2.0, 3.0])
    t -= 0.5
    t /= 2.0
    assert t is same and data.tolist() == [1.75, 4.25]  # the shared NumPy array sees it
    assert t.add_(1.0) is t and t.mul_(2.0).sub_(1.0).div_(2.0).tolist() == [2.25, 4.75]
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        t += flow.tensor(np.ones((2, 2), np.float32))
    w = flow.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w -= 0.1
    (w * w).sum().backward()
    alias = w
    with flow.no_grad():
        w -= 0.25 * w.grad  # a gradient step on the parameter itself
    assert alias.tolist() == [0.5, 1.0] and w.requires_grad
    h = flow.tensor([1.0], dtype=flow.float16)
    h *= flow.tensor([3.0], dtype=flow.float64)
    assert h.dtype == flow.float16 and h.tolist() == [3.0]
