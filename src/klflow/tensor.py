"""The klflow ``Tensor``: a local array (host or CUDA) or this rank's component of a global tensor.

>>> import klflow as flow
>>> t = flow.tensor([1.0, 2.0, 3.0])
>>> t.shape, t.dtype, t.device
(klflow.Size([3]), klflow.float32, device(type='cpu'))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from klflow import dtypes
from klflow.autograd import graph
from klflow.device import CPU
from klflow.device import device as Device
from klflow.distributed.comm import next_global_id

if TYPE_CHECKING:
    from klflow.distributed.placement import placement as Placement
    from klflow.distributed.sbp import SbpParallel


class Size(tuple):
    """A tensor's shape: a tuple that prints as ``klflow.Size([2, 3])``."""

    def numel(self) -> int:
        return int(np.prod(self, dtype=np.int64)) if self else 1

    def __repr__(self) -> str:
        return f"klflow.Size({list(self)})"


_INTERNAL_KEYWORDS = ("grad_fn", "global_info")


class _TensorType(type):
    """``klflow.Tensor(...)`` as OneFlow's public constructor (float32 data, or an uninitialised
    tensor of a shape); klflow's own code builds a tensor around an array with ``device=``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        internal = cls is not Tensor or (
            len(args) == 1
            and hasattr(args[0], "dtype")  # an array (host or device) to wrap
            and (isinstance(kwargs.get("device"), Device) or any(k in kwargs for k in _INTERNAL_KEYWORDS))
        )
        if internal:
            return super().__call__(*args, **kwargs)
        return _public_tensor(args, kwargs)


class Tensor(metaclass=_TensorType):
    """A multi-dimensional array of float16/32/64, bfloat16 (or bool) with OneFlow's tensor API.

    Build one with :func:`klflow.tensor` or :func:`klflow.from_numpy`; ``klflow.Tensor(data)``
    copies data as float32 and ``klflow.Tensor(2, 3)`` makes an uninitialised float32 tensor, as
    in OneFlow. A *global* tensor (made by :meth:`to_global`) also has a ``placement`` and an
    ``sbp`` and stands for the logical value spread over the ranks of an MPI job; its methods
    that materialise data are collective.

    >>> import klflow as flow
    >>> flow.Tensor([1, 2]).dtype, flow.Tensor(2, 3).shape
    (klflow.float32, klflow.Size([2, 3]))
    """

    __array_priority__ = 1000  # NumPy arrays defer to the tensor's reflected operators

    def __init__(
        self,
        data: Any,
        *,
        device: Device = CPU,
        requires_grad: bool = False,
        grad_fn: graph.Node | None = None,
        global_info: Any = None,
    ) -> None:
        self._data = data  # numpy array (host) or CUDA device array: the local component
        self._device = device
        self._dtype = dtypes.of_array(data.dtype)
        self._global = global_info
        # Numbered in program order: the identity that collectives' agreements compare.
        self._global_id = next_global_id() if global_info is not None else None
        self._fill_value = None  # set when every element is known to be this value (a seed)
        self.grad_fn = grad_fn
        self._grad: Tensor | None = None
        self._requires_grad = bool(requires_grad) or grad_fn is not None

    # ----------------------------------------------------------------- metadata
    @property
    def shape(self) -> Size:
        return Size(self._global.shape if self._global is not None else self._data.shape)

    def size(self, dim: int | None = None) -> Size | int:
        shape = self.shape
        if dim is None:
            return shape
        return shape[_normalize_dim(dim, len(shape))]

    @property
    def dtype(self) -> dtypes.dtype:
        return self._dtype

    @property
    def device(self) -> Device:
        return self._device

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return self.shape.numel()

    nelement = numel

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # ----------------------------------------------------------------- autograd
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self.grad_fn is not None and not value:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables. If you want to use a "
                "computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach()."
            )
        self._requires_grad = bool(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def detach(self) -> Tensor:
        """A tensor sharing this one's data, cut from the graph (``requires_grad=False``)."""
        return Tensor(self._data, device=self._device, global_info=self._global)

    def backward(
        self,
        gradient: Tensor | Any | None = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
    ) -> None:
        """Accumulate d(self)/d(leaf) × ``gradient`` into the ``.grad`` of every leaf.

        ``gradient`` may be omitted for a one-element tensor (it is then 1; for a global
        partial-sum scalar, a *logical* 1). Without ``retain_graph`` (default: ``create_graph``)
        the graph is freed. With ``create_graph`` the gradients are recorded, so they can be
        differentiated again. A backward pass through global tensors is collective: every rank
        must call it, on the same graph (checked before any data moves).
        """
        retain_graph = bool(create_graph) if retain_graph is None else bool(retain_graph)
        problem: Exception | None = None
        try:
            if not self.requires_grad:
                raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
            if gradient is None:
                if self.numel() != 1:
                    raise RuntimeError(
                        f"grad can be implicitly created only for scalar outputs; this tensor has "
                        f"shape {list(self.shape)}: pass gradient= with that shape"
                    )
            else:
                gradient = gradient if isinstance(gradient, Tensor) else tensor(gradient, dtype=self.dtype)
                _check_gradient(self, gradient)
        except Exception as err:
            problem = err
        if graph.communicates(self):
            graph.agree_on_backward(self, gradient is not None, retain_graph, problem)
        elif problem is not None:
            raise problem
        if gradient is None:
            from klflow import conversion

            seed = conversion.gradient_seed(self)
        else:
            seed = _converted_gradient(self, gradient)
        graph.run_backward(self, seed, retain_graph, create_graph=bool(create_graph))

    def _accumulate_grad(self, grad: Tensor, create_graph: bool = False) -> None:
        if not create_graph:
            grad = grad.detach()
            self._grad = grad if self._grad is None else accumulate(self._grad, grad)
        else:  # the gradient keeps its graph (it may be differentiated again)
            self._grad = grad if self._grad is None else self._grad + grad

    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient (leaf tensors, and non-leaf ones after :meth:`retain_grad`)."""
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if value is not None:
            _check_assigned_grad(self, value)
        self._grad = value

    @grad.deleter
    def grad(self) -> None:
        self._grad = None

    def retain_grad(self) -> None:
        """Keep ``.grad`` of this non-leaf tensor in the next backward passes (a no-op on a leaf)."""
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self.grad_fn is not None:
            graph.retain_output(self)

    @property
    def retains_grad(self) -> bool:
        node = self.grad_fn
        ref = getattr(node, "retained_output", None) if node is not None else None
        return ref is not None and ref() is self

    # ----------------------------------------------------------------- arithmetic
    def __add__(self, other: Any) -> Tensor:
        return _binary("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _binary("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _binary("sub", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _binary("sub", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _binary("mul", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _binary("mul", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _binary("div", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _binary("div", other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _binary("pow", self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _binary("pow", other, self)

    def __neg__(self) -> Tensor:
        from klflow.ops import arithmetic

        return arithmetic.unary("neg", self)

    def __pos__(self) -> Tensor:
        return self

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _binary("eq", self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _binary("ne", self, other)

    def __lt__(self, other: Any) -> Tensor:
        return _binary("lt", self, other)

    def __le__(self, other: Any) -> Tensor:
        return _binary("le", self, other)

    def __gt__(self, other: Any) -> Tensor:
        return _binary("gt", self, other)

    def __ge__(self, other: Any) -> Tensor:
        return _binary("ge", self, other)

    __hash__ = object.__hash__  # by identity, as PyTorch's (== is elementwise)

    # In place (``p -= lr * p.grad`` under no_grad updates the parameter itself, as in PyTorch).
    def __iadd__(self, other: Any) -> Tensor:
        return _in_place("add", self, other)

    def __isub__(self, other: Any) -> Tensor:
        return _in_place("sub", self, other)

    def __imul__(self, other: Any) -> Tensor:
        return _in_place("mul", self, other)

    def __itruediv__(self, other: Any) -> Tensor:
        return _in_place("div", self, other)

    def add_(self, other: Any) -> Tensor:
        return _in_place("add", self, other)

    def sub_(self, other: Any) -> Tensor:
        return _in_place("sub", self, other)

    def mul_(self, other: Any) -> Tensor:
        return _in_place("mul", self, other)

    def div_(self, other: Any) -> Tensor:
        return _in_place("div", self, other)

    def add(self, other: Any) -> Tensor:
        return self + other

    def sub(self, other: Any) -> Tensor:
        return self - other

    def mul(self, other: Any) -> Tensor:
        return self * other

    def div(self, other: Any) -> Tensor:
        return self / other

    def pow(self, exponent: Any) -> Tensor:
        return self**exponent

    def neg(self) -> Tensor:
        return -self

    def eq(self, other: Any) -> Tensor:
        return self == other

    def ne(self, other: Any) -> Tensor:
        return self != other

    def lt(self, other: Any) -> Tensor:
        return self < other

    def le(self, other: Any) -> Tensor:
        return self <= other

    def gt(self, other: Any) -> Tensor:
        return self > other

    def ge(self, other: Any) -> Tensor:
        return self >= other

    def exp(self) -> Tensor:
        from klflow.ops import arithmetic

        return arithmetic.unary("exp", self)

    def log(self) -> Tensor:
        from klflow.ops import arithmetic

        return arithmetic.unary("log", self)

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        """The exact sum over all elements or ``dim`` (correctly rounded; see ``klflow.ops.sums``)."""
        from klflow.ops import sums

        return sums.reduce(self, dim, keepdim)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        from klflow.ops import sums

        return sums.reduce(self, dim, keepdim, mean=True)

    def reshape(self, *shape: Any) -> Tensor:
        from klflow.ops import arithmetic

        return arithmetic.reshape(self, arithmetic.shape_arguments(shape))

    def view(self, *shape: Any) -> Tensor:
        from klflow.ops import arithmetic

        return arithmetic.reshape(self, arithmetic.shape_arguments(shape), op_name="view")

    def clone(self) -> Tensor:
        from klflow.ops import arithmetic

        return arithmetic.clone(self)

    # ----------------------------------------------------------------- data access
    def numpy(self) -> np.ndarray:
        """The value as a NumPy array (shares memory for a local CPU tensor; collective if global)."""
        return self._value("numpy()")

    def _value(self, method: str) -> np.ndarray:
        """The (logical) value on the host; ``method`` names the caller in a global tensor's
        agreement, which every rank must reach with the same call."""
        if self._global is not None:
            from klflow.ops import global_tensors as api

            return api.materialize(self, method)
        if self.is_cuda:
            from klflow import cuda

            return cuda.to_host(self._data)
        return self._data

    def item(self) -> float | bool:
        if self.numel() != 1:
            raise RuntimeError(f"a Tensor with {self.numel()} elements cannot be converted to Scalar")
        value = self._value("item()").reshape(())
        return bool(value) if self._dtype == dtypes.bool_ else float(value)

    def tolist(self) -> Any:
        return self._value("tolist()").tolist()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self._value("__array__()")
        if dtype is not None:
            values = values.astype(dtype, copy=False)
        if copy:
            values = values.copy()
        return values

    def __float__(self) -> float:
        return self.item()

    @property
    def __cuda_array_interface__(self) -> dict:
        if not self.is_cuda or self._global is not None:
            raise AttributeError("__cuda_array_interface__ is only exported by local CUDA tensors")
        return self._data.__cuda_array_interface__

    def __dlpack__(
        self, stream: Any = None, *, max_version: Any = None, dl_device: Any = None, copy: bool | None = None
    ) -> Any:
        """A DLPack capsule sharing this tensor's memory (see :mod:`klflow.utils.dlpack`)."""
        from klflow.utils import dlpack

        return dlpack.export(self, stream, max_version, dl_device, copy)

    def __dlpack_device__(self) -> tuple[int, int]:
        from klflow.utils import dlpack

        return dlpack.dlpack_device(self)

    # ----------------------------------------------------------------- conversion
    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """``to(dtype)``, ``to(device)``, ``to(device, dtype)``, ``to(other)``; returns self if
        nothing changes. Differentiable: the gradient flows back converted to this tensor's type."""
        target_dtype, target_device = _parse_to_args(args, kwargs)
        target_dtype = target_dtype or self._dtype
        target_device = target_device or self._device
        if target_dtype == self._dtype and target_device == self._device:
            return self
        if self._global is not None and target_device.type != self._device.type:
            raise ValueError(
                "a global tensor's device follows its placement; use "
                "to_global(placement=klflow.placement('cuda', ranks)) to move it"
            )
        from klflow import conversion

        return conversion.convert(self, target_dtype, target_device)

    def half(self) -> Tensor:
        return self.to(dtypes.float16)

    def float(self) -> Tensor:
        return self.to(dtypes.float32)

    def bfloat16(self) -> Tensor:
        return self.to(dtypes.bfloat16)

    def double(self) -> Tensor:
        return self.to(dtypes.float64)

    def cpu(self) -> Tensor:
        return self.to(CPU)

    def cuda(self, device: int | str | Device | None = None) -> Tensor:
        if device is None:
            target = Device("cuda")
        elif isinstance(device, int):
            target = Device("cuda", device)
        else:
            target = Device(device)
            if target.type != "cuda":
                raise ValueError(f"cuda() expects a CUDA device, got {device!r}")
        return self.to(target)

    def zero_(self) -> Tensor:
        """Fill with zeros in place (a gradient buffer, or a tensor that records no graph)."""
        if self.requires_grad and graph.is_grad_enabled():
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if self.is_cuda:
            from klflow import cuda

            cuda.fill_zeros(self._data)
        else:
            self._data[...] = 0
        return self

    # ----------------------------------------------------------------- global tensors
    @property
    def is_global(self) -> bool:
        return self._global is not None

    @property
    def is_local(self) -> bool:
        return self._global is None

    @property
    def placement(self) -> Placement:
        if self._global is None:
            raise RuntimeError("placement is only defined for global tensors; this one is local")
        return self._global.placement

    @property
    def sbp(self) -> tuple[SbpParallel, ...]:
        if self._global is None:
            raise RuntimeError("sbp is only defined for global tensors; this one is local")
        return self._global.sbp

    def to_global(
        self,
        placement: Placement | None = None,
        sbp: SbpParallel | Sequence[SbpParallel] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """A local tensor as this rank's component of a global one, or a global tensor
        redistributed to another placement/SBP (see ``docs/semantics.md``)."""
        from klflow.ops import global_tensors as api

        return api.to_global(self, placement, sbp, **kwargs)

    def to_local(self) -> Tensor:
        """This rank's component of a global tensor (a local tensor is returned unchanged)."""
        from klflow.ops import global_tensors as api

        return api.to_local(self)

    def to_consistent(self, *args: Any, **kwargs: Any) -> Tensor:
        raise RuntimeError("Tensor.to_consistent() is no longer available; use Tensor.to_global() instead")

    # ----------------------------------------------------------------- printing
    def __repr__(self) -> str:
        from klflow import printing

        placement = sbp = None
        if self._global is not None:
            placement = repr(self._global.placement)
            entries = [repr(s) for s in self._global.sbp]
            sbp = f"({entries[0]},)" if len(entries) == 1 else f"({', '.join(entries)})"
        return printing.tensor_repr(
            np.asarray(self._value("repr()")),
            dtype_name=repr(self._dtype),
            device=str(self._device) if self.is_cuda and self._global is None else None,
            placement=placement,
            sbp=sbp,
            requires_grad=self.requires_grad and self.grad_fn is None,
            grad_fn=self.grad_fn.name() if self.grad_fn is not None else None,
        )

    __str__ = __repr__

    def __bool__(self) -> bool:
        if self.numel() != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self.numel()} elements is ambiguous")
        return bool(self.item())


def _normalize_dim(dim: int, ndim: int) -> int:
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-max(ndim, 1)}, "
            f"{max(ndim, 1) - 1}], but got {dim})"
        )
    return dim % max(ndim, 1)


def _parse_to_args(args: tuple, kwargs: dict) -> tuple[dtypes.dtype | None, Device | None]:
    target_dtype = kwargs.pop("dtype", None)
    target_device = kwargs.pop("device", None)
    kwargs.pop("copy", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    for arg in args:
        if isinstance(arg, Tensor):
            target_dtype, target_device = arg.dtype, arg.device
        elif isinstance(arg, dtypes.dtype):
            target_dtype = arg
        elif isinstance(arg, (str, Device)):
            target_device = arg
        else:
            raise TypeError(f"to() expects a dtype, a device or a tensor; got {type(arg).__name__} {arg!r}")
    if target_dtype is not None:
        target_dtype = dtypes.resolve(target_dtype)
    if target_device is not None:
        target_device = Device(target_device)
    return target_dtype, target_device


# --------------------------------------------------------------------- construction
def _host_array(data: Any, dtype: dtypes.dtype | None, copy: bool) -> np.ndarray:
    """Scalars, nested lists, buffers and ``__array__`` objects as a native-order float array.

    With ``copy`` the result never shares memory with ``data``. Python scalars and lists default
    to float32 (as in OneFlow); typed data (NumPy arrays, buffers, ``__array__``) keeps its dtype.
    """
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as err:
        raise TypeError(f"cannot build a tensor from {type(data).__name__}: {err}") from None
    if array.dtype == object:
        raise TypeError(
            f"cannot build a tensor from {type(data).__name__}: the nested sequences are "
            f"ragged or hold non-numeric items"
        )
    if dtype is None:
        python_data = isinstance(data, (float, int, list, tuple)) and not isinstance(data, np.generic)
        if python_data and array.dtype == np.float64:
            dtype = dtypes.float32
        else:
            dtype = dtypes.from_numpy_dtype(array.dtype)  # TypeError for ints, bools, complex
    elif array.dtype.kind not in "fiub":
        dtypes.from_numpy_dtype(array.dtype)  # e.g. complex: TypeError naming the dtype
    if dtypes.is_bfloat16(dtype) and array.dtype != dtype.numpy:
        return dtypes.cast_host(array, dtype)  # rounded once from float64 (a new array)
    # numba kernels need native byte order; asarray/array below also make the copy when asked.
    if copy:
        return np.array(array, dtype=dtype.numpy, copy=True)
    return np.asarray(array, dtype=dtype.numpy)


def _is_device_data(data: Any) -> bool:
    if hasattr(data, "__cuda_array_interface__"):
        return True
    if type(data).__module__.startswith("numba.cuda"):  # device arrays of numba's simulator
        from klflow import cuda

        return cuda.is_device_array(data)
    return False


def tensor(
    data: Any,
    dtype: dtypes.dtype | None = None,
    device: str | Device | None = None,
    requires_grad: bool = False,
) -> Tensor:
    """Build a tensor holding a copy of ``data``.

    Python scalars and lists give float32; NumPy arrays keep their dtype; integer, bool and
    complex data are refused with a ``TypeError`` unless ``dtype`` converts them.

    >>> import klflow as flow
    >>> flow.tensor([[1.0, 2.0]], dtype=flow.float64).shape
    klflow.Size([1, 2])
    """
    target_device = Device(device) if device is not None else None
    resolved = dtypes.resolve(dtype) if dtype is not None else None
    if isinstance(data, Tensor):
        source = data.detach()
        out = source.to(dtype=resolved or source.dtype, device=target_device or source.device)
        if out is source or out._data is data._data:
            out = Tensor(_copy_data(out), device=out.device, global_info=out._global)
        out.requires_grad = requires_grad
        return out
    if _is_device_data(data):
        from klflow import cuda

        wrapped = cuda.wrap_interface(data)
        out = Tensor(wrapped, device=cuda.device_of(wrapped)).to(dtype=resolved, device=target_device)
        if out._data is wrapped:
            out = Tensor(_copy_data(out), device=out.device)
        out.requires_grad = requires_grad
        return out
    out = Tensor(_host_array(data, resolved, copy=True), device=CPU)
    if target_device is not None and target_device.type != "cpu":
        out = out.to(target_device)
    out.requires_grad = requires_grad
    return out


def _copy_data(t: Tensor) -> Any:
    if t.is_cuda:
        from klflow import cuda

        return cuda.copy(t._data)
    return t._data.copy()


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (float16/32/64, or ml_dtypes' bfloat16).

    >>> import numpy as np, klflow as flow
    >>> a = np.zeros(2, dtype=np.float64); t = flow.from_numpy(a); a[0] = 5.0
    >>> t.tolist()
    [5.0, 0.0]
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(array).__name__}")
    dtypes.from_numpy_dtype(array.dtype)
    if not array.dtype.isnative:
        raise TypeError(
            f"from_numpy cannot share memory with an array in non-native byte order "
            f"({array.dtype.str}); use klflow.tensor(array), which converts it"
        )
    return Tensor(array, device=CPU)


def as_tensor_arg(value: Any, name: str) -> Tensor:
    """Accept a klflow tensor or an array-like for a functional argument (no copy when possible)."""
    if isinstance(value, Tensor):
        return value
    if _is_device_data(value):
        from klflow import cuda

        wrapped = cuda.wrap_interface(value)
        return Tensor(wrapped, device=cuda.device_of(wrapped))
    try:
        host = _host_array(value, None, copy=False)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    return Tensor(host, device=CPU)


def _check_gradient(t: Tensor, gradient: Tensor) -> None:
    if tuple(gradient.shape) != tuple(t.shape):
        raise RuntimeError(
            f"Mismatch in shape: grad_output has a shape of {list(gradient.shape)} and output "
            f"has a shape of {list(t.shape)}"
        )
    if gradient.is_global != t.is_global:
        raise RuntimeError(
            "gradient must be global exactly when the tensor is global "
            f"(tensor is_global={t.is_global}, gradient is_global={gradient.is_global})"
        )


def _converted_gradient(t: Tensor, gradient: Tensor) -> Tensor:
    if gradient.dtype != t.dtype or gradient.device != t.device:
        gradient = gradient.to(dtype=t.dtype, device=t.device)
    return gradient


def accumulate(a: Tensor, b: Tensor) -> Tensor:
    """a + b for gradients of the same shape (local arrays, or global tensors of one placement)."""
    from klflow import conversion

    return conversion.add(a, b)


def _binary(op: str, a: Any, b: Any) -> Tensor:
    from klflow.ops import arithmetic

    if arithmetic.operand(a) is None or arithmetic.operand(b) is None:
        return NotImplemented
    return arithmetic.binary(op, a, b)


def _in_place(op: str, t: Tensor, other: Any) -> Tensor:
    """``t op= other``: the result written into ``t``'s own memory (its shape, dtype and layout)."""
    from klflow.ops import arithmetic

    if arithmetic.operand(other) is None:
        return NotImplemented
    other_grad = isinstance(other, Tensor) and other.requires_grad
    if graph.is_grad_enabled() and (t.requires_grad or other_grad):
        if t.requires_grad and t.grad_fn is None:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        raise RuntimeError(
            "klflow records no in-place operations on tensors of a graph; use the out-of-place form "
            f"(x = x {arithmetic._SYMBOL[op]} y) or run it under klflow.no_grad()"
        )
    with graph.no_grad():
        out = arithmetic.binary(op, t, other)
    if tuple(out.shape) != tuple(t.shape):
        raise RuntimeError(
            f"output with shape {list(t.shape)} doesn't match the broadcast shape {list(out.shape)}"
        )
    if t.is_global and out._global.layout() != t._global.layout():
        raise RuntimeError(
            f"an in-place {arithmetic._SYMBOL[op]} would change the tensor's layout from "
            f"{t._global.describe()} to {out._global.describe()}; use the out-of-place form"
        )
    if out.dtype != t.dtype:
        out = out.to(t.dtype)
    if t.is_cuda:
        t._data.copy_to_device(out._data)
    else:
        t._data[...] = out._data
    if t.is_global:
        t._global = out._global  # the layout is the same; an exact partial record comes along
    t._fill_value = None
    return t


def _public_tensor(args: tuple, kwargs: dict) -> Tensor:
    """OneFlow's ``Tensor(data)`` (a float32 copy) and ``Tensor(*shape)`` (uninitialised)."""
    device = kwargs.pop("device", None)
    requires_grad = kwargs.pop("requires_grad", False)
    if kwargs:
        raise TypeError(f"Tensor() got unexpected keyword arguments {sorted(kwargs)}")
    shape_like = all(isinstance(a, int) and not isinstance(a, bool) for a in args)
    if len(args) == 1 and isinstance(args[0], Size):
        shape_like, args = True, tuple(args[0])
    elif not args:
        args = (0,)  # Tensor(): an empty 1-D tensor, as PyTorch's
    if shape_like:
        if any(a < 0 for a in args):
            raise RuntimeError(f"Trying to create tensor with negative dimension: {list(args)}")
        out = Tensor(np.empty(tuple(args), dtype=np.float32), device=CPU)
        out = out.to(device) if device is not None else out
    elif len(args) == 1:
        out = tensor(args[0], dtype=dtypes.float32, device=device)
    else:
        raise TypeError(
            f"Tensor() takes one data argument or integer sizes; got {len(args)} arguments of types "
            f"{[type(a).__name__ for a in args]}"
        )
    out.requires_grad = requires_grad
    return out


def _check_assigned_grad(t: Tensor, value: Any) -> None:
    """PyTorch's checks (and messages) for ``t.grad = value``."""
    if not isinstance(value, Tensor):
        name = type(value).__module__ + "." + type(value).__qualname__
        name = name.removeprefix("builtins.")
        raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of type {name}")
    if value.dtype != t.dtype:
        raise RuntimeError(
            f"attempting to assign a gradient with dtype '{value.dtype}' to a tensor with dtype "
            f"'{t.dtype}'. Please ensure that the gradient and the tensor have the same dtype"
        )
    if value.device.type != t.device.type:
        raise RuntimeError(
            f"attempting to assign a gradient with device type '{value.device.type}' to a tensor with "
            f"device type '{t.device.type}'. Please ensure that the gradient and the tensor are on the "
            f"same device"
        )
    if value.device != t.device:
        raise RuntimeError(
            f"attempting to assign a gradient located on device with index '{value.device.index}' to "
            f"a tensor located on device with index '{t.device.index}'. Please ensure that the "
            f"gradient and the tensor are on the same device"
        )
    if tuple(value.shape) != tuple(t.shape):
        raise RuntimeError(
            f"attempting to assign a gradient of size '{list(value.shape)}' to a tensor of size "
            f"'{list(t.shape)}'. Please ensure that the gradient and the tensor are the same size"
        )
    if value.is_global != t.is_global:
        raise RuntimeError(
            f"attempting to assign a {'global' if value.is_global else 'local'} gradient to a "
            f"{'global' if t.is_global else 'local'} tensor. Please ensure that the gradient is "
            f"global exactly when the tensor is"
        )
    if t.is_global and value.placement != t.placement:
        raise RuntimeError(
            f"attempting to assign a gradient on {value.placement!r} to a tensor on {t.placement!r}. "
            f"Please ensure that the gradient and the tensor have the same placement"
        )
