"""Counting kernel launches, to see which path a computation took."""

from __future__ import annotations


class LaunchCounter:
    """Stands in for a numba CUDA kernel and counts its launches (``kernel[blocks, threads](...)``).

    >>> class Kernel:
    ...     def __getitem__(self, config):
    ...         return lambda *args: None
    >>> counter = LaunchCounter(Kernel())
    >>> counter[1, 8]()
    >>> counter.launches
    1
    """

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, config):
        self.launches += 1
        return self.kernel[config]
