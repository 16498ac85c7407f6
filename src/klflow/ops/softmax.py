"""softmax and log_softmax of local and global tensors, with their gradients.

The kernels (:mod:`klflow.kernels.softmax` on the CPU, :mod:`klflow.kernels.softmax_cuda` on a
GPU) work on rows: the softmax dimension is moved last and the rest flattened. A global tensor
split along the softmax dimension (a tensor-parallel model's vocabulary-split logits) has each
row spread over the ranks of the mesh axes that split it: the row maxima are gathered and the
exact-sum states of the exponentials all-reduced over those ranks, so that every row's total is
the single-process value to the bit, and so is every output. Its gradient's row sums are
all-reduced the same way. Split along another dimension, or broadcast, the rows are whole on
every rank and nothing is exchanged. A partial-sum input is first made broadcast.

>>> import klflow as flow
>>> out = softmax(flow.tensor([[1.0, 1.0], [0.0, 0.0]]), dim=1, log=False)
>>> out.tolist()
[[0.5, 0.5], [0.5, 0.5]]
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from klflow.autograd import graph
from klflow.distributed import comm
from klflow.distributed import sbp as sbp_module
from klflow.distributed.layout import GlobalSpec
from klflow.ops import global_tensors
from klflow.tensor import Tensor


def _kernels(device_type: str) -> ModuleType:
    if device_type == "cpu":
        from klflow.kernels import softmax as cpu_kernels

        return cpu_kernels
    from klflow.kernels import softmax_cuda

    return softmax_cuda


def _name(log: bool) -> str:
    return "log_softmax" if log else "softmax"


# ----------------------------------------------------------------- rows
def _rows_shape(shape: tuple[int, ...], dim: int) -> tuple[int, int]:
    if not shape:
        return 1, 1
    n = shape[dim]
    return math.prod(shape[:dim] + shape[dim + 1 :]), n


def _to_rows(data: Any, dim: int, kernels: ModuleType) -> Any:
    """``data`` as a C-contiguous ``(rows, n)`` array with the softmax dimension last (a view
    when it already is last and the data is contiguous)."""
    shape = tuple(data.shape)
    rows, n = _rows_shape(shape, dim)
    if shape and dim != len(shape) - 1:
        data = kernels.move_last(data, dim)
    return kernels.contiguous(data).reshape(rows, n)


def _from_rows(rows: Any, shape: tuple[int, ...], dim: int, kernels: ModuleType) -> Any:
    if not shape:
        return rows.reshape(())
    if dim == len(shape) - 1:
        return rows.reshape(shape)
    moved = shape[:dim] + shape[dim + 1 :] + (shape[dim],)
    return kernels.move_back(rows.reshape(moved), dim)


# ----------------------------------------------------------------- local tensors
class SoftmaxBackward(graph.Node):
    """Gradient of softmax/log_softmax from the saved input rows and row statistics."""

    def __init__(self, x: Tensor, rows: Any, maxima: Any, totals: Any, dim: int, log: bool) -> None:
        super().__init__([x])
        self.op_name = _name(log)
        self.rows, self.maxima, self.totals = rows, maxima, totals
        self.dim, self.log = dim, log
        self.shape = tuple(x.shape)
        self.device = x.device

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        kernels = _kernels(self.device.type)
        grad = _to_rows(grad_output._data, self.dim, kernels)
        out = kernels.backward(self.rows, grad, self.maxima, self.totals, self.log)
        result = Tensor(_from_rows(out, self.shape, self.dim, kernels), device=self.device)
        if graph.is_grad_enabled():  # backward(create_graph=True): the gradient gets a graph
            record_gradient_graph(result, self.inputs[0], grad_output, self.dim, self.log)
        return (result,)

    def release(self) -> None:
        super().release()
        self.rows = self.maxima = self.totals = None


def record_gradient_graph(grad_in: Tensor, x: Tensor, g: Tensor, dim: int, log: bool) -> None:
    """Give the gradient of softmax/log_softmax (computed by the kernels, so its values keep their
    bits) a graph of differentiable operations, for ``backward(create_graph=True)``. With
    ``p = softmax(x)``, ``<a> = sum over dim of a`` and ``u`` the gradient of the gradient:

    * log_softmax, ``g - p<g>``: d/dg = ``u - <u p>``, d/dx = ``-<g> p (u - <u p>)``;
    * softmax, ``p (g - <g p>)``: d/dg = ``p (u - <u p>)``, d/dx = ``p (c - <c p>)`` with
      ``c = u g - g <u p> - u <g p>`` (the gradient's derivative in ``p``, through softmax).
    """
    from klflow.ops.arithmetic import _record, to_layout_of

    def partials(u: Tensor) -> tuple[Tensor | None, ...]:
        p = softmax(x, dim, log=False)
        up = (u * p).sum(dim, keepdim=True)
        if log:
            d_g = u - up
            d_x = -(g.sum(dim, keepdim=True) * (p * d_g))
        else:
            d_g = p * (u - up)
            c = u * g - g * up - u * (g * p).sum(dim, keepdim=True)
            d_x = p * (c - (c * p).sum(dim, keepdim=True))
        return (to_layout_of(d_x, x), to_layout_of(d_g, g))

    _record(grad_in, f"{_name(log)}_grad", [x, g], partials)


def _softmax_local(x: Tensor, dim: int, log: bool) -> Tensor:
    kernels = _kernels(x.device.type)
    rows = _to_rows(x._data, dim, kernels)
    out_rows, maxima, totals = kernels.forward(rows, log)
    out = Tensor(_from_rows(out_rows, tuple(x.shape), dim, kernels), device=x.device)
    if graph.is_grad_enabled() and x.requires_grad:
        out.grad_fn = SoftmaxBackward(x, rows, maxima, totals, dim, log)
        out._requires_grad = True
    return out


def softmax(x: Tensor, dim: int, log: bool) -> Tensor:
    """softmax (or with ``log``, log_softmax) of a validated tensor along a normalised ``dim``."""
    if x.is_global:
        return _softmax_global(x, dim, log)
    return _softmax_local(x, dim, log)


# ----------------------------------------------------------------- global tensors
class _RowGroup:
    """The ranks that share this rank's rows: those differing from it only on the mesh axes
    that split the softmax dimension (None when no axis does: rows are whole everywhere)."""

    def __init__(self, spec: GlobalSpec, dim: int) -> None:
        self.axes = [a for a, s in enumerate(spec.sbp) if s.is_split and s.dim == dim]
        self.communicator = None
        if self.axes and global_tensors.is_member(spec.placement):
            members = spec.placement.group_over(comm.rank(), self.axes)
            self.communicator = comm.for_ranks(members) if len(members) > 1 else None

    def maxima(self, local: np.ndarray, call: str) -> np.ndarray:
        if self.communicator is None:
            return local
        with self.communicator.collective(f"{call}: row maxima") as region:
            gathered = region.allgatherv(local, [local.size] * self.communicator.size)
        return _combined_maxima(gathered.reshape(self.communicator.size, local.size))

    def states(self, local: np.ndarray, call: str, what: str) -> np.ndarray:
        if self.communicator is None:
            return local
        with self.communicator.collective(f"{call}: {what}") as region:
            return region.allreduce_sum(local)


def _combined_maxima(maxima: np.ndarray) -> np.ndarray:
    """The rows' maxima over the ranks' rows of maxima, as one row's kernel finds them: NaN if any
    rank saw one, and +0.0 above -0.0 (the larger order-preserving key of the bits)."""
    bits = maxima.view(np.int64)
    keys = bits ^ ((bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))
    largest = keys.max(axis=0)
    out = (largest ^ ((largest >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))).view(np.float64)
    return np.where(np.isnan(maxima).any(axis=0), np.nan, out)


def _host(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    from klflow import cuda

    return cuda.to_host(data)


def _global_forward(
    local: Any, dim: int, log: bool, group: _RowGroup, kernels: ModuleType, call: str
) -> tuple[Any, Any, Any, Any]:
    rows = _to_rows(local, dim, kernels)
    if group.communicator is None:
        out, maxima, totals = kernels.forward(rows, log)
        return rows, out, maxima, totals
    maxima = group.maxima(_host(kernels.row_maxima(rows)), call)
    maxima = kernels.statistics(maxima)
    states = group.states(_host(kernels.row_states(rows, maxima)), call, "row sums of exponentials")
    totals = kernels.round_states(states, _host(maxima))
    totals = kernels.statistics(totals)
    return rows, kernels.outputs(rows, maxima, totals, log), maxima, totals


class GlobalSoftmaxBackward(graph.Node):
    """Gradient of softmax/log_softmax of a global tensor: the local rule, with the rows'
    gradient sums all-reduced over the ranks that split the rows."""

    is_global = True

    def __init__(
        self, x: Tensor, spec: GlobalSpec, dim: int, log: bool, saved: tuple | None, group: _RowGroup
    ) -> None:
        super().__init__([x])
        self.op_name = _name(log)
        self.spec, self.dim, self.log, self.saved, self.group = spec, dim, log, saved, group

    def placements(self) -> list[Any]:
        return [self.spec.placement]

    def signature(self) -> str:
        flags = "1" if self.needs_input_grad(0) else "0"
        return f"{self.name()}[dim {self.dim}, {self.spec.describe()}, grads {flags}]"

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        call = f"backward() through {self.name()}"
        grad = global_tensors.box(grad_output, self.spec, call)
        if self.saved is None:  # this rank holds no component
            return (global_tensors.empty_component(self.spec, grad.dtype.numpy),)
        rows, maxima, totals, shape = self.saved
        kernels = _kernels(grad.device.type)
        grad_rows = _to_rows(grad._data, self.dim, kernels)
        if self.group.communicator is None:
            out = kernels.backward(rows, grad_rows, maxima, totals, self.log)
        else:
            states = kernels.grad_states(rows, grad_rows, maxima, totals, self.log)
            states = self.group.states(_host(states), call, "row sums of the gradient")
            grad_totals = kernels.statistics(kernels.round_states(states))
            out = kernels.grads(rows, grad_rows, maxima, totals, grad_totals, self.log)
        data = _from_rows(out, shape, self.dim, kernels)
        result = Tensor(data, device=grad.device, global_info=self.spec)
        if graph.is_grad_enabled():  # backward(create_graph=True)
            record_gradient_graph(result, self.inputs[0], grad, self.dim, self.log)
        return (result,)

    def release(self) -> None:
        super().release()
        self.saved = None


def _softmax_global(x: Tensor, dim: int, log: bool) -> Tensor:
    if x._global.partial_axes():
        sbp = tuple(sbp_module.broadcast if s.is_partial_sum else s for s in x.sbp)
        x = global_tensors.redistributed(x, x._global.with_sbp(sbp), f"{_name(log)}: its input")
    spec: GlobalSpec = x._global.layout()
    group = _RowGroup(spec, dim)
    call = f"{_name(log)}(dim={dim}) of {global_tensors.describe(x)}"
    saved = None
    if not global_tensors.is_member(spec.placement):
        out = global_tensors.empty_component(spec, x.dtype.numpy)
    else:
        kernels = _kernels(x.device.type)
        local_shape = tuple(x._data.shape)
        rows, out_rows, maxima, totals = _global_forward(x._data, dim, log, group, kernels, call)
        out = Tensor(_from_rows(out_rows, local_shape, dim, kernels), device=x.device, global_info=spec)
        saved = (rows, maxima, totals, local_shape)
    if graph.is_grad_enabled() and x.requires_grad:
        out.grad_fn = GlobalSoftmaxBackward(x, spec, dim, log, saved, group)
        out._requires_grad = True
    return out
