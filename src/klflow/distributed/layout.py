"""Layout math for global tensors: pure functions of shapes, SBPs and meshes (no MPI).

OneFlow's eager rule for a mesh: for mesh axis i in order, a ``split(d)`` entry cuts the *current*
extent of dim d into ``hierarchy[i]`` balanced parts (the first ``n % k`` one larger), indexed by
the rank's coordinate on axis i; ``(S(0), S(0))`` therefore splits dim 0 twice (nested).
Broadcast and partial_sum entries leave the extent alone.

>>> balanced_sizes(13, 3)
[5, 4, 4]
>>> from klflow.distributed.sbp import split, broadcast
>>> component_ranges((8, 3), (split(0), split(0)), (2, 2), (1, 0))
[(4, 6), (0, 3)]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def component_ranges(
    shape: Sequence[int],
    sbp: Sequence[Any],
    hierarchy: Sequence[int],
    coordinates: Sequence[int],
    skip_axis: int | None = None,
) -> list[tuple[int, int]]:
    """The [start, stop) range along every dim of the component at ``coordinates``; with
    ``skip_axis``, as if that mesh axis were broadcast (the piece its group shares)."""
    ranges = [(0, int(n)) for n in shape]
    for axis, entry in enumerate(sbp):
        if axis == skip_axis or not entry.is_split:
            continue
        start, stop = ranges[entry.dim]
        offsets = balanced_offsets(stop - start, hierarchy[axis])
        c = coordinates[axis]
        ranges[entry.dim] = (start + offsets[c], start + offsets[c + 1])
    return ranges


def _problem_text(ranks: Sequence[int], shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"rank {r}: {list(s)}" for r, s in zip(ranks, shapes, strict=True))


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


def logical_shape_of(
    component_shapes: dict[int, Sequence[int]], placement: Any, sbp: Sequence[Any]
) -> tuple[tuple[int, ...] | None, str | None]:
    """(the logical shape, None) of the components each rank of ``placement`` holds, or
    (None, why they cannot form one) — checked one mesh axis at a time, innermost first."""
    hierarchy = placement.hierarchy
    # Pieces keyed by the coordinates on the axes not yet folded, with the ranks they came from.
    pieces: dict[tuple[int, ...], tuple[tuple[int, ...], list[int]]] = {
        placement.coordinates_of(r): (tuple(shape), [r]) for r, shape in component_shapes.items()
    }
    for axis in reversed(range(len(hierarchy))):
        folded: dict[tuple[int, ...], tuple[tuple[int, ...], list[int]]] = {}
        for prefix in sorted({key[:axis] for key in pieces}):
            row = [pieces[(*prefix, c)] for c in range(hierarchy[axis])]
            shapes = [shape for shape, _ in row]
            ranks = [ranks[0] for _, ranks in row]
            entry = sbp[axis]
            where = f"mesh axis {axis} ({entry})" if len(hierarchy) > 1 else str(entry)
            if entry.is_split:
                problem = split_layout_problem(shapes, entry.dim)
                if problem is not None:
                    return None, (
                        f"cannot assemble split(dim={entry.dim}) along {where} from components of "
                        f"shapes {_problem_text(ranks, shapes)}: {problem}"
                    )
                merged = list(shapes[0])
                merged[entry.dim] = sum(s[entry.dim] for s in shapes)
                shape = tuple(merged)
            else:
                if len(set(shapes)) > 1:
                    return None, (
                        f"{entry!r} along {where} needs the same shape on every rank, got "
                        f"{_problem_text(ranks, shapes)}"
                    )
                shape = shapes[0]
            folded[prefix] = (shape, [r for _, rs in row for r in rs])
        pieces = folded
    return pieces[()][0], None


@dataclass(frozen=True)
class GlobalSpec:
    """What makes a tensor global: its placement, SBP signature (one entry per mesh axis) and
    logical shape. ``partial`` is the exact partial-sum record of a reduced loss (see
    :mod:`klflow.distributed.partials`); it travels with the tensor but is not part of the layout
    (specs compare and hash without it)."""

    placement: Any
    sbp: tuple[Any, ...]
    shape: tuple[int, ...]
    partial: Any = field(default=None, compare=False, hash=False, repr=False)

    @functools.cached_property
    def description(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """The layout as agreements and error messages show it: shape, SBP and placement."""
        sbp = ", ".join(str(s) for s in self.sbp)
        return f"shape {list(self.shape)}, sbp ({sbp}), {self.placement.short()}"

    def layout(self) -> GlobalSpec:
        """The same layout without a partial record."""
        return GlobalSpec(self.placement, self.sbp, self.shape) if self.partial is not None else self

    def with_sbp(self, sbp: Sequence[Any]) -> GlobalSpec:
        return GlobalSpec(self.placement, tuple(sbp), self.shape)

    def ranges_of(self, rank: int, skip_axis: int | None = None) -> list[tuple[int, int]] | None:
        coordinates = self.placement.coordinates_of(rank)
        if coordinates is None:
            return None
        return component_ranges(self.shape, self.sbp, self.placement.hierarchy, coordinates, skip_axis)

    def component_shape_of(self, rank: int) -> tuple[int, ...]:
        """Shape of the component ``rank`` holds (``(0,)`` outside the placement)."""
        ranges = self.ranges_of(rank)
        return (0,) if ranges is None else tuple(stop - start for start, stop in ranges)

    def component_slices_of(self, rank: int) -> tuple[slice, ...]:
        """Where ``rank``'s component sits in the logical value."""
        return tuple(slice(start, stop) for start, stop in self.ranges_of(rank))

    def component_numel_of(self, rank: int) -> int:
        return math.prod(self.component_shape_of(rank)) if self.placement.index_of(rank) is not None else 0

    def split_axes(self) -> list[int]:
        return [axis for axis, s in enumerate(self.sbp) if s.is_split]

    def partial_axes(self) -> list[int]:
        return [axis for axis, s in enumerate(self.sbp) if s.is_partial_sum]
