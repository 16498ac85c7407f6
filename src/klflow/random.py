"""The default random generator: a seed and the number of random calls made since it was set.

Random values are counter-based (:mod:`klflow.kernels.philox`): a call's values are a function
of the seed, the call's number and each element's logical index, so they need no state beyond
these two integers, and a global random tensor has the same logical value on any number of
ranks. Every rank of a job starts from the same default seed; a call that creates a global
random tensor checks that every rank is at the same seed and call.

>>> import klflow as flow
>>> _ = flow.manual_seed(7)
>>> a = flow.rand(2); _ = flow.manual_seed(7); b = flow.rand(2)
>>> a.tolist() == b.tolist(), flow.initial_seed()
(True, 7)
"""

from __future__ import annotations

import operator
import os
import threading
from typing import Any

DEFAULT_SEED = 67280421310721  # PyTorch's default: a program that never seeds is still reproducible
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)


class Generator:
    """A Philox4x32-10 generator: ``seed`` (64 bits) and ``offset`` (calls made since seeding).
    Its values do not depend on the device, so ``device`` (OneFlow's ``"auto"``, ``"cpu"``,
    ``"cuda"``) is recorded only; a new generator starts at the default seed.

    >>> g = Generator(); _ = g.manual_seed(3); g.initial_seed(), g.get_state()
    (3, (3, 0))
    """

    def __init__(self, device: Any = "auto") -> None:
        if device != "auto":
            from klflow.device import device as Device

            device = Device(device)
        self.device = device
        self._lock = threading.Lock()
        self._seed = DEFAULT_SEED
        self._offset = 0

    def manual_seed(self, seed: int) -> Generator:
        """Seed the generator (any integer in [-2**63, 2**64); negatives are taken mod 2**64)."""
        value = _checked_seed(seed)
        with self._lock:
            self._seed, self._offset = value, 0
        return self

    def seed(self) -> int:
        """Seed with a non-deterministic value (from the operating system) and return it. On
        several ranks each gets its own: seed a job that makes global random tensors with
        ``manual_seed``."""
        value = int.from_bytes(os.urandom(8), "little")
        self.manual_seed(value)
        return value

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> tuple[int, int]:
        """(seed, offset): all there is to restore with :meth:`set_state`."""
        with self._lock:
            return self._seed, self._offset

    def set_state(self, state: tuple[int, int]) -> None:
        seed, offset = state
        offset = operator.index(offset)
        if offset < 0 or offset >= 1 << 64:
            raise ValueError(f"a generator offset is in [0, 2**64), got {offset}")
        value = _checked_seed(seed)
        with self._lock:
            self._seed, self._offset = value, offset

    def peek(self) -> tuple[int, int]:
        """(seed, offset) the next random call will use, without taking it."""
        return self.get_state()

    def take(self, expected: tuple[int, int] | None = None) -> tuple[int, int]:
        """(seed, offset) for one random call, advancing the offset. With ``expected`` (from
        :meth:`peek`), the state must not have moved since."""
        with self._lock:
            state = (self._seed, self._offset)
            if expected is not None and state != expected:
                raise RuntimeError(
                    f"the random generator moved from {expected} to {state} while a global random "
                    f"tensor was being created (another thread drew from it)"
                )
            self._offset += 1
            return state

    def __repr__(self) -> str:
        return f"<klflow.Generator seed={self._seed} offset={self._offset}>"


def _checked_seed(seed: Any) -> int:
    if isinstance(seed, bool):
        raise TypeError(f"a seed is an integer, got bool {seed!r}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"a seed is an integer, got {type(seed).__name__} {seed!r}") from None
    low, high = _SEED_RANGE
    if not low <= value <= high:
        raise RuntimeError(f"Overflow when unpacking long: a seed is in [-2**63, 2**64), got {value}")
    return value % (1 << 64)


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator; the random calls that follow repeat exactly.

    >>> import klflow as flow
    >>> _ = flow.manual_seed(0); flow.randn(3).tolist() == (flow.manual_seed(0) and flow.randn(3)).tolist()
    True
    """
    return default_generator.manual_seed(seed)


def seed() -> int:
    """Seed the default generator non-deterministically; returns the seed."""
    return default_generator.seed()


def initial_seed() -> int:
    """The default generator's seed."""
    return default_generator.initial_seed()
