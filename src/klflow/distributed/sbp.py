"""SBP signatures: how a global tensor's logical value maps onto its ranks' components.

``split(dim)``: components are consecutive pieces along ``dim`` (balanced sizes); ``broadcast``:
every component is the whole value; ``partial_sum``: the value is the sum of the components.

>>> from klflow.distributed.sbp import split, broadcast
>>> split(1), str(split(1)), broadcast
(klflow.sbp.split(dim=1), 'S(1)', klflow.sbp.broadcast)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SbpParallel:
    """One SBP value. Use :func:`split`, :data:`broadcast` and :data:`partial_sum`."""

    kind: str  # "split" | "broadcast" | "partial_sum"
    dim: int | None = None

    def __repr__(self) -> str:
        if self.kind == "split":
            return f"klflow.sbp.split(dim={self.dim})"
        return f"klflow.sbp.{self.kind}"

    def __str__(self) -> str:
        return {"split": f"S({self.dim})", "broadcast": "B", "partial_sum": "P"}[self.kind]

    @property
    def is_split(self) -> bool:
        return self.kind == "split"

    @property
    def is_broadcast(self) -> bool:
        return self.kind == "broadcast"

    @property
    def is_partial_sum(self) -> bool:
        return self.kind == "partial_sum"


def split(dim: int) -> SbpParallel:
    """Components are consecutive balanced pieces of the value along ``dim``."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"sbp.split(dim) takes an integer dimension, got {dim!r}")
    if dim < 0:
        raise ValueError(
            f"sbp.split(dim) takes a non-negative dimension, got {dim}; negative dimensions are "
            "resolved against a tensor's rank, which an SBP value does not know"
        )
    return SbpParallel("split", dim)


broadcast = SbpParallel("broadcast")
partial_sum = SbpParallel("partial_sum")


def as_signature(sbp: Any) -> tuple[SbpParallel, ...]:
    """A single SBP value or a sequence of them as OneFlow's tuple form (one entry per mesh axis).

    klflow places tensors on a one-dimensional list of ranks, so the signature has one entry.
    """
    items: Sequence[Any] = (sbp,) if isinstance(sbp, SbpParallel) else tuple(sbp)
    if len(items) != 1 or not isinstance(items[0], SbpParallel):
        raise ValueError(
            f"sbp must be one klflow.sbp value (or a 1-tuple of one) for a 1-D placement; got {sbp!r}"
        )
    return (items[0],)
