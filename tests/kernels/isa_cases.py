"""A fixed set of loss results, printed as one JSON object of per-case SHA-256 digests.

Run by tests/kernels/test_isa_levels.py in a fresh process per ``NUMBA_CPU_NAME``: every dtype x
reduction x log_target, the ``none`` outputs, the input and target gradients (the fused one of an
upstream 1 and the recomputed one of another upstream), on random data with special values.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

import klflow as flow
import klflow.nn.functional as F

N = 3000  # enough for the vector loops and their remainders; small enough to stay cheap
SPECIAL_X = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -1e-310, 3e-39, 6e-8, 1e300, -1e300, 70000.0]
SPECIAL_Y = [0.0, -0.0, -0.5, np.nan, np.inf, 1e-310, 3e-39, 6e-8, 1e-300, 2.0, 800.0, -800.0]


def data(dtype: np.dtype, log_target: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11 + int(log_target))
    x = rng.standard_normal(N) * 3.0
    y = rng.standard_normal(N) * 4.0 if log_target else rng.random(N)
    specials = len(SPECIAL_X)
    rows = np.arange(specials * specials)
    x = np.concatenate([x, np.array(SPECIAL_X)[rows // specials]])  # every pair of specials
    y = np.concatenate([y, np.array(SPECIAL_Y)[rows % specials]])
    with np.errstate(over="ignore"):
        return x.astype(dtype), y.astype(dtype)


def digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:24]


def cases() -> dict[str, str]:
    results = {}
    for dtype in (np.float16, np.float32, np.float64):
        for log_target in (False, True):
            x, y = data(np.dtype(dtype), log_target)
            upstream = np.random.default_rng(5).standard_normal(x.size).astype(dtype)
            for reduction in ("none", "sum", "mean", "batchmean"):
                seeds = [upstream] if reduction == "none" else [None, np.asarray(0.75, dtype)]
                for which, seed in enumerate(seeds):
                    xt = flow.tensor(x, requires_grad=True)
                    yt = flow.tensor(y, requires_grad=True)
                    out = F.kl_div(xt, yt, reduction=reduction, log_target=log_target)
                    out.backward(None if seed is None else flow.tensor(seed))
                    name = f"{np.dtype(dtype).name}/{reduction}/log_target={log_target}/upstream{which}"
                    results[f"{name}/out"] = digest(out.numpy())
                    results[f"{name}/input_grad"] = digest(xt.grad.numpy())
                    results[f"{name}/target_grad"] = digest(yt.grad.numpy())
    return results


if __name__ == "__main__":
    print(json.dumps(cases()))
