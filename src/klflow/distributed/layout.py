"""Layout math for global tensors: pure functions of shapes, SBPs and rank counts (no MPI).

>>> balanced_sizes(13, 3)
[5, 4, 4]
>>> component_shape((13, 2), split_dim=0, parts=3, index=2)
(4, 2)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def balanced_sizes(length: int, parts: int) -> list[int]:
    """OneFlow's balanced split: the first ``length % parts`` pieces hold one more element."""
    base, extra = divmod(length, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def balanced_offsets(length: int, parts: int) -> list[int]:
    """Start of each piece along the split axis (``parts + 1`` entries, the last is ``length``)."""
    offsets = [0]
    for size in balanced_sizes(length, parts):
        offsets.append(offsets[-1] + size)
    return offsets


def component_shape(
    logical_shape: Sequence[int], split_dim: int | None, parts: int, index: int
) -> tuple[int, ...]:
    """Shape of component ``index`` of ``parts`` (``split_dim`` None: the whole shape)."""
    shape = list(logical_shape)
    if split_dim is not None:
        shape[split_dim] = balanced_sizes(shape[split_dim], parts)[index]
    return tuple(shape)


def component_slices(
    logical_shape: Sequence[int], split_dim: int, parts: int, index: int
) -> tuple[slice, ...]:
    """Index of component ``index`` inside the logical value."""
    offsets = balanced_offsets(logical_shape[split_dim], parts)
    index_tuple = [slice(None)] * len(logical_shape)
    index_tuple[split_dim] = slice(offsets[index], offsets[index + 1])
    return tuple(index_tuple)


def logical_shape_from_components(
    component_shapes: Sequence[Sequence[int]], split_dim: int
) -> tuple[int, ...]:
    """The logical shape of split components (already checked to agree off the split axis)."""
    shape = list(component_shapes[0])
    shape[split_dim] = sum(s[split_dim] for s in component_shapes)
    return tuple(shape)


def split_layout_problem(component_shapes: Sequence[Sequence[int]], split_dim: int) -> str | None:
    """Why these components cannot form a balanced split along ``split_dim`` (None if they can)."""
    ndims = {len(s) for s in component_shapes}
    if len(ndims) != 1:
        return f"the components have different numbers of dimensions: {[list(s) for s in component_shapes]}"
    ndim = ndims.pop()
    if split_dim >= ndim:
        return (
            f"split(dim={split_dim}) needs at least {split_dim + 1} dimensions, but the components "
            f"have {ndim}"
        )
    others = {tuple(s[:split_dim]) + tuple(s[split_dim + 1 :]) for s in component_shapes}
    if len(others) != 1:
        return f"the components differ off the split axis {split_dim}: {[list(s) for s in component_shapes]}"
    sizes = [s[split_dim] for s in component_shapes]
    expected = balanced_sizes(sum(sizes), len(sizes))
    if sizes != expected:
        return (
            f"the components' sizes along dim {split_dim} are {sizes}, but a balanced split of "
            f"{sum(sizes)} over {len(sizes)} ranks is {expected} (the first n % k ranks hold one "
            f"more)"
        )
    return None


@dataclass(frozen=True)
class GlobalSpec:
    """What makes a tensor global: its placement, SBP signature and logical shape."""

    placement: Any
    sbp: tuple[Any, ...]
    shape: tuple[int, ...]

    @property
    def split_dim(self) -> int | None:
        return self.sbp[0].dim if self.sbp[0].is_split else None

    def component_shape(self, index: int | None) -> tuple[int, ...]:
        """Shape of the component held at placement ``index`` (empty ``(0,)`` outside it)."""
        if index is None:
            return (0,)
        return component_shape(self.shape, self.split_dim, len(self.placement), index)

    def component_numel(self, index: int | None) -> int:
        return math.prod(self.component_shape(index)) if index is not None else 0

    @functools.cached_property
    def description(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """The layout as agreements and error messages show it: shape, SBP and placement."""
        sbp = ", ".join(str(s) for s in self.sbp)
        return f"shape {list(self.shape)}, sbp ({sbp}), {self.placement.short()}"
