"""Boxing: redistributing a global tensor to another SBP, one function per edge of the table.

| from → to               | collective                                   |
|-------------------------|----------------------------------------------|
| split → broadcast       | all-gather (v)                               |
| partial_sum → broadcast | all-reduce (an exact-state all-reduce for a loss) |
| broadcast → split       | none: take the local slice                   |
| partial_sum → split     | reduce-scatter (v)                           |
| split(i) → split(j)     | all-to-all (v)                               |
| broadcast → partial_sum | none: the first rank keeps, the others hold zeros |
| split → partial_sum     | all-gather (v), then as broadcast → partial_sum |

A change of placement goes through the logical value (gathered on every rank) and takes the new
component from it. Every function works on host arrays: CUDA data is staged through host memory
by the caller. ``index`` is this rank's position in the placement, ``None`` outside it; ``call``
describes the operation for the agreement that precedes each collective (see :mod:`comm`), and
the buffers are prepared inside the collective's region, so that a failure there (even a
``MemoryError``) reaches every rank.

>>> import numpy as np
>>> from klflow.distributed import layout, sbp
>>> from klflow import placement
>>> spec = layout.GlobalSpec(placement("cpu", [0, 1]), (sbp.broadcast,), (5,))
>>> split = layout.GlobalSpec(spec.placement, (sbp.split(0),), (5,))
>>> broadcast_to_split(np.arange(5.0), spec, split, index=1, call="an example")
array([3., 4.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from klflow.distributed import comm
from klflow.distributed.layout import GlobalSpec, balanced_offsets, component_slices


def _empty(dtype: np.dtype) -> np.ndarray:
    return np.empty((0,), dtype=dtype)


def _world_order(spec: GlobalSpec) -> list[int | None]:
    """Placement index of every world rank (None for ranks outside the placement)."""
    return [spec.placement.index_of(r) for r in range(comm.world_size())]


def _front(a: np.ndarray, dim: int) -> np.ndarray:
    """Move ``dim`` to the front as a C-contiguous array, so split pieces are contiguous runs."""
    return np.ascontiguousarray(np.moveaxis(a, dim, 0))


def _moved_shape(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    return (shape[dim], *shape[:dim], *shape[dim + 1 :])


def gather_logical(
    local: np.ndarray, spec: GlobalSpec, index: int | None, dtype: np.dtype, call: str
) -> np.ndarray:
    """The logical value of a split tensor on every world rank (one all-gather)."""
    dim = spec.split_dim
    order = _world_order(spec)
    counts = [spec.component_numel(i) for i in order]
    with comm.collective(call) as c:
        send = _front(local, dim) if index is not None else _empty(dtype)
        flat = c.allgatherv(send, counts)
    starts = np.cumsum([0, *counts])
    pieces: list[np.ndarray | None] = [None] * len(spec.placement)
    for world_rank, i in enumerate(order):
        if i is not None:
            block = flat[starts[world_rank] : starts[world_rank + 1]]
            pieces[i] = block.reshape(_moved_shape(spec.component_shape(i), dim))
    moved = np.concatenate(pieces, axis=0) if pieces else _empty(dtype)
    return np.moveaxis(moved, 0, dim).copy()


def split_to_broadcast(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    full = gather_logical(local, src, index, local.dtype, call)
    return full if index is not None else _empty(local.dtype)


def _sum_of_components(local: np.ndarray, spec: GlobalSpec, index: int | None, call: str) -> np.ndarray:
    """The value of a partial-sum tensor on every world rank (one all-reduce)."""
    with comm.collective(call) as c:
        contribution = local if index is not None else np.zeros(spec.shape, dtype=local.dtype)
        return c.allreduce_sum(contribution)


def partial_to_broadcast(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    total = _sum_of_components(local, src, index, call)
    return total if index is not None else _empty(local.dtype)


def broadcast_to_split(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    if index is None:
        return _empty(local.dtype)
    piece = local[component_slices(dst.shape, dst.split_dim, len(dst.placement), index)]
    return np.ascontiguousarray(piece)


def partial_to_split(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    dim = dst.split_dim
    order = _world_order(dst)
    counts = [dst.component_numel(i) for i in order]
    offsets = balanced_offsets(dst.shape[dim], len(dst.placement))
    with comm.collective(call) as c:
        contribution = local if index is not None else np.zeros(src.shape, dtype=local.dtype)
        moved = _front(contribution, dim)
        # The send buffer holds each world rank's block in world-rank order.
        blocks = [moved[offsets[i] : offsets[i + 1]] for i in order if i is not None]
        send = np.concatenate([b.reshape(-1) for b in blocks]) if blocks else _empty(local.dtype)
        mine = c.reduce_scatterv(send, counts)
    if index is None:
        return _empty(local.dtype)
    return np.moveaxis(mine.reshape(_moved_shape(dst.component_shape(index), dim)), 0, dim).copy()


def split_to_split(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    i_dim, j_dim = src.split_dim, dst.split_dim
    order = _world_order(src)
    parts = len(src.placement)
    j_offsets = balanced_offsets(src.shape[j_dim], parts)
    recv_shapes = []
    for p in order:
        if index is None or p is None:
            recv_shapes.append(None)
            continue
        shape = list(src.component_shape(p))
        shape[j_dim] = j_offsets[index + 1] - j_offsets[index]
        recv_shapes.append(tuple(shape))
    recv_counts = [int(np.prod(s)) if s is not None else 0 for s in recv_shapes]
    with comm.collective(call) as c:
        send_blocks, send_counts = [], []
        for q in order:
            if index is None or q is None:
                send_counts.append(0)
                continue
            block = local[(slice(None),) * j_dim + (slice(j_offsets[q], j_offsets[q + 1]),)]
            send_blocks.append(np.ascontiguousarray(block).reshape(-1))
            send_counts.append(block.size)
        send = np.concatenate(send_blocks) if send_blocks else _empty(local.dtype)
        flat = c.alltoallv(send, send_counts, recv_counts)
    if index is None:
        return _empty(local.dtype)
    starts = np.cumsum([0, *recv_counts])
    pieces: list[np.ndarray | None] = [None] * parts
    for world_rank, p in enumerate(order):
        if p is not None:
            pieces[p] = flat[starts[world_rank] : starts[world_rank + 1]].reshape(recv_shapes[world_rank])
    return np.concatenate(pieces, axis=i_dim)


def broadcast_to_partial(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    if index is None:
        return _empty(local.dtype)
    return local.copy() if index == 0 else np.zeros_like(local)


def split_to_partial(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, index: int | None, call: str
) -> np.ndarray:
    full = split_to_broadcast(local, src, dst, index, call)
    return broadcast_to_partial(full, src, dst, index, call)


Edge = Callable[[np.ndarray, GlobalSpec, GlobalSpec, "int | None", str], np.ndarray]

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


def communicates(src: GlobalSpec, dst: GlobalSpec) -> bool:
    """Whether :func:`redistribute` from ``src`` to ``dst`` moves data between ranks."""
    if src == dst:
        return False
    if src.placement != dst.placement:
        whole_on_every_rank = src.sbp[0].is_broadcast and len(src.placement) == comm.world_size()
        return not whole_on_every_rank
    a, b = src.sbp[0], dst.sbp[0]
    return a != b and (a.kind, b.kind) not in _LOCAL_EDGES


def logical_value(local: np.ndarray, spec: GlobalSpec, call: str, exact: Any = None) -> np.ndarray:
    """The logical value on every world rank (collective).

    ``exact`` is the exact-sum record of a loss's partial sums: its states are all-reduced as
    integers, so the value does not depend on how the data was spread over the ranks.
    """
    index = spec.placement.index_of(comm.rank())
    kind = spec.sbp[0].kind
    if kind == "split":
        return gather_logical(local, spec, index, local.dtype, call)
    if kind == "partial_sum":
        if exact is not None:
            return exact.materialize(index, call)
        return _sum_of_components(local, spec, index, call)
    if len(spec.placement) == comm.world_size():
        return local.copy()
    root = spec.placement.rank_tuple[0]
    with comm.collective(call) as c:
        return c.broadcast_from(local if index is not None else None, root, spec.shape, local.dtype)


def component_of(full: np.ndarray, spec: GlobalSpec, index: int | None) -> np.ndarray:
    """This rank's component of a logical value under ``spec`` (no communication)."""
    if index is None:
        return _empty(full.dtype)
    kind = spec.sbp[0].kind
    if kind == "split":
        return np.ascontiguousarray(
            full[component_slices(spec.shape, spec.split_dim, len(spec.placement), index)]
        )
    if kind == "partial_sum" and index != 0:
        return np.zeros_like(full)
    return full.copy()


def redistribute(
    local: np.ndarray, src: GlobalSpec, dst: GlobalSpec, call: str, exact: Any = None
) -> np.ndarray:
    """This rank's component under ``dst`` of the tensor whose component under ``src`` is ``local``."""
    if src.placement != dst.placement:
        full = logical_value(local, src, call, exact)
        return component_of(full, dst, dst.placement.index_of(comm.rank()))
    index = src.placement.index_of(comm.rank())
    a, b = src.sbp[0], dst.sbp[0]
    if a == b:
        return local
    if a.is_partial_sum and b.is_broadcast and exact is not None:
        full = exact.materialize(index, call)
        return full if index is not None else _empty(local.dtype)
    return EDGES[(a.kind, b.kind)](local, src, dst, index, call)
