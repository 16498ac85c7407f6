"""sum()/mean(): correctly rounded exact reductions (rational references), over all elements or
some dims, keepdim, gradients, empty tensors and errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import round_fraction

import klflow as flow


def _exact_sums(values: np.ndarray, dims: tuple[int, ...], keepdim: bool, dtype, mean: bool) -> np.ndarray:
    """Reference: the rational sum of each output element, rounded once (a mean divides the
    correctly rounded float64 sum, as OneFlow's loss mean does)."""
    kept = [d for d in range(values.ndim) if d not in dims]
    moved = np.transpose(values, (*kept, *dims)) if values.ndim else values
    kept_shape = tuple(values.shape[d] for d in kept)
    rows = moved.reshape(int(np.prod(kept_shape, dtype=np.int64)), -1) if values.size else None
    out = []
    count = int(np.prod([values.shape[d] for d in dims], dtype=np.int64))
    for r in range(int(np.prod(kept_shape, dtype=np.int64))):
        row = rows[r] if rows is not None else []
        total = sum((Fraction(float(v)) for v in row), Fraction(0))
        if mean:
            s64 = float(round_fraction(total, np.float64))
            out.append(np.array(s64 / count if count else np.nan, np.float64).astype(dtype))
        else:
            out.append(round_fraction(total, dtype))
    result = np.array(out, dtype=dtype).reshape(kept_shape)
    if keepdim:
        result = result.reshape(tuple(1 if d in dims else n for d, n in enumerate(values.shape)))
    return result


@st.composite
def cases(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    dims = draw(st.one_of(st.none(), st.sets(st.integers(0, max(len(shape) - 1, 0)), max_size=len(shape))))
    if dims is not None and len(shape) == 0:
        dims = None
    return shape, dims, draw(st.booleans()), draw(st.sampled_from([np.float16, np.float32, np.float64]))


@settings(deadline=None)  # first calls compile kernels
@given(cases(), st.booleans())
@example(((3, 4), {1}, False, np.float32), False)
@example(((2, 0), {1}, True, np.float64), True)
def test_sum_and_mean_are_correctly_rounded(case, mean):
    shape, dims, keepdim, dtype = case
    rng = np.random.default_rng(len(shape) * 7 + (len(dims) if dims else 0))
    values = np.asarray(rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)).astype(dtype)
    t = flow.from_numpy(values)
    dim = tuple(sorted(dims)) if dims else None
    got = t.mean(dim, keepdim) if mean else t.sum(dim, keepdim)
    all_dims = tuple(range(len(shape))) if dim is None else dim
    want = _exact_sums(values, all_dims, keepdim, dtype, mean)
    assert got.numpy().dtype == dtype and got.shape == want.shape
    assert got.numpy().tobytes() == want.tobytes() or np.array_equal(got.numpy(), want, equal_nan=True)


def test_cancellation_is_exact():
    x = flow.tensor([[1e8, 1.0, -1e8], [1e30, 3.0, -1e30]], dtype=flow.float32)
    assert x.sum(dim=1).tolist() == [1.0, 3.0] and x.sum().item() == 4.0
    assert flow.tensor([0.1] * 10, dtype=flow.float64).sum().item() == 1.0


def test_int_dim_tuple_dim_negative_dim_and_errors():
    x = flow.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert x.sum(-1).shape == (2, 3) and x.sum((0, 2)).tolist() == [60.0 + 0, 92.0, 124.0][:0] + [
        float(np.arange(24.0).reshape(2, 3, 4).sum(axis=(0, 2))[i]) for i in range(3)
    ]
    assert x.mean(1, keepdim=True).shape == (2, 1, 4)
    with pytest.raises(IndexError, match="Dimension out of range"):
        x.sum(3)
    with pytest.raises(RuntimeError, match="appears multiple times"):
        x.sum((1, -2))
    with pytest.raises(TypeError, match="bool"):
        (x > 1).sum()


def test_gradients_spread_back():
    x = flow.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    (x.sum(0) * flow.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    x.grad = None
    x.mean(1, keepdim=True).sum().backward()
    assert np.allclose(x.grad.numpy(), np.full((2, 3), 1 / 3))
    x.grad = None
    x.mean().backward()
    assert np.allclose(x.grad.numpy(), np.full((2, 3), 1 / 6))


def test_empty_sum_is_zero_and_empty_mean_is_nan():
    e = flow.tensor(np.zeros((0, 3)))
    assert e.sum().item() == 0.0 and np.isnan(e.mean().item())
    assert e.sum(0).tolist() == [0.0, 0.0, 0.0]
