"""Placements: the device type and the ranks a global tensor lives on, as a mesh of any rank.

A flat list of ranks is a one-axis mesh; nested lists (OneFlow's hierarchical placements) make a
mesh with one axis per nesting level, e.g. nodes × GPUs:

>>> import klflow as flow
>>> flow.placement("cpu", [0, 1])
klflow.placement(type="cpu", ranks=[0, 1])
>>> mesh = flow.placement("cpu", ranks=[[0, 1], [2, 3]])
>>> mesh.hierarchy, mesh.coordinates_of(2), mesh.axis_group(3, axis=0)
((2, 2), (1, 0), (1, 3))
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_TYPES = ("cpu", "cuda")


def _is_rank(item: Any) -> bool:
    return isinstance(item, (numbers.Integral, np.integer)) and not isinstance(item, (bool, np.bool_))


def _parse_mesh(ranks: Any, original: Any) -> tuple[list[int], tuple[int, ...]]:
    """(the ranks in row-major order, the mesh shape) of a nested sequence of ranks."""
    if isinstance(ranks, np.ndarray) and ranks.ndim == 0:
        ranks = ranks.item()
    if _is_rank(ranks) or isinstance(ranks, (str, bytes)):
        raise TypeError(f"placement ranks must be a sequence of ints, got {original!r}")
    try:
        items = list(ranks)
    except TypeError:
        raise TypeError(f"placement ranks must be a sequence of ints, got {original!r}") from None
    if not items:
        raise ValueError(f"a placement needs at least one rank, got {original!r}")
    nested = [not _is_rank(item) and not isinstance(item, (str, bytes, float)) for item in items]
    if all(nested):
        rows = [_parse_mesh(item, original) for item in items]
        shapes = {shape for _, shape in rows}
        if len(shapes) > 1:
            raise ValueError(
                f"the rows of a hierarchical placement must have equal lengths (a rectangular mesh), "
                f"got rows of shapes {[list(shape) for _, shape in rows]} in {original!r}"
            )
        return [rank for flat, _ in rows for rank in flat], (len(items), *shapes.pop())
    for item in items:
        if not _is_rank(item) or item < 0:
            raise ValueError(f"placement ranks must be non-negative ints, got {item!r} in {original!r}")
    return [int(item) for item in items], (len(items),)


class placement:
    """A frozen, hashable device type and mesh of ranks (distinct, non-negative, kept in order).

    ``ranks`` is the nested list given; ``hierarchy`` the mesh shape; a rank's ``coordinates_of``
    are its indices along the mesh axes, and ``axis_group(rank, axis)`` the ranks that share all
    its other coordinates (the group that communicates along that axis), in axis order.
    """

    __slots__ = ("_type", "_ranks", "_hierarchy", "_positions")

    def __init__(self, type: str, ranks: Sequence[int] | Any) -> None:
        if type not in _TYPES:
            raise ValueError(f'placement type must be "cpu" or "cuda", got {type!r}')
        if isinstance(ranks, Mapping):
            raise TypeError(
                f"placement ranks must be a sequence of ranks, got the dict {ranks!r}: the "
                f"{{machine id: [device ids]}} form of older OneFlow releases is not supported "
                f"(klflow does not know how ranks map to machines); pass the ranks themselves, "
                f"e.g. placement({type!r}, ranks=[0, 1]) or ranks=[[0, 1], [2, 3]] for a 2 × 2 mesh"
            )
        flat, hierarchy = _parse_mesh(ranks, ranks)
        if len(set(flat)) != len(flat):
            repeated = sorted({r for r in flat if flat.count(r) > 1})
            raise ValueError(f"placement ranks must be distinct, got {repeated} more than once in {ranks!r}")
        object.__setattr__(self, "_type", type)
        object.__setattr__(self, "_ranks", tuple(flat))
        object.__setattr__(self, "_hierarchy", hierarchy)
        object.__setattr__(self, "_positions", {rank: i for i, rank in enumerate(flat)})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("placement is immutable")

    @classmethod
    def all(cls, type: str) -> placement:
        """All ranks of the job, e.g. ``placement.all("cpu")``."""
        from klflow.distributed import comm

        return cls(type, range(comm.world_size()))

    @property
    def type(self) -> str:
        return self._type

    @property
    def ranks(self) -> list:
        """The ranks as given: a flat list for a one-axis mesh, nested lists otherwise."""
        return np.array(self._ranks).reshape(self._hierarchy).tolist()

    @property
    def rank_tuple(self) -> tuple[int, ...]:
        """Every rank, in row-major mesh order."""
        return self._ranks

    @property
    def hierarchy(self) -> tuple[int, ...]:
        return self._hierarchy

    @property
    def ndim(self) -> int:
        """The number of mesh axes (the length of an SBP signature on this placement)."""
        return len(self._hierarchy)

    def index_of(self, rank: int) -> int | None:
        """Position of ``rank`` in row-major mesh order, or None when it holds no component."""
        return self._positions.get(rank)

    def coordinates_of(self, rank: int) -> tuple[int, ...] | None:
        """``rank``'s index along every mesh axis, or None outside the placement."""
        index = self._positions.get(rank)
        return None if index is None else tuple(int(c) for c in np.unravel_index(index, self._hierarchy))

    def rank_at(self, coordinates: Sequence[int]) -> int:
        return self._ranks[int(np.ravel_multi_index(tuple(coordinates), self._hierarchy))]

    def axis_group(self, rank: int, axis: int) -> tuple[int, ...]:
        """The ranks sharing every coordinate of ``rank`` but the one on ``axis``, in axis order."""
        coordinates = list(self.coordinates_of(rank))
        group = []
        for c in range(self._hierarchy[axis]):
            coordinates[axis] = c
            group.append(self.rank_at(coordinates))
        return tuple(group)

    def group_over(self, rank: int, axes: Sequence[int]) -> tuple[int, ...]:
        """The ranks sharing ``rank``'s coordinates on every axis not in ``axes``, row-major."""
        mine = self.coordinates_of(rank)
        kept = [axis for axis in range(self.ndim) if axis not in set(axes)]
        return tuple(r for r in self._ranks if all(self.coordinates_of(r)[a] == mine[a] for a in kept))

    def __len__(self) -> int:
        return len(self._ranks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, placement) and (self._type, self._hierarchy, self._ranks) == (
            other._type,
            other._hierarchy,
            other._ranks,
        )

    def __hash__(self) -> int:
        return hash((self._type, self._hierarchy, self._ranks))

    def __repr__(self) -> str:
        return f'klflow.placement(type="{self._type}", ranks={self.ranks})'

    __str__ = __repr__

    def short(self) -> str:
        """A compact form for messages: ``cpu ranks 0-3``, ``cpu ranks [1, 3]``, ``cpu 2×2 mesh of
        ranks 0-3``."""
        ranks = self._ranks
        if len(ranks) > 2 and ranks == tuple(range(ranks[0], ranks[0] + len(ranks))):
            listed = f"{ranks[0]}-{ranks[-1]}"
        else:
            listed = str(list(ranks))
        if len(self._hierarchy) == 1:
            return f"{self._type} ranks {listed}"
        mesh = "×".join(str(n) for n in self._hierarchy)
        return f"{self._type} {mesh} mesh of ranks {listed}"

    def __reduce__(self) -> tuple:
        return (placement, (self._type, self.ranks))
