"""Seeded test data shared by the loss tests."""

from __future__ import annotations

import numpy as np


def make_pair(shape, dtype, log_target, seed):
    """Input log-probabilities and targets; probability targets include zeros and negatives."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, size=shape)
    if log_target:
        y = rng.normal(-1.0, 1.5, size=shape)
    else:
        y = rng.uniform(0.01, 2.0, size=shape)
        kind = rng.random(size=shape)
        y = np.where(kind < 0.15, 0.0, np.where(kind < 0.3, -y, y))
    return np.asarray(x, dtype=dtype), np.asarray(y, dtype=dtype)
