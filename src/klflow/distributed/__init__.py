"""OneFlow's global tensors over MPI.

Modules: :mod:`placement` and :mod:`sbp` (frozen values), :mod:`layout` (pure layout math),
:mod:`comm` (the only module that talks to MPI), :mod:`boxing` (one function per redistribution),
:mod:`api` (``to_global``/``to_local`` and their gradients) and :mod:`loss` (the global loss).
"""

from klflow.distributed.comm import CollectiveError, CollectiveMismatchError

__all__ = ["CollectiveError", "CollectiveMismatchError"]
