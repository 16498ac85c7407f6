"""``klflow.nn.Softmax`` and ``klflow.nn.LogSoftmax``: OneFlow's module forms."""

from __future__ import annotations

from typing import Any

from klflow.nn import functional as F
from klflow.nn.module import Module
from klflow.tensor import Tensor


class LogSoftmax(Module):
    """``LogSoftmax(x_i) = x_i - log(sum_j exp(x_j))`` along ``dim`` (see
    :func:`klflow.nn.functional.log_softmax`). Without ``dim`` the dimension is chosen as OneFlow
    and PyTorch do, with their deprecation warning.

    >>> import klflow as flow
    >>> m = flow.nn.LogSoftmax(dim=1)
    >>> m(flow.tensor([[0.4296, -1.1957, 2.5463], [1.2552, -1.5747, 0.6923]]))
    tensor([[-2.2513, -3.8766, -0.1346],
            [-0.4877, -3.3176, -1.0506]], dtype=klflow.float32)
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor | Any) -> Tensor:
        return F.log_softmax(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(Module):
    """``Softmax(x_i) = exp(x_i) / sum_j exp(x_j)`` along ``dim`` (see
    :func:`klflow.nn.functional.softmax`).

    >>> import klflow as flow
    >>> flow.nn.Softmax(dim=-1)(flow.tensor([[0.0, 0.0]]))
    tensor([[0.5000, 0.5000]], dtype=klflow.float32)
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor | Any) -> Tensor:
        return F.softmax(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
