"""OneFlow's global tensors over MPI: the primitives the dispatcher (:mod:`klflow.ops`) uses.

Modules: :mod:`placement` and :mod:`sbp` (frozen values: meshes of ranks, one SBP per mesh
axis), :mod:`layout` (pure layout math), :mod:`comm` (the only module that talks to MPI: every
collective agreed first, on the communicator of the ranks involved), :mod:`boxing` (one function
per redistribution edge, and the axis-by-axis plan) and :mod:`partials` (a reduced loss's exact
partial sums and how the ranks combine them).
"""

from klflow.distributed.comm import CollectiveError, CollectiveMismatchError

__all__ = ["CollectiveError", "CollectiveMismatchError"]
