"""Creation functions: sizes, dtypes, devices, errors as OneFlow/PyTorch word them, the generator's
state, and random values that depend only on the seed, the call and each logical index."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow

DTYPES = [flow.float16, flow.float32, flow.float64]


@pytest.mark.parametrize(
    "args,shape",
    [((2, 3), (2, 3)), (((2, 3),), (2, 3)), (([4],), (4,)), ((flow.Size([1, 2]),), (1, 2)), ((), ()),
     ((np.int64(3),), (3,)), ((0, 5), (0, 5))],
)  # fmt: skip
@pytest.mark.parametrize("make", [flow.zeros, flow.ones, flow.rand, flow.randn])
def test_size_forms(make, args, shape):
    t = make(*args)
    assert t.shape == shape and t.dtype == flow.float32 and t.device == flow.device("cpu")
    assert t.is_leaf and not t.requires_grad


def test_size_keyword():
    assert flow.zeros(size=(2, 1)).shape == (2, 1)
    with pytest.raises(TypeError, match=r"both positionally \[2\] and as size=\(2, 1\)"):
        flow.zeros(2, size=(2, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_constants_have_their_values_and_dtype(dtype):
    np.testing.assert_array_equal(flow.zeros(2, 3, dtype=dtype).numpy(), np.zeros((2, 3), dtype.numpy))
    np.testing.assert_array_equal(flow.ones(4, dtype=dtype).numpy(), np.ones(4, dtype.numpy))
    full = flow.full((3,), 0.1, dtype=dtype).numpy()
    assert full.dtype == dtype.numpy
    np.testing.assert_array_equal(full, np.full(3, np.float64(0.1)).astype(dtype.numpy))


def test_bool_constants():
    assert flow.zeros(2, dtype=flow.bool).tolist() == [False, False]
    assert flow.ones(2, dtype=flow.bool).dtype == flow.bool
    assert flow.full((2,), 3.0, dtype=flow.bool).tolist() == [True, True]


def test_full_values():
    assert flow.full((2,), 7).tolist() == [7.0, 7.0]
    assert flow.full(3, -2.5).tolist() == [-2.5] * 3
    assert flow.full((1,), flow.tensor(4.0)).tolist() == [4.0]
    assert np.signbit(flow.full((2,), -0.0).numpy()).all()
    assert np.isnan(flow.full((2,), float("nan")).numpy()).all()
    assert flow.full((2,), True).tolist() == [1.0, 1.0]


def test_requires_grad_makes_a_leaf():
    x = flow.ones(3, requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.grad is None
    r = flow.rand(3, requires_grad=True)
    assert r.requires_grad and r.grad_fn is None


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: flow.zeros(2, -1), RuntimeError, r"create tensor with negative dimension -1: \[2, -1\]"),
        (lambda: flow.rand(-3), RuntimeError, r"negative dimension -3: \[-3\]"),
        (lambda: flow.ones(2.0), TypeError,
         r"ones\(\): argument 'size' must be tuple of ints, but found element of type float at pos 0"),
        (lambda: flow.randn((2, "3")), TypeError, r"found element of type str at pos 1"),
        (lambda: flow.zeros(2, dtype="int64"), TypeError, r"floating-point data only .* dtype int64"),
        (lambda: flow.ones(2, dtype=np.bool_), TypeError, r"dtype bool"),
        (lambda: flow.rand(2, dtype=3.5), TypeError, r"3.5"),
        (lambda: flow.full((2,), 1 + 2j), TypeError, r"real numbers only; fill_value=\(1\+2j\)"),
        (lambda: flow.full((2,), "a"), TypeError, r"fill_value must be a number, got str 'a'"),
        (lambda: flow.full((2,), flow.ones(2)), RuntimeError, r"one-element tensor .* shape \[2\]"),
        (lambda: flow.zeros(2, sbp=flow.sbp.broadcast), ValueError,
         r"sbp=klflow.sbp.broadcast was given without placement="),
        (lambda: flow.rand(2, placement=flow.placement("cpu", [0])), ValueError, r"without sbp="),
        (lambda: flow.rand(2, device="cpu", placement=flow.placement("cpu", [0]), sbp=flow.sbp.broadcast),
         ValueError, r"device='cpu' and placement= were both given"),
        (lambda: flow.rand(2, placement=flow.placement("cpu", [0]), sbp=flow.sbp.split(1)), ValueError,
         r"split\(dim=1\) needs a tensor with more than 1 dimensions, got shape \[2\]"),
        (lambda: flow.zeros(2, device="tpu"), ValueError, r"'tpu'"),
        (lambda: flow.rand(2, generator=5), TypeError, r"generator must be a klflow.Generator, got int"),
        (lambda: flow.zeros(2, out=None), TypeError, r"unexpected keyword arguments \['out'\]"),
        (lambda: flow.zeros_like(np.zeros(2)), TypeError, r"must be a klflow Tensor, not ndarray"),
        (lambda: flow.rand(2, dtype=flow.bool), TypeError,
         r"rand\(\): random values need a floating dtype .* got klflow.bool"),
        (lambda: flow.randn_like(flow.zeros(2, dtype=flow.bool)), TypeError,
         r"randn_like\(\): random values .* got klflow.bool"),
    ],
)  # fmt: skip
def test_bad_arguments_name_what_they_saw(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------- the generator
def test_manual_seed_repeats_and_calls_differ():
    flow.manual_seed(3)
    a, b = flow.rand(8).numpy(), flow.rand(8).numpy()
    flow.manual_seed(3)
    np.testing.assert_array_equal(flow.rand(8).numpy(), a)
    np.testing.assert_array_equal(flow.rand(8).numpy(), b)
    assert not np.array_equal(a, b)
    flow.manual_seed(4)
    assert not np.array_equal(flow.rand(8).numpy(), a)


def test_seed_state_functions():
    flow.manual_seed(-1)  # negative seeds are taken mod 2**64, as PyTorch does
    assert flow.initial_seed() == 2**64 - 1
    chosen = flow.seed()
    assert flow.initial_seed() == chosen and 0 <= chosen < 2**64
    g = flow.manual_seed(11)
    assert g is flow.default_generator and g.get_state() == (11, 0)
    flow.rand(2)
    assert g.get_state() == (11, 1)
    with pytest.raises(RuntimeError, match=r"Overflow when unpacking long.* got 18446744073709551616"):
        flow.manual_seed(2**64)
    with pytest.raises(TypeError, match=r"a seed is an integer, got float 1.5"):
        flow.manual_seed(1.5)


def test_a_failed_call_does_not_advance_the_generator():
    flow.manual_seed(9)
    with pytest.raises(RuntimeError):
        flow.rand(-1)
    after_error = flow.rand(4).numpy()
    flow.manual_seed(9)
    np.testing.assert_array_equal(flow.rand(4).numpy(), after_error)


def test_own_generator_leaves_the_default_alone():
    flow.manual_seed(1)
    expected = flow.rand(5).numpy()
    g = flow.Generator("cpu").manual_seed(1)
    assert flow.Generator().initial_seed() == flow.Generator("cuda").initial_seed() == 67280421310721
    flow.manual_seed(1)
    np.testing.assert_array_equal(flow.rand(5, generator=g).numpy(), expected)
    np.testing.assert_array_equal(flow.rand(5).numpy(), expected)  # the default was not drawn from


@pytest.mark.parametrize("make", [flow.rand, flow.randn])
def test_values_depend_on_the_logical_index_only(make):
    """Shape is a view of the logical order: (4, 6) is (24,) reshaped; a prefix is a prefix."""
    flow.manual_seed(21)
    flat = make(24, dtype=flow.float64).numpy()
    flow.manual_seed(21)
    grid = make(4, 6, dtype=flow.float64).numpy()
    flow.manual_seed(21)
    prefix = make(10, dtype=flow.float64).numpy()
    np.testing.assert_array_equal(grid.reshape(-1), flat)
    np.testing.assert_array_equal(prefix, flat[:10])


# ----------------------------------------------------------------- *_like
@pytest.mark.parametrize("dtype", DTYPES)
def test_like_functions_keep_shape_and_dtype(dtype):
    x = flow.tensor(np.arange(6.0).reshape(2, 3), dtype=dtype)
    for made in (flow.zeros_like(x), flow.ones_like(x), flow.full_like(x, 2.0), flow.rand_like(x),
                 flow.randn_like(x)):  # fmt: skip
        assert made.shape == (2, 3) and made.dtype == dtype and not made.requires_grad
    assert flow.ones_like(x).tolist() == [[1.0] * 3] * 2
    assert flow.full_like(x, 2.0, dtype=flow.float64).dtype == flow.float64
    assert flow.zeros_like(x, requires_grad=True).requires_grad
    flow.manual_seed(2)
    a = flow.randn_like(x).numpy()
    flow.manual_seed(2)
    np.testing.assert_array_equal(a, flow.randn(2, 3, dtype=dtype).numpy())


# ----------------------------------------------------------------- global, one process
@pytest.mark.parametrize(
    "sbp", [flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast, flow.sbp.partial_sum]
)
@pytest.mark.parametrize("make", [flow.rand, flow.randn])
def test_global_on_one_rank_is_the_local_value(make, sbp):
    placement = flow.placement("cpu", [0])
    flow.manual_seed(8)
    local = make(5, 3).numpy()
    flow.manual_seed(8)
    g = make(5, 3, placement=placement, sbp=sbp)
    assert g.is_global and g.placement == placement and g.sbp == (sbp,) and g.shape == (5, 3)
    np.testing.assert_array_equal(g.numpy(), local)


def test_global_constants_and_like():
    placement = flow.placement("cpu", [0])
    g = flow.full((4,), 2.5, placement=placement, sbp=flow.sbp.split(0), requires_grad=True)
    assert g.tolist() == [2.5] * 4 and g.requires_grad and g.is_leaf
    z = flow.zeros_like(g)
    assert z.is_global and z.sbp == g.sbp and z.tolist() == [0.0] * 4
    local = flow.ones_like(g, device="cpu")
    assert not local.is_global and local.tolist() == [1.0] * 4


@pytest.mark.parametrize("make", [flow.rand, flow.randn])
def test_worker_threads_make_the_same_bits(make):
    from klflow.kernels import pool

    shape = (3, 40_001)  # several pieces, cut inside rows
    previous = pool.thread_count()
    try:
        pool.set_thread_count(1)
        flow.manual_seed(6)
        serial = make(*shape).numpy()
        pool.set_thread_count(3)
        flow.manual_seed(6)
        threaded = make(*shape).numpy()
    finally:
        pool.set_thread_count(previous)
    assert serial.tobytes() == threaded.tobytes()
    flow.manual_seed(6)
    np.testing.assert_array_equal(make(shape[0] * shape[1]).numpy().reshape(shape), serial)
