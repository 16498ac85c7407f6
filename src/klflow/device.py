"""Where a local tensor's data lives: ``cpu`` or ``cuda:N``.

>>> import klflow as flow
>>> flow.device("cuda:1"), str(flow.device("cpu"))
(device(type='cuda', index=1), 'cpu')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_SPEC = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class device:
    """A device type and index, parsed from ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""

    type: str
    index: int | None = None

    def __init__(self, spec: Any, index: int | None = None) -> None:
        if isinstance(spec, device):
            kind, idx = spec.type, spec.index
        elif isinstance(spec, str):
            match = _SPEC.match(spec.strip())
            if match is None:
                raise ValueError(f"expected a device like 'cpu', 'cuda' or 'cuda:0', got {spec!r}")
            kind, idx = match.group(1), None if match.group(2) is None else int(match.group(2))
        else:
            raise TypeError(f"a device is given as a string such as 'cuda:0'; got {spec!r}")
        if index is not None:
            if idx is not None and idx != index:
                raise ValueError(f"device {spec!r} given together with a different index {index}")
            idx = index
        if kind == "cpu":
            idx = None  # OneFlow and PyTorch keep no index for the host
        elif idx is None:
            idx = 0
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "index", idx)

    def __repr__(self) -> str:
        if self.type == "cpu":
            return "device(type='cpu')"
        return f"device(type='{self.type}', index={self.index})"

    def __str__(self) -> str:
        return self.type if self.type == "cpu" else f"{self.type}:{self.index}"


CPU = device("cpu")
