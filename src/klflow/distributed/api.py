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
class LocalToGlobalNode(graph.Node):
    """Gradient of local → global: this rank's component of the gradient (whole for B and P)."""

    op_name = "local_to_global"

    def __init__(self, source: Tensor, spec: GlobalSpec) -> None:
        super().__init__([source])
        self.spec = spec

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad = box(grad_output, gradient_spec(self.spec))
        return (Tensor(grad._data, device=grad.device),)


class GlobalToLocalNode(graph.Node):
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
        return (box(grad, gradient_spec(self.spec)),)


class BoxingNode(graph.Node):
    """Gradient of a redistribution: the gradient boxed back to the source's layout."""

    op_name = "global_to_global"

    def __init__(self, source: Tensor) -> None:
        super().__init__([source])
        self.spec = source._global

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (box(grad_output, gradient_spec(self.spec)),)


def gradient_spec(spec: GlobalSpec) -> GlobalSpec:
    """The layout of a gradient: the tensor's own, except partial_sum, whose gradient is broadcast."""
    if spec.sbp[0].is_partial_sum:
        return GlobalSpec(spec.placement, (sbp_module.broadcast,), spec.shape)
    return spec


# ----------------------------------------------------------------- public operations
def box(t: Tensor, spec: GlobalSpec) -> Tensor:
    """``t`` redistributed to ``spec`` (no autograd recording; t itself if nothing changes)."""
    if t._global == spec:
        return t
    local = boxing.redistribute(_host(t), t._global, spec, t._exact)
    return make_global(local, spec)


def to_global(t: Tensor, placement: Any = None, sbp: Any = None, **kwargs: Any) -> Tensor:
    kwargs.pop("grad_sbp", None)
    kwargs.pop("check_meta", None)
    if kwargs:
        raise TypeError(f"to_global() got unexpected keyword arguments {sorted(kwargs)}")
    if t._global is None:
        return _local_to_global(t, placement, sbp)
    return _global_to_global(t, placement, sbp)


def _parse_arguments(
    placement: Any, sbp: Any
) -> tuple[Placement, tuple, None] | tuple[None, None, Exception]:
    """(placement, signature, None), or (None, None, the error) for arguments klflow refuses."""
    try:
        return _check_placement(placement), sbp_module.as_signature(sbp), None
    except (TypeError, ValueError) as err:
        return None, None, err


def _local_to_global(t: Tensor, placement: Any, sbp: Any) -> Tensor:
    if placement is None or sbp is None:
        placement, signature, error = (
            None,
            None,
            ValueError("converting a local tensor to global needs both placement= and sbp="),
        )
    else:
        placement, signature, error = _parse_arguments(placement, sbp)
    index = _my_index(placement) if placement is not None else None
    problem = _local_problem(t, placement, signature[0]) if index is not None else None
    # One exchange carries both the argument errors and the metadata the layout checks need, so
    # that a rank with bad arguments does not raise alone and leave the others waiting.
    row = (tuple(t.shape), t.dtype.name, repr(placement), repr(signature), comm.describe(error), problem)
    rows = comm.allgather_metadata(row)
    comm.raise_found([rw[4] for rw in rows], "to_global() failed")
    problems = [f"rank {r}: {rw[5]}" for r, rw in enumerate(rows) if rw[5] is not None]
    problem = "; ".join(problems) if problems else _agreement_problem(rows, placement, signature[0])
    if problem is not None:
        raise ValueError(f"to_global({placement!r}, {signature!r}) failed: {problem}")
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
        data = comm.broadcast_from(
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


def _global_to_global(t: Tensor, placement: Any, sbp: Any) -> Tensor:
    error: Exception | None = None
    signature = None
    if placement is None and sbp is None:
        error = ValueError("to_global() on a global tensor needs placement=, sbp= or both")
    else:
        placement, signature, error = _parse_arguments(
            t.placement if placement is None else placement, t.sbp if sbp is None else sbp
        )
    if error is None:
        kind = signature[0]
        if kind.is_split and kind.dim >= t.ndim:
            error = ValueError(
                f"split(dim={kind.dim}) needs more than {kind.dim} dimensions, "
                f"the tensor has shape {list(t.shape)}"
            )
        elif placement.type != t.placement.type:
            error = ValueError(
                f"moving between device types ({t.placement.type} → {placement.type}) is not "
                f"supported by to_global; convert the local component instead"
            )
    if spmd_checks_enabled():
        call = f"to_global(placement={placement!r}, sbp={signature!r})"
        comm.agree(error, "to_global()", call if error is None else None)
    elif error is not None:
        raise error
    spec = GlobalSpec(placement, signature, tuple(t.shape))
    if spec == t._global:
        return t
    out = box(t, spec)
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
    b = box(b, a._global)
    return make_global(np.add(_host(a), _host(b)), a._global)


def materialize(t: Tensor) -> np.ndarray:
    """The logical value of a global tensor as a host array, on every rank (collective)."""
    return boxing.logical_value(_host(t), t._global, t._exact)
