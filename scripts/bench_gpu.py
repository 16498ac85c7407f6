#!/usr/bin/env python3
"""klflow on an NVIDIA GPU: the CPU's bits, checked, then timed against the memory floor, PyTorch
eager and torch.compile, in one run.

    python scripts/bench_gpu.py [--log2n 28] [--reps 30] [--check-log2n 22] [--no-compile]
                                [--skip-tests] [--json out.json]

In order, each step printed as it finishes (a cut-short run keeps what it printed and saved):

1. The first loss in a fresh process (imports, CUDA context, JIT, one float32 ``sum`` of 2^20,
   value read), with an empty on-disk kernel cache and then with the cache it left.
2. The test suites at full size on this GPU: ``tests/cuda`` (CUDA bits == CPU bits for every dtype,
   reduction, log_target and gradient; references), ``tests/kernels/test_cuda_ptx.py`` (NVVM
   contracts nothing) and the 2-rank CUDA-placement test under mpiexec (global loss == single
   process CPU bits). ``--skip-tests`` leaves them out.
3. Bits on fresh random data of 2^check-log2n elements: every dtype × reduction × log_target, the
   loss and both gradients on the GPU against the CPU, bit for bit (NaN as NaN), and against an
   independent float64 reference; how many float32/float16 sums needed the exact pass; a sum at a
   rounding tie (which must take it); run-to-run identical results.
4. Timings with CUDA events (median of ``--reps`` batches of 5 back-to-back calls after warm-up),
   2^log2n float32: a device-to-device copy (the bandwidth ceiling), klflow ``sum``,
   ``batchmean``, ``none``, forward+backward, ``sum`` with the value read every call, the bare
   kernels with preallocated buffers (the bounded path's 16- and 4-byte-load kernels, the exact
   pass on the same float32 data, i.e. the fallback's cost), a float64 ``sum`` (the exact path)
   of the same bytes, host time per call, PyTorch eager and ``torch.compile``.

Floors: a reduction reads 8 bytes per float32 element, ``none`` adds a 4-byte write,
forward+backward also writes a 4-byte gradient; each floor is those bytes over the measured copy
bandwidth (bytes read + written per second). The targets of the GPU issue are printed with a
verdict: ``sum`` ≤ 1.05× its floor, forward+backward ≤ 1.1×, first call ≤ 2 s with an empty cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import klflow as flow  # noqa: E402
import klflow.nn.functional as F  # noqa: E402

FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
import klflow as flow
x = flow.tensor(np.full(1 << 20, -1.0, np.float32), device="cuda")
y = flow.tensor(np.full(1 << 20, 0.5, np.float32), device="cuda")
value = flow.nn.functional.kl_div(x, y, reduction="sum").item()
print(f"{time.perf_counter() - start:.3f}")
"""
TARGETS = {"klflow sum": 1.05, "klflow fwd+bwd": 1.10}
FIRST_CALL_TARGET_S = 2.0


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
    """Wall time of a fresh process's first loss: with an empty on-disk kernel cache, then with
    the cache the first process left."""
    times = []
    cache = tempfile.mkdtemp(prefix="klflow-numba-cache-")
    for _ in range(2):
        env = dict(
            os.environ,
            NUMBA_CACHE_DIR=cache,
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        )
        done = subprocess.run(
            [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, cwd=ROOT, env=env
        )
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            times.append(float("nan"))
        else:
            times.append(float(done.stdout.strip().splitlines()[-1]))
    return times


def run_test_suites() -> dict[str, dict]:
    """The CUDA suites at full size on this GPU; returns each one's exit code and summary line."""
    python = sys.executable
    mpiexec = shutil.which("mpiexec", path=str(Path(python).parent)) or shutil.which("mpiexec")
    common = ["-p", "no:cacheprovider", "-q", "-ra"]
    suites = {
        "tests/cuda + PTX contraction": [
            python,
            "-m",
            "pytest",
            *common,
            "tests/cuda",
            "tests/kernels/test_cuda_ptx.py",
        ],
    }
    if mpiexec:
        suites["2 ranks, CUDA placement"] = [
            mpiexec,
            "-n",
            "2",
            python,
            "-m",
            "mpi4py",
            "-m",
            "pytest",
            *common,
            "-x",
            "--timeout=600",
            "--timeout-method=thread",
            "-p",
            "no:faulthandler",
            "tests/mpi/test_cuda_global.py",
            "--expected-ranks=2",
        ]
    results = {}
    for name, command in suites.items():
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="0")
        )
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        results[name] = {
            "exit_code": done.returncode,
            "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - started, 1),
        }
        if done.returncode != 0:
            print("\n".join(lines[-40:]), file=sys.stderr)
        print(
            f"  {name}: exit {done.returncode}, {results[name]['summary']} ({results[name]['seconds']} s)",
            flush=True,
        )
    return results


def check_bits(n: int) -> tuple[list[str], dict]:
    """GPU against CPU bit for bit, and against a float64 reference; returns (problems, stats)."""
    from launches import LaunchCounter
    from reference import (
        EPS64,
        assert_close,
        element_error_bound,
        input_grad,
        kl_elements,
        kl_reduce,
        same_bits,
    )

    from klflow.kernels import cuda as kernels

    seed = int(time.time())
    rng = np.random.default_rng(seed)
    problems: list[str] = []
    counter = LaunchCounter(kernels.exact_kernel)
    kernels.exact_kernel = counter
    stats = {"seed": seed, "n": n, "compared": 0, "exact_passes_for_random_float32_float16": 0}
    try:
        for dtype in (np.float16, np.float32, np.float64):
            for log_target in (False, True):
                x = rng.normal(0.0, 2.0, n).astype(dtype)
                y = (rng.normal(-1.0, 1.5, n) if log_target else rng.uniform(0.0, 2.0, n)).astype(dtype)
                if not log_target:
                    y[::97] = 0
                for reduction in ("none", "sum", "mean", "batchmean"):
                    label = f"{np.dtype(dtype).name} log_target={log_target} {reduction}"
                    results = []
                    before = counter.launches
                    for device in ("cpu", "cuda"):
                        xt = flow.tensor(x, device=device, requires_grad=True)
                        yt = flow.tensor(y, device=device, requires_grad=True)
                        out = F.kl_div(xt, yt, reduction=reduction, log_target=log_target)
                        value = out.numpy()
                        if reduction == "none":
                            out.backward(flow.tensor(np.ones(n, dtype), device=device))
                        else:
                            out.backward()
                        results.append((value, xt.grad.numpy(), yt.grad.numpy()))
                    if dtype != np.float64 and reduction != "none":
                        stats["exact_passes_for_random_float32_float16"] += counter.launches - before
                    for what, got, want in zip(("loss", "d/dx", "d/dy"), results[1], results[0], strict=True):
                        stats["compared"] += 1
                        if not same_bits(got, want):
                            problems.append(f"{label} {what}: GPU bits differ from the CPU's")
                    value, dx, _ = results[1]
                    try:
                        with np.errstate(all="ignore"):
                            if reduction == "none":
                                bound = element_error_bound(x, y, log_target)
                                assert_close(value, kl_elements(x, y, log_target), dtype, bound=bound)
                            else:
                                scale = {"sum": 1, "mean": n, "batchmean": n}[reduction]
                                slack = element_error_bound(x, y, log_target).sum() / scale
                                ref = np.float64(kl_reduce(x, y, reduction, log_target))
                                assert_close(value, ref, dtype, bound=slack)
                                ref_dx = input_grad(x, y, log_target, 1.0, 1.0 / scale)
                                assert_close(dx, ref_dx, dtype, bound=4 * EPS64 * np.abs(ref_dx), what="d/dx")
                    except AssertionError as err:
                        problems.append(f"{label}: against the float64 reference: {str(err)[:200]}")
                xt, yt = flow.tensor(x, device="cuda"), flow.tensor(y, device="cuda")
                first = F.kl_div(xt, yt, reduction="sum", log_target=log_target).numpy().tobytes()
                if any(
                    F.kl_div(xt, yt, reduction="sum", log_target=log_target).numpy().tobytes() != first
                    for _ in range(3)
                ):
                    problems.append(
                        f"{np.dtype(dtype).name} log_target={log_target}: sum differs between runs"
                    )
        # A sum at a float32 rounding tie: terms -x (log-probability targets 0).
        x = np.zeros(n, np.float32)
        x[[0, n // 3, n // 2, n - 1]] = -np.array([1.0, 2.0**-24, 3.0, -3.0], np.float32)
        before = counter.launches
        got = F.kl_div(
            flow.tensor(x, device="cuda"),
            flow.tensor(np.zeros_like(x), device="cuda"),
            reduction="sum",
            log_target=True,
        )
        if got.numpy() != np.float32(1.0) or counter.launches - before != 1:
            problems.append(
                f"tie: {got.numpy()!r} with {counter.launches - before} exact passes (expected 1.0, 1)"
            )
    finally:
        kernels.exact_kernel = counter.kernel
    return problems, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=28)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--check-log2n", type=int, default=22)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--skip-tests", action="store_true", help="skip the test suites")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numba
    from numba import cuda

    from klflow.kernels import cuda as kernels
    from klflow.kernels.exact_sum import STATE_LEN

    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the machine
        torch = None
    if hasattr(cuda, "get_current_device"):
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    else:
        name = "numba CUDA simulator (a dry run: timings mean nothing)"
    versions = {"numba": numba.__version__, "torch": getattr(torch, "__version__", None)}
    try:
        from importlib.metadata import version

        versions["numba-cuda"] = version("numba-cuda")
    except Exception:
        versions["numba-cuda"] = None
    n = 1 << args.log2n
    results: dict[str, float] = {}
    report = {
        "device": name,
        "date": datetime.date.today().isoformat(),
        "n": n,
        "versions": versions,
        "results": results,
    }
    print(f"device: {name}; n = 2^{args.log2n} float32; {datetime.date.today()}; {versions}", flush=True)

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
        f"first call in a fresh process (empty cache, cached): {report['first_call_s']} s; "
        f"of which importing numba.cuda and creating the context: {baseline.stdout.strip()} s",
        flush=True,
    )
    save()

    if not args.skip_tests:
        print("test suites at full size:", flush=True)
        report["tests"] = run_test_suites()
        save()

    problems, bit_stats = check_bits(1 << args.check_log2n)
    report["bits_problems"], report["bits"] = problems, bit_stats
    print(
        f"bits (GPU == CPU, and the float64 reference): {'ok' if not problems else problems}; {bit_stats}",
        flush=True,
    )
    save()

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
            f"klflow {reduction}", lambda r=reduction: timed(lambda: F.kl_div(xt, yt, reduction=r), args.reps)
        )

    def klflow_forward_backward():
        xg = flow.Tensor(x, device=flow.device("cuda"), requires_grad=True)
        F.kl_div(xg, yt, reduction="sum").backward()

    record("klflow fwd+bwd", lambda: timed(klflow_forward_backward, args.reps))
    record(
        "klflow sum, value read every call",
        lambda: timed(lambda: F.kl_div(xt, yt, reduction="sum").item(), args.reps),
    )
    x64 = cuda.to_device(x_host[: n // 2].astype(np.float64))
    y64 = cuda.to_device(y_host[: n // 2].astype(np.float64))
    x64t, y64t = flow.Tensor(x64, device=flow.device("cuda")), flow.Tensor(y64, device=flow.device("cuda"))
    record(
        "klflow sum float64 (exact path), same bytes",
        lambda: timed(lambda: F.kl_div(x64t, y64t, reduction="sum"), args.reps),
    )

    blocks, threads = kernels.launch_config(n)
    grad = cuda.device_array_like(x)
    states = cuda.to_device(np.zeros(2 * STATE_LEN, np.int64))
    following = cuda.to_device(np.zeros(2 * STATE_LEN, np.int64))
    report["launch"] = {"blocks": blocks, "threads": threads, "terms_per_thread": -(-n // (blocks * threads))}

    def bare(kernel, with_grad):
        kernel[blocks, threads](x, y, False, False, 1.0, grad, with_grad, states, following)

    variants = [
        ("bounded, 16-byte loads", kernels.bounded_kernel_f32x4),
        ("bounded, 4-byte loads", kernels.bounded_kernel),
        ("exact pass (the fallback)", kernels.exact_kernel),
    ]
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
    print(f"| {'variant':<52} | {'median ms':>9} | {'× floor':>7} | {'× klflow':>8} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 9}|{'-' * 10}|")
    ratios = {}
    for key, ms in results.items():
        if key == "copy":
            floor = ms
        elif "none" in key:
            floor = floors["none"]
        elif "fwd+bwd" in key:
            floor = floors["fwd+bwd"]
        else:
            floor = floors["reduce"]
        ratios[key] = ms / max(floor, 1e-9)
        mine = results.get(
            "klflow fwd+bwd" if "fwd+bwd" in key else "klflow none" if "none" in key else "klflow sum", ms
        )
        print(f"| {key:<52} | {ms:>9.3f} | {ratios[key]:>7.2f} | {ms / max(mine, 1e-9):>8.2f} |")
    report["ratios_to_floor"] = ratios

    verdicts = {
        key: (ratios.get(key), limit, ratios.get(key, float("inf")) <= limit)
        for key, limit in TARGETS.items()
    }
    cold = report["first_call_s"][0]
    verdicts["first call, empty cache (s)"] = (cold, FIRST_CALL_TARGET_S, cold <= FIRST_CALL_TARGET_S)
    report["targets"] = {
        key: {"measured": m, "limit": lim, "met": ok} for key, (m, lim, ok) in verdicts.items()
    }
    print()
    simulated = "simulator" in name
    for key, (measured, limit, ok) in verdicts.items():
        verdict = "n/a (simulator)" if simulated else "met" if ok else "NOT met"
        print(f"target {key}: {measured} (limit {limit}): {verdict}")
    tests_ok = all(t["exit_code"] == 0 for t in report.get("tests", {}).values())
    print(f"tests: {'passed' if tests_ok else 'FAILED'}; bits: {'ok' if not problems else 'FAILED'}")
    save()
    return 0 if not problems and tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
