"""``klflow.utils``: interoperability helpers (``klflow.utils.dlpack``, as OneFlow names it)."""

from klflow.utils import dlpack

__all__ = ["dlpack"]
