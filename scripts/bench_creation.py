#!/usr/bin/env python3
"""Random tensors and bfloat16 losses on the CPU, side by side with their peers.

    .venv/bin/python scripts/bench_creation.py [--log2 22] [--rounds 7] [--threads 1]

* ``flow.rand``/``flow.randn`` (counter-based Philox4x32-10) against NumPy's default
  ``Generator`` (PCG64) and, where installed, ``torch.rand``/``torch.randn``, float32 and float64;
* ``kl_div`` of bfloat16 inputs against the same data in float16 and float32: ``sum``, ``none`` and
  a ``sum`` forward+backward.

Median milliseconds over ``--rounds`` rounds; every round runs every case once, so that a slow
spell of a shared machine hits them alike. Compare ratios within one run.
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
    parser.add_argument("--log2", type=int, default=22, help="elements: 2**LOG2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="klflow's (and torch's) threads")
    args = parser.parse_args()

    import ml_dtypes
    import numpy as np

    import klflow as flow
    import klflow.nn.functional as F
    from klflow.kernels import pool

    pool.set_thread_count(args.threads)
    n = 1 << args.log2
    rng = np.random.default_rng(0)
    cases: dict[str, object] = {}
    for name, dtype, np_dtype in (
        ("float32", flow.float32, np.float32),
        ("float64", flow.float64, np.float64),
    ):
        cases[f"flow.rand {name}"] = lambda d=dtype: flow.rand(n, dtype=d)
        cases[f"flow.randn {name}"] = lambda d=dtype: flow.randn(n, dtype=d)
        cases[f"numpy random {name}"] = lambda d=np_dtype: rng.random(n, dtype=d)
        cases[f"numpy standard_normal {name}"] = lambda d=np_dtype: rng.standard_normal(n, dtype=d)
    try:
        import torch

        torch.set_num_threads(args.threads)
        for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
            cases[f"torch.rand {name}"] = lambda d=dtype: torch.rand(n, dtype=d)
            cases[f"torch.randn {name}"] = lambda d=dtype: torch.randn(n, dtype=d)
        torch_note = f"PyTorch {torch.__version__}"
    except ImportError:
        torch_note = "PyTorch not installed"
    x64, y64 = rng.standard_normal(n), rng.random(n)
    for name, np_dtype in (
        ("bfloat16", ml_dtypes.bfloat16),
        ("float16", np.float16),
        ("float32", np.float32),
    ):
        x, y = x64.astype(np_dtype), y64.astype(np_dtype)
        xt = flow.from_numpy(x).requires_grad_()

        def forward_backward(xt=xt, y=y) -> None:
            F.kl_div(xt, y, reduction="sum").backward()
            xt.grad = None

        cases[f"kl_div sum {name}"] = lambda x=x, y=y: F.kl_div(x, y, reduction="sum").item()
        cases[f"kl_div none {name}"] = lambda x=x, y=y: F.kl_div(x, y, reduction="none")
        cases[f"kl_div sum fwd+bwd {name}"] = forward_backward

    times: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():
        case()  # compiles and warms
    for _ in range(args.rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - start)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, NumPy {np.__version__}, {torch_note}; 2**{args.log2} elements, "
        f"{args.threads} thread(s), median of {args.rounds} rounds"
    )
    print(f"{'case':34s} {'ms':>9s} {'ns/element':>11s}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:34s} {median * 1e3:9.1f} {median * 1e9 / n:11.2f}")


if __name__ == "__main__":
    main()
