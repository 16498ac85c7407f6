"""Placements: the device type and the ranks a global tensor lives on.

>>> import klflow as flow
>>> flow.placement("cpu", [0, 1])
klflow.placement(type="cpu", ranks=[0, 1])
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_TYPES = ("cpu", "cuda")


class placement:
    """A frozen, hashable (type, ranks) pair; ranks are distinct, non-negative and kept in order."""

    __slots__ = ("_type", "_ranks")

    def __init__(self, type: str, ranks: Sequence[int] | Any) -> None:
        if type not in _TYPES:
            raise ValueError(f'placement type must be "cpu" or "cuda", got {type!r}')
        if isinstance(ranks, Mapping):
            raise TypeError(
                f"placement ranks must be a sequence of ranks, got the dict {ranks!r}: the "
                f"{{machine id: [device ids]}} form of older OneFlow releases is not supported "
                f"(klflow does not know how ranks map to machines); pass the ranks themselves, "
                f"e.g. placement({type!r}, ranks=[0, 1])"
            )
        try:
            rank_list = list(ranks)
        except TypeError:
            raise TypeError(f"placement ranks must be a sequence of ints, got {ranks!r}") from None
        if any(isinstance(r, (list, tuple)) or getattr(r, "ndim", 0) > 0 for r in rank_list):
            raise ValueError(f"klflow supports one-dimensional placements only; got nested ranks {ranks!r}")
        if not rank_list:
            raise ValueError("a placement needs at least one rank")
        for r in rank_list:
            if isinstance(r, (bool, np.bool_)) or not isinstance(r, (numbers.Integral, np.integer)) or r < 0:
                raise ValueError(f"placement ranks must be non-negative ints, got {r!r} in {ranks!r}")
        rank_list = [int(r) for r in rank_list]
        if len(set(rank_list)) != len(rank_list):
            raise ValueError(f"placement ranks must be distinct, got {ranks!r}")
        object.__setattr__(self, "_type", type)
        object.__setattr__(self, "_ranks", tuple(rank_list))

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
    def ranks(self) -> list[int]:
        return list(self._ranks)

    @property
    def rank_tuple(self) -> tuple[int, ...]:
        return self._ranks

    @property
    def hierarchy(self) -> tuple[int, ...]:
        return (len(self._ranks),)

    def index_of(self, rank: int) -> int | None:
        """Position of ``rank`` in this placement, or None when it holds no component."""
        try:
            return self._ranks.index(rank)
        except ValueError:
            return None

    def __len__(self) -> int:
        return len(self._ranks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, placement) and (self._type, self._ranks) == (other._type, other._ranks)

    def __hash__(self) -> int:
        return hash((self._type, self._ranks))

    def __repr__(self) -> str:
        return f'klflow.placement(type="{self._type}", ranks={list(self._ranks)})'

    __str__ = __repr__

    def short(self) -> str:
        """A compact form for messages: ``cpu ranks 0-3`` for a contiguous run, else the list."""
        ranks = self._ranks
        if len(ranks) > 2 and ranks == tuple(range(ranks[0], ranks[0] + len(ranks))):
            return f"{self._type} ranks {ranks[0]}-{ranks[-1]}"
        return f"{self._type} ranks {list(ranks)}"

    def __reduce__(self) -> tuple:
        return (placement, (self._type, list(self._ranks)))
