#!/usr/bin/env python3
"""Tensor arithmetic and reductions on the CPU, side by side with NumPy and PyTorch.

    .venv/bin/python scripts/bench_arithmetic.py [--log2 24] [--rounds 7] [--threads 1]

``x * y``, ``exp``, ``sum()`` and the row and column sums of a square float32 matrix, and one
forward+backward of ``((x * w - 0.5) ** 2).mean()`` (a broadcast weight). klflow's sums are
correctly rounded (exact); NumPy's and PyTorch's are float accumulations. Median milliseconds
over ``--rounds`` rounds; every round runs every case once, so that a slow spell of a shared
machine hits them alike. Compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2", type=int, default=24, help="elements: 2**LOG2 (even)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="klflow's (and torch's) threads")
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    import numpy as np

    import klflow as flow

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

    n = 1 << args.log2
    side = 1 << (args.log2 // 2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    m = a.reshape(side, side)
    w = b[:side].copy()
    x, y, xm = flow.from_numpy(a), flow.from_numpy(b), flow.from_numpy(m)

    def flow_step():
        leaf = flow.from_numpy(m).requires_grad_()
        ((leaf * flow.from_numpy(w) - 0.5) ** 2.0).mean().backward()

    cases = {
        "x * y": [lambda: x * y, lambda: a * b],
        "exp(x)": [lambda: x.exp(), lambda: np.exp(a)],
        "sum()": [lambda: x.sum(), lambda: a.sum()],
        f"sum(1) of {side}×{side}": [lambda: xm.sum(1), lambda: m.sum(1)],
        f"sum(0) of {side}×{side}": [lambda: xm.sum(0), lambda: m.sum(0)],
        "((x * w - 0.5) ** 2).mean() fwd+bwd": [flow_step, None],
    }
    if torch is not None:
        ta, tb, tm, tw = (torch.from_numpy(v) for v in (a, b, m, w))

        def torch_step():
            leaf = tm.clone().requires_grad_()
            ((leaf * tw - 0.5) ** 2.0).mean().backward()

        extra = [
            lambda: ta * tb,
            lambda: ta.exp(),
            lambda: ta.sum(),
            lambda: tm.sum(1),
            lambda: tm.sum(0),
            torch_step,
        ]
        for row, fn in zip(cases.values(), extra, strict=True):
            row.append(fn)
    times = {name: [[] for _ in row] for name, row in cases.items()}
    for row in cases.values():  # warm-up: compiles klflow's kernels
        for fn in row:
            if fn is not None:
                fn()
    for _ in range(args.rounds):
        for name, row in cases.items():
            for i, fn in enumerate(row):
                if fn is not None:
                    start = time.perf_counter()
                    fn()
                    times[name][i].append((time.perf_counter() - start) * 1e3)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, 2**{args.log2} float32")
    print("| case (ms) | klflow | NumPy | PyTorch |")
    print("|---|---:|---:|---:|")
    for name, samples in times.items():
        cells = [f"{statistics.median(s):.1f}" if s else "—" for s in samples]
        cells += ["—"] * (3 - len(cells))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
