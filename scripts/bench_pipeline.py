"""Benchmark of the distillation pipeline on the CPU against PyTorch eager and torch.compile:

    loss = kl_div(log_softmax(s, -1), log_softmax(t, -1), reduction="batchmean", log_target=True)
    loss.backward()          # the student's logits s require grad, the teacher's t do not

at 256 × 262144 float32 (2^26 elements per tensor) by default. Each peer runs in a child process of
its own (same seeded data, same thread count), so no peer's allocations or threads disturb another:
it builds the inputs, runs the step once to warm up (compiles), then times ``--repeats`` steps.
"Peak extra memory" is the child's peak resident set minus its resident set with the inputs built,
i.e. what the step itself needs at its peak (outputs, gradients, temporaries).

    .venv/bin/python scripts/bench_pipeline.py                       # the default size, every peer
    .venv/bin/python scripts/bench_pipeline.py --rows 64 --repeats 2 # smaller
    .venv/bin/python scripts/bench_cpu.py --pipeline ...             # the same, from bench_cpu.py
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
import time

PEERS = ("klflow", "torch", "torch.compile")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs(rows: int, cols: int):
    import numpy as np

    rng = np.random.default_rng(0)
    student = (rng.standard_normal((rows, cols), dtype=np.float32) * 2).astype(np.float32)
    teacher = (rng.standard_normal((rows, cols), dtype=np.float32) * 2).astype(np.float32)
    return student, teacher


def _klflow_step(student, teacher, threads: int):
    import klflow as flow
    import klflow.nn.functional as F

    flow.env.set_num_threads(threads)
    s = flow.from_numpy(student)
    s.requires_grad = True
    t = flow.from_numpy(teacher)

    def step() -> float:
        s.grad = None
        loss = F.kl_div(
            F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True
        )
        loss.backward()
        return loss.item()

    return step, f"klflow {flow.__version__}, {threads} threads"


def _torch_step(student, teacher, threads: int, compiled: bool):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    s = torch.from_numpy(student).requires_grad_()
    t = torch.from_numpy(teacher)

    def pipeline(s, t):
        return F.kl_div(
            F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True
        )

    run = torch.compile(pipeline) if compiled else pipeline

    def step() -> float:
        s.grad = None
        loss = run(s, t)
        loss.backward()
        return loss.item()

    return (
        step,
        f"torch {torch.__version__}{' compile (inductor)' if compiled else ' eager'}, {threads} threads",
    )


def child(peer: str, rows: int, cols: int, repeats: int, threads: int) -> dict:
    """Time one peer in this process; returns the measurements."""
    student, teacher = _inputs(rows, cols)
    if peer == "klflow":
        step, label = _klflow_step(student, teacher, threads)
    else:
        step, label = _torch_step(student, teacher, threads, compiled=peer == "torch.compile")
    base = _resident_bytes()
    started = time.perf_counter()
    value = step()  # warm-up: compiles (klflow's kernel cache, inductor) and touches the outputs
    warmup = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - started)
    return {
        "peer": peer,
        "label": label,
        "loss": value,
        "warmup_s": warmup,
        "times_s": times,
        "peak_extra_bytes": max(0, _peak_resident_bytes() - base),
    }


def _run_child(peer: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        peer,
        "--rows",
        str(args.rows),
        "--cols",
        str(args.cols),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peer": peer, "error": last}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _isa() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    levels = [name for name in ("avx512f", "avx2", "fma", "avx") if name in flags]
    return levels[0] if levels else "sse"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.cols, args.repeats, args.threads)))
        return
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    n = args.rows * args.cols
    print(
        f"pipeline: kl_div(log_softmax(s), log_softmax(t), batchmean, log_target=True) + backward (s only)\n"
        f"{args.rows} x {args.cols} float32 = {n} elements per tensor ({n * 4 / 2**20:.0f} MiB); "
        f"{_cpu_model()}, {_isa()}, {os.cpu_count()} CPUs; {args.threads} threads per peer; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    results = [_run_child(peer, args) for peer in peers]
    reference = next((r for r in results if r["peer"] == "klflow" and "error" not in r), None)
    print(
        "\n| peer | best (ms) | median (ms) | vs klflow | peak extra memory (MiB) | loss | first call (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['peer']} | unavailable: {r['error']} | | | | | |")
            continue
        best, median = min(r["times_s"]), statistics.median(r["times_s"])
        ratio = f"{best / min(reference['times_s']):.2f}x" if reference else "-"
        print(
            f"| {r['label']} | {best * 1e3:.0f} | {median * 1e3:.0f} | {ratio} | "
            f"{r['peak_extra_bytes'] / 2**20:.0f} | {r['loss']:.9g} | {r['warmup_s']:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": args.rows, "cols": args.cols, "threads": args.threads, "results": results},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
