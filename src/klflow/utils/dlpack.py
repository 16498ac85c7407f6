"""DLPack in and out, without copies: ``klflow.utils.dlpack.from_dlpack/to_dlpack`` (OneFlow's
names), ``klflow.from_dlpack`` and ``Tensor.__dlpack__``/``__dlpack_device__``.

* Host tensors are exported through NumPy's own DLPack producer (the capsule keeps the array
  alive) and imported with ``numpy.from_dlpack``: PyTorch, JAX, NumPy and any other CPU producer
  share memory with klflow both ways. Strided data stays strided, as the producers export it.
* CUDA tensors are exported as kDLCUDA capsules built here (:func:`cuda_capsule`) from the device
  array's ``__cuda_array_interface__``: the same pointer, shape and strides; the device is
  synchronised first, so the data is complete whatever stream the consumer reads it on.
  CUDA producers are imported through their ``__cuda_array_interface__`` (PyTorch, CuPy and
  numba all provide one); a bare kDLCUDA capsule is imported by reading its fields.

A tensor that requires grad is refused (as PyTorch does: export ``t.detach()``), and so is a
global tensor, whose data is spread over ranks (export ``t.to_local()``, this rank's component).

>>> import numpy as np, klflow as flow
>>> a = np.arange(3.0)
>>> t = flow.from_dlpack(a)
>>> a[0] = 7.0; t.tolist()
[7.0, 1.0, 2.0]
>>> np.from_dlpack(t).ctypes.data == a.ctypes.data
True
"""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from klflow.tensor import Tensor

__all__ = ["from_dlpack", "to_dlpack"]

CPU_DEVICE = 1  # kDLCPU
CUDA_DEVICE = 2  # kDLCUDA
_FLOAT_CODE, _BFLOAT_CODE = 2, 4


# ----------------------------------------------------------------- the DLPack C structures
class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _Device),
        ("ndim", ctypes.c_int32),
        ("dtype", _DataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _ManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_ManagedTensor))
_ManagedTensor._fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]

_CAPSULE_NAME = b"dltensor"
_USED_NAME = b"used_dltensor"
_pythonapi = ctypes.pythonapi
_pythonapi.PyCapsule_New.restype = ctypes.py_object
_pythonapi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_pythonapi.PyCapsule_IsValid.restype = ctypes.c_int
_pythonapi.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_pythonapi.PyCapsule_SetName.restype = ctypes.c_int
_pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]

# What an exported capsule needs alive until its consumer (or the capsule itself) lets go.
_exported: dict[int, tuple] = {}
_exported_lock = threading.Lock()
_next_key = iter(range(1, 1 << 62)).__next__


@_Deleter
def _release(managed: Any) -> None:
    with _exported_lock:
        _exported.pop(int(managed.contents.manager_ctx or 0), None)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _capsule_destructor(capsule: int) -> None:
    # A capsule never consumed still owns its tensor: release it as a consumer would.
    if _pythonapi.PyCapsule_IsValid(capsule, _CAPSULE_NAME):
        pointer = _pythonapi.PyCapsule_GetPointer(capsule, _CAPSULE_NAME)
        managed = ctypes.cast(pointer, ctypes.POINTER(_ManagedTensor))
        managed.contents.deleter(managed)


def _dtype_fields(dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind == "f":
        return _FLOAT_CODE, dtype.itemsize * 8
    if dtype.name == "bfloat16":
        return _BFLOAT_CODE, 16
    raise BufferError(f"DLPack export of dtype {dtype} is not supported")


def cuda_capsule(
    pointer: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...] | None,
    dtype: np.dtype,
    device: tuple[int, int],
    owner: Any,
) -> Any:
    """A DLPack capsule (``dltensor``) for memory at ``pointer`` with ``strides`` in elements (None:
    C-contiguous) on ``device`` = (device type, id); ``owner`` is kept alive until the consumer
    calls the deleter (or the unconsumed capsule is collected)."""
    code, bits = _dtype_fields(np.dtype(dtype))
    ndim = len(shape)
    shape_array = (ctypes.c_int64 * max(ndim, 1))(*shape)
    strides_array = None if strides is None else (ctypes.c_int64 * max(ndim, 1))(*strides)
    managed = _ManagedTensor()
    managed.dl_tensor.data = pointer
    managed.dl_tensor.device = _Device(*device)
    managed.dl_tensor.ndim = ndim
    managed.dl_tensor.dtype = _DataType(code, bits, 1)
    managed.dl_tensor.shape = ctypes.cast(shape_array, ctypes.POINTER(ctypes.c_int64))
    if strides_array is not None:
        managed.dl_tensor.strides = ctypes.cast(strides_array, ctypes.POINTER(ctypes.c_int64))
    managed.dl_tensor.byte_offset = 0
    managed.deleter = _release
    with _exported_lock:
        key = _next_key()
        managed.manager_ctx = key
        _exported[key] = (managed, shape_array, strides_array, owner)
    destructor = ctypes.cast(_capsule_destructor, ctypes.c_void_p)
    return _pythonapi.PyCapsule_New(ctypes.addressof(managed), _CAPSULE_NAME, destructor)


def capsule_fields(capsule: Any) -> dict[str, Any]:
    """The fields of an unconsumed ``dltensor`` capsule: data pointer, device, shape, strides (in
    elements, None if absent) and dtype (a NumPy dtype), without consuming it."""
    if not _pythonapi.PyCapsule_IsValid(ctypes.c_void_p(id(capsule)), _CAPSULE_NAME):
        raise ValueError("expected an unconsumed DLPack capsule named 'dltensor'")
    pointer = _pythonapi.PyCapsule_GetPointer(ctypes.c_void_p(id(capsule)), _CAPSULE_NAME)
    tensor = ctypes.cast(pointer, ctypes.POINTER(_ManagedTensor)).contents.dl_tensor
    ndim = tensor.ndim
    shape = tuple(tensor.shape[i] for i in range(ndim))
    strides = tuple(tensor.strides[i] for i in range(ndim)) if tensor.strides else None
    code, bits = tensor.dtype.code, tensor.dtype.bits
    if code != _FLOAT_CODE or bits not in (16, 32, 64) or tensor.dtype.lanes != 1:
        raise TypeError(
            f"klflow tensors hold float16/32/64; the DLPack data has type code {code}, {bits} bits, "
            f"{tensor.dtype.lanes} lanes"
        )
    return {
        "data": int(tensor.data or 0) + int(tensor.byte_offset),
        "device": (int(tensor.device.device_type), int(tensor.device.device_id)),
        "shape": shape,
        "strides": strides,
        "dtype": np.dtype(f"float{bits}"),
    }


# ----------------------------------------------------------------- export
def _exportable(t: Tensor) -> None:
    if t.requires_grad:
        raise BufferError("Can't export tensors that require gradient, use tensor.detach()")
    if t.is_global:
        raise BufferError(
            "a global tensor's data is spread over ranks; export this rank's component with "
            "to_local(), or the whole value with to_global(sbp=broadcast).to_local()"
        )


def dlpack_device(t: Tensor) -> tuple[int, int]:
    """``(device type, device id)`` as DLPack numbers them: (1, 0) for the host, (2, i) for cuda:i."""
    if t.is_cuda:
        return CUDA_DEVICE, t.device.index or 0
    return CPU_DEVICE, 0


def export(t: Tensor, stream: Any = None, max_version: Any = None, dl_device: Any = None, copy: Any = None):
    """``Tensor.__dlpack__``: a capsule sharing the tensor's memory (a copy only with ``copy=True``)."""
    _exportable(t)
    if dl_device is not None and tuple(dl_device) != dlpack_device(t):
        raise BufferError(f"cannot export a tensor on {t.device} to DLPack device {tuple(dl_device)}")
    if not t.is_cuda:
        data = t._data.copy() if copy else t._data
        if max_version is None:
            return data.__dlpack__(stream=stream)
        return data.__dlpack__(stream=stream, max_version=max_version)
    from numba import cuda

    data = t._data
    if copy:
        from klflow import cuda as klflow_cuda

        data = klflow_cuda.copy(data)
    try:
        interface = data.__cuda_array_interface__
    except AttributeError:
        raise BufferError(
            "this CUDA array has no __cuda_array_interface__ (numba's simulator keeps device arrays "
            "in host memory), so there is no device memory to share"
        ) from None
    cuda.synchronize()  # the data is complete on every stream the consumer may read it on
    itemsize = np.dtype(interface["typestr"]).itemsize
    strides = interface.get("strides")
    element_strides = None if strides is None else tuple(s // itemsize for s in strides)
    return cuda_capsule(
        interface["data"][0],
        tuple(interface["shape"]),
        element_strides,
        np.dtype(interface["typestr"]),
        dlpack_device(t),
        data,
    )


def to_dlpack(t: Tensor) -> Any:
    """A DLPack capsule sharing ``t``'s memory (OneFlow's ``oneflow.utils.dlpack.to_dlpack``).

    >>> import numpy as np, klflow as flow
    >>> capsule = to_dlpack(flow.tensor([1.0, 2.0]))
    >>> from_dlpack(capsule).tolist()
    [1.0, 2.0]
    """
    return export(t)


# ----------------------------------------------------------------- import
class _Capsule:
    """A bare capsule dressed as a DLPack producer, for ``numpy.from_dlpack``."""

    def __init__(self, capsule: Any, device: tuple[int, int]) -> None:
        self.capsule = capsule
        self.device = device

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.device


def _cuda_from_capsule(capsule: Any) -> Tensor:
    """A tensor viewing the device memory of a kDLCUDA capsule (the capsule stays owned)."""
    from numba import cuda

    from klflow import cuda as klflow_cuda
    from klflow.tensor import Tensor

    fields = capsule_fields(capsule)
    itemsize = fields["dtype"].itemsize
    strides = fields["strides"]
    interface = {
        "shape": fields["shape"],
        "strides": None if strides is None else tuple(s * itemsize for s in strides),
        "typestr": fields["dtype"].str,
        "data": (fields["data"], False),
        "version": 3,
    }
    _pythonapi.PyCapsule_SetName(capsule, _USED_NAME)  # consumed: its deleter is ours to call

    class _Owner:
        __cuda_array_interface__ = interface

        def __del__(self) -> None:
            managed = ctypes.cast(
                _pythonapi.PyCapsule_GetPointer(ctypes.c_void_p(id(capsule)), _USED_NAME),
                ctypes.POINTER(_ManagedTensor),
            )
            if managed.contents.deleter:
                managed.contents.deleter(managed)

    array = cuda.from_cuda_array_interface(interface, owner=_Owner())
    return Tensor(array, device=klflow_cuda.device_of(array))


def from_dlpack(ext: Any) -> Tensor:
    """A tensor sharing memory with a DLPack producer (an object with ``__dlpack__``, or a
    capsule from ``to_dlpack``); OneFlow's ``oneflow.utils.dlpack.from_dlpack``.

    >>> import numpy as np
    >>> t = from_dlpack(np.ones(2, dtype=np.float16))
    >>> t.dtype
    klflow.float16
    """
    from klflow import dtypes
    from klflow.device import CPU
    from klflow.tensor import Tensor

    if isinstance(ext, Tensor):
        return ext.detach()
    if hasattr(ext, "__dlpack_device__"):
        device_type, _ = ext.__dlpack_device__()
        if device_type == CUDA_DEVICE:
            if hasattr(ext, "__cuda_array_interface__"):
                from klflow import cuda as klflow_cuda

                wrapped = klflow_cuda.wrap_interface(ext)
                return Tensor(wrapped, device=klflow_cuda.device_of(wrapped))
            return _cuda_from_capsule(ext.__dlpack__(stream=None))
        producer = ext
    elif type(ext).__name__ == "PyCapsule":
        device = capsule_fields(ext)["device"]
        if device[0] == CUDA_DEVICE:
            return _cuda_from_capsule(ext)
        producer = _Capsule(ext, device)
    else:
        raise TypeError(
            f"from_dlpack expects an object with __dlpack__ and __dlpack_device__, or a DLPack "
            f"capsule; got {type(ext).__name__}"
        )
    if device_type_of(producer) != CPU_DEVICE:
        raise BufferError(f"klflow imports DLPack data on the host or a CUDA device, not on {producer!r}")
    array = np.from_dlpack(producer)
    dtypes.from_numpy_dtype(array.dtype)  # TypeError naming a dtype klflow does not hold
    return Tensor(array, device=CPU)


def device_type_of(producer: Any) -> int:
    return int(producer.__dlpack_device__()[0])
