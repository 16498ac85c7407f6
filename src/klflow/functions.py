"""OneFlow's function forms of tensor methods: ``flow.sum``, ``flow.mean``, ``flow.exp``, ``flow.log``.

>>> import klflow as flow
>>> x = flow.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> flow.sum(x).item(), flow.mean(x, dim=0).tolist(), flow.log(x).exp().tolist()
(10.0, [2.0, 3.0], [[1.0, 2.0], [3.0, 4.0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from klflow.tensor import Tensor, as_tensor_arg


def _tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else as_tensor_arg(value, "input")


def sum(input: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    """The exact sum of all elements, or over ``dim`` (see :meth:`klflow.Tensor.sum`)."""
    return _tensor(input).sum(dim, keepdim)


def mean(input: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    return _tensor(input).mean(dim, keepdim)


def exp(input: Tensor) -> Tensor:
    return _tensor(input).exp()


def log(input: Tensor) -> Tensor:
    return _tensor(input).log()
