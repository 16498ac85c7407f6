"""DLPack in and out without copies (the same data pointer) with NumPy, PyTorch and JAX, and the
capsule producer klflow uses for CUDA tensors, exercised on host memory."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import klflow as flow
from klflow.utils import dlpack

DTYPES = [np.float16, np.float32, np.float64]


def _pointer(t: flow.Tensor) -> int:
    return t.numpy().ctypes.data


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_round_trip_shares_memory(dtype):
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    t = flow.from_dlpack(a)
    assert t.dtype == flow.tensor(a).dtype and _pointer(t) == a.ctypes.data
    back = np.from_dlpack(t)
    assert back.ctypes.data == a.ctypes.data and back.dtype == a.dtype
    a[1, 2] = 99
    assert t.numpy()[1, 2] == 99 and back[1, 2] == 99
    assert t.__dlpack_device__() == (1, 0)


def test_strided_data_stays_strided_and_shared():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = a[:, 1::2]
    t = flow.from_dlpack(view)
    assert _pointer(t) == view.ctypes.data and t.numpy().strides == view.strides
    np.testing.assert_array_equal(
        flow.nn.functional.softmax(t, dim=1).numpy(),
        flow.nn.functional.softmax(flow.tensor(np.ascontiguousarray(view)), dim=1).numpy(),
    )


def test_capsules_round_trip_and_are_consumed_once():
    t = flow.tensor([1.0, 2.0, 3.0])
    capsule = flow.utils.dlpack.to_dlpack(t)
    u = flow.utils.dlpack.from_dlpack(capsule)
    assert _pointer(u) == _pointer(t)
    with pytest.raises(ValueError, match="unconsumed DLPack capsule"):
        flow.utils.dlpack.from_dlpack(capsule)


def test_refusals_name_the_reason():
    with pytest.raises(BufferError, match="Can't export tensors that require gradient, use tensor.detach()"):
        flow.tensor([1.0], requires_grad=True).__dlpack__()
    g = flow.tensor([1.0, 2.0]).to_global(flow.placement("cpu", [0]), flow.sbp.split(0))
    with pytest.raises(BufferError, match="to_local"):
        np.from_dlpack(g)
    with pytest.raises(TypeError, match="int64"):
        flow.from_dlpack(np.arange(3))
    with pytest.raises(TypeError, match="from_dlpack expects an object with __dlpack__"):
        flow.from_dlpack([1.0, 2.0])
    with pytest.raises(BufferError, match="DLPack device"):
        flow.tensor([1.0]).__dlpack__(dl_device=(2, 0))


def test_copy_true_gives_a_copy():
    t = flow.tensor([1.0, 2.0])
    copied = np.from_dlpack(_Producer(t.__dlpack__(copy=True)))
    assert copied.ctypes.data != _pointer(t) and copied.tolist() == [1.0, 2.0]


class _Producer:
    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, stream=None, **_):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pytorch_both_ways(dtype):
    torch = pytest.importorskip("torch")
    a = np.arange(10, dtype=dtype)
    t = flow.from_numpy(a)
    tt = torch.from_dlpack(t)
    assert tt.data_ptr() == a.ctypes.data and str(tt.dtype) == f"torch.{np.dtype(dtype).name}"
    source = torch.arange(12, dtype=getattr(torch, np.dtype(dtype).name)).reshape(3, 4)
    k = flow.from_dlpack(source)
    assert _pointer(k) == source.data_ptr()
    strided = source[:, ::2]
    ks = flow.from_dlpack(strided)
    assert _pointer(ks) == strided.data_ptr() and ks.numpy().strides[1] == 2 * np.dtype(dtype).itemsize
    k2 = flow.utils.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(source))
    assert _pointer(k2) == source.data_ptr()
    back = torch.utils.dlpack.from_dlpack(flow.utils.dlpack.to_dlpack(k))
    assert back.data_ptr() == source.data_ptr()
    # Data imported from a legacy capsule is read-only in NumPy's view, which a legacy capsule
    # cannot signal: NumPy's producer refuses it (a DLPack 1.0 consumer gets it, marked read-only).
    with pytest.raises(BufferError, match="readonly"):
        flow.utils.dlpack.to_dlpack(k2)
    assert torch.from_dlpack(k2).data_ptr() == source.data_ptr()


def test_pytorch_refusals_come_through():
    torch = pytest.importorskip("torch")
    with pytest.raises(BufferError, match="require gradient"):
        flow.from_dlpack(torch.ones(2, requires_grad=True))
    with pytest.raises(TypeError):
        flow.from_dlpack(torch.arange(3))


def test_jax_both_ways():
    jnp = pytest.importorskip("jax.numpy")
    source = jnp.arange(8, dtype=jnp.float32)
    k = flow.from_dlpack(source)
    assert _pointer(k) == source.unsafe_buffer_pointer()
    assert k.tolist() == list(range(8))
    # JAX's CPU client shares host buffers aligned to 64 bytes (it copies others).
    raw = np.empty(8 * 4 + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    aligned = raw[offset : offset + 32].view(np.float32)
    aligned[:] = np.arange(8)
    shared = jnp.from_dlpack(flow.from_numpy(aligned))
    assert shared.unsafe_buffer_pointer() == aligned.ctypes.data
    assert shared.tolist() == list(range(8))


def test_the_capsule_producer_on_host_memory():
    """The producer CUDA tensors use, pointed at host memory: NumPy consumes it in place, and the
    owner is released when the consumer lets go (or when an unconsumed capsule is collected)."""
    a = np.arange(20, dtype=np.float64).reshape(4, 5)
    before = len(dlpack._exported)
    capsule = dlpack.cuda_capsule(a.ctypes.data, (4, 3), (5, 2), a.dtype, (1, 0), a)
    fields = dlpack.capsule_fields(capsule)
    assert fields == {
        "data": a.ctypes.data,
        "device": (1, 0),
        "shape": (4, 3),
        "strides": (5, 2),
        "dtype": np.dtype(np.float64),
    }
    view = np.from_dlpack(_Producer(capsule))
    assert view.ctypes.data == a.ctypes.data
    np.testing.assert_array_equal(view, a[:, ::2][:, :3])
    assert len(dlpack._exported) == before + 1
    del view, capsule
    gc.collect()
    assert len(dlpack._exported) == before
    unconsumed = dlpack.cuda_capsule(a.ctypes.data, (20,), None, a.dtype, (1, 0), a)
    assert len(dlpack._exported) == before + 1
    del unconsumed
    gc.collect()
    assert len(dlpack._exported) == before
