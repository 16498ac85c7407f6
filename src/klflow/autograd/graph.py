"""The backward graph: nodes recorded by differentiable operations, and the engine that runs them.

Each differentiable operation that sees an input with ``requires_grad`` returns a tensor whose
``grad_fn`` is a :class:`Node`. ``Tensor.backward`` walks the nodes in reverse topological order,
summing the gradients that meet at a node, and accumulates into the ``.grad`` of leaf tensors.

>>> import klflow as flow
>>> x = flow.tensor([0.5, 1.0], requires_grad=True)
>>> loss = flow.nn.functional.kl_div(x, flow.tensor([0.25, 0.75]), reduction="sum")
>>> loss.grad_fn.name()
'reduce_sum_backward'
>>> loss.backward(); x.grad.tolist()
[-0.25, -0.75]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klflow.tensor import Tensor

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations record a backward graph (``True`` unless inside :func:`no_grad`)."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def set_grad_enabled(mode: bool) -> Iterator[None]:
    """Context manager that turns graph recording on or off, restoring the old mode on exit."""
    previous = is_grad_enabled()
    _state.enabled = bool(mode)
    try:
        yield
    finally:
        _state.enabled = previous


def no_grad() -> contextlib.AbstractContextManager[None]:
    """Context manager under which no backward graph is recorded."""
    return set_grad_enabled(False)


def enable_grad() -> contextlib.AbstractContextManager[None]:
    """Context manager that records a backward graph even inside :func:`no_grad`."""
    return set_grad_enabled(True)


class Node:
    """A recorded operation: knows its inputs and maps the output's gradient to theirs.

    Subclasses implement :meth:`backward` and :meth:`release` (drop saved data once the graph
    has been run without ``retain_graph``).
    """

    op_name = "node"
    is_global = False  # True for nodes whose backward communicates (global tensors)

    def __init__(self, inputs: Sequence[Tensor | None]) -> None:
        self.inputs: tuple[Tensor | None, ...] = tuple(inputs)
        self.released = False

    def name(self) -> str:
        return f"{self.op_name}_backward"

    def __repr__(self) -> str:
        return f"<{self.name()}>"

    @property
    def next_functions(self) -> tuple[tuple[Node | None, int], ...]:
        return tuple(((t.grad_fn if t is not None else None), 0) for t in self.inputs)

    def needs_input_grad(self, index: int) -> bool:
        tensor = self.inputs[index]
        return tensor is not None and tensor.requires_grad

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        raise NotImplementedError

    def release(self) -> None:
        self.released = True

    def signature(self) -> str:
        """What the backward agreement compares across ranks (global nodes add their layout)."""
        return self.name()


def _topological_order(root: Node) -> list[Node]:
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for tensor in node.inputs:
            if tensor is not None and tensor.grad_fn is not None and id(tensor.grad_fn) not in seen:
                stack.append((tensor.grad_fn, False))
    order.reverse()  # outputs before the nodes that produced their inputs
    return order


_collective_backward: Callable[..., None] | None = None


def set_collective_backward(check: Callable[..., None]) -> None:
    """Register the agreement that precedes a backward pass through global tensors (set by
    :mod:`klflow.ops.global_tensors`, which this module must not import)."""
    global _collective_backward
    _collective_backward = check


def _released_problem() -> RuntimeError:
    return RuntimeError(
        "Trying to backward through the graph a second time (or directly access saved "
        "tensors after they have already been freed). Specify retain_graph=True on the "
        "first backward() call if you need to backward through the graph again."
    )


def nodes(root: Tensor) -> list[Node]:
    """The nodes behind ``root``, in the order the engine runs them."""
    return [] if root.grad_fn is None else _topological_order(root.grad_fn)


def communicates(root: Tensor) -> bool:
    """Whether a backward pass from ``root`` runs collectives (its graph holds global tensors)."""
    if root._global is not None:
        return True
    return root.grad_fn is not None and any(node.is_global for node in _topological_order(root.grad_fn))


def signature(root: Tensor) -> str:
    """The graph behind ``root`` as the backward agreement compares it: every node in the order
    the engine runs them. Raises if the graph was already freed."""
    if root.grad_fn is None:
        return "a leaf"
    order = _topological_order(root.grad_fn)
    if any(node.released for node in order):
        raise _released_problem()
    return " <- ".join(node.signature() for node in order)


def agree_on_backward(root: Tensor, gradient_given: bool, retain_graph: bool, problem: Any) -> None:
    """Run the registered backward agreement (every rank the same graph, or the same error)."""
    if _collective_backward is None:  # no global tensor was ever made in this process
        if problem is not None:
            raise problem
        return
    _collective_backward(root, gradient_given, retain_graph, problem)


def run_backward(root: Tensor, grad: Tensor, retain_graph: bool) -> None:
    """Propagate ``grad`` (d loss / d root) to every leaf reachable from ``root``."""
    from klflow.tensor import accumulate

    if root.grad_fn is None:
        # A leaf asked for its own gradient: accumulate directly.
        root._accumulate_grad(grad)
        return
    pending: dict[int, Tensor] = {id(root.grad_fn): grad}
    for node in _topological_order(root.grad_fn):
        grad_output = pending.pop(id(node), None)
        if grad_output is None:
            continue
        if node.released:
            raise _released_problem()
        with no_grad():
            input_grads = node.backward(grad_output)
        if not retain_graph:
            node.release()
        for tensor, input_grad in zip(node.inputs, input_grads, strict=True):
            if tensor is None or input_grad is None or not tensor.requires_grad:
                continue
            if tensor.grad_fn is None:
                tensor._accumulate_grad(input_grad)
            else:
                key = id(tensor.grad_fn)
                pending[key] = input_grad if key not in pending else accumulate(pending[key], input_grad)
