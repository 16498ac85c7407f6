"""Kernels: the loss's math on flat arrays (CPU ``@njit`` and CUDA ``@cuda.jit``), no validation.

:mod:`formula` holds the scalar formulas both targets compile; :mod:`fastmath` the vectorisable
``log``/``exp`` for the CPU; :mod:`exact_sum` the exact accumulator behind every reduction;
:mod:`cpu` and :mod:`cuda` the kernels and their launchers.
"""
