"""Reverse-mode differentiation for klflow tensors: graph nodes, the engine and grad-mode switches."""

from klflow.autograd.graph import (
    Node,
    enable_grad,
    is_grad_enabled,
    no_grad,
    run_backward,
    set_grad_enabled,
)

__all__ = ["Node", "enable_grad", "is_grad_enabled", "no_grad", "run_backward", "set_grad_enabled"]
