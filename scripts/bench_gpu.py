#!/usr/bin/env python3
"""klflow on an NVIDIA GPU against the memory floor, PyTorch eager and torch.compile, in one run.

    python scripts/bench_gpu.py [--log2n 28] [--reps 30] [--no-compile] [--json out.json]

It first checks correctness on fresh random data against a float64 reference (PyTorch in float64
when present, else NumPy), then times with CUDA events (median of ``--reps`` after warm-up):
a device-to-device copy (the bandwidth ceiling), klflow ``sum``, ``batchmean``, ``none`` and
forward+backward on 2^log2n float32 elements, the bare klflow kernels with preallocated buffers,
PyTorch eager ``F.kl_div`` and ``torch.compile`` of it. Floors: a reduction reads 8 bytes per
element, ``none`` adds a 4-byte write, forward+backward also writes a 4-byte gradient; each floor is
those bytes over the measured copy bandwidth (bytes read + written per second).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import klflow as flow  # noqa: E402
import klflow.nn.functional as F  # noqa: E402

FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
import klflow as flow
from numba import cuda
x = flow.tensor(np.full(1 << 20, -1.0, np.float32), device="cuda")
y = flow.tensor(np.full(1 << 20, 0.5, np.float32), device="cuda")
loss = flow.nn.functional.kl_div(x, y, reduction="sum")
cuda.synchronize()
value = loss.item()
print(f"{time.perf_counter() - start:.3f}")
"""


def timed(fn, reps: int, warmup: int = 3, inner: int = 5) -> float:
    """Median milliseconds per call of ``fn``, measured with CUDA events on the default stream
    around ``inner`` back-to-back calls (so the host's call overhead overlaps GPU work, as in a
    training loop), for every library alike."""
    from numba import cuda

    for _ in range(warmup):
        fn()
    cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, stop = cuda.event(), cuda.event()
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / inner)
    return statistics.median(samples)


def first_call_seconds() -> list[float]:
    """Wall time of a fresh process's first loss (imports and JIT included): with an empty
    on-disk kernel cache, then with the cache the first process left."""
    times = []
    cache = tempfile.mkdtemp(prefix="klflow-numba-cache-")
    for _ in range(2):
        root = Path(__file__).resolve().parents[1]
        env = dict(
            os.environ,
            NUMBA_CACHE_DIR=cache,
            PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
        )
        done = subprocess.run(
            [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, cwd=root, env=env
        )
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            times.append(float("nan"))
        else:
            times.append(float(done.stdout.strip().splitlines()[-1]))
    return times


def check_correctness(n: int) -> list[str]:
    """klflow against an independent float64 reference on fresh random data; returns failures."""
    rng = np.random.default_rng(int(time.time()))
    problems = []
    for dtype, tolerance in ((np.float32, 2e-6), (np.float64, 1e-12), (np.float16, 2e-3)):
        x = rng.standard_normal(n).astype(dtype)
        y = rng.random(n).astype(dtype)
        y[::97] = 0
        xd, yd = x.astype(np.float64), y.astype(np.float64)
        for log_target in (False, True):
            if log_target:
                terms = np.exp(yd) * (yd - xd)
            else:
                terms = np.where(yd > 0, yd * (np.log(np.where(yd > 0, yd, 1)) - xd), 0)
            xt, yt = flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda")
            for reduction in ("none", "sum", "mean", "batchmean"):
                got = F.kl_div(xt, yt, reduction=reduction, log_target=log_target).numpy().astype(np.float64)
                ref = (
                    terms
                    if reduction == "none"
                    else np.sum(terms) / {"sum": 1, "mean": n, "batchmean": n}[reduction]
                )
                # The reference rounded to the dtype: a float16 sum of 4M terms overflows to inf.
                ref = np.asarray(ref).astype(dtype).astype(np.float64)
                finite = np.isfinite(ref)
                error = (
                    0.0
                    if not np.array_equal(np.isfinite(got), finite)
                    else float(
                        np.max(np.abs(got[finite] - ref[finite]), initial=0.0)
                        / max(float(np.max(np.abs(ref[finite]), initial=0.0)), 1e-30)
                    )
                )
                if not np.array_equal(np.isfinite(got), finite):
                    error = float("inf")
                if not error <= tolerance:
                    problems.append(
                        f"{np.dtype(dtype).name} log_target={log_target} {reduction}: rel.err {error:.2e}"
                    )
            first = F.kl_div(xt, yt, reduction="sum", log_target=log_target).numpy().tobytes()
            if any(
                F.kl_div(xt, yt, reduction="sum", log_target=log_target).numpy().tobytes() != first
                for _ in range(3)
            ):
                problems.append(f"{np.dtype(dtype).name} log_target={log_target}: sum differs between runs")
        xg = flow.tensor(x, device="cuda", requires_grad=True)
        F.kl_div(xg, flow.tensor(y, device="cuda"), reduction="sum").backward()
        ref_grad = np.where(yd > 0, -yd, 0)
        error = float(
            np.max(np.abs(xg.grad.numpy().astype(np.float64) - ref_grad)) / np.max(np.abs(ref_grad))
        )
        if not error <= tolerance:
            problems.append(f"{np.dtype(dtype).name} gradient: rel.err {error:.2e}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=28)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--check-log2n", type=int, default=22)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from numba import cuda

    from klflow.kernels import cuda as kernels

    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the machine
        torch = None
    if hasattr(cuda, "get_current_device"):
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    else:
        name = "numba CUDA simulator (a dry run: timings mean nothing)"
    n = 1 << args.log2n
    results: dict[str, float] = {}
    report = {"device": name, "date": datetime.date.today().isoformat(), "n": n, "results": results}
    print(f"device: {name}; n = 2^{args.log2n} float32; {datetime.date.today()}", flush=True)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    def record(key: str, measure) -> None:
        """Time one variant and report it at once, so a cut-short run still leaves its numbers."""
        try:
            results[key] = measure()
        except Exception as err:  # one broken variant must not lose the others
            print(f"  {key}: failed: {type(err).__name__}: {err}", flush=True)
            return
        print(f"  {key}: {results[key]:.3f} ms", flush=True)
        save()

    report["first_call_s"] = first_call_seconds()
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); from numba import cuda; "
            "cuda.current_context(); print(f'{time.perf_counter() - t:.3f}')",
        ],
        capture_output=True,
        text=True,
    )
    report["numba_cuda_import_and_context_s"] = baseline.stdout.strip()
    print(
        f"first call in a fresh process (cold JIT, cached): {report['first_call_s']}; "
        f"of which importing numba.cuda and creating the context: {baseline.stdout.strip()} s",
        flush=True,
    )

    problems = check_correctness(1 << args.check_log2n)
    report["correctness_problems"] = problems
    print("correctness:", "ok" if not problems else problems, flush=True)

    rng = np.random.default_rng(1)
    x_host = rng.standard_normal(n, dtype=np.float32)
    y_host = rng.random(n, dtype=np.float32)
    x = cuda.to_device(x_host)
    y = cuda.to_device(y_host)
    copy_target = cuda.device_array_like(x)
    copy_ms = timed(lambda: copy_target.copy_to_device(x), args.reps)
    bandwidth = 2 * 4 * n / (max(copy_ms, 1e-6) * 1e-3)  # bytes read + written per second
    results["copy"] = copy_ms
    floors = {
        "reduce": 8 * n / bandwidth * 1e3,
        "none": 12 * n / bandwidth * 1e3,
        "fwd+bwd": 12 * n / bandwidth * 1e3,
    }
    report["bandwidth_GBps"] = bandwidth / 1e9
    report["floors_ms"] = floors
    print(f"copy {copy_ms:.3f} ms -> {bandwidth / 1e9:.0f} GB/s; floors {floors}", flush=True)

    xt, yt = flow.Tensor(x, device=flow.device("cuda")), flow.Tensor(y, device=flow.device("cuda"))
    for reduction in ("sum", "batchmean", "none"):
        record(
            f"klflow {reduction}", lambda: timed(lambda r=reduction: F.kl_div(xt, yt, reduction=r), args.reps)
        )

    def klflow_forward_backward():
        xg = flow.Tensor(x, device=flow.device("cuda"), requires_grad=True)
        F.kl_div(xg, yt, reduction="sum").backward()

    record("klflow fwd+bwd", lambda: timed(klflow_forward_backward, args.reps))

    blocks, threads = kernels.launch_config(n)
    partials = cuda.device_array(blocks, np.float64)
    grad = cuda.device_array_like(x)
    out, total = cuda.device_array(1, np.float32), cuda.device_array(1, np.float64)
    counter = cuda.to_device(np.zeros(1, np.int32))

    def bare(kernel, with_grad):
        kernel[blocks, threads](x, y, False, 1.0, grad, with_grad, partials, counter, 1.0, out, total)

    variants = [("4-byte loads", kernels.sum_kernel), ("16-byte loads", kernels.sum_kernel_f32x4)]
    for label, kernel in variants:
        if kernel is not None:
            record(
                f"kernel sum, {label} (preallocated)",
                lambda k=kernel: timed(lambda: bare(k, False), args.reps),
            )
            record(
                f"kernel fwd+bwd, {label} (preallocated)",
                lambda k=kernel: timed(lambda: bare(k, True), args.reps),
            )

    calls = 50
    cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        F.kl_div(xt, yt, reduction="sum")
    queued = time.perf_counter()
    cuda.synchronize()
    done = time.perf_counter()
    report["host_us_per_call"] = (queued - started) / calls * 1e6
    print(
        f"  klflow sum: host {report['host_us_per_call']:.1f} us/call, wall {(done - started) / calls * 1e3:.3f} ms/call",
        flush=True,
    )
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        F.kl_div(xt, yt, reduction="sum")
    profiler.disable()
    cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    print("\n".join(text.getvalue().splitlines()[:30]), flush=True)

    if torch is not None and torch.cuda.is_available():
        tx = torch.as_tensor(x, device="cuda")
        ty = torch.as_tensor(y, device="cuda")
        kl = torch.nn.functional.kl_div
        record("torch eager sum", lambda: timed(lambda: kl(tx, ty, reduction="sum"), args.reps))
        record("torch eager none", lambda: timed(lambda: kl(tx, ty, reduction="none"), args.reps))

        def torch_forward_backward(fn=kl):
            leaf = tx.detach().requires_grad_()
            fn(leaf, ty, reduction="sum").backward()

        record("torch eager fwd+bwd", lambda: timed(torch_forward_backward, args.reps))
        record(
            "klflow sum, torch tensors in (zero-copy)",
            lambda: timed(lambda: F.kl_div(tx, ty, reduction="sum"), args.reps),
        )
        if not args.no_compile:
            try:
                compiled = torch.compile(lambda a, b: kl(a, b, reduction="sum"))
                record("torch.compile sum", lambda: timed(lambda: compiled(tx, ty), args.reps, warmup=3))
                compiled_fb = torch.compile(lambda a, b: kl(a, b, reduction="sum"))

                def compiled_forward_backward():
                    leaf = tx.detach().requires_grad_()
                    compiled_fb(leaf, ty).backward()

                record("torch.compile fwd+bwd", lambda: timed(compiled_forward_backward, args.reps, warmup=3))
            except Exception as err:  # pragma: no cover - depends on the installation
                print(f"torch.compile unavailable: {type(err).__name__}: {err}", file=sys.stderr)

    print()
    print(f"| {'variant':<42} | {'median ms':>9} | {'× floor':>7} | {'× klflow':>8} |")
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 9}|{'-' * 10}|")
    for key, ms in results.items():
        if key == "copy":
            floor = ms
        elif "none" in key:
            floor = floors["none"]
        elif "fwd+bwd" in key:
            floor = floors["fwd+bwd"]
        else:
            floor = floors["reduce"]
        mine = results.get(
            "klflow fwd+bwd" if "fwd+bwd" in key else "klflow none" if "none" in key else "klflow sum"
        )
        print(f"| {key:<42} | {ms:>9.3f} | {ms / max(floor, 1e-9):>7.2f} | {ms / max(mine, 1e-9):>8.2f} |")
    save()
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
