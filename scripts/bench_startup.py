#!/usr/bin/env python3
"""How long klflow takes to start: a first call with an empty and with a warm kernel cache.

    .venv/bin/python scripts/bench_startup.py [--runs 3] [--no-check] [--no-torch]

Every figure comes from a fresh process; "empty" gives that process a new, empty
``NUMBA_CACHE_DIR``, "warm" one that an earlier process filled. It times, wall clock and CPU:

* ``import klflow`` plus one ``kl_div`` call (1000 float32 elements) for each reduction, and a
  float32 forward+backward, each in a process of its own;
* where the compile time of an empty-cache first call goes, per compiled function;
* ``python -m klflow check --config configs/default.toml`` on 2 ranks;
* the peer: ``import torch`` plus one ``torch.nn.functional.kl_div`` call (skipped, with a note,
  when PyTorch is not installed).

Medians over ``--runs`` processes, with the minimum beside them: on a shared machine a single
start varies, and CPU time (``resource`` of the child) less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
import klflow as flow
imported = time.perf_counter()
x = np.linspace(-3.0, 0.0, 1000).astype(np.float32)
y = np.linspace(0.0, 1.0, 1000).astype(np.float32)
if {backward!r}:
    xt = flow.tensor(x, requires_grad=True)
    flow.nn.functional.kl_div(xt, y, reduction={reduction!r}).backward()
else:
    flow.nn.functional.kl_div(x, y, reduction={reduction!r})
print(imported - start, time.perf_counter() - start)
"""

TORCH_CALL = """
import time
start = time.perf_counter()
import torch
imported = time.perf_counter()
x = torch.linspace(-3.0, 0.0, 1000)
y = torch.linspace(0.0, 1.0, 1000)
torch.nn.functional.kl_div(x, y, reduction="sum")
print(imported - start, time.perf_counter() - start)
"""

PER_FUNCTION = """
import time
from numba.core import compiler
rows, depth = [], [0]
original = compiler.CompilerBase._compile_core

def timed(self):
    depth[0] += 1
    start = time.process_time()
    try:
        return original(self)
    finally:
        depth[0] -= 1
        rows.append((depth[0], self.state.func_id.func_qualname, time.process_time() - start))

compiler.CompilerBase._compile_core = timed
import numpy as np
import klflow as flow
x = np.linspace(-3.0, 0.0, 1000).astype(np.float32)
y = np.linspace(0.0, 1.0, 1000).astype(np.float32)
start = time.process_time()
flow.nn.functional.kl_div(x, y, reduction="mean")
total = time.process_time() - start
import json
print(json.dumps({"total": total, "rows": rows}))
"""


def child_times(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s of the child and its children, stdout) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def environment(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR",)}
    env["NUMBA_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def first_calls(code: str, runs: int) -> dict:
    """Wall and CPU seconds of a fresh process running ``code``: empty cache, then warm."""
    results: dict[str, list] = {"empty": [], "warm": []}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="klflow-bench-cache-") as folder:
            env = environment(Path(folder))
            for state in ("empty", "warm"):
                wall, cpu, out = child_times([sys.executable, "-c", code], env)
                import_s, total_s = (float(v) for v in out.split()[-2:])
                results[state].append({"wall": wall, "cpu": cpu, "import": import_s, "in_process": total_s})
    return results


def summary(samples: list[dict], key: str) -> str:
    values = [s[key] for s in samples]
    return f"{statistics.median(values):6.2f} ({min(values):5.2f})"


def per_function(runs: int) -> dict:
    """Compile time (CPU s, inclusive of what each compiles in turn) per compiled function of
    the smallest of ``runs`` empty-cache first calls."""
    best = None
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="klflow-bench-cache-") as folder:
            _, _, out = child_times([sys.executable, "-c", PER_FUNCTION], environment(Path(folder)))
            report = json.loads(out.strip().splitlines()[-1])
            if best is None or report["total"] < best["total"]:
                best = report
    return best


def check_job(runs: int) -> dict | None:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists():
        return None
    command = [
        str(mpiexec), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "klflow", "check",
        "--config", str(ROOT / "configs" / "default.toml"),
    ]  # fmt: skip
    results: dict[str, list] = {"empty": [], "warm": []}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="klflow-bench-cache-") as folder:
            env = environment(Path(folder))
            for state in ("empty", "warm"):
                wall, cpu, _ = child_times(command, env)
                results[state].append({"wall": wall, "cpu": cpu})
    return results


def torch_version() -> str | None:
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    isa = "AVX-512" if "+avx512f" in features else "AVX2" if "+avx2" in features else "SSE"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores} cores, {isa} (LLVM host CPU {llvm.get_host_cpu_name()}), load average {load:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per figure")
    parser.add_argument("--no-check", action="store_true", help="skip the 2-rank check job")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numba

    print(f"machine: {machine()}")
    print(f"Python {platform.python_version()}, numba {numba.__version__}; {args.runs} fresh processes each")
    print("seconds: median (min); 'first call' is import + the call, as the process itself measures it\n")
    report: dict = {"machine": machine(), "runs": args.runs, "rows": {}}
    header = f"{'what':44s} {'cache':6s} {'wall':>14s} {'CPU':>14s} {'import':>14s} {'first call':>14s}"
    print(header)
    print("-" * len(header))
    cases = [(r, False) for r in ("sum", "mean", "none")] + [("sum", True)]
    for reduction, backward in cases:
        name = f"klflow float32 {reduction}" + (" forward+backward" if backward else "")
        results = first_calls(FIRST_CALL.format(reduction=reduction, backward=backward), args.runs)
        report["rows"][name] = results
        for state, samples in results.items():
            print(
                f"{name:44s} {state:6s} {summary(samples, 'wall')} {summary(samples, 'cpu')} "
                f"{summary(samples, 'import')} {summary(samples, 'in_process')}"
            )
    version = None if args.no_torch else torch_version()
    if version is None:
        print("PyTorch: not installed (pip install torch==2.13.0), no peer row")
    else:
        with tempfile.TemporaryDirectory() as folder:
            samples = []
            for _ in range(args.runs):
                wall, cpu, out = child_times([sys.executable, "-c", TORCH_CALL], environment(Path(folder)))
                import_s, total_s = (float(v) for v in out.split()[-2:])
                samples.append({"wall": wall, "cpu": cpu, "import": import_s, "in_process": total_s})
        report["rows"][f"torch {version}"] = {"warm": samples}
        name = f"peer: import torch {version} + F.kl_div sum"
        print(
            f"{name:44s} {'-':6s} {summary(samples, 'wall')} {summary(samples, 'cpu')} "
            f"{summary(samples, 'import')} {summary(samples, 'in_process')}"
        )
        klflow_empty = statistics.median(
            s["in_process"] for s in report["rows"]["klflow float32 sum"]["empty"]
        )
        klflow_warm = statistics.median(s["in_process"] for s in report["rows"]["klflow float32 sum"]["warm"])
        torch_first = statistics.median(s["in_process"] for s in samples)
        print(
            f"klflow sum first call ÷ PyTorch's: {klflow_empty / torch_first:.2f} with an empty cache, "
            f"{klflow_warm / torch_first:.2f} warm"
        )
    if not args.no_check:
        check = check_job(args.runs)
        if check is None:
            print("klflow check: no mpiexec next to this Python, skipped")
        else:
            report["rows"]["klflow check default.toml, 2 ranks"] = check
            for state, samples in check.items():
                print(
                    f"{'python -m klflow check (default), 2 ranks':44s} {state:6s} "
                    f"{summary(samples, 'wall')} {summary(samples, 'cpu')}"
                )
    breakdown = per_function(args.runs)
    report["per_function"] = breakdown
    print(
        f"\nwhere an empty-cache first call (float32 mean) compiles: {breakdown['total']:.2f} s CPU in all;"
    )
    print("CPU s per compiled function, including what it compiles in turn (indented):")
    for depth, name, seconds in breakdown["rows"]:
        print(f"  {'  ' * depth}{seconds:6.3f}  {name}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
