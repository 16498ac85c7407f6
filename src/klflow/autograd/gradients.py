"""``klflow.autograd.grad``: gradients of outputs with respect to chosen inputs, returned rather than
accumulated into ``.grad``; with ``create_graph=True`` they can be differentiated again.

>>> import klflow as flow
>>> x = flow.tensor([1.0, 2.0], requires_grad=True)
>>> (dx,) = flow.autograd.grad((x * x * x).sum(), x, create_graph=True)
>>> dx.tolist(), flow.autograd.grad(dx.sum(), x)[0].tolist()
([3.0, 12.0], [6.0, 12.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from klflow.autograd import graph

if TYPE_CHECKING:
    from klflow.tensor import Tensor


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _seeds(outs: tuple, given: tuple, retain: bool) -> list[Any]:
    """Validated seeds for ``outs`` (1 for one-element outputs without a given gradient), after
    the backward agreement when the graph is global (a problem on one rank raises on all)."""
    from klflow import conversion
    from klflow.tensor import Tensor, _check_gradient, _converted_gradient, tensor

    problem: Exception | None = None
    seeds: list[Any] = []
    try:
        bad = [type(t).__name__ for t in outs if not isinstance(t, Tensor)]
        if bad:
            raise TypeError(f"expected tensors as outputs, got {bad[0]}")
        if given and len(given) != len(outs):
            raise RuntimeError(
                f"one gradient is needed per output: got {len(given)} gradients and {len(outs)} outputs"
            )
        for i, out in enumerate(outs):
            if not out.requires_grad:
                raise RuntimeError(
                    f"element {i} of tensors does not require grad and does not have a grad_fn"
                )
        for i, out in enumerate(outs):
            g = given[i] if given else None
            if g is None:
                if out.numel() != 1:
                    raise RuntimeError(
                        f"grad can be implicitly created only for scalar outputs; output {i} has "
                        f"shape {list(out.shape)}: pass its gradient with that shape"
                    )
                seeds.append(None)
            else:
                g = g if isinstance(g, Tensor) else tensor(g, dtype=out.dtype)
                _check_gradient(out, g)
                seeds.append(g)
    except Exception as err:
        problem = err
    communicating = [out for out in outs if isinstance(out, Tensor) and graph.communicates(out)]
    for out in communicating:
        graph.agree_on_backward(out, bool(given), retain, problem)
    if problem is not None:
        raise problem
    return [
        conversion.gradient_seed(out) if g is None else _converted_gradient(out, g)
        for out, g in zip(outs, seeds, strict=True)
    ]


def backward(
    tensors: Tensor | Sequence[Tensor],
    grad_tensors: Tensor | Sequence[Tensor | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> None:
    """Accumulate the gradients of ``tensors`` (weighted by ``grad_tensors``) into the ``.grad``
    of the leaves: ``Tensor.backward`` for several outputs at once, as OneFlow's
    ``flow.autograd.backward``. Collective for global tensors."""
    outs = _as_tuple(tensors)
    retain = bool(create_graph) if retain_graph is None else bool(retain_graph)
    seeds = _seeds(outs, _as_tuple(grad_tensors), retain)
    graph.run_backward(list(outs), seeds, retain, create_graph=bool(create_graph))


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Tensor | Sequence[Tensor | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """The sum over ``outputs`` of d output / d input × ``grad_outputs`` for every input (a tuple,
    in the order of ``inputs``). ``grad_outputs`` may be omitted for one-element outputs (then 1).
    ``retain_graph`` defaults to ``create_graph``. An input the outputs do not depend on is an
    error unless ``allow_unused`` (its entry is then None). Collective for global tensors."""
    from klflow.tensor import Tensor

    outs = _as_tuple(outputs)
    ins = _as_tuple(inputs)
    retain = bool(create_graph) if retain_graph is None else bool(retain_graph)
    if not outs or not ins:
        raise RuntimeError("grad requires at least one output and one input")
    bad = [type(t).__name__ for t in ins if not isinstance(t, Tensor)]
    if bad:
        raise TypeError(f"grad expects tensors as inputs, got {bad[0]}")
    if not all(t.requires_grad for t in ins):
        raise RuntimeError("One of the differentiated Tensors does not require grad")
    seeds = _seeds(outs, _as_tuple(grad_outputs), retain)
    results = graph.run_backward(
        list(outs), seeds, retain, create_graph=bool(create_graph), capture=list(ins)
    )
    for i, r in enumerate(results):
        if r is None and not allow_unused:
            raise RuntimeError(
                f"The differentiated Tensor at index {i} appears to not have been used in the graph. "
                f"Set allow_unused=True if this is the desired behavior."
            )
        if r is not None and not create_graph:
            results[i] = r.detach()
    return tuple(results)
