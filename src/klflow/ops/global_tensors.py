"""Global tensors: ``to_global``/``to_local`` with collective validation and gradients, and the
internal boxing, materialisation and gradient helpers the other operations use.

Creating a global tensor from local components exchanges a few bytes of metadata over every
rank of the job (as OneFlow's ``check_meta=True``), so that every rank, inside the placement or
not, learns the logical shape; ``check_meta=False`` skips it for components of equal shapes.
Everything else — boxing, losses, gradients — runs on the communicator of the ranks involved;
ranks outside take part in nothing. Materialising (``numpy()``, ``item()``, printing) gives the
value to every rank, as OneFlow does (``to_global(placement.all, broadcast)``).

>>> import klflow as flow
>>> x = flow.tensor([1.0, 2.0, 3.0])
>>> g = x.to_global(placement=flow.placement("cpu", [0]), sbp=flow.sbp.split(0))
>>> g.is_global, g.sbp, g.to_local().shape
(True, (klflow.sbp.split(dim=0),), klflow.Size([3]))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from klflow import dtypes
from klflow.autograd import graph
from klflow.device import CPU
from klflow.device import device as Device
from klflow.distributed import boxing, comm, layout
from klflow.distributed import sbp as sbp_module
from klflow.distributed.layout import GlobalSpec
from klflow.distributed.placement import placement as Placement
from klflow.tensor import Tensor


def spmd_checks_enabled() -> bool:
    """Whether calls that move no data still agree first that every rank asked for the same.

    ``KLFLOW_CHECK_SPMD=0`` turns those agreements off for programs known to be consistent (a
    ``broadcast → split`` then communicates nothing at all); collectives that move data are
    always agreed.
    """
    return os.environ.get("KLFLOW_CHECK_SPMD", "1") != "0"


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


def host(t: Tensor) -> np.ndarray:
    """This rank's component on the host (no communication)."""
    from klflow.conversion import host_values

    return np.asarray(host_values(t))


def make_global(local_host: np.ndarray, spec: GlobalSpec) -> Tensor:
    """A global tensor from this rank's component (host data moved to the placement's device)."""
    device = _device_for(spec.placement)
    return Tensor(_to_device(local_host, device), device=device, global_info=spec)


def empty_component(spec: GlobalSpec, dtype: Any) -> Tensor:
    """The global tensor of a rank outside ``spec``'s placement: no data."""
    return make_global(np.empty((0,), dtype=dtype), spec)


def describe(t: Tensor) -> str:
    """A global tensor as agreements and errors name it: its number in the program order (the
    same on every rank of an SPMD program), layout and dtype."""
    return f"tensor #{t._global_id} ({t._global.description}, {t.dtype})"


def communicator_of(*placements: Placement) -> comm.Communicator | None:
    """The communicator of every rank in ``placements`` (None if this rank is in none)."""
    ranks = sorted({r for p in placements for r in p.rank_tuple})
    return comm.for_ranks(ranks) if comm.rank() in ranks else None


def is_member(placement: Placement) -> bool:
    return placement.index_of(comm.rank()) is not None


# ----------------------------------------------------------------- validation
def _check_placement(placement: Any) -> Placement:
    if not isinstance(placement, Placement):
        raise TypeError(f"placement must be a klflow.placement, got {placement!r}")
    size = comm.world_size()
    outside = [r for r in placement.rank_tuple if r >= size]
    if outside:
        raise ValueError(
            f"{placement!r} names ranks {outside} but the job has only {size} rank(s) (0..{size - 1})"
        )
    return placement


def _parse_arguments(placement: Any, sbp: Any) -> tuple[Placement, tuple]:
    placement = _check_placement(placement)
    return placement, sbp_module.as_signature(sbp, placement.ndim)


def _check_split_dims(signature: Sequence[Any], ndim: int, shape: Sequence[int]) -> None:
    for entry in signature:
        if entry.is_split and entry.dim >= ndim:
            raise ValueError(
                f"split(dim={entry.dim}) needs a tensor with more than {entry.dim} dimensions, "
                f"got shape {list(shape)}"
            )


def _local_problem(t: Tensor, placement: Placement, signature: Sequence[Any]) -> str | None:
    if placement.type != t.device.type:
        return (
            f"the local tensor is on {t.device} but the placement type is {placement.type!r}; "
            f"move it first with .{'cuda' if placement.type == 'cuda' else 'cpu'}()"
        )
    try:
        _check_split_dims(signature, t.ndim, t.shape)
    except ValueError as err:
        return str(err)
    return None


def _agreement_problem(rows: list[tuple], placement: Placement, signature: tuple) -> str | None:
    """What the gathered (shape, dtype, placement, sbp, requires_grad) rows imply."""
    requests = {(row[2], row[3]) for row in rows}
    if len(requests) > 1:
        return "the ranks asked for different placements/SBPs: " + ", ".join(
            f"rank {r}: {row[2]}, {row[3]}" for r, row in enumerate(rows)
        )
    if len({row[4] for row in rows}) > 1:
        return (
            "requires_grad differs between the ranks' local tensors (the backward pass would "
            "communicate on some ranks only): "
            + ", ".join(f"rank {r}: {row[4]}" for r, row in enumerate(rows))
        )
    members = placement.rank_tuple
    dtype_names = {rows[r][1] for r in members}
    if len(dtype_names) > 1:
        return "the components have different dtypes: " + ", ".join(
            f"rank {r}: {rows[r][1]}" for r in members
        )
    _, problem = layout.logical_shape_of({r: rows[r][0] for r in members}, placement, signature)
    return problem


# ----------------------------------------------------------------- gradients
def gradient_spec(spec: GlobalSpec) -> GlobalSpec:
    """The layout of a gradient: the tensor's own, except that partial-sum axes are broadcast."""
    sbp = tuple(sbp_module.broadcast if s.is_partial_sum else s for s in spec.sbp)
    return GlobalSpec(spec.placement, sbp, spec.shape)


class _GlobalNode(graph.Node):
    """A node whose backward communicates: its layout is part of the backward agreement."""

    is_global = True
    spec: GlobalSpec

    def placements(self) -> list[Placement]:
        return [self.spec.placement]

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
        # redistributed/to_local record only under backward(create_graph=True)
        grad = redistributed(grad_output, gradient_spec(self.spec), f"backward() through {self.name()}")
        return (to_local(grad),)


class GlobalToLocalNode(_GlobalNode):
    """Gradient of global → local: the ranks' local gradients as components of the global one."""

    op_name = "global_to_local"

    def __init__(self, source: Tensor) -> None:
        super().__init__([source])
        self.spec = source._global.layout()

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        # Along broadcast (and partial) axes each rank used the whole piece: the gradient there is
        # the sum of the ranks' gradients.
        sbp = tuple(s if s.is_split else sbp_module.partial_sum for s in self.spec.sbp)
        partial_spec = self.spec.with_sbp(sbp)
        grad = make_global(host(grad_output), partial_spec)
        if grad_output.requires_grad and graph.is_grad_enabled():  # backward(create_graph=True)
            grad.grad_fn = LocalToGlobalNode(grad_output, partial_spec)
            grad._requires_grad = True
        return (redistributed(grad, gradient_spec(self.spec), f"backward() through {self.name()}"),)


class BoxingNode(_GlobalNode):
    """Gradient of a redistribution: the gradient boxed back to the source's layout."""

    op_name = "global_to_global"

    def __init__(self, source: Tensor, target: GlobalSpec) -> None:
        super().__init__([source])
        self.spec = source._global.layout()
        self.target = target

    def placements(self) -> list[Placement]:
        return [self.spec.placement, self.target.placement]

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (redistributed(grad_output, gradient_spec(self.spec), f"backward() through {self.name()}"),)


# ----------------------------------------------------------------- operations
def box(t: Tensor, spec: GlobalSpec, reason: str) -> Tensor:
    """``t`` redistributed to ``spec`` (no autograd recording; ``t`` itself if nothing changes).
    ``reason`` names the operation in the agreements before any data moves. Every rank of
    either placement takes part; the others return at once."""
    if t._global == spec and t._global.partial is None:
        return t
    call = f"{reason} [{describe(t)} → {spec.describe()}]"
    local = boxing.redistribute(host(t), t._global, spec, call)
    return make_global(local, spec.layout())


def redistributed(t: Tensor, spec: GlobalSpec, reason: str) -> Tensor:
    """:func:`box` recorded for autograd: the gradient flows back to ``t``'s layout."""
    out = box(t, spec, reason)
    if t.requires_grad and graph.is_grad_enabled() and out is not t:
        out = Tensor(out._data, device=out.device, global_info=spec.layout())
        out.grad_fn = BoxingNode(t, spec.layout())
        out._requires_grad = True
    return out


def to_global(t: Tensor, placement: Any = None, sbp: Any = None, **kwargs: Any) -> Tensor:
    problem: Exception | None = None
    kwargs.pop("grad_sbp", None)
    check_meta = kwargs.pop("check_meta", True)
    kwargs.pop("copy", None)
    if kwargs:
        problem = TypeError(f"to_global() got unexpected keyword arguments {sorted(kwargs)}")
    if t._global is None:
        return _local_to_global(t, placement, sbp, bool(check_meta), problem)
    return _global_to_global(t, placement, sbp, problem)


def _logical_shape_without_meta(t: Tensor, placement: Placement, signature: tuple) -> tuple[int, ...]:
    """OneFlow's ``check_meta=False``: every component has the same shape, so a split dim's
    logical extent is the component's times the mesh axis size."""
    shape = list(t.shape)
    for axis, entry in enumerate(signature):
        if entry.is_split:
            shape[entry.dim] *= placement.hierarchy[axis]
    return tuple(shape)


def _local_to_global(
    t: Tensor, placement: Any, sbp: Any, check_meta: bool, problem: Exception | None
) -> Tensor:
    signature = None
    local_problem = None
    try:
        if problem is not None:
            raise problem
        if placement is None or sbp is None:
            raise ValueError("converting a local tensor to global needs both placement= and sbp=")
        placement, signature = _parse_arguments(placement, sbp)
        if is_member(placement):
            local_problem = _local_problem(t, placement, signature)
    except Exception as err:  # any class: reported to every rank by the exchange below
        problem = err
    if check_meta:
        # One exchange carries the argument errors and the metadata, so that a rank with bad
        # arguments does not raise alone and every rank learns the logical shape.
        row = (tuple(t.shape), t.dtype.name, repr(placement), repr(signature), t.requires_grad, local_problem)
        rows = comm.allgather_objects(
            row, call="to_global() of a local tensor", problem=problem, context="to_global()"
        )
        problems = [f"rank {r}: {rw[5]}" for r, rw in enumerate(rows) if rw[5] is not None]
        found = "; ".join(problems) if problems else _agreement_problem(rows, placement, signature)
        if found is not None:
            raise ValueError(f"to_global({placement!r}, {signature!r}) failed: {found}")
        first = rows[placement.rank_tuple[0]]
        dtype = dtypes.resolve(first[1])
        logical_shape, _ = layout.logical_shape_of(
            {r: rows[r][0] for r in placement.rank_tuple}, placement, signature
        )
    else:
        if problem is not None:
            raise problem
        if local_problem is not None:
            raise ValueError(f"to_global({placement!r}, {signature!r}) failed: {local_problem}")
        dtype = t.dtype
        logical_shape = _logical_shape_without_meta(t, placement, signature)
    spec = GlobalSpec(placement, signature, tuple(logical_shape))
    if not is_member(placement):
        out = empty_component(spec, dtype.numpy)
    else:
        out = _broadcast_components(t, spec, dtype)
    if t.requires_grad and graph.is_grad_enabled():
        out.grad_fn = LocalToGlobalNode(t, spec)
        out._requires_grad = True
    return out


def _broadcast_components(t: Tensor, spec: GlobalSpec, dtype: dtypes.dtype) -> Tensor:
    """Along every broadcast axis the value is the first rank's data: the others get a copy."""
    placement, me = spec.placement, comm.rank()
    axes = [axis for axis, s in enumerate(spec.sbp) if s.is_broadcast and placement.hierarchy[axis] > 1]
    if not axes:
        return Tensor(t._data, device=t.device, global_info=spec)  # the component is the local data
    shape = spec.component_shape_of(me)
    groups = (
        [placement.rank_tuple] if len(axes) == placement.ndim else [placement.axis_group(me, a) for a in axes]
    )
    data = host(t)
    for group in groups:
        call = (
            f"to_global() of a local tensor: broadcast from rank {group[0]} to ranks {list(group)}, "
            f"{spec.describe()}"
        )
        with comm.for_ranks(group).collective(call) as c:
            data = c.broadcast_from(data if me == group[0] else None, 0, shape, dtype.numpy)
    return make_global(data, spec)


def _global_to_global(t: Tensor, placement: Any, sbp: Any, problem: Exception | None) -> Tensor:
    signature = None
    try:
        if problem is not None:
            raise problem
        if placement is None and sbp is None:
            raise ValueError("to_global() on a global tensor needs placement=, sbp= or both")
        target = t.placement if placement is None else placement
        if sbp is None:
            if _check_placement(target).ndim != t.placement.ndim:
                raise ValueError(
                    f"the new placement has {target.ndim} mesh axes and the tensor's sbp "
                    f"{t.sbp!r} has {len(t.sbp)}: pass sbp= for the new placement"
                )
            sbp = t.sbp
        placement, signature = _parse_arguments(target, sbp)
        _check_split_dims(signature, t.ndim, t.shape)
        if placement.type != t.placement.type:
            raise ValueError(
                f"moving between device types ({t.placement.type} → {placement.type}) is not "
                f"supported by to_global; convert the local component instead"
            )
    except Exception as err:  # any class: reported to every rank
        problem = err
    request = f"to_global(placement={placement!r}, sbp={signature!r})"
    call = f"{request} of {describe(t)}"
    valid = isinstance(placement, Placement)
    group = communicator_of(t.placement, placement) if valid else communicator_of(t.placement)
    if problem is not None:
        if not spmd_checks_enabled() or group is None:
            raise problem
        group.agree("check", call, problem, context="to_global()")
    spec = GlobalSpec(placement, signature, tuple(t.shape))
    if group is not None and not boxing.communicates(t._global, spec) and spmd_checks_enabled():
        group.agree("check", call, context="to_global()")  # a data-moving edge agrees on the same call
    # Every rank, inside the placements or not, makes the same tensors (their numbers must match).
    return redistributed(t, spec, request)


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
    local_shape = spec.component_shape_of(comm.rank())
    seed = make_global(np.ones(local_shape, dtype=t.dtype.numpy), spec)
    seed._fill_value = 1.0
    return seed


def add(a: Tensor, b: Tensor) -> Tensor:
    """a + b for global tensors of one placement (b is boxed to a's SBP first)."""
    if a._global is None or b._global is None:
        raise ValueError("cannot add a local and a global tensor")
    if a.placement != b.placement:
        raise ValueError(f"cannot add global tensors on {a.placement!r} and {b.placement!r}")
    b = box(b, a._global.layout(), "accumulating gradients")
    return make_global(np.add(host(a), host(b)), a._global.layout())


def materialize(t: Tensor, method: str) -> np.ndarray:
    """The logical value of a global tensor as a host array, on every rank (collective);
    ``method`` is what the program called (``numpy()``, ``item()``, ``print``)."""
    return boxing.logical_value(host(t), t._global, f"{method} of {describe(t)}")


def agree_on_backward(
    root: Tensor, gradient_given: bool, retain_graph: bool, problem: Exception | None
) -> None:
    """Before a backward pass that communicates: every rank involved runs the same graph, or every
    one raises the same error (also for a problem found on one rank, such as a bad ``gradient``)."""
    placements = [root.placement] if root._global is not None else []
    if root.grad_fn is not None:
        for node in graph.nodes(root):
            if node.is_global:
                placements.extend(node.placements())
    group = communicator_of(*placements)
    if group is None:  # outside every placement of the graph: its steps are local no-ops here
        if problem is not None:
            raise problem
        return
    what = describe(root) if root._global is not None else "a local tensor"
    signature = graph.signature(root) if problem is None else ""
    call = (
        f"backward() of {what} (gradient {'given' if gradient_given else 'implicit'}, "
        f"retain_graph={retain_graph}) over {signature}"
    )
    group.agree("check", call, problem, context="backward()")


graph.set_collective_backward(agree_on_backward)
