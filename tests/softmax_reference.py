"""Independent float64 NumPy references for softmax and log_softmax and their gradients.

Nothing here imports klflow. Rows are max-shifted; the row sums are ``math.fsum`` (the exact sum
of the float64 terms, rounded once), as the definitions in ``klflow.kernels.softmax_formula``
state; the exponentials are NumPy's, so results agree with klflow's to rounding, not bits.
"""

from __future__ import annotations

import math

import numpy as np


def _rows(x: np.ndarray, dim: int) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        return x.reshape(1, 1), x.shape
    moved = np.moveaxis(x, dim, -1)
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1]), moved.shape


def _back(rows: np.ndarray, moved_shape: tuple[int, ...], dim: int, ndim: int) -> np.ndarray:
    if ndim == 0:
        return rows.reshape(())
    return np.moveaxis(rows.reshape(moved_shape), -1, dim)


def _statistics(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x - m, exp(x - m), totals) per row; rows with a non-finite maximum are NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        m = rows.max(axis=1, keepdims=True) if rows.shape[1] else np.full((rows.shape[0], 1), -np.inf)
        shifted = rows - m
        terms = np.exp(shifted)
    totals = np.array([math.fsum(row) if np.all(np.isfinite(row)) else math.nan for row in terms])
    totals = totals.reshape(-1)
    bad = ~np.isfinite(m[:, 0])
    totals[bad] = math.nan
    return shifted, terms, totals[:, None]


def log_softmax(x, dim: int) -> np.ndarray:
    rows, moved = _rows(x, dim)
    shifted, _, totals = _statistics(rows)
    with np.errstate(invalid="ignore"):
        return _back(shifted - np.log(totals), moved, dim, np.ndim(x))


def softmax(x, dim: int) -> np.ndarray:
    rows, moved = _rows(x, dim)
    _, terms, totals = _statistics(rows)
    with np.errstate(invalid="ignore"):
        return _back(terms / totals, moved, dim, np.ndim(x))


def log_softmax_grad(x, grad, dim: int) -> np.ndarray:
    """d/dx of sum(grad * log_softmax(x)): ``g - p * sum(g)``."""
    rows, moved = _rows(x, dim)
    g, _ = _rows(grad, dim)
    _, terms, totals = _statistics(rows)
    p = terms / totals
    sums = np.array([math.fsum(row) for row in g]).reshape(-1, 1)
    return _back(g - p * sums, moved, dim, np.ndim(x))


def softmax_grad(x, grad, dim: int) -> np.ndarray:
    """d/dx of sum(grad * softmax(x)): ``p * (g - sum(g * p))``."""
    rows, moved = _rows(x, dim)
    g, _ = _rows(grad, dim)
    _, terms, totals = _statistics(rows)
    p = terms / totals
    sums = np.array([math.fsum(row) for row in g * p]).reshape(-1, 1)
    return _back(p * (g - sums), moved, dim, np.ndim(x))
