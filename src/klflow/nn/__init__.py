"""``klflow.nn``: the module base class, parameters, the KL-divergence loss and its functional form."""

from klflow.nn import functional
from klflow.nn.loss import KLDivLoss
from klflow.nn.module import Module
from klflow.nn.parameter import Parameter

__all__ = ["KLDivLoss", "Module", "Parameter", "functional"]
