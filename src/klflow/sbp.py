"""``klflow.sbp``: ``split(dim)``, ``broadcast`` and ``partial_sum``, as in ``oneflow.sbp``."""

from klflow.distributed.sbp import SbpParallel, broadcast, partial_sum, split

sbp = SbpParallel  # OneFlow exposes the type as oneflow.sbp.sbp

__all__ = ["SbpParallel", "broadcast", "partial_sum", "sbp", "split"]
