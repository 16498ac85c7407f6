"""Dispatch of the KL-divergence loss for local and global tensors: pick the backend, apply the
reduction, keep the partial sum, record the backward.

Inputs arrive validated (see :mod:`klflow.nn.functional`). Global inputs are computed where they
live, on each rank's components with the same functions as local ones. A reduced loss is
partial_sum along every mesh axis where the inputs are split and broadcast where they are
broadcast (``mean``/``batchmean`` divide by the *logical* numel / shape[0]); its spec carries the
rank's exact partial (:class:`klflow.distributed.partials.PartialSum`), so materialising it
all-reduces integers and gives the single-process bits. ``none`` keeps the inputs' SBP.
Partial-sum inputs are first made broadcast (the loss is not linear in them) and a target with
another layout is boxed to the input's.

>>> import klflow as flow
>>> x = flow.tensor([0.5, 1.0]); y = flow.tensor([0.25, 0.75])
>>> kl_div(x, y, "mean", False)
tensor(-0.7187, dtype=klflow.float32)
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from klflow.autograd import graph
from klflow.distributed import sbp as sbp_module
from klflow.distributed.layout import GlobalSpec
from klflow.distributed.partials import PartialSum
from klflow.kernels.bounded_sum import BoundedSum
from klflow.ops import global_tensors
from klflow.ops.backend import backend_for
from klflow.ops.reduction import grad_name, reduction_divisor
from klflow.tensor import Tensor


class KlDivBackward(graph.Node):
    """Gradients of the loss for both inputs, scaled by the reduction.

    For a reduced loss whose input needs a gradient, the forward pass already wrote
    d loss/d input for an upstream gradient of 1 (one fused pass over the data); backward hands
    that array over when the upstream gradient is 1 and recomputes otherwise.
    """

    def __init__(
        self,
        input: Tensor,
        target: Tensor,
        reduction: str,
        log_target: bool,
        coef: float,
        fused_input_grad: Any,
        op_name: str,
    ) -> None:
        super().__init__([input, target])
        self.op_name = op_name
        self.x = input._data
        self.y = target._data
        self.reduction = reduction
        self.log_target = log_target
        self.coef = coef
        self.fused_input_grad = fused_input_grad
        self.backend = backend_for(input)
        self.device = input.device

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        upstream = _local_upstream(grad_output, self.reduction)
        grads: list[Tensor | None] = [None, None]
        if self.needs_input_grad(0):
            if self.fused_input_grad is not None and _is_one(upstream):
                data, self.fused_input_grad = self.fused_input_grad, None
            else:
                data = self.backend.input_grad_array(self.y, upstream, self.coef, self.log_target)
            grads[0] = Tensor(data, device=self.device)
        if self.needs_input_grad(1):
            data = self.backend.target_grad_array(self.x, self.y, upstream, self.coef, self.log_target)
            grads[1] = Tensor(data, device=self.device)
        if graph.is_grad_enabled():  # backward(create_graph=True): the gradients get a graph
            input, target = self.inputs
            record_gradient_graph(grads, input, target, grad_output, self.log_target, self.coef)
        return tuple(grads)

    def release(self) -> None:
        super().release()
        self.x = self.y = self.fused_input_grad = None


def record_gradient_graph(
    grads: list[Tensor | None], x: Tensor, y: Tensor, g: Tensor, log_target: bool, coef: float
) -> None:
    """Give the loss's gradients (computed by the fused kernels, so the values keep their bits)
    a graph of differentiable operations, for ``backward(create_graph=True)``:

    * ``log_target=False``: d/dx = -coef·g·[y > 0]·y, d/dy = coef·g·(log y + 1 - x);
    * ``log_target=True``: d/dx = -coef·g·e^y, d/dy = coef·g·e^y·(y - x + 1).

    ``g`` is the upstream gradient (a scalar for a reduced loss), ``coef`` the reduction's scale.
    """
    from klflow.ops.arithmetic import _record, to_layout_of

    def partials_of_input_grad(gg: Tensor) -> tuple[Tensor | None, ...]:
        if log_target:
            d_y = -coef * (g * y.exp())
            d_g = -coef * y.exp()
        else:
            mask = y > 0
            d_y = -coef * (g * mask)
            d_g = -coef * (y * mask)
        return (None, to_layout_of(gg * d_y, y), to_layout_of(gg * d_g, g))

    def partials_of_target_grad(gg: Tensor) -> tuple[Tensor | None, ...]:
        if log_target:
            e = y.exp()
            d_x = -coef * (g * e)
            d_y = coef * (g * (e * (y - x + 2.0)))
            d_g = coef * (e * (y - x + 1.0))
        else:
            d_x = -coef * g
            d_y = coef * (g / y)
            d_g = coef * (y.log() + 1.0 - x)
        return (to_layout_of(gg * d_x, x), to_layout_of(gg * d_y, y), to_layout_of(gg * d_g, g))

    if grads[0] is not None:
        _record(grads[0], "kl_div_input_grad", [None, y, g], partials_of_input_grad)
    if grads[1] is not None:
        _record(grads[1], "kl_div_target_grad", [x, y, g], partials_of_target_grad)


def _local_upstream(grad_output: Tensor, reduction: str) -> Any:
    if reduction == "none":
        return grad_output._data
    if grad_output._fill_value is not None:  # the implicit seed: no need to read it back
        return float(grad_output._fill_value)
    from klflow.conversion import host_values

    return float(np.asarray(host_values(grad_output), dtype=np.float64).reshape(()))


def _is_one(upstream: Any) -> bool:
    return isinstance(upstream, float) and upstream == 1.0


def kl_div_local(
    input: Tensor,
    target: Tensor,
    reduction: str,
    log_target: bool,
    divisor_shape: tuple[int, ...] | None = None,
) -> tuple[Tensor, Any]:
    """The loss of local tensors. Returns the output and, for reduced modes, the backend's partial
    sum (see :class:`klflow.ops.backend.Backend`; ``none`` returns no partial).

    ``divisor_shape`` is the logical shape used for ``mean``/``batchmean`` (a global tensor's
    component divides by the whole tensor's numel or batch size).
    """
    backend = backend_for(input)
    record = graph.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    logical_shape = tuple(divisor_shape if divisor_shape is not None else input.shape)
    if reduction == "none":
        out_data = backend.pointwise(input._data, target._data, log_target)
        out = Tensor(out_data, device=input.device)
        state = None
        coef = 1.0
        fused = None
    else:
        divisor = reduction_divisor(reduction, logical_shape)
        coef = 1.0 / divisor if divisor else float("nan")
        want_fused = record and input.requires_grad
        value, state, fused = backend.reduce(
            input._data, target._data, log_target, divisor, coef if want_fused else None
        )
        out = Tensor(value, device=input.device)
    if record:
        out.grad_fn = KlDivBackward(
            input,
            target,
            reduction,
            log_target,
            coef,
            fused,
            grad_name(reduction, logical_shape),
        )
        out._requires_grad = True
    return out, state


def kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    """The loss for validated inputs (both local, or both global on one placement)."""
    if input.is_global:
        return _kl_div_global(input, target, reduction, log_target)
    out, _ = kl_div_local(input, target, reduction, log_target)
    return out


# ----------------------------------------------------------------- global inputs
def _partial_sum(state: Any, input: Tensor, target: Tensor, log_target: bool, divisor: int) -> PartialSum:
    """This rank's :class:`PartialSum` from the backend's partial (an exact state, or the bounded
    path's block sums, which bring the exact recomputation along for the rare undecided sum).
    The kinds may differ between ranks (a rank's layout may take the exact path): they combine."""
    backend = backend_for(input)
    state = backend.host_partial(state)
    if isinstance(state, BoundedSum):
        x, y = input._data, target._data

        @functools.cache
        def exact_state() -> np.ndarray:
            return backend.reduce_sum(x, y, log_target)[0]

        return PartialSum(state.state, state.magnitude_total, divisor, input.dtype, exact_state)
    return PartialSum(state, 0.0, divisor, input.dtype)  # already exact: nothing to bound


class GlobalLossNode(graph.Node):
    """Runs the local loss gradient on this rank's components and rewraps it as global tensors."""

    is_global = True

    def __init__(
        self,
        input: Tensor,
        target: Tensor,
        local_node: graph.Node | None,
        out_spec: GlobalSpec,
        op_name: str,
        log_target: bool = False,
        coef: float = 1.0,
    ) -> None:
        super().__init__([input, target])
        self.op_name = op_name
        self.local_node = local_node
        self.log_target = log_target
        self.coef = coef  # the reduction's scale (1 / the logical divisor), for create_graph
        self.out_spec = out_spec
        self.input_specs = (input._global.layout(), target._global.layout())

    def placements(self) -> list[Any]:
        return [self.out_spec.placement]

    def signature(self) -> str:
        flags = "".join("1" if self.needs_input_grad(i) else "0" for i in range(2))
        layouts = ", ".join(spec.describe() for spec in (self.out_spec, *self.input_specs))
        return f"{self.name()}[{layouts}, grads {flags}]"

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad = global_tensors.redistributed(  # recorded only under backward(create_graph=True)
            grad_output, global_tensors.gradient_spec(self.out_spec), f"backward() through {self.name()}"
        )
        create_graph = graph.is_grad_enabled()
        if self.local_node is None:  # this rank holds no component
            grads = [
                global_tensors.empty_component(spec, grad.dtype.numpy) if self.needs_input_grad(i) else None
                for i, spec in enumerate(self.input_specs)
            ]
        else:
            local_grad = Tensor(grad._data, device=grad.device)
            local_grad._fill_value = grad._fill_value
            with graph.no_grad():
                local_grads = self.local_node.backward(local_grad)
            grads = [
                None if g is None else Tensor(g._data, device=g.device, global_info=spec)
                for g, spec in zip(local_grads, self.input_specs, strict=True)
            ]
        if create_graph:  # on every rank, members or not: they make the same global tensors
            input, target = self.inputs
            record_gradient_graph(grads, input, target, grad, self.log_target, self.coef)
        return tuple(grads)

    def release(self) -> None:
        super().release()
        if self.local_node is not None:
            self.local_node.release()


def _kl_div_global(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    if input._global.partial_axes():
        sbp = tuple(sbp_module.broadcast if s.is_partial_sum else s for s in input.sbp)
        input = global_tensors.redistributed(input, input._global.with_sbp(sbp), "kl_div: its input")
    if target._global.layout() != input._global.layout():
        target = global_tensors.redistributed(target, input._global.layout(), "kl_div: its target")
    spec: GlobalSpec = input._global.layout()
    reduced_sbp = tuple(sbp_module.partial_sum if s.is_split else s for s in spec.sbp)
    out_spec = spec if reduction == "none" else GlobalSpec(spec.placement, reduced_sbp, ())
    record = graph.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    local_node = None
    if not global_tensors.is_member(spec.placement):
        out = global_tensors.empty_component(out_spec, input.dtype.numpy)
    else:
        local_input = Tensor(input._data, device=input.device, requires_grad=input.requires_grad)
        local_target = Tensor(target._data, device=target.device, requires_grad=target.requires_grad)
        result, state = kl_div_local(
            local_input, local_target, reduction, log_target, divisor_shape=spec.shape
        )
        local_node = result.grad_fn
        if reduction != "none" and out_spec.partial_axes():
            divisor = reduction_divisor(reduction, spec.shape)
            partial = _partial_sum(state, input, target, log_target, divisor)
            out_spec = GlobalSpec(out_spec.placement, out_spec.sbp, out_spec.shape, partial)
        out = Tensor(result._data, device=result.device, global_info=out_spec)
    if record:
        name = grad_name(reduction, spec.shape)  # the same on ranks that hold no component
        divisor = 1 if reduction == "none" else reduction_divisor(reduction, spec.shape)
        coef = 1.0 / divisor if divisor else float("nan")  # as kl_div_local's
        out.grad_fn = GlobalLossNode(input, target, local_node, out_spec.layout(), name, log_target, coef)
        out._requires_grad = True
    return out
