"""Reverse-mode differentiation for klflow tensors: graph nodes, the engine, ``grad`` and the
grad-mode switches."""

from klflow.autograd.gradients import backward, grad
from klflow.autograd.graph import (
    Node,
    enable_grad,
    is_grad_enabled,
    no_grad,
    run_backward,
    set_grad_enabled,
)

__all__ = [
    "Node",
    "backward",
    "enable_grad",
    "grad",
    "is_grad_enabled",
    "no_grad",
    "run_backward",
    "set_grad_enabled",
]
