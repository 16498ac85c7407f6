"""``to_global``/``to_local`` with collective validation and gradients, and global-tensor helpers.

>>> import klflow as flow
>>> x = flow.tensor([1.0, 2.0, 3.0])
>>> g = x.to_global(placement=flow.placement("cpu", [0]), sbp=flow.sbp.split(0))
>>> g.is_global, g.sbp, g.to_local().shape
(True, (klflow.sbp.split(dim=0),), klflow.Size([3]))
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from klflow import dtypes
from klflow.autograd import graph
from klflow.device import CPU
from klflow.device import device as Device
from klflow.distributed import boxing, comm
from klflow.distributed import sbp as sbp_module
from klflow.distributed.layout import GlobalSpec, split_layout_problem
from klflow.distributed.placement import placement as Placement
from klflow.tensor import Tensor


def spmd_checks_enabled() -> bool:
    """Whether global→global calls first check that every rank asked for the same thing.

    The check is one small metadata exchange. ``KLFLOW_CHECK_SPMD=0`` turns it off for programs
    known to be consistent (a ``broadcast → split`` then communicates nothing at all).
    """
    return os.environ.get("KLFLOW_CHECK_SPMD", "1") != "0"


def _my_index(placement: Placement) -> int | None:
    return placement.index_of(comm.rank())


def _device_for(placement: Placement) -> Device:
    if placement.type == "cpu":
        return CPU
    from klflow import cuda

    return cuda.rank_device()


def _to_device(host: np.ndarray, device: Device) -> Any:
    if device.type == "cpu":
        return host
    from klflow import cuda

    return cuda.to_device(host, device)


def _host(t: Tensor) -> np.ndarray:
    from klflow.conversion import host_values

    return np.asarray(host_values(t))


def make_global(local_host: np.ndarray, spec: GlobalSpec, exact: Any = None) -> Tensor:
    """A global tensor from this rank's component (host data moved to the placement's device)."""
    device = _device_for(spec.placement)
    out = Tensor(_to_device(local_host, device), device=device, global_info=spec)
    out._exact = exact
    return out


def describe(t: Tensor) -> str:
    """A global tensor as agreements and errors name it: its number in the program order (the
    same on every rank of an SPMD program), layout and dtype."""
    return f"tensor #{t._global_id} ({t._global.description}, {t.dtype})"


# ----------------------------------------------------------------- validation
def _check_placement(placement: Any) -> Placement:
    if not isinstance(placement, Placement):
        raise TypeError(f"placement must be a klflow.placement, got {placement!r}")
    size = comm.world_size()
    outside = [r for r in placement.ranks if r >= size]
    if outside:
        raise ValueError(
            f"{placement!r} names ranks {outside} but the job has only {size} rank(s) (0..{size - 1})"
        )
    return placement


def _local_problem(t: Tensor, placement: Placement, sbp: sbp_module.SbpParallel) -> str | None:
    if placement.type != t.device.type:
        return (
            f"the local tensor is on {t.device} but the placement type is {placement.type!r}; "
            f"move it first with .{'cuda' if placement.type == 'cuda' else 'cpu'}()"
        )
    if sbp.is_split and sbp.dim >= t.ndim:
        return (
            f"split(dim={sbp.dim}) needs a tensor with more than {sbp.dim} dimensions, "
            f"got shape {list(t.shape)}"
        )
    return None


def _agreement_problem(rows: list[tuple], placement: Placement, sbp: sbp_module.SbpParallel) -> str | None:
    """What the gathered (shape, dtype, placement, sbp) rows of the placement's ranks imply."""
    requests = {(row[2], row[3]) for row in rows}
    if len(requests) > 1:
        return "the ranks asked for different placements/SBPs: " + ", ".join(
            f"rank {r}: {row[2]}, {row[3]}" for r, row in enumerate(rows)
        )
    if len({row[4] for row in rows}) > 1:
        return "requires_grad differs between the ranks' local tensors (the backward pass would " + (
            "communicate on some ranks only): "
            + ", ".join(f"rank {r}: {row[4]}" for r, row in enumerate(rows))
        )
    members = [(r, rows[r]) for r in placement.ranks]
    dtype_names = {row[1] for _, row in members}
    if len(dtype_names) > 1:
        return "the components have different dtypes: " + ", ".join(
            f"rank {r}: {row[1]}" for r, row in members
        )
    shapes = [row[0] for _, row in members]
    if sbp.is_split:
        problem = split_layout_problem(shapes, sbp.dim)
        return (
            None
            if problem is None
            else f"cannot assemble split(dim={sbp.dim}) from components of shapes "
            + ", ".join(f"rank {r}: {list(row[0])}" for r, row in members)
            + f": {problem}"
        )
    if len({tuple(s) for s in shapes}) > 1:
        return f"{sbp!r} needs the same shape on every rank, got " + ", ".join(
            f"rank {r}: {list(row[0])}" for r, row in members
        )
    return None


# ----------------------------------------------------------------- gradients
class _GlobalNode(graph.Node):
    """A node whose backward communicates: its layout is part of the backward agreement."""

    is_global = True
    spec: GlobalSpec

    def signature(self) -> str:
        flags = "".join("1" if self.needs_input_grad(i) else "0" for i in range(len(self.inputs)))
        return f"{self.name()}[{self.spec.describe()}, grads {flags}]"


class LocalToGlobalNode(_GlobalNode):
    """Gradient of local → global: this rank's component of the gradient (whole for B and P)."""

    op_name = "local_to_global"

    def __init__(self, source: Tensor, spec: GlobalSpec) -> None:
        super().__init__([source])
        self.spec = spec

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad = box(grad_output, gradient_spec(self.spec), f"backward() through {self.name()}")
        return (Tensor(grad._data, device=grad.device),)


class GlobalToLocalNode(_GlobalNode):
    """Gradient of global → local: the ranks' local gradients as components of the global one."""

    op_name = "global_to_local"

    def __init__(self, source: Tensor) -> None:
        super().__init__([source])
        self.spec = source._global

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        spec = self.spec
        if not spec.sbp[0].is_split:
            # Each rank used the whole value: the gradient is the sum of the ranks' gradients.
            spec = GlobalSpec(spec.placement, (sbp_module.partial_sum,), spec.shape)
        grad = make_global(_host(grad_output), spec)
        return (box(grad, gradient_spec(self.spec), f"backward() through {self.name()}"),)


class BoxingNode(_GlobalNode):
    """Gradient of a redistribution: the gradient boxed back to the source's layout."""

    op_name = "global_to_global"

    def __init__(self, source: Tensor) -> None:
        super().__init__([source])
        self.spec = source._global

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (box(grad_output, gradient_spec(self.spec), f"backward() through {self.name()}"),)


def gradient_spec(spec: GlobalSpec) -> GlobalSpec:
    """The layout of a gradient: the tensor's own, except partial_sum, whose gradient is broadcast."""
    if spec.sbp[0].is_partial_sum:
        return GlobalSpec(spec.placement, (sbp_module.broadcast,), spec.shape)
    return spec


# ----------------------------------------------------------------- public operations
def box(t: Tensor, spec: GlobalSpec, reason: str) -> Tensor:
    """``t`` redistributed to ``spec`` (no autograd recording; t itself if nothing changes).
    ``reason`` names the operation in the agreement before any data moves."""
    if t._global == spec:
        return t
    call = f"{reason} [{describe(t)} → {spec.describe()}]"
    local = boxing.redistribute(_host(t), t._global, spec, call, t._exact)
    return make_global(local, spec)


def to_global(t: Tensor, placement: Any = None, sbp: Any = None, **kwargs: Any) -> Tensor:
    problem: Exception | None = None
    kwargs.pop("grad_sbp", None)
    kwargs.pop("check_meta", None)
    if kwargs:
        problem = TypeError(f"to_global() got unexpected keyword arguments {sorted(kwargs)}")
    if t._global is None:
        return _local_to_global(t, placement, sbp, problem)
    return _global_to_global(t, placement, sbp, problem)


def _parse_arguments(placement: Any, sbp: Any) -> tuple[Placement, tuple]:
    return _check_placement(placement), sbp_module.as_signature(sbp)


def _local_to_global(t: Tensor, placement: Any, sbp: Any, problem: Exception | None) -> Tensor:
    signature = None
    local_problem = None
    try:
        if problem is not None:
            raise problem
        if placement is None or sbp is None:
            raise ValueError("converting a local tensor to global needs both placement= and sbp=")
        placement, signature = _parse_arguments(placement, sbp)
        index = _my_index(placement)
        local_problem = _local_problem(t, placement, signature[0]) if index is not None else None
    except Exception as err:  # any class: reported to every rank by the exchange below
        problem = err
    # One exchange carries both the argument errors and the metadata the layout checks need, so
    # that a rank with bad arguments does not raise alone and leave the others waiting.
    row = (tuple(t.shape), t.dtype.name, repr(placement), repr(signature), t.requires_grad, local_problem)
    rows = comm.allgather_objects(
        row, call="to_global() of a local tensor", problem=problem, context="to_global()"
    )
    problems = [f"rank {r}: {rw[5]}" for r, rw in enumerate(rows) if rw[5] is not None]
    found = "; ".join(problems) if problems else _agreement_problem(rows, placement, signature[0])
    if found is not None:
        raise ValueError(f"to_global({placement!r}, {signature!r}) failed: {found}")
    first = rows[placement.ranks[0]]
    dtype = dtypes.resolve(first[1])
    kind = signature[0]
    if kind.is_split:
        shapes = [rows[r][0] for r in placement.ranks]
        logical = list(shapes[0])
        logical[kind.dim] = sum(s[kind.dim] for s in shapes)
        logical_shape = tuple(logical)
    else:
        logical_shape = tuple(first[0])
    spec = GlobalSpec(placement, signature, logical_shape)
    if kind.is_broadcast and len(placement) > 1:
        # The value is the first rank's data: every component becomes a copy of it.
        root = placement.ranks[0]
        with comm.collective(
            f"to_global() of a local tensor: broadcast from rank {root}, {spec.describe()}"
        ) as c:
            data = c.broadcast_from(
                _host(t) if comm.rank() == root else None, root, logical_shape, dtype.numpy
            )
        out = make_global(data if index is not None else np.empty((0,), dtype=dtype.numpy), spec)
    elif index is None:
        out = make_global(np.empty((0,), dtype=dtype.numpy), spec)
    else:
        out = Tensor(t._data, device=t.device, global_info=spec)  # the component is the local data
    if t.requires_grad and graph.is_grad_enabled():
        out.grad_fn = LocalToGlobalNode(t, spec)
        out._requires_grad = True
    return out


def _global_to_global(t: Tensor, placement: Any, sbp: Any, problem: Exception | None) -> Tensor:
    signature = None
    try:
        if problem is not None:
            raise problem
        if placement is None and sbp is None:
            raise ValueError("to_global() on a global tensor needs placement=, sbp= or both")
        placement, signature = _parse_arguments(
            t.placement if placement is None else placement, t.sbp if sbp is None else sbp
        )
        kind = signature[0]
        if kind.is_split and kind.dim >= t.ndim:
            raise ValueError(
                f"split(dim={kind.dim}) needs more than {kind.dim} dimensions, "
                f"the tensor has shape {list(t.shape)}"
            )
        if placement.type != t.placement.type:
            raise ValueError(
                f"moving between device types ({t.placement.type} → {placement.type}) is not "
                f"supported by to_global; convert the local component instead"
            )
    except Exception as err:  # any class: reported to every rank
        problem = err
    request = f"to_global(placement={placement!r}, sbp={signature!r})"
    call = f"{request} of {describe(t)}"
    if problem is not None:
        if not spmd_checks_enabled():
            raise problem
        comm.agree(call, problem, context="to_global()")
    spec = GlobalSpec(placement, signature, tuple(t.shape))
    moves_data = spec != t._global and boxing.communicates(t._global, spec)
    if not moves_data and spmd_checks_enabled():
        comm.agree(call, context="to_global()")  # a data-moving edge agrees on the same call
    if spec == t._global:
        return t
    out = box(t, spec, request)
    if t.requires_grad and graph.is_grad_enabled():
        out = Tensor(out._data, device=out.device, global_info=spec)
        out.grad_fn = BoxingNode(t)
        out._requires_grad = True
    return out


def to_local(t: Tensor) -> Tensor:
    if t._global is None:
        return t
    out = Tensor(t._data, device=t.device)
    if t.requires_grad and graph.is_grad_enabled():
        out.grad_fn = GlobalToLocalNode(t)
        out._requires_grad = True
    return out


def gradient_seed(t: Tensor) -> Tensor:
    """A logical 1 with the layout of ``t``'s gradient (broadcast for a partial-sum loss)."""
    spec = gradient_spec(t._global)
    local_shape = spec.component_shape(_my_index(spec.placement))
    seed = make_global(np.ones(local_shape, dtype=t.dtype.numpy), spec)
    seed._fill_value = 1.0
    return seed


def add(a: Tensor, b: Tensor) -> Tensor:
    """a + b for global tensors of one placement (b is boxed to a's SBP first)."""
    if a._global is None or b._global is None:
        raise ValueError("cannot add a local and a global tensor")
    if a.placement != b.placement:
        raise ValueError(f"cannot add global tensors on {a.placement!r} and {b.placement!r}")
    b = box(b, a._global, "accumulating gradients")
    return make_global(np.add(_host(a), _host(b)), a._global)


def materialize(t: Tensor, method: str) -> np.ndarray:
    """The logical value of a global tensor as a host array, on every rank (collective);
    ``method`` is what the program called (``numpy()``, ``item()``, ``print``)."""
    return boxing.logical_value(_host(t), t._global, f"{method} of {describe(t)}", t._exact)


def agree_on_backward(
    root: Tensor, gradient_given: bool, retain_graph: bool, problem: Exception | None
) -> None:
    """Before a backward pass that communicates: every rank runs the same graph, or every rank
    raises the same error (also for a problem found on one rank, such as a bad ``gradient``)."""
    what = describe(root) if root._global is not None else "a local tensor"
    signature = graph.signature(root) if problem is None else ""
    call = (
        f"backward() of {what} (gradient {'given' if gradient_given else 'implicit'}, "
        f"retain_graph={retain_graph}) over {signature}"
    )
    comm.agree(call, problem, context="backward()")


graph.set_collective_backward(agree_on_backward)
