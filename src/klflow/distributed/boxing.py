"""Boxing: redistributing a global tensor to another SBP or placement.

On one mesh axis the edges of OneFlow's table, one function each, run over the communicator of
the ranks that share every other coordinate (the *axis group*):

| from → to               | collective                                   |
|-------------------------|----------------------------------------------|
| split → broadcast       | all-gather (v)                               |
| partial_sum → broadcast | all-reduce (an exact-state all-reduce for a loss) |
| broadcast → split       | none: take the local slice                   |
| partial_sum → split     | reduce-scatter (v)                           |
| split(i) → split(j)     | all-to-all (v)                               |
| broadcast → partial_sum | none: the first rank keeps, the others hold zeros |
| split → partial_sum     | all-gather (v), then as broadcast → partial_sum |

A signature of several axes changes one axis at a time (:func:`plan`). The axis group shares one
piece of the tensor, on which the edge acts as on a one-axis tensor. That holds unless a later
axis splits a dim the changing axis splits before or after (the nesting of ``(S(0), S(0))``):
such later axes are first made broadcast, innermost first, and split again when their turn comes.

A change of placement makes the value whole on the source ranks, sends it to the destination
ranks that lack it (a broadcast over the union of both placements) and takes each destination
component from it. Ranks outside every placement involved take part in nothing. Every function
works on host arrays: CUDA data is staged through host memory by the caller. ``call`` describes
the operation for the agreement that precedes each collective (see :mod:`comm`); buffers are
prepared inside the collective's region, so a failure there (even a ``MemoryError``) reaches
every member.

>>> from klflow.distributed.sbp import split, broadcast
>>> [f"axis {axis}: {a} → {b}" for axis, a, b in plan((split(0), split(0)), (broadcast, split(0)))]
['axis 1: S(0) → B', 'axis 0: S(0) → B', 'axis 1: B → S(0)']
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from klflow.distributed import comm
from klflow.distributed.layout import GlobalSpec, balanced_offsets, balanced_sizes
from klflow.distributed.placement import placement as Placement
from klflow.distributed.sbp import SbpParallel, broadcast


def _empty(dtype: np.dtype) -> np.ndarray:
    return np.empty((0,), dtype=dtype)


def _front(a: np.ndarray, dim: int) -> np.ndarray:
    """Move ``dim`` to the front as a C-contiguous array, so split pieces are contiguous runs."""
    return np.ascontiguousarray(np.moveaxis(a, dim, 0))


def _moved(shape: Sequence[int], dim: int) -> tuple[int, ...]:
    return (shape[dim], *shape[:dim], *shape[dim + 1 :])


def _with(shape: Sequence[int], dim: int, size: int) -> tuple[int, ...]:
    out = list(shape)
    out[dim] = size
    return tuple(out)


# ----------------------------------------------------------------- one axis
@dataclass(frozen=True)
class AxisView:
    """One mesh axis as a one-axis tensor: the ``members`` along it (world ranks, axis order),
    the ``shape`` of the piece they share, and this rank's ``index`` among them."""

    members: tuple[int, ...]
    shape: tuple[int, ...]
    index: int

    @property
    def parts(self) -> int:
        return len(self.members)

    def split_sizes(self, dim: int) -> list[int]:
        return balanced_sizes(self.shape[dim], self.parts)

    def numel_split(self, dim: int) -> list[int]:
        """Elements of each member's piece when the shared piece is split along ``dim``."""
        return [int(np.prod(_with(self.shape, dim, size))) for size in self.split_sizes(dim)]


def split_to_broadcast(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    dim = a.dim
    with comm.for_ranks(view.members).collective(call) as c:
        flat = c.allgatherv(_front(local, dim), view.numel_split(dim))
    moved = flat.reshape(_moved(view.shape, dim))
    return np.moveaxis(moved, 0, dim).copy()


def partial_to_broadcast(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    with comm.for_ranks(view.members).collective(call) as c:
        return c.allreduce_sum(local)


def broadcast_to_split(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    offsets = balanced_offsets(view.shape[b.dim], view.parts)
    index = [slice(None)] * local.ndim
    index[b.dim] = slice(offsets[view.index], offsets[view.index + 1])
    return np.ascontiguousarray(local[tuple(index)])


def partial_to_split(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    dim = b.dim
    with comm.for_ranks(view.members).collective(call) as c:
        mine = c.reduce_scatterv(_front(local, dim), view.numel_split(dim))
    shape = _with(view.shape, dim, view.split_sizes(dim)[view.index])
    return np.moveaxis(mine.reshape(_moved(shape, dim)), 0, dim).copy()


def split_to_split(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    i_dim, j_dim = a.dim, b.dim
    i_sizes, j_sizes = view.split_sizes(i_dim), view.split_sizes(j_dim)
    j_offsets = balanced_offsets(view.shape[j_dim], view.parts)
    recv_shapes = [
        _with(_with(view.shape, i_dim, i_sizes[p]), j_dim, j_sizes[view.index]) for p in range(view.parts)
    ]
    recv_counts = [int(np.prod(s)) for s in recv_shapes]
    with comm.for_ranks(view.members).collective(call) as c:
        blocks = [
            np.ascontiguousarray(local[(slice(None),) * j_dim + (slice(j_offsets[q], j_offsets[q + 1]),)])
            for q in range(view.parts)
        ]
        send = np.concatenate([block.reshape(-1) for block in blocks])
        flat = c.alltoallv(send, [block.size for block in blocks], recv_counts)
    starts = np.cumsum([0, *recv_counts])
    pieces = [flat[starts[p] : starts[p + 1]].reshape(recv_shapes[p]) for p in range(view.parts)]
    return np.concatenate(pieces, axis=i_dim)


def broadcast_to_partial(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    return local.copy() if view.index == 0 else np.zeros_like(local)


def split_to_partial(local: np.ndarray, view: AxisView, a: SbpParallel, b: SbpParallel, call: str):
    return broadcast_to_partial(split_to_broadcast(local, view, a, broadcast, call), view, broadcast, b, call)


Edge = Callable[[np.ndarray, AxisView, SbpParallel, SbpParallel, str], np.ndarray]

EDGES: dict[tuple[str, str], Edge] = {
    ("split", "broadcast"): split_to_broadcast,
    ("partial_sum", "broadcast"): partial_to_broadcast,
    ("broadcast", "split"): broadcast_to_split,
    ("partial_sum", "split"): partial_to_split,
    ("split", "split"): split_to_split,
    ("broadcast", "partial_sum"): broadcast_to_partial,
    ("split", "partial_sum"): split_to_partial,
}

# Edges where every rank already holds what it needs: take a slice, or zero some components.
_LOCAL_EDGES = {("broadcast", "split"), ("broadcast", "partial_sum")}


# ----------------------------------------------------------------- several axes
Step = tuple[int, SbpParallel, SbpParallel]


def plan(src: Sequence[SbpParallel], dst: Sequence[SbpParallel]) -> list[Step]:
    """The one-axis changes, in order, that take signature ``src`` to ``dst`` on one mesh.

    Axes change outermost first. Before axis j changes, every later axis that splits a dim that
    axis j splits (before or after) becomes broadcast, innermost first: its pieces are cut out of
    axis j's, so they would not fit the new ones. It gets its target when its own turn comes.
    """
    current = list(src)
    steps: list[Step] = []
    for j in range(len(current)):
        if current[j] == dst[j]:
            continue
        dims = {s.dim for s in (current[j], dst[j]) if s.is_split}
        for i in reversed(range(j + 1, len(current))):
            if current[i].is_split and current[i].dim in dims:
                steps.append((i, current[i], broadcast))
                current[i] = broadcast
        steps.append((j, current[j], dst[j]))
        current[j] = dst[j]
    return steps


def _axis_view(spec: GlobalSpec, rank: int, axis: int) -> AxisView:
    ranges = spec.ranges_of(rank, skip_axis=axis)
    members = spec.placement.axis_group(rank, axis)
    return AxisView(members, tuple(stop - start for start, stop in ranges), members.index(rank))


def _describe_step(call: str, axis: int, a: SbpParallel, b: SbpParallel, spec: GlobalSpec) -> str:
    where = f" on mesh axis {axis}" if spec.placement.ndim > 1 else ""
    return f"{call} [{a} → {b}{where}]"


def communicates(src: GlobalSpec, dst: GlobalSpec) -> bool:
    """Whether :func:`redistribute` from ``src`` to ``dst`` moves data between ranks."""
    if src.layout() == dst.layout() and src.partial is None:
        return False
    if src.placement != dst.placement or src.partial is not None:
        return True
    return any((a.kind, b.kind) not in _LOCAL_EDGES for _, a, b in plan(src.sbp, dst.sbp))


def _same_mesh(local: np.ndarray, src: GlobalSpec, dst_sbp: Sequence[SbpParallel], call: str) -> np.ndarray:
    """This rank's component under ``dst_sbp`` on the same placement (a member of it)."""
    me = comm.rank()
    current = src.layout()
    for axis, a, b in plan(current.sbp, dst_sbp):
        view = _axis_view(current, me, axis)
        local = EDGES[(a.kind, b.kind)](local, view, a, b, _describe_step(call, axis, a, b, current))
        sbp = list(current.sbp)
        sbp[axis] = b
        current = current.with_sbp(sbp)
    return local


def _resolve_partial(local: np.ndarray, src: GlobalSpec, call: str) -> tuple[np.ndarray, GlobalSpec]:
    """A loss's exact record materialised: broadcast along the axes where it was partial."""
    me = comm.rank()
    axes = src.partial_axes()
    group = comm.for_ranks(src.placement.group_over(me, axes))
    value = src.partial.materialize(group, call)
    sbp = [broadcast if s.is_partial_sum else s for s in src.sbp]
    return value, GlobalSpec(src.placement, tuple(sbp), src.shape)


def component_of(full: np.ndarray, spec: GlobalSpec, rank: int) -> np.ndarray:
    """``rank``'s component of a logical value under ``spec`` (no communication)."""
    coordinates = spec.placement.coordinates_of(rank)
    if coordinates is None:
        return _empty(full.dtype)
    piece = np.array(full[spec.component_slices_of(rank)], order="C")  # a copy; 0-d stays 0-d
    first_on_partial_axes = all(coordinates[axis] == 0 for axis in spec.partial_axes())
    return piece if first_on_partial_axes else np.zeros_like(piece)


def _union(a: Placement, b: Placement) -> tuple[int, ...]:
    return tuple(sorted(set(a.rank_tuple) | set(b.rank_tuple)))


def redistribute(local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, call: str) -> np.ndarray:
    """This rank's component under ``dst`` of the tensor whose component under ``src`` is
    ``local`` (an empty array outside ``dst``); ranks outside both placements take part in
    nothing."""
    me = comm.rank()
    inside_src = src.placement.index_of(me) is not None
    inside_dst = dst.placement.index_of(me) is not None
    if not inside_src and not inside_dst:
        return _empty(local.dtype)
    dtype = local.dtype
    if inside_src and src.partial is not None:
        local, src = _resolve_partial(local, src, call)
    if src.placement == dst.placement:
        return _same_mesh(local, src, dst.sbp, call)
    # Another placement: the whole value on the source ranks, then to the destination ranks.
    whole = (broadcast,) * src.placement.ndim
    full = _same_mesh(local, src, whole, f"{call} [gather on the source placement]") if inside_src else None
    if not set(dst.placement.rank_tuple) <= set(src.placement.rank_tuple):
        root = src.placement.rank_tuple[0]
        union = _union(src.placement, dst.placement)
        with comm.for_ranks(union).collective(f"{call} [to {dst.placement.short()}]") as c:
            full = c.broadcast_from(full, union.index(root), src.shape, dtype)
    return component_of(full, dst, me) if inside_dst else _empty(dtype)


@functools.cache
def _everyone(device_type: str, world_size: int) -> Placement:
    return Placement(device_type, range(world_size))


def logical_value(local: np.ndarray, spec: GlobalSpec, call: str) -> np.ndarray:
    """The logical value on every rank of the job, as OneFlow's ``numpy()`` does it (to every
    rank, broadcast): collective over the placement's ranks and the rest of the world."""
    target = GlobalSpec(_everyone(spec.placement.type, comm.world_size()), (broadcast,), spec.shape)
    if spec.layout() == target:
        return local.copy()
    return redistribute(local, spec, target, call)
