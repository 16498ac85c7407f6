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

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from klflow.tensor import Tensor

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations record a backward graph (``True`` unless inside :func:`no_grad`)."""
    return getattr(_state, "enabled", True)


class _GradMode:
    """A context manager and decorator that sets the grad mode on entry and restores it on exit."""

    mode = True

    def __init__(self, mode: bool | None = None) -> None:
        if mode is not None:
            self.mode = mode

    def __new__(cls, *args: Any) -> Any:
        # ``@no_grad`` without parentheses: the class receives the function itself.
        if len(args) == 1 and callable(args[0]) and not isinstance(args[0], bool):
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self) -> None:
        self.previous = is_grad_enabled()
        _state.enabled = self.mode

    def __exit__(self, *exc: Any) -> None:
        _state.enabled = self.previous

    def __call__(self, function: Callable) -> Callable:
        mode = self.mode

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _GradMode(mode):
                return function(*args, **kwargs)

        return wrapper


class set_grad_enabled(_GradMode):
    """Turn graph recording on or off: as a plain call (``set_grad_enabled(False)`` switches it
    off until switched on again), as a context manager (restores the old mode on exit) and as a
    decorator, like PyTorch's.

    >>> import klflow as flow
    >>> _ = flow.set_grad_enabled(False); flow.is_grad_enabled()
    False
    >>> _ = flow.set_grad_enabled(True); flow.is_grad_enabled()
    True
    """

    def __new__(cls, mode: bool) -> set_grad_enabled:
        return object.__new__(cls)

    def __init__(self, mode: bool) -> None:
        self.previous = is_grad_enabled()
        self.mode = bool(mode)
        _state.enabled = self.mode

    def __enter__(self) -> None:
        return None  # the mode was already set by the call

    def __call__(self, function: Callable) -> Callable:
        # As a decorator: the mode applies while the function runs (the call above already set
        # it at decoration time, as PyTorch's does; restore that).
        _state.enabled = self.previous
        return super().__call__(function)


class no_grad(_GradMode):
    """No backward graph is recorded inside: ``with flow.no_grad():``, ``@flow.no_grad()`` or
    ``@flow.no_grad``.

    >>> import klflow as flow
    >>> @flow.no_grad
    ... def recorded():
    ...     return flow.is_grad_enabled()
    >>> recorded(), flow.is_grad_enabled()
    (False, True)
    """

    mode = False


class enable_grad(_GradMode):
    """A backward graph is recorded inside, even within :class:`no_grad` (also a decorator)."""

    mode = True


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


def _topological_order(root: Node | Sequence[Node]) -> list[Node]:
    roots = [root] if isinstance(root, Node) else list(root)
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(roots)]
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


class FunctionNode(Node):
    """A node whose backward is a function of the output's gradient, written with klflow's own
    differentiable operations (so a backward pass with ``create_graph=True`` records the graph of
    the gradient itself). ``layout`` is the output's global layout, or None for a local output."""

    def __init__(
        self,
        op_name: str,
        inputs: Sequence[Tensor | None],
        gradients: Callable[[Tensor], Sequence[Tensor | None]],
        layout: Any = None,
    ) -> None:
        super().__init__(inputs)
        self.op_name = op_name
        self._gradients: Callable[[Tensor], Sequence[Tensor | None]] | None = gradients
        self.layout = layout
        self.is_global = layout is not None

    def placements(self) -> list[Any]:
        return [self.layout.placement]

    def signature(self) -> str:
        if self.layout is None:
            return self.name()
        flags = "".join("1" if self.needs_input_grad(i) else "0" for i in range(len(self.inputs)))
        return f"{self.name()}[{self.layout.describe()}, grads {flags}]"

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if self._gradients is None:
            raise _released_problem()
        grads = tuple(self._gradients(grad_output))
        return tuple(g if self.needs_input_grad(i) else None for i, g in enumerate(grads))

    def release(self) -> None:
        super().release()
        self._gradients = None


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


def run_backward(
    root: Tensor | Sequence[Tensor],
    grad: Tensor | Sequence[Tensor],
    retain_graph: bool,
    create_graph: bool = False,
    capture: Sequence[Tensor] | None = None,
) -> list[Tensor | None] | None:
    """Propagate ``grad`` (d loss / d root; one per root) to every leaf reachable from ``root``.

    With ``create_graph`` the gradients are computed by recorded operations (their own graph can
    be differentiated again). With ``capture`` (the tensors :func:`klflow.autograd.grad` asks
    about) nothing is accumulated into ``.grad``: the gradient reaching each captured tensor is
    returned instead (None where none arrives).
    """
    from klflow.tensor import accumulate

    roots = [root] if not isinstance(root, (list, tuple)) else list(root)
    grads = [grad] if not isinstance(grad, (list, tuple)) else list(grad)

    def add(a: Tensor | None, b: Tensor) -> Tensor:
        if a is None:
            return b
        return a + b if create_graph else accumulate(a, b)

    captured: dict[int, Tensor | None] = {}
    capture_ids = {id(t) for t in capture} if capture is not None else set()
    captured_nodes = {id(t.grad_fn): id(t) for t in capture or () if t.grad_fn is not None}

    def reach_leaf(tensor: Tensor, g: Tensor) -> None:
        if capture is not None:
            if id(tensor) in capture_ids:
                captured[id(tensor)] = add(captured.get(id(tensor)), g)
            return
        tensor._accumulate_grad(g, create_graph)

    pending: dict[int, Tensor] = {}
    for r, g in zip(roots, grads, strict=True):
        if r.grad_fn is None:
            reach_leaf(r, g)  # a leaf asked for its own gradient
        else:
            key = id(r.grad_fn)
            pending[key] = add(pending.get(key), g)
    live_roots = [r.grad_fn for r in roots if r.grad_fn is not None]
    if live_roots:
        with set_grad_enabled(create_graph):
            for node in _topological_order(live_roots):
                grad_output = pending.pop(id(node), None)
                if grad_output is None:
                    continue
                if node.released:
                    raise _released_problem()
                if id(node) in captured_nodes:
                    captured[captured_nodes[id(node)]] = grad_output
                retained = getattr(node, "retained_output", None)
                retained = retained() if retained is not None else None
                if retained is not None and capture is None:
                    retained._accumulate_grad(grad_output, create_graph)
                input_grads = node.backward(grad_output)
                if not retain_graph:
                    node.release()
                for tensor, input_grad in zip(node.inputs, input_grads, strict=True):
                    if tensor is None or input_grad is None or not tensor.requires_grad:
                        continue
                    if tensor.grad_fn is None:
                        reach_leaf(tensor, input_grad)
                    else:
                        key = id(tensor.grad_fn)
                        pending[key] = add(pending.get(key), input_grad)
    if capture is None:
        return None
    return [captured.get(id(t)) for t in capture]


def retain_output(tensor: Tensor) -> None:
    """Make the backward pass keep ``tensor.grad`` for a non-leaf tensor (``retain_grad()``)."""
    tensor.grad_fn.retained_output = weakref.ref(tensor)
