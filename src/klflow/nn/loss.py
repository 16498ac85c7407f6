"""``klflow.nn.KLDivLoss``: OneFlow's module form of the loss."""

from __future__ import annotations

from typing import Any

from klflow.nn import functional as F
from klflow.nn.module import Module
from klflow.tensor import Tensor


class KLDivLoss(Module):
    """The Kullback–Leibler divergence loss, exactly as ``oneflow.nn.KLDivLoss``.

    Element ``l_n = y_n * (log y_n - x_n)`` (0 where ``y_n <= 0``), or with ``log_target=True``
    ``exp(y_n) * (y_n - x_n)``; reduced by ``'none' | 'batchmean' | 'sum' | 'mean'``.

    >>> import klflow as flow
    >>> input = flow.tensor([-0.9021705, 0.08798598, 1.04686249], dtype=flow.float32)
    >>> target = flow.tensor([1.22386942, -0.89729659, 0.01615712], dtype=flow.float32)
    >>> flow.nn.KLDivLoss(reduction="none", log_target=False)(input, target)
    tensor([ 1.3514,  0.0000, -0.0836], dtype=klflow.float32)
    >>> flow.nn.KLDivLoss(reduction="mean", log_target=False)(input, target)
    tensor(0.4226, dtype=klflow.float32)
    >>> flow.nn.KLDivLoss(reduction="sum", log_target=True)(input, target)
    tensor(5.7801, dtype=klflow.float32)
    """

    def __init__(self, reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__()
        self.reduction = F.check_reduction(reduction)
        self.log_target = F.check_log_target(log_target)

    def forward(self, input: Tensor | Any, target: Tensor | Any) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
