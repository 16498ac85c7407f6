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
    from klflow import conversion
    from klflow.tensor import Tensor, _check_gradient, _converted_gradient, tensor

    outs = _as_tuple(outputs)
    ins = _as_tuple(inputs)
    given = _as_tuple(grad_outputs)
    retain = bool(create_graph) if retain_graph is None else bool(retain_graph)
    problem: Exception | None = None
    seeds: list[Any] = []
    try:
        if not outs or not ins:
            raise RuntimeError("grad requires at least one output and one input")
        for name, group in (("outputs", outs), ("inputs", ins)):
            bad = [type(t).__name__ for t in group if not isinstance(t, Tensor)]
            if bad:
                raise TypeError(f"grad expects tensors as {name}, got {bad[0]}")
        if given and len(given) != len(outs):
            raise RuntimeError(
                f"grad requires one grad_output per output: got {len(given)} grad_outputs and "
                f"{len(outs)} outputs"
            )
        for i, out in enumerate(outs):
            if not out.requires_grad:
                raise RuntimeError(
                    f"element {i} of tensors does not require grad and does not have a grad_fn"
                )
        for t in ins:
            if not t.requires_grad:
                raise RuntimeError("One of the differentiated Tensors does not require grad")
        for i, out in enumerate(outs):
            g = given[i] if given else None
            if g is None:
                if out.numel() != 1:
                    raise RuntimeError(
                        f"grad can be implicitly created only for scalar outputs; output {i} has "
                        f"shape {list(out.shape)}: pass grad_outputs= with that shape"
                    )
                seeds.append(None)
            else:
                g = g if isinstance(g, Tensor) else tensor(g, dtype=out.dtype)
                _check_gradient(out, g)
                seeds.append(g)
    except Exception as err:
        problem = err
    communicating = [out for out in outs if isinstance(out, Tensor) and graph.communicates(out)]
    if communicating:
        for out in communicating:
            graph.agree_on_backward(out, bool(given), retain, problem)
    elif problem is not None:
        raise problem
    seeds = [
        conversion.gradient_seed(out) if g is None else _converted_gradient(out, g)
        for out, g in zip(outs, seeds, strict=True)
    ]
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
