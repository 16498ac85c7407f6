"""softmax / log_softmax (functional and modules): values and gradients against the float64
reference (tests/softmax_reference.py) and, where installed, PyTorch; exact row sums."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import softmax_reference as ref
from hypothesis import example, given, settings
from hypothesis import strategies as st

import klflow as flow
import klflow.nn.functional as F
from klflow.kernels import exact_sum, pool
from klflow.kernels import softmax as kernels

DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
ULP_SCALE = {np.float16: 2.0**-10, np.float32: 2.0**-23, np.float64: 2.0**-52}


def _close(actual: np.ndarray, expected: np.ndarray, dtype, scale: np.ndarray | float, ulps: float) -> None:
    """|actual - expected| within ``ulps`` units of ``dtype`` at ``scale`` (plus the rounding of
    the result itself); NaN exactly where expected is NaN."""
    actual = np.asarray(actual, dtype=np.float64)
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    tolerance = ulps * ULP_SCALE[dtype] * (np.abs(expected) + scale) + np.finfo(dtype).smallest_subnormal
    tolerance = np.broadcast_to(tolerance, expected.shape)
    assert np.all(np.abs(actual[finite] - expected[finite]) <= tolerance[finite])


def _logits(seed: int, shape: tuple[int, ...], dtype, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * spread).astype(dtype)


def test_oneflow_documented_example():
    m = flow.nn.LogSoftmax(dim=1)
    x = flow.tensor(np.array([[0.4296, -1.1957, 2.5463], [1.2552, -1.5747, 0.6923]]), dtype=flow.float32)
    assert repr(m(x)) == (
        "tensor([[-2.2513, -3.8766, -0.1346],\n        [-0.4877, -3.3176, -1.0506]], dtype=klflow.float32)"
    )
    assert repr(m) == "LogSoftmax(dim=1)" and repr(flow.nn.Softmax(dim=-1)) == "Softmax(dim=-1)"


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple),
    dim_seed=st.integers(0, 10),
    dtype=st.sampled_from(sorted(DTYPES)),
    spread=st.sampled_from([0.01, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
    log=st.booleans(),
)
@example(shape=(3, 5000), dim_seed=1, dtype="float32", spread=5.0, seed=1, log=True)
def test_values_and_gradients_match_the_float64_reference(shape, dim_seed, dtype, spread, seed, log):
    np_dtype = DTYPES[dtype]
    x = _logits(seed, shape, np_dtype, spread)
    dim = dim_seed % max(len(shape), 1) - (dim_seed % 2) * max(len(shape), 1)  # negative dims too
    upstream = _logits(seed + 1, shape, np_dtype, 1.0)
    t = flow.tensor(x, requires_grad=True)
    out = (F.log_softmax if log else F.softmax)(t, dim=dim)
    assert out.dtype == t.dtype and tuple(out.shape) == shape
    out.backward(flow.tensor(upstream))
    nd = max(len(shape), 1)
    if log:
        expected = ref.log_softmax(x, dim % nd)
        scale = np.log(max(x.shape[dim % nd] if shape else 1, 1)) + 1.0
        _close(out.numpy(), expected, np_dtype, scale, 1.0 if np_dtype != np.float64 else 8.0)
        grad = ref.log_softmax_grad(x, upstream, dim % nd)
    else:
        expected = ref.softmax(x, dim % nd)
        _close(out.numpy(), expected, np_dtype, 0.0, 1.0 if np_dtype != np.float64 else 8.0)
        grad = ref.softmax_grad(x, upstream, dim % nd)
    # The gradient's row sum cancels: bound by the sizes of what it subtracts.
    g64 = upstream.astype(np.float64)
    grad_scale = np.abs(g64).max() * 4 + 1e-30 if upstream.size else 0.0
    _close(t.grad.numpy(), grad, np_dtype, grad_scale, 2.0 if np_dtype != np.float64 else 64.0)


def test_bfloat16_is_computed_wide_and_rounded_once():
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    x = _logits(4, (3, 40), np.float32, 3.0).astype(bf16)
    upstream = _logits(5, (3, 40), np.float32, 1.0).astype(bf16)
    for log in (True, False):
        t = flow.tensor(x, requires_grad=True)
        out = (F.log_softmax if log else F.softmax)(t, dim=1)
        out.backward(flow.tensor(upstream))
        assert out.dtype == flow.bfloat16 and t.grad.dtype == flow.bfloat16
        wide = x.astype(np.float64)
        t64 = flow.tensor(wide, requires_grad=True)
        out64 = (F.log_softmax if log else F.softmax)(t64, dim=1)
        out64.backward(flow.tensor(upstream.astype(np.float64)))
        from klflow.kernels.bfloat16 import round_to_bfloat16

        assert out.numpy().tobytes() == round_to_bfloat16(out64.numpy()).tobytes()
        assert t.grad.numpy().tobytes() == round_to_bfloat16(t64.grad.numpy()).tobytes()
        expected = (ref.log_softmax if log else ref.softmax)(wide, 1)
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected, rtol=2**-8, atol=2**-8)


def test_special_values_follow_pytorch():
    inf, nan = float("inf"), float("nan")
    cases = [[inf, 0.0], [-inf, -inf], [-inf, 0.0], [nan, 1.0], [1.0, -inf, 2.0]]
    expected_log = [[nan, nan], [nan, nan], [-inf, 0.0], [nan, nan], [-1.3132617, -inf, -0.31326169]]
    expected_soft = [[nan, nan], [nan, nan], [0.0, 1.0], [nan, nan], [0.26894142, 0.0, 0.7310586]]
    for row, log_row, soft_row in zip(cases, expected_log, expected_soft, strict=True):
        np.testing.assert_allclose(F.log_softmax(flow.tensor(row), dim=0).numpy(), log_row, rtol=1e-6)
        np.testing.assert_allclose(F.softmax(flow.tensor(row), dim=0).numpy(), soft_row, rtol=1e-6)


def test_zero_dim_and_empty():
    assert F.log_softmax(flow.tensor(3.0), dim=0).item() == 0.0
    assert F.softmax(flow.tensor(3.0), dim=-1).item() == 1.0
    assert tuple(F.log_softmax(flow.tensor(np.zeros((0, 4), np.float32)), dim=1).shape) == (0, 4)
    assert tuple(F.softmax(flow.tensor(np.zeros((3, 0), np.float32)), dim=1).shape) == (3, 0)


def test_implicit_dim_warns_and_chooses_as_pytorch():
    for shape, chosen in [((4,), 0), ((2, 3), 1), ((2, 3, 4), 0), ((2, 3, 4, 5), 1)]:
        x = _logits(0, shape, np.float32, 1.0)
        with pytest.warns(UserWarning, match="Implicit dimension choice for log_softmax"):
            out = F.log_softmax(flow.tensor(x))
        np.testing.assert_array_equal(out.numpy(), F.log_softmax(flow.tensor(x), dim=chosen).numpy())
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        flow.nn.Softmax()(flow.tensor([1.0, 2.0]))


def test_bad_dims_are_refused_with_pytorch_wording():
    x = flow.tensor([[1.0, 2.0]])
    with pytest.raises(
        IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"
    ):
        F.log_softmax(x, dim=2)
    with pytest.raises(TypeError, match="argument 'dim' must be int, not str"):
        F.softmax(x, dim="1")
    with pytest.raises(TypeError, match="argument 'dim' must be int, not float"):
        F.softmax(x, dim=1.0)


def test_bits_do_not_depend_on_threads_or_layout():
    x = _logits(3, (37, 3000), np.float32, 4.0)
    before = pool.thread_count()
    try:
        pool.set_thread_count(1)
        one = F.log_softmax(flow.tensor(x), dim=1).numpy()
        pool.set_thread_count(3)
        three = F.log_softmax(flow.tensor(x), dim=1).numpy()
    finally:
        pool.set_thread_count(before)
    assert one.tobytes() == three.tobytes()
    transposed = F.log_softmax(flow.from_numpy(np.ascontiguousarray(x.T)), dim=0).numpy()
    assert transposed.T.tobytes() == one.tobytes()
    strided = F.log_softmax(flow.from_numpy(x.T), dim=0).numpy()  # a non-contiguous view
    assert strided.T.tobytes() == one.tobytes()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), pieces=st.integers(1, 5), n=st.integers(1, 700))
def test_row_totals_from_column_pieces_are_the_same_bits(seed, pieces, n):
    """What a split global tensor does, in one process: maxima and exact states of column
    pieces, combined, give the totals (and outputs) of the whole rows."""
    x = _logits(seed, (4, n), np.float32, 10.0)
    whole, maxima, totals = kernels.forward(x, log=True)
    bounds = np.linspace(0, n, pieces + 1).astype(int)
    parts = [np.ascontiguousarray(x[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    combined_max = np.max([kernels.row_maxima(p) for p in parts], axis=0)
    assert combined_max.tobytes() == maxima.tobytes()
    states = sum(kernels.row_states(p, combined_max) for p in parts)
    assert kernels.round_states(states, combined_max).tobytes() == totals.tobytes()
    outs = [kernels.outputs(p, combined_max, totals, True) for p in parts]
    assert np.concatenate(outs, axis=1).tobytes() == whole.tobytes()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=64)
        | st.sampled_from([5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]),
        min_size=0,
        max_size=12,
    )
)
@example([1.0, 2.0**-53])  # a tie: to even
@example([1.0, 2.0**-53, 2.0**-105])  # just above the tie
@example([1.7976931348623157e308, 1.7976931348623157e308])  # overflow
@example([1e300, 1.0, -1e300])
@example([8.98846567431158e307, 8.98846567431158e307, 1.7976931348623157e308])  # past 2**1024
def test_compiled_row_rounding_is_exact_sum_to_float64(values):
    state = exact_sum.new_state()
    for v in values:
        exact_sum.add_float(state, v)
    rounded = kernels.round_states(state[None, :])[0]
    expected = exact_sum.to_float64(state)
    assert np.float64(rounded).tobytes() == np.float64(expected).tobytes()


def test_rounding_of_summed_raw_states():
    rng = np.random.default_rng(5)
    states = []
    for _ in range(6):
        s = exact_sum.new_state()
        exact_sum.add_terms(s, rng.standard_normal(5000) * 1e10, 5000)
        states.append(s)
    total = np.sum(states, axis=0)  # a raw digitwise sum, as an MPI all-reduce gives
    assert kernels.round_states(total[None, :])[0] == exact_sum.to_float64(exact_sum.sum_states(states))


def test_distillation_pipeline_gradients_against_the_reference():
    s = _logits(11, (6, 50), np.float32, 2.0)
    t = _logits(12, (6, 50), np.float32, 2.0)
    student, teacher = flow.tensor(s, requires_grad=True), flow.tensor(t, requires_grad=True)
    loss = F.kl_div(
        F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction="batchmean", log_target=True
    )
    loss.backward()
    ls, lt = ref.log_softmax(s, 1), ref.log_softmax(t, 1)
    expected = float(np.sum(np.exp(lt) * (lt - ls)) / 6)
    assert abs(loss.item() - expected) <= 1e-6 * abs(expected) + 1e-7
    d_input = -np.exp(lt) / 6
    d_target = np.exp(lt) * (lt - ls + 1) / 6
    np.testing.assert_allclose(student.grad.numpy(), ref.log_softmax_grad(s, d_input, 1), atol=2e-7)
    np.testing.assert_allclose(teacher.grad.numpy(), ref.log_softmax_grad(t, d_target, 1), atol=2e-7)


def test_against_pytorch():
    torch = pytest.importorskip("torch")
    for dtype, tol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        x = _logits(21, (5, 7, 9), dtype, 3.0)
        g = _logits(22, (5, 7, 9), dtype, 1.0)
        for dim in (0, 1, 2, -1):
            for log in (True, False):
                t = flow.tensor(x, requires_grad=True)
                out = (F.log_softmax if log else F.softmax)(t, dim=dim)
                out.backward(flow.tensor(g))
                xt = torch.tensor(x, requires_grad=True)
                ot = (torch.log_softmax if log else torch.softmax)(xt, dim=dim)
                ot.backward(torch.tensor(g))
                np.testing.assert_allclose(out.numpy(), ot.detach().numpy(), rtol=tol, atol=tol)
                np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=tol * 10, atol=tol * 10)


def test_modules_have_no_parameters_and_keep_dim_in_state():
    m = flow.nn.LogSoftmax(dim=0)
    assert list(m.parameters()) == [] and m.dim == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(flow.tensor([1.0, 2.0]))  # an explicit dim: no warning


def test_signed_zero_maxima_do_not_depend_on_order_or_split():
    rows = np.array([[-0.0, 0.0, -0.0], [0.0, -0.0, -0.0], [-0.0, -0.0, -0.0]], np.float64)
    maxima = kernels.row_maxima(rows)
    assert [np.signbit(m) for m in maxima] == [False, False, True]
    pieces = [kernels.row_maxima(np.ascontiguousarray(rows[:, i : i + 1])) for i in range(3)]
    from klflow.ops.softmax import _combined_maxima

    assert _combined_maxima(np.stack(pieces)).tobytes() == maxima.tobytes()
    out = F.log_softmax(flow.tensor(rows[:, ::-1].copy()), dim=1).numpy()
    assert out[:, ::-1].tobytes() == F.log_softmax(flow.tensor(rows), dim=1).numpy().tobytes()


def test_top_level_names_as_oneflow():
    x = flow.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert flow.softmax(x, dim=1).numpy().tobytes() == F.softmax(x, dim=1).numpy().tobytes()
    assert flow.log_softmax(x, dim=0).numpy().tobytes() == F.log_softmax(x, dim=0).numpy().tobytes()


def _finite_difference(phi, x0: np.ndarray, h: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(x0)
    for index in np.ndindex(x0.shape):
        up, down = x0.copy(), x0.copy()
        up[index] += h
        down[index] -= h
        out[index] = (phi(up) - phi(down)) / (2 * h)
    return out


@pytest.mark.parametrize("dim", [1, 0])
def test_second_derivatives_against_finite_differences(dim):
    """d/dx of w·∇L for L = kl_div(log_softmax(x), log_softmax(x / 2), batchmean, log_target)
    and for L = sum(softmax(x) * y): through the gradients' graphs (backward(create_graph=True)),
    the upstream gradient of log_softmax depending on x itself."""
    rng = np.random.default_rng(7)
    x0, w, y = rng.standard_normal((3, 5)), rng.standard_normal((3, 5)), rng.dirichlet(np.ones(5), 3)
    batch = x0.shape[0]

    def grad_distill(xx):
        ls, lt = ref.log_softmax(xx, dim), ref.log_softmax(xx / 2, dim)
        d_ls, d_lt = -np.exp(lt) / batch, np.exp(lt) * (lt - ls + 1) / batch
        return ref.log_softmax_grad(xx, d_ls, dim) + 0.5 * ref.log_softmax_grad(xx / 2, d_lt, dim)

    cases = [
        (
            lambda x: F.kl_div(
                F.log_softmax(x, dim=dim),
                F.log_softmax(x * 0.5, dim=dim),
                reduction="batchmean",
                log_target=True,
            ),
            grad_distill,
        ),
        (
            lambda x: (F.softmax(x, dim=dim) * flow.tensor(y, dtype=flow.float64)).sum(),
            lambda xx: ref.softmax_grad(xx, y, dim),
        ),
    ]
    for loss_of, reference_grad in cases:
        x = flow.tensor(x0, dtype=flow.float64, requires_grad=True)
        (g,) = flow.autograd.grad(loss_of(x), x, create_graph=True)
        np.testing.assert_allclose(g.detach().numpy(), reference_grad(x0), rtol=1e-12, atol=1e-14)
        (g * flow.tensor(w, dtype=flow.float64)).sum().backward()
        expected = _finite_difference(lambda xx, grad=reference_grad: float(np.sum(w * grad(xx))), x0)
        np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_a_bool_tensor_is_refused():
    mask = flow.tensor([1.0, 2.0]) > 1.5
    for function in (F.softmax, F.log_softmax):
        with pytest.raises(RuntimeError, match="not implemented for klflow.bool: it needs a floating dtype"):
            function(mask, dim=0)
