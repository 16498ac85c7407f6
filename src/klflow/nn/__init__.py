"""``klflow.nn``: the module base class, parameters, the KL-divergence loss, softmax and
log_softmax, and their functional forms."""

from klflow.nn import functional
from klflow.nn.activation import LogSoftmax, Softmax
from klflow.nn.loss import KLDivLoss
from klflow.nn.module import Module
from klflow.nn.parameter import Parameter

__all__ = ["KLDivLoss", "LogSoftmax", "Module", "Parameter", "Softmax", "functional"]
