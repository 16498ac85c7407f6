"""``Parameter``: a tensor that a :class:`~klflow.nn.Module` registers as learnable state.

Assigning a ``Parameter`` as an attribute of a module registers it, so that it shows up in
``parameters()`` and ``state_dict()`` and follows the module's ``to()``/``half()``/... casts.

>>> import klflow as flow
>>> weight = flow.nn.Parameter(flow.tensor([1.0, 2.0]))
>>> weight.requires_grad, isinstance(weight, flow.Tensor)
(True, True)
>>> print(weight)
Parameter containing:
tensor([1., 2.], dtype=klflow.float32, requires_grad=True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klflow.tensor import Tensor, tensor


class Parameter(Tensor):
    """A leaf tensor that modules treat as a learnable parameter.

    Args:
        data: a :class:`~klflow.Tensor`, whose data the parameter shares (no copy; the
            parameter is a new leaf cut from any graph ``data`` belongs to, and keeps ``data``'s
            dtype, device and, for a global tensor, placement and SBP), or anything
            :func:`klflow.tensor` accepts, which is copied. ``None`` gives an empty float32
            parameter, as ``torch.nn.Parameter()`` does.
        requires_grad: whether the parameter records gradients (default ``True``).

    >>> import numpy as np, klflow as flow
    >>> values = flow.from_numpy(np.zeros(2, dtype=np.float64))
    >>> bias = flow.nn.Parameter(values, requires_grad=False)
    >>> values.numpy()[0] = 3.0  # the parameter shares the tensor's memory
    >>> bias.tolist(), bias.dtype, bias.requires_grad
    ([3.0, 0.0], klflow.float64, False)
    """

    def __init__(self, data: Tensor | Any = None, requires_grad: bool = True) -> None:
        if data is None:
            source = Tensor(np.empty((0,), dtype=np.float32))
        elif isinstance(data, Tensor):
            source = data
        else:
            source = tensor(data)
        super().__init__(
            source._data,
            device=source.device,
            requires_grad=requires_grad,
            global_info=source._global,
        )

    def _assign_data(self, source: Tensor) -> None:
        """Make this parameter hold ``source``'s data, dtype, device and global layout.

        This is what ``param.data = converted`` does in OneFlow and PyTorch: the parameter
        object (and so every reference to it, e.g. in an optimizer) survives a module-wide
        cast or move, and its ``requires_grad`` and ``grad`` are left alone.
        """
        self._data = source._data
        self._device = source.device
        self._dtype = source.dtype
        self._global = source._global

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    # Tensor binds ``__str__`` to its own ``__repr__``; a parameter prints the header either way.
    __str__ = __repr__
