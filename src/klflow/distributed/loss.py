"""The KL-divergence loss on global tensors: local kernels on each component, exact partial sums.

Split inputs are computed where they live. A reduced loss is a ``partial_sum`` scalar whose
components are the ranks' partial values (divided by the *logical* numel or batch size); it also
carries each rank's exact-sum state, so materialising it all-reduces integers and gives the same
bits whatever the number of ranks. ``none`` keeps the inputs' split. Broadcast inputs are
computed redundantly on every rank with no communication; partial-sum inputs are first boxed to
broadcast (the loss is not linear in its inputs).

>>> import klflow as flow
>>> p = flow.placement("cpu", [0])
>>> x = flow.tensor([[-1.0, -0.5]]).to_global(p, flow.sbp.split(0))
>>> y = flow.tensor([[0.25, 0.75]]).to_global(p, flow.sbp.split(0))
>>> flow.nn.functional.kl_div(x, y, reduction="batchmean").sbp
(klflow.sbp.partial_sum,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from klflow import dtypes
from klflow.autograd import graph
from klflow.distributed import comm
from klflow.distributed import sbp as sbp_module
from klflow.distributed.api import box, gradient_spec, make_global
from klflow.distributed.layout import GlobalSpec
from klflow.kernels import cpu as cpu_kernels
from klflow.kernels import exact_sum
from klflow.ops.kl_div import backend_for, kl_div_local
from klflow.ops.reduction import reduction_divisor
from klflow.tensor import Tensor


@dataclass
class ExactPartial:
    """A rank's exact partial sum of a loss: materialised by an integer all-reduce of the states."""

    state: np.ndarray
    divisor: int
    dtype: dtypes.dtype

    def materialize(self, index: int | None) -> np.ndarray:
        local = self.state.copy()
        exact_sum.normalize(local)  # digits below 2**32: a sum over any rank count cannot overflow
        total = comm.allreduce_sum(local)
        return cpu_kernels.finish(total, self.divisor, self.dtype.numpy)


class GlobalLossNode(graph.Node):
    """Runs the local loss gradient on this rank's components and rewraps it as global tensors."""

    def __init__(
        self, input: Tensor, target: Tensor, local_node: graph.Node | None, out_spec: GlobalSpec, op_name: str
    ) -> None:
        super().__init__([input, target])
        self.op_name = op_name
        self.local_node = local_node
        self.out_spec = out_spec
        self.input_specs = (input._global, target._global)

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad = box(grad_output, gradient_spec(self.out_spec))
        if self.local_node is None:  # this rank holds no component
            return tuple(
                make_global(np.empty((0,), dtype=grad.dtype.numpy), spec)
                if self.needs_input_grad(i)
                else None
                for i, spec in enumerate(self.input_specs)
            )
        local_grad = Tensor(grad._data, device=grad.device)
        local_grad._fill_value = grad._fill_value
        local_grads = self.local_node.backward(local_grad)
        return tuple(
            None if g is None else Tensor(g._data, device=g.device, global_info=spec)
            for g, spec in zip(local_grads, self.input_specs, strict=True)
        )

    def release(self) -> None:
        super().release()
        if self.local_node is not None:
            self.local_node.release()


def kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    """The loss of global inputs with one placement (validated, on every rank, by the functional
    layer)."""
    if input.sbp[0].is_partial_sum:
        input = input.to_global(sbp=sbp_module.broadcast)
    if target._global != input._global:
        target = target.to_global(sbp=input.sbp)
    spec: GlobalSpec = input._global
    index = spec.placement.index_of(comm.rank())
    scalar_sbp = sbp_module.broadcast if spec.sbp[0].is_broadcast else sbp_module.partial_sum
    out_spec = spec if reduction == "none" else GlobalSpec(spec.placement, (scalar_sbp,), ())
    record = graph.is_grad_enabled() and (input.requires_grad or target.requires_grad)

    local_node = None
    exact = None
    if index is None:
        out_local = np.empty((0,), dtype=input.dtype.numpy)
        if reduction != "none" and scalar_sbp.is_partial_sum:
            exact = ExactPartial(exact_sum.new_state(), reduction_divisor(reduction, spec.shape), input.dtype)
        out = make_global(out_local, out_spec, exact)
    else:
        local_input = Tensor(input._data, device=input.device, requires_grad=input.requires_grad)
        local_target = Tensor(target._data, device=target.device, requires_grad=target.requires_grad)
        result, state = kl_div_local(
            local_input, local_target, reduction, log_target, divisor_shape=spec.shape
        )
        local_node = result.grad_fn
        if reduction != "none" and scalar_sbp.is_partial_sum:
            exact = ExactPartial(
                backend_for(input).exact_state(state), reduction_divisor(reduction, spec.shape), input.dtype
            )
        out = Tensor(result._data, device=result.device, global_info=out_spec)
        out._exact = exact
    if record:
        name = local_node.op_name if local_node is not None else "kl_div_loss"
        out.grad_fn = GlobalLossNode(input, target, local_node, out_spec, name)
        out._requires_grad = True
    return out
