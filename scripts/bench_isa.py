#!/usr/bin/env python3
"""The loss's speed on each x86-64 ISA level (``NUMBA_CPU_NAME``), against the host's, one thread.

    .venv/bin/python scripts/bench_isa.py [--log2 22] [--reps 15]

Every level gives the host's bits (tests/kernels/test_isa_levels.py); this shows what each costs.
Levels without FMA (``generic``, ``x86-64-v2``) call the C library's ``fma`` for each fused
multiply-add of the log/exp polynomials, and those without AVX have narrower vectors. Each level
runs in a process of its own, with its own kernel cache (compiling is not timed); times are the
fastest of ``--reps`` single-thread calls, and the ratios are to the host's in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from llvmlite import binding as llvm

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {  # name: the host features it needs to run at all
    "host": set(),
    "generic": set(),
    "x86-64-v2": {"sse4.2", "popcnt"},
    "haswell": {"avx2", "fma"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512dq", "avx512vl"},
}

TIMING = """
import json, sys, time
import numpy as np
import klflow as flow
import klflow.nn.functional as F
n, reps = 1 << int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
results = {}
for dtype in ("float32", "float64"):
    x = rng.standard_normal(n).astype(dtype)
    y = rng.random(n).astype(dtype)
    xt, yt = flow.from_numpy(x), flow.from_numpy(y)
    def forward_backward():
        xg = flow.from_numpy(x); xg.requires_grad = True
        F.kl_div(xg, yt, reduction="sum").backward()
    cases = {
        "sum": lambda: F.kl_div(xt, yt, reduction="sum"),
        "sum log_target": lambda: F.kl_div(xt, yt, reduction="sum", log_target=True),
        "none": lambda: F.kl_div(xt, yt, reduction="none"),
        "fwd+bwd": forward_backward,
    }
    for name, case in cases.items():
        case()  # compiles (or loads) first
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter(); case(); best = min(best, time.perf_counter() - start)
        results[f"{dtype} {name}"] = best * 1e3
print(json.dumps(results))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2", type=int, default=22)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    host = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    print(f"host CPU: {llvm.get_host_cpu_name()}, FMA {'yes' if 'fma' in host else 'no'}, "
          f"AVX-512 {'yes' if 'avx512f' in host else 'no'}; 2^{args.log2} elements, one thread, "
          f"fastest of {args.reps}; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    times = {}
    for level, needs in LEVELS.items():
        if not needs <= host:
            print(f"{level}: the host cannot run it, skipped")
            continue
        with tempfile.TemporaryDirectory(prefix="klflow-isa-") as cache:
            env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
            env.update(NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
            if level != "host":  # numba adds the host's features to a name unless told otherwise
                env.update(NUMBA_CPU_NAME=level, NUMBA_CPU_FEATURES="")
            done = subprocess.run(
                [sys.executable, "-c", TIMING, str(args.log2), str(args.reps)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            times[level] = json.loads(done.stdout.strip().splitlines()[-1])
    cases = list(times["host"])
    print(f"\n{'ms (÷ host)':18s}" + "".join(f"{level:>20s}" for level in times))
    for case in cases:
        row = f"{case:18s}"
        for level in times:
            row += f"{times[level][case]:11.2f} ({times[level][case] / times['host'][case]:4.2f}×)"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
