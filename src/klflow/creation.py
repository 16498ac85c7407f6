"""Creation functions as OneFlow names them: ``zeros``, ``ones``, ``full``, ``rand``, ``randn`` and
their ``*_like`` forms, local or (with ``placement=`` and ``sbp=``) global.

The size is given as integers or as one sequence (``flow.zeros(2, 3)``, ``flow.zeros((2, 3))``,
``flow.zeros(flow.Size([2, 3]))``); the default dtype is float32. ``rand`` is uniform in [0, 1) and
``randn`` standard normal, counter-based (:mod:`klflow.kernels.philox`): after
``flow.manual_seed(s)`` a global random tensor has the same logical value whatever its placement,
SBP or mesh, and the same as the local tensor the same call makes on one process.

>>> import klflow as flow
>>> flow.zeros(2, 3).shape, flow.full((2,), 1.5).tolist(), flow.ones(2, dtype=flow.float64).dtype
(klflow.Size([2, 3]), [1.5, 1.5], klflow.float64)
>>> _ = flow.manual_seed(0); a = flow.rand(4); _ = flow.manual_seed(0)
>>> a.tolist() == flow.rand(4).tolist()
True
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from typing import Any

from klflow import dtypes
from klflow.device import device as Device
from klflow.ops import creation
from klflow.random import Generator
from klflow.tensor import Size, Tensor

__all__ = [
    "full",
    "full_like",
    "ones",
    "ones_like",
    "rand",
    "rand_like",
    "randn",
    "randn_like",
    "zeros",
    "zeros_like",
]


def _parse_size(name: str, size: tuple, size_keyword: Any) -> tuple[int, ...]:
    """OneFlow's and PyTorch's size forms as a tuple of non-negative ints."""
    if size_keyword is not None:
        if size:
            raise TypeError(
                f"{name}() got the size both positionally {list(size)} and as size={size_keyword!r}"
            )
        size = (size_keyword,)
    if len(size) == 1 and isinstance(size[0], (Sequence, Size)) and not isinstance(size[0], str):
        size = tuple(size[0])
    dims = []
    for position, item in enumerate(size):
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise TypeError(
                f"{name}(): argument 'size' must be tuple of ints, but found element of type "
                f"{type(item).__name__} at pos {position}"
            )
        dims.append(operator.index(item))
    negative = [d for d in dims if d < 0]
    if negative:
        raise RuntimeError(f"Trying to create tensor with negative dimension {negative[0]}: {dims}")
    return tuple(dims)


def _resolve(dtype: Any, default: dtypes.dtype = dtypes.float32) -> dtypes.dtype:
    return default if dtype is None else dtypes.resolve(dtype)


def _floating(name: str, dtype: dtypes.dtype) -> dtypes.dtype:
    if not dtype.is_floating_point:
        raise TypeError(
            f"{name}(): random values need a floating dtype (float16, float32, float64 or bfloat16), "
            f"got {dtype}"
        )
    return dtype


def _device(device: Any) -> Device | None:
    return None if device is None else Device(device)


def _fill_value(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise RuntimeError(
                f"{name}() expects a Python number or a one-element tensor as fill_value, got a tensor "
                f"of shape {list(value.shape)}"
            )
        return value.item()
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        raise TypeError(f"{name}(): klflow tensors hold real numbers only; fill_value={value!r} is complex")
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name}(): fill_value must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def zeros(
    *size: int | Sequence[int],
    dtype: dtypes.dtype | None = None,
    device: str | Device | None = None,
    placement: Any = None,
    sbp: Any = None,
    requires_grad: bool = False,
    **kwargs: Any,
) -> Tensor:
    """A tensor of zeros.

    >>> import klflow as flow
    >>> flow.zeros(2)
    tensor([0., 0.], dtype=klflow.float32)
    """
    shape = _parse_size("zeros", size, kwargs.pop("size", None))
    _no_more("zeros", kwargs)
    return creation.create(
        "constant", shape, _resolve(dtype), _device(device), placement, sbp,
        value=0.0, requires_grad=requires_grad, name="zeros",
    )  # fmt: skip


def ones(
    *size: int | Sequence[int],
    dtype: dtypes.dtype | None = None,
    device: str | Device | None = None,
    placement: Any = None,
    sbp: Any = None,
    requires_grad: bool = False,
    **kwargs: Any,
) -> Tensor:
    """A tensor of ones.

    >>> import klflow as flow
    >>> flow.ones((1, 2), dtype=flow.float64)
    tensor([[1., 1.]], dtype=klflow.float64)
    """
    shape = _parse_size("ones", size, kwargs.pop("size", None))
    _no_more("ones", kwargs)
    return creation.create(
        "constant", shape, _resolve(dtype), _device(device), placement, sbp,
        value=1.0, requires_grad=requires_grad, name="ones",
    )  # fmt: skip


def full(
    size: int | Sequence[int],
    fill_value: float,
    dtype: dtypes.dtype | None = None,
    device: str | Device | None = None,
    placement: Any = None,
    sbp: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """A tensor of ``size`` filled with ``fill_value``.

    >>> import klflow as flow
    >>> flow.full((2, 2), 3.5).tolist()
    [[3.5, 3.5], [3.5, 3.5]]
    """
    shape = _parse_size("full", (size,), None)
    value = _fill_value("full", fill_value)
    return creation.create(
        "constant", shape, _resolve(dtype), _device(device), placement, sbp,
        value=value, requires_grad=requires_grad, name="full",
    )  # fmt: skip


def rand(
    *size: int | Sequence[int],
    dtype: dtypes.dtype | None = None,
    device: str | Device | None = None,
    placement: Any = None,
    sbp: Any = None,
    requires_grad: bool = False,
    generator: Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    """Uniform values in [0, 1), exact in ``dtype`` (24 random bits for float32, 53 for float64).

    >>> import klflow as flow
    >>> _ = flow.manual_seed(0); x = flow.rand(2, 3)
    >>> x.shape, bool(((x.numpy() >= 0) & (x.numpy() < 1)).all())
    (klflow.Size([2, 3]), True)
    """
    shape = _parse_size("rand", size, kwargs.pop("size", None))
    _no_more("rand", kwargs)
    return creation.create(
        "uniform", shape, _floating("rand", _resolve(dtype)), _device(device), placement, sbp,
        requires_grad=requires_grad, generator=_generator("rand", generator), name="rand",
    )  # fmt: skip


def randn(
    *size: int | Sequence[int],
    dtype: dtypes.dtype | None = None,
    device: str | Device | None = None,
    placement: Any = None,
    sbp: Any = None,
    requires_grad: bool = False,
    generator: Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    """Standard normal values (Box-Muller in float64, rounded once to ``dtype``).

    >>> import klflow as flow
    >>> _ = flow.manual_seed(0); flow.randn(3, 4).shape
    klflow.Size([3, 4])
    """
    shape = _parse_size("randn", size, kwargs.pop("size", None))
    _no_more("randn", kwargs)
    return creation.create(
        "normal", shape, _floating("randn", _resolve(dtype)), _device(device), placement, sbp,
        requires_grad=requires_grad, generator=_generator("randn", generator), name="randn",
    )  # fmt: skip


def _generator(name: str, generator: Any) -> Generator | None:
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"{name}(): generator must be a klflow.Generator, got {type(generator).__name__}")
    return generator


def _no_more(name: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"{name}() got unexpected keyword arguments {sorted(kwargs)}")


# --------------------------------------------------------------------- *_like
def _like(
    name: str,
    kind: str,
    input: Tensor,
    value: float | None,
    dtype: Any,
    device: Any,
    placement: Any,
    sbp: Any,
    requires_grad: bool,
    generator: Generator | None = None,
) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}(): argument 'input' must be a klflow Tensor, not {type(input).__name__}")
    resolved = _resolve(dtype, input.dtype)
    if kind != "constant":
        resolved = _floating(name, resolved)
    if input.is_global and placement is None and sbp is None and device is None:
        placement, sbp = input.placement, input.sbp
    elif device is None and placement is None and sbp is None:
        device = input.device
    return creation.create(
        kind, tuple(input.shape), resolved, _device(device), placement, sbp,
        value=value, requires_grad=requires_grad, generator=generator, name=name,
    )  # fmt: skip


def zeros_like(
    input: Tensor, dtype: Any = None, device: Any = None, placement: Any = None, sbp: Any = None,
    requires_grad: bool = False,
) -> Tensor:  # fmt: skip
    """Zeros with ``input``'s shape, dtype and device (or placement and SBP, for a global one)."""
    return _like("zeros_like", "constant", input, 0.0, dtype, device, placement, sbp, requires_grad)


def ones_like(
    input: Tensor, dtype: Any = None, device: Any = None, placement: Any = None, sbp: Any = None,
    requires_grad: bool = False,
) -> Tensor:  # fmt: skip
    """Ones with ``input``'s shape, dtype and device (or placement and SBP, for a global one)."""
    return _like("ones_like", "constant", input, 1.0, dtype, device, placement, sbp, requires_grad)


def full_like(
    input: Tensor, fill_value: float, dtype: Any = None, device: Any = None, placement: Any = None,
    sbp: Any = None, requires_grad: bool = False,
) -> Tensor:  # fmt: skip
    """``fill_value`` with ``input``'s shape, dtype and device (or placement and SBP)."""
    value = _fill_value("full_like", fill_value)
    return _like("full_like", "constant", input, value, dtype, device, placement, sbp, requires_grad)


def rand_like(
    input: Tensor, dtype: Any = None, device: Any = None, placement: Any = None, sbp: Any = None,
    requires_grad: bool = False, generator: Generator | None = None,
) -> Tensor:  # fmt: skip
    """:func:`rand` with ``input``'s shape, dtype and device (or placement and SBP)."""
    generator = _generator("rand_like", generator)
    return _like("rand_like", "uniform", input, None, dtype, device, placement, sbp, requires_grad, generator)


def randn_like(
    input: Tensor, dtype: Any = None, device: Any = None, placement: Any = None, sbp: Any = None,
    requires_grad: bool = False, generator: Generator | None = None,
) -> Tensor:  # fmt: skip
    """:func:`randn` with ``input``'s shape, dtype and device (or placement and SBP)."""
    generator = _generator("randn_like", generator)
    return _like("randn_like", "normal", input, None, dtype, device, placement, sbp, requires_grad, generator)
