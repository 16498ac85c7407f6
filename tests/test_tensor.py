"""``klflow.tensor``, ``klflow.from_numpy`` and the CPU side of the ``Tensor`` API.

The API is the one listed in DESIGN section 2.

Construction (copy versus shared memory, dtype rules, refused data), metadata, data access, dtype
and device conversion with gradients flowing back through casts, the autograd rules of leaves and
non-leaves, ``backward`` errors, ``cuda()`` without a GPU and ``no_grad``.
"""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow
import klflow.nn.functional as F

FLOAT_DTYPES = [(np.float16, flow.float16), (np.float32, flow.float32), (np.float64, flow.float64)]
float_dtypes = pytest.mark.parametrize("np_dtype, flow_dtype", FLOAT_DTYPES, ids=["f16", "f32", "f64"])
needs_no_gpu = pytest.mark.skipif(flow.cuda.is_available(), reason="a CUDA device is present")


class ArrayHolder:
    """Not an ndarray, but converts to its (internal) array through ``__array__``."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


# ---------------------------------------------------------------------------- construction
def test_python_list_defaults_to_float32():
    t = flow.tensor([[1.0, 2.0], [3.0, 4.5]])
    assert t.dtype == flow.float32
    assert t.numpy().dtype == np.float32
    assert t.tolist() == [[1.0, 2.0], [3.0, 4.5]]


def test_python_float_gives_zero_dim_float32():
    t = flow.tensor(2.5)
    assert t.dtype == flow.float32 and tuple(t.shape) == () and t.item() == 2.5


def test_empty_list_gives_empty_float32():
    t = flow.tensor([])
    assert t.dtype == flow.float32 and tuple(t.shape) == (0,) and t.numel() == 0


@float_dtypes
def test_numpy_array_keeps_its_dtype(np_dtype, flow_dtype):
    t = flow.tensor(np.array([1.0, 2.0], np_dtype))
    assert t.dtype == flow_dtype and t.numpy().dtype == np_dtype


@float_dtypes
def test_array_protocol_object_keeps_its_dtype(np_dtype, flow_dtype):
    assert flow.tensor(ArrayHolder(np.ones(3, np_dtype))).dtype == flow_dtype


@float_dtypes
def test_dtype_argument_converts(np_dtype, flow_dtype):
    t = flow.tensor([0.1, 0.2], dtype=flow_dtype)
    assert t.dtype == flow_dtype
    np.testing.assert_array_equal(t.numpy(), np.array([0.1, 0.2], np_dtype))


def test_dtype_argument_converts_integer_data():
    t = flow.tensor([1, 2, 3], dtype=flow.float64)
    assert t.dtype == flow.float64 and t.tolist() == [1.0, 2.0, 3.0]


def test_dtype_aliases():
    assert flow.float is flow.float32 and flow.double is flow.float64
    assert flow.half is flow.float16
    assert repr(flow.float32) == "klflow.float32" and repr(flow.float16) == "klflow.float16"


def test_tensor_copies_numpy_data():
    source = np.array([1.0, 2.0, 3.0])
    t = flow.tensor(source)
    source[0] = 99.0
    assert t.tolist() == [1.0, 2.0, 3.0]
    assert not np.shares_memory(t.numpy(), source)


def test_tensor_copies_array_protocol_data():
    # flow.tensor always copies, also when __array__ hands out the object's own buffer.
    holder = ArrayHolder(np.array([1.0, 2.0]))
    t = flow.tensor(holder)
    holder.values[0] = 99.0
    assert t.tolist() == [1.0, 2.0]


def test_tensor_copies_another_tensor():
    source = flow.tensor([1.0, 2.0])
    copy = flow.tensor(source)
    source.numpy()[0] = 5.0
    assert copy.tolist() == [1.0, 2.0]


def test_tensor_of_fortran_and_strided_arrays_keeps_values():
    a = np.arange(12.0).reshape(3, 4)
    for view in (np.asfortranarray(a), a[::2, ::-3], a.T):
        np.testing.assert_array_equal(flow.tensor(view).numpy(), view)


def test_non_native_byte_order_keeps_float64():
    # A big-endian float64 array holds float64 data: it is accepted and keeps its values.
    source = np.array([1.5, -2.25], dtype=np.dtype(np.float64).newbyteorder())
    t = flow.tensor(source)
    assert t.dtype == flow.float64 and t.tolist() == [1.5, -2.25]


def test_from_numpy_shares_memory_both_ways():
    source = np.zeros(3, np.float32)
    t = flow.from_numpy(source)
    source[1] = 7.0
    assert t.tolist() == [0.0, 7.0, 0.0]
    t.numpy()[2] = 5.0
    assert source[2] == 5.0
    assert t.dtype == flow.float32


@float_dtypes
def test_from_numpy_keeps_dtype(np_dtype, flow_dtype):
    assert flow.from_numpy(np.ones(2, np_dtype)).dtype == flow_dtype


def test_from_numpy_shares_non_contiguous_memory():
    base = np.zeros((4, 6))
    view = base[::2, ::3].T
    t = flow.from_numpy(view)
    base[2, 3] = 4.0
    assert t.numpy()[1, 1] == 4.0
    assert tuple(t.shape) == (2, 2)


@pytest.mark.parametrize(
    "data",
    [
        np.arange(3),
        np.ones(2, bool),
        np.ones(2, np.complex64),
        np.arange(3, dtype=np.int32),
        np.arange(3, dtype=np.uint8),
    ],
    ids=lambda a: a.dtype.name,
)
def test_non_float_numpy_data_is_refused_naming_the_dtype(data):
    with pytest.raises(TypeError, match=data.dtype.name):
        flow.tensor(data)
    with pytest.raises(TypeError, match=data.dtype.name):
        flow.from_numpy(data)


@pytest.mark.parametrize(
    "data, name",
    [(3, "int64"), (True, "bool"), ([1, 2], "int64"), (1 + 2j, "complex128"), ([[True, False]], "bool")],
    ids=["int", "bool", "int-list", "complex", "bool-list"],
)
def test_non_float_python_data_is_refused_naming_the_dtype(data, name):
    with pytest.raises(TypeError, match=name):
        flow.tensor(data)


@pytest.mark.parametrize(
    "data", [[[1.0, 2.0], [3.0]], [1.0, [2.0]], [[1.0], 2.0]], ids=["rows", "nested-second", "nested-first"]
)
def test_ragged_lists_are_refused(data):
    with pytest.raises(TypeError):
        flow.tensor(data)


def test_from_numpy_refuses_non_arrays():
    with pytest.raises(TypeError, match="list"):
        flow.from_numpy([1.0, 2.0])


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match="int32"):
        flow.tensor([1.0], dtype=np.int32)


def test_requires_grad_argument_makes_a_leaf():
    t = flow.tensor([1.0], requires_grad=True)
    assert t.requires_grad and t.is_leaf and t.grad is None and t.grad_fn is None


# ---------------------------------------------------------------------------- metadata
def test_shape_and_size():
    t = flow.tensor(np.zeros((2, 3, 4)))
    assert isinstance(t.shape, tuple) and t.shape == (2, 3, 4)
    assert repr(t.shape) == "klflow.Size([2, 3, 4])"
    assert t.size() == t.shape
    assert (t.size(0), t.size(1), t.size(2)) == (2, 3, 4)
    assert (t.size(-1), t.size(-3)) == (4, 2)


@pytest.mark.parametrize("dim", [3, -4])
def test_size_with_dimension_out_of_range(dim):
    with pytest.raises(IndexError, match=str(dim)):
        flow.tensor(np.zeros((2, 3, 4))).size(dim)


@pytest.mark.parametrize("shape, numel", [((), 1), ((0,), 0), ((3, 0), 0), ((2, 3, 4), 24)], ids=str)
def test_ndim_and_numel(shape, numel):
    t = flow.tensor(np.zeros(shape))
    assert t.ndim == len(shape)
    assert t.numel() == numel


def test_dtype_and_device():
    t = flow.tensor([1.0])
    assert t.dtype == flow.float32 and repr(t.dtype) == "klflow.float32"
    assert t.device == flow.device("cpu")
    assert repr(t.device) == "device(type='cpu')" and str(t.device) == "cpu"


def test_a_local_tensor_is_not_global():
    t = flow.tensor([1.0])
    assert t.is_global is False
    with pytest.raises(RuntimeError):
        t.placement
    with pytest.raises(RuntimeError):
        t.sbp


# ---------------------------------------------------------------------------- data access
@float_dtypes
def test_item_of_one_element(np_dtype, flow_dtype):
    for t in (flow.tensor(np.array(0.5, np_dtype)), flow.tensor(np.array([[0.5]], np_dtype))):
        value = t.item()
        assert type(value) is float and value == 0.5


@pytest.mark.parametrize("shape", [(2,), (0,), (2, 2)], ids=str)
def test_item_refuses_other_sizes(shape):
    with pytest.raises(RuntimeError, match=str(int(np.prod(shape)))):
        flow.tensor(np.zeros(shape)).item()


def test_tolist():
    assert flow.tensor(np.array([[1.0, 2.0]])).tolist() == [[1.0, 2.0]]
    assert flow.tensor(np.array(3.0)).tolist() == 3.0
    assert flow.tensor(np.zeros((0, 2))).tolist() == []


def test_numpy_of_zero_dim_is_zero_dim_array():
    out = flow.tensor(np.array(1.5)).numpy()
    assert isinstance(out, np.ndarray) and out.shape == () and out == 1.5


def test_numpy_shares_the_tensor_memory():
    t = flow.tensor([1.0, 2.0])
    t.numpy()[0] = 8.0
    assert t.tolist() == [8.0, 2.0]


def test_array_protocol():
    t = flow.tensor([1.0, 2.0])
    a = np.asarray(t)
    assert a.dtype == np.float32 and a.tolist() == [1.0, 2.0]
    b = np.asarray(t, dtype=np.float64)
    assert b.dtype == np.float64 and b.tolist() == [1.0, 2.0]
    c = np.array(t, copy=True)
    c[0] = 9.0
    assert t.tolist() == [1.0, 2.0]


# ---------------------------------------------------------------------------- conversion
@float_dtypes
def test_casts_return_self_when_nothing_changes(np_dtype, flow_dtype):
    t = flow.tensor(np.ones(2, np_dtype), requires_grad=True)
    method = {flow.float16: t.half, flow.float32: t.float, flow.float64: t.double}[flow_dtype]
    assert method() is t
    assert t.to(flow_dtype) is t
    assert t.to(dtype=flow_dtype) is t
    assert t.to("cpu") is t
    assert t.to(flow.device("cpu")) is t
    assert t.to(t) is t
    assert t.cpu() is t


@pytest.mark.parametrize(
    "method, flow_dtype, source_dtype",
    [
        ("half", flow.float16, np.float64),
        ("float", flow.float32, np.float64),
        ("double", flow.float64, np.float32),
    ],
    ids=["half", "float", "double"],
)
def test_casts_convert_values(method, flow_dtype, source_dtype):
    source = np.array([0.1, -2.5, 1e-3], source_dtype)
    t = flow.tensor(source)
    out = getattr(t, method)()
    assert out.dtype == flow_dtype and out is not t
    np.testing.assert_array_equal(out.numpy(), source.astype(flow_dtype.numpy))
    assert t.numpy().dtype == source_dtype  # the source is unchanged


def test_to_with_dtype_and_device():
    t = flow.tensor([1.0])
    out = t.to("cpu", flow.float64)
    assert out.dtype == flow.float64 and out.device == flow.device("cpu")
    assert t.to(flow.tensor(np.zeros(1, np.float16))).dtype == flow.float16


def test_to_refuses_unknown_arguments():
    with pytest.raises(TypeError):
        flow.tensor([1.0]).to(3)


def test_cast_output_is_a_non_leaf_with_cast_backward():
    t = flow.tensor([1.0], requires_grad=True)
    out = t.double()
    assert out.requires_grad and not out.is_leaf
    assert out.grad_fn.name() == "cast_backward"


@pytest.mark.parametrize("cast", ["double", "half"])
def test_gradient_flows_back_through_a_cast_in_the_source_dtype(cast):
    target = np.array([0.5, 0.25, 0.0])
    x = flow.tensor([0.1, 0.2, 0.3], requires_grad=True)  # float32
    wide = getattr(x, cast)()
    F.kl_div(wide, target.astype(wide.dtype.numpy), reduction="sum").backward()
    assert x.grad.dtype == flow.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.array([-0.5, -0.25, 0.0], np.float32))


def test_gradient_through_cast_with_upstream():
    x = flow.tensor([0.5, 0.25], requires_grad=True)
    loss = F.kl_div(x.double(), np.array([0.5, 0.25]), reduction="none")
    loss.backward(np.array([2.0, 3.0]))
    assert x.grad.dtype == flow.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.array([-1.0, -0.75], np.float32))


def test_gradients_accumulate_through_two_casts():
    x = flow.tensor([0.5, 0.25], dtype=flow.float64, requires_grad=True)
    F.kl_div(x.float(), np.array([0.5, 0.5], np.float32), reduction="sum").backward()
    F.kl_div(x.half(), np.array([0.25, 0.25], np.float16), reduction="sum").backward()
    assert x.grad.dtype == flow.float64
    np.testing.assert_array_equal(x.grad.numpy(), [-0.75, -0.75])


# ---------------------------------------------------------------------------- cuda without a GPU
@needs_no_gpu
@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.cuda(),
        lambda t: t.to("cuda"),
        lambda t: t.cuda(0),
        lambda t: flow.tensor([1.0], device="cuda"),
    ],
    ids=["cuda()", "to(cuda)", "cuda(0)", "tensor(device=cuda)"],
)
def test_cuda_without_gpu_says_why(make):
    with pytest.raises(RuntimeError) as info:
        make(flow.tensor([1.0]))
    message = str(info.value)
    assert "GPU" in message or "CUDA driver" in message
    assert "numba-cuda" in message or "numba" in message


@needs_no_gpu
def test_cuda_is_not_available():
    assert flow.cuda.is_available() is False


# ---------------------------------------------------------------------------- autograd rules
def test_detach_shares_data_and_leaves_the_graph():
    x = flow.tensor([1.0, 2.0], requires_grad=True)
    y = x.double()
    d = y.detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    assert np.shares_memory(d.numpy(), y.numpy())
    assert d.dtype == flow.float64


def test_leaf_requires_grad_can_be_switched_on_and_off():
    t = flow.tensor([1.0])
    t.requires_grad = True
    assert t.requires_grad
    t.requires_grad = False
    assert not t.requires_grad
    assert t.requires_grad_() is t and t.requires_grad


def test_non_leaf_cannot_stop_requiring_grad():
    y = flow.tensor([1.0], requires_grad=True).double()
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad = False
    y.requires_grad = True  # allowed: nothing changes
    assert y.requires_grad


def test_backward_of_non_scalar_needs_gradient():
    loss = F.kl_div(flow.tensor([0.1, 0.2], requires_grad=True), [0.5, 0.5], reduction="none")
    with pytest.raises(RuntimeError, match=r"\[2\]"):
        loss.backward()


def test_backward_with_gradient_of_wrong_shape():
    loss = F.kl_div(flow.tensor([0.1, 0.2], requires_grad=True), [0.5, 0.5], reduction="none")
    with pytest.raises(RuntimeError, match=r"\[3\].*\[2\]"):
        loss.backward(flow.tensor([1.0, 1.0, 1.0]))


def test_backward_of_scalar_loss_with_wrong_gradient_shape():
    loss = F.kl_div(flow.tensor([0.1, 0.2], requires_grad=True), [0.5, 0.5], reduction="sum")
    with pytest.raises(RuntimeError):
        loss.backward(flow.tensor([1.0, 1.0]))


def test_second_backward_without_retain_graph():
    x = flow.tensor([0.1, 0.2], requires_grad=True)
    loss = F.kl_div(x.double(), np.array([0.5, 0.5]), reduction="sum")
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_backward_of_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        flow.tensor([1.0]).backward()
    loss = F.kl_div([0.1], [0.5], reduction="sum")
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward()


def test_backward_on_a_leaf_accumulates_the_gradient():
    t = flow.tensor([1.0, 2.0], requires_grad=True)
    t.backward(flow.tensor([0.5, 0.25]))
    t.backward(flow.tensor([0.5, 0.25]))
    assert t.grad.tolist() == [1.0, 0.5]


def test_gradient_is_not_recorded_into_the_graph():
    x = flow.tensor([0.1, 0.2], requires_grad=True)
    F.kl_div(x, [0.5, 0.5], reduction="sum").backward()
    assert x.grad.grad_fn is None and not x.grad.requires_grad


# ---------------------------------------------------------------------------- no_grad
def test_no_grad_stops_recording_casts_and_losses():
    x = flow.tensor([0.1, 0.2], requires_grad=True)
    with flow.no_grad():
        assert not flow.is_grad_enabled()
        cast = x.double()
        loss = F.kl_div(x, [0.5, 0.5], reduction="sum")
    assert flow.is_grad_enabled()
    assert cast.grad_fn is None and not cast.requires_grad
    assert loss.grad_fn is None and not loss.requires_grad


def test_no_grad_restores_on_exception():
    with pytest.raises(ZeroDivisionError):
        with flow.no_grad():
            1 / 0
    assert flow.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = flow.tensor([0.1], requires_grad=True)
    with flow.no_grad():
        with flow.enable_grad():
            recorded = x.double()
    assert recorded.grad_fn is not None
