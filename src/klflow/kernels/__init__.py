"""Kernels: the loss's math on flat arrays (CPU ``@njit`` and CUDA ``@cuda.jit``), no validation.

:mod:`formula` holds the scalar formulas both targets compile; :mod:`fastmath` the vectorisable
``log``/``exp``, whose float64 source CUDA compiles too; :mod:`pyfloat` exact Python versions of
their primitives (for numba's CUDA simulator); :mod:`exact_sum` the exact accumulator behind
every reduction; :mod:`bounded_sum` the proven error bound that lets float32/float16 results
skip it where it cannot change them; :mod:`cpu` and :mod:`cuda` the kernels and their launchers
(the same bits on both). The CPU kernels are compiled on first use (:mod:`jit`), kept in an
on-disk cache keyed by the content of their code (:mod:`cache`), and run on klflow's own threads
(:mod:`pool`).
"""
