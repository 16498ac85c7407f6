"""Shared helpers for the multi-rank tests: seeded data and its split over the ranks."""

from __future__ import annotations

import numpy as np

import klflow as flow
from klflow.distributed.layout import GlobalSpec, balanced_offsets


def seeded(shape, dtype=np.float32, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    values = rng.random(shape) if positive else rng.standard_normal(shape)
    return values.astype(dtype)


def local_piece(full: np.ndarray, dim: int, rank: int, size: int) -> np.ndarray:
    offsets = balanced_offsets(full.shape[dim], size)
    index = [slice(None)] * full.ndim
    index[dim] = slice(offsets[rank], offsets[rank + 1])
    return full[tuple(index)].copy()


def as_global(full: np.ndarray, sbp, placement=None, requires_grad=False) -> flow.Tensor:
    """The same logical value in any SBP over ``placement`` (all ranks by default)."""
    rank = flow.env.get_rank()
    placement = placement or flow.placement.all("cpu")
    index = placement.index_of(rank)
    k = len(placement)
    if sbp.is_split:
        local = local_piece(full, sbp.dim, index, k) if index is not None else np.empty((0,), full.dtype)
    elif sbp.is_broadcast:
        local = full.copy()
    else:  # partial_sum: first rank holds the value, the others zeros
        local = full.copy() if index == 0 else np.zeros_like(full)
    t = flow.from_numpy(local).to_global(placement, sbp)
    t.requires_grad = requires_grad
    return t


def as_mesh_global(full: np.ndarray, placement, sbp, requires_grad=False) -> flow.Tensor:
    """The logical value ``full`` with signature ``sbp`` on a placement of any mesh shape
    (partial-sum axes: the value at coordinate 0, zeros elsewhere)."""
    me = flow.env.get_rank()
    spec = GlobalSpec(placement, tuple(sbp), full.shape)
    if placement.index_of(me) is None:
        local = np.empty((0,), full.dtype)
    else:
        local = np.array(full[spec.component_slices_of(me)], order="C")
        coordinates = placement.coordinates_of(me)
        if not all(coordinates[a] == 0 for a in spec.partial_axes()):
            local = np.zeros_like(local)
    t = flow.from_numpy(local).to_global(placement, tuple(sbp))
    t.requires_grad = requires_grad
    return t
