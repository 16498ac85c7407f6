"""The KL-divergence loss on global tensors: local kernels on each component, exact partial sums.

Split inputs are computed where they live. A reduced loss is a ``partial_sum`` scalar whose
components are the ranks' partial values (divided by the *logical* numel or batch size); it also
carries each rank's exact partial sum, so materialising it all-reduces integers and gives the same
bits whatever the number of ranks. float32 and float16 losses carry the bounded fast path's
partial (:class:`BoundedPartial`) instead, on the CPU and on CUDA alike (so a CPU and a CUDA
placement of the same data give one value): one all-reduce still decides, and a sum the
bound cannot prove takes a second one of exact states. ``none`` keeps the inputs' split. Broadcast inputs are
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

import functools
from collections.abc import Callable
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


@dataclass
class BoundedPartial:
    """A rank's partial sum of a float32/float16 loss from the bounded fast path
    (:mod:`klflow.kernels.bounded_sum`): the exact sum of its float64 block sums and their
    magnitudes' total.

    Materialising it is one integer all-reduce of both, after which every rank holds the same
    totals and takes the same decision: the value where the error bound proves it (the exact
    path's bits), else every rank computes its exact state (``exact_state``) and a second
    all-reduce gives the exact result. ``exact_state`` keeps this rank's input components for
    that, as the backward pass does: modifying them in place before the loss is materialised
    changes that recomputation, as it changes the gradient.
    """

    state: np.ndarray
    magnitude_total: float
    divisor: int
    dtype: dtypes.dtype
    exact_state: Callable[[], np.ndarray]

    def materialize(self, index: int | None) -> np.ndarray:
        half = exact_sum.STATE_LEN
        local = np.concatenate([self.state, exact_sum.new_state()])
        exact_sum.add_float(local[half:], self.magnitude_total)  # exact; NaN/inf go to counters
        exact_sum.normalize(local[:half])  # digits below 2**32: any rank count sums safely
        exact_sum.normalize(local[half:])
        total = comm.allreduce_sum(local)
        magnitude_total = exact_sum.to_float64(total[half:])
        value = cpu_kernels.bounded_value(total[:half], magnitude_total, self.divisor, self.dtype.numpy)
        if value is not None:
            return value
        return ExactPartial(self.exact_state(), self.divisor, self.dtype).materialize(index)


def _uses_bounded_sum(input: Tensor) -> bool:
    """Whether a loss of ``input`` takes the bounded fast path: the same answer on every rank
    (the dtype is global; the CPU and CUDA backends give the same partial kinds)."""
    return input.dtype.numpy in cpu_kernels.BOUNDED_DTYPES


def _partial_record(
    state: np.ndarray | cpu_kernels.BoundedSum | None,
    input: Tensor,
    target: Tensor,
    log_target: bool,
    divisor: int,
) -> ExactPartial | BoundedPartial:
    """The record that materialises a reduced loss; ``state`` is this rank's partial sum (None
    where the rank holds no component). Every rank of a loss builds the same kind."""
    backend = backend_for(input)
    if not _uses_bounded_sum(input):
        local = exact_sum.new_state() if state is None else backend.exact_state(state)
        return ExactPartial(local, divisor, input.dtype)
    state = None if state is None else backend.host_partial(state)
    if isinstance(state, cpu_kernels.BoundedSum):
        x, y = input._data, target._data

        @functools.cache
        def exact_state() -> np.ndarray:
            return backend.reduce_sum(x, y, log_target)[0]

        return BoundedPartial(state.state, state.magnitude_total, divisor, input.dtype, exact_state)
    # An exact state already (or nothing): its block sum is exact, with no error to bound.
    local = exact_sum.new_state() if state is None else state
    return BoundedPartial(local, 0.0, divisor, input.dtype, lambda: local)


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
            divisor = reduction_divisor(reduction, spec.shape)
            exact = _partial_record(None, input, target, log_target, divisor)
        out = make_global(out_local, out_spec, exact)
    else:
        local_input = Tensor(input._data, device=input.device, requires_grad=input.requires_grad)
        local_target = Tensor(target._data, device=target.device, requires_grad=target.requires_grad)
        result, state = kl_div_local(
            local_input,
            local_target,
            reduction,
            log_target,
            divisor_shape=spec.shape,
            exact_state_needed=not _uses_bounded_sum(input),
        )
        local_node = result.grad_fn
        if reduction != "none" and scalar_sbp.is_partial_sum:
            divisor = reduction_divisor(reduction, spec.shape)
            exact = _partial_record(state, input, target, log_target, divisor)
        out = Tensor(result._data, device=result.device, global_info=out_spec)
        out._exact = exact
    if record:
        name = local_node.op_name if local_node is not None else "kl_div_loss"
        out.grad_fn = GlobalLossNode(input, target, local_node, out_spec, name)
        out._requires_grad = True
    return out
