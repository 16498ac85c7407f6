"""SBP signatures: how a global tensor's logical value maps onto its ranks' components.

``split(dim)``: components are consecutive pieces along ``dim`` (balanced sizes); ``broadcast``:
every component is the whole value; ``partial_sum``: the value is the sum of the components.

>>> from klflow.distributed.sbp import split, broadcast
>>> split(1), str(split(1)), broadcast
(klflow.sbp.split(dim=1), 'S(1)', klflow.sbp.broadcast)
"""

from __future__ import annotations

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


def as_signature(sbp: Any, mesh_axes: int = 1) -> tuple[SbpParallel, ...]:
    """A single SBP value or a sequence of them as OneFlow's tuple form: one entry per mesh axis
    of the placement (``mesh_axes``). A single value is accepted for a one-axis placement only.

    >>> as_signature(broadcast), as_signature([split(0), broadcast], mesh_axes=2)
    ((klflow.sbp.broadcast,), (klflow.sbp.split(dim=0), klflow.sbp.broadcast))
    """
    if isinstance(sbp, SbpParallel):
        if mesh_axes != 1:
            raise ValueError(
                f"a placement with {mesh_axes} mesh axes needs an sbp tuple of {mesh_axes} entries "
                f"(one per axis, e.g. (flow.sbp.split(0), flow.sbp.broadcast)); got the single "
                f"value {sbp!r}"
            )
        return (sbp,)
    try:
        items = tuple(sbp)
    except TypeError:
        raise TypeError(
            f"sbp must be a klflow.sbp value or a tuple of them (one per mesh axis); got {sbp!r}"
        ) from None
    bad = [item for item in items if not isinstance(item, SbpParallel)]
    if bad:
        raise TypeError(
            f"sbp must be a klflow.sbp value or a tuple of them (one per mesh axis); got {bad[0]!r} "
            f"in {sbp!r}"
        )
    if len(items) != mesh_axes:
        raise ValueError(
            f"the sbp signature has {len(items)} entries but the placement has {mesh_axes} mesh "
            f"ax{'is' if mesh_axes == 1 else 'es'}: give one sbp per axis; got {sbp!r}"
        )
    return items
