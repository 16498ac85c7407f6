#!/usr/bin/env python3
"""klflow on the CPU against the memory floor, NumPy, PyTorch, torch.compile and JAX, in one run.

    .venv/bin/python scripts/bench_cpu.py [--min-log2 16] [--max-log2 26] [--dtypes float32 float64]
                                          [--peers torch torch.compile jax] [--cpu-time] [--no-extras]
                                          [--plot docs/data/bench_cpu.png] [--json out.json]

For each size and dtype it times (median of ``--reps``) klflow ``sum``, ``batchmean``, ``none`` and
forward+backward (loss and input gradient), a NumPy implementation of the loss, and each peer's
``sum``, ``batchmean``, ``none`` and forward+backward: PyTorch eager ``F.kl_div``, the same under
``torch.compile`` (Inductor) and JAX ``jit`` of the loss written in ``jax.numpy`` (forward+backward
via ``jax.value_and_grad``), each peer in a child process of its own with the same thread count
(a peer that is not installed is skipped with a note). The floors are measured in the same run by
parallel, vectorised numba passes over the same arrays: one that only reads both inputs (the
floor of a reduction) and one that reads both and writes one array (the floor of ``none`` and of
forward+backward). It prints the CPU model and the vector instruction set of klflow's code (the
host's, or the one ``NUMBA_CPU_NAME`` asks for; for AVX2 code the peers are asked for AVX2 where
that works: ``ATEN_CPU_CAPABILITY`` for PyTorch eager, ``--xla_cpu_max_isa`` for JAX). With
``--cpu-time`` everything runs on one thread and is timed by CPU time, for ratios that other
jobs on a shared machine do not move. It also reports the arithmetic alone on a cache-resident
block, the peak resident memory each variant adds at the largest size, and the cost of a first
call in a new process with a warm on-disk cache.

``--pipeline [options]`` runs ``scripts/bench_pipeline.py`` instead (the distillation pipeline:
log_softmax of both inputs, kl_div batchmean log_target=True, forward and backward, against
PyTorch eager and torch.compile); the options after it are that script's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import klflow as flow  # noqa: E402
import klflow.nn.functional as F  # noqa: E402
from klflow.kernels import cpu, exact_sum  # noqa: E402
from klflow.kernels.bits import f64_as_i64  # noqa: E402
from klflow.kernels.cpu import log_finite_positive  # noqa: E402


@njit(parallel=True, fastmath=True, cache=True)
def read_floor(x, y):
    """Reads every byte of both inputs once (a vectorised sum), and nothing else."""
    total = 0.0
    for i in prange(x.size):
        total += x[i] + y[i]
    return total


@njit(parallel=True, fastmath=True, cache=True)
def read_write_floor(x, y, out):
    """Reads both inputs and writes one array of the same size (freshly allocated by the caller)."""
    for i in prange(x.size):
        out[i] = x[i] + y[i]


@njit(parallel=True, cache=True)
def log_floor(y, chunks):
    """Reads the targets and computes only their float64 log: the arithmetic the accuracy contract
    needs per element at least, with no accumulation. (The largest result's bits are kept, an
    integer maximum that vectorises, so the work cannot be optimised away.)"""
    largest = np.zeros(chunks, dtype=np.int64)
    per_chunk = (y.size + chunks - 1) // chunks
    for chunk in prange(chunks):
        part = y[min(chunk * per_chunk, y.size) : min((chunk + 1) * per_chunk, y.size)]
        top = np.int64(0)
        for i in range(part.size):
            top = max(top, f64_as_i64(log_finite_positive(part[i])))
        largest[chunk] = top
    return largest.max()


@njit(cache=True)
def repeated_log(y, out, repeats):
    """klflow's element log over a cache-resident block, ``repeats`` times (one thread)."""
    for _ in range(repeats):
        for i in range(y.size):
            out[i] = log_finite_positive(y[i])


@njit
def repeated_block_sum(kernel, x, y, grad, repeats):
    """klflow's exact reduction kernel (terms, exact sum, optional fused gradient) over a
    cache-resident block, ``repeats`` times: its arithmetic cost with no memory traffic."""
    state = np.zeros(exact_sum.STATE_LEN, dtype=np.int64)
    buffer = np.empty(cpu.BLOCK, dtype=np.float64)
    for _ in range(repeats):
        kernel(x, y, 1.0, grad, state, buffer)
    return state


@njit
def repeated_bounded_sum(kernel, x, y, grad, repeats):
    """The same for the bounded fast path that float32 results take (``cpu.bounded_kernel``)."""
    state = np.zeros(exact_sum.STATE_LEN, dtype=np.int64)
    magnitudes = 0.0
    for _ in range(repeats):
        magnitudes += kernel(x, y, 1.0, grad, state)
    return magnitudes


def ns_per_element(fn, elements: int) -> float:
    """Best of five timings of ``fn`` (which handles ``elements`` elements on the calling thread),
    in ns per element of the thread's CPU time: on a shared machine the wall time also counts
    the spells in which other jobs have the core."""
    fn()
    best = min(cpu_timed(fn) for _ in range(5))
    return best / elements * 1e9


def cpu_timed(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def compute_costs(read_floor_ms: float, n: int, threads: int) -> dict:
    """Cost per element of the arithmetic alone (thread CPU time), one thread, on an L1-resident
    float32 block, set against what the read floor at ``n`` allows per element and thread: where
    the arithmetic exceeds that, the kernel is compute-bound and no memory optimisation can reach
    the floor."""
    rng = np.random.default_rng(1)
    block = cpu.BLOCK
    x = rng.standard_normal(block).astype(np.float32)
    y = rng.random(block).astype(np.float32)
    wide_y = y.astype(np.float64)
    out64, out32, grad = np.empty(block), np.empty(block, np.float32), np.empty_like(x)
    repeats = 4000
    elements = block * repeats

    def numpy_log(source, out):
        for _ in range(repeats):
            np.log(source, out=out)

    costs = {
        "klflow log (float64, of float32 targets)": ns_per_element(
            lambda: repeated_log(y, out64, repeats), elements
        ),
        "NumPy float64 log (its SIMD loop)": ns_per_element(lambda: numpy_log(wide_y, out64), elements),
        "NumPy float32 log (its SIMD loop)": ns_per_element(lambda: numpy_log(y, out32), elements),
        "klflow exact sum loop (terms + exact sum)": ns_per_element(
            lambda: repeated_block_sum(cpu.sum_kernel(False, False), x, y, grad, repeats), elements
        ),
        "klflow exact fwd+bwd loop (+ gradient)": ns_per_element(
            lambda: repeated_block_sum(cpu.sum_kernel(False, True), x, y, grad, repeats), elements
        ),
        "klflow bounded sum loop (float32 results)": ns_per_element(
            lambda: repeated_bounded_sum(cpu.bounded_kernel(False, False), x, y, grad, repeats), elements
        ),
        "klflow bounded fwd+bwd loop": ns_per_element(
            lambda: repeated_bounded_sum(cpu.bounded_kernel(False, True), x, y, grad, repeats), elements
        ),
    }
    allowed = read_floor_ms * 1e6 * threads / n
    return {"ns_per_element": costs, "read_floor_ns_per_element_and_thread": allowed}


CLOCK = time.perf_counter  # time.thread_time under --cpu-time


def interleaved_median_ms(variants: dict, reps: int, between_rounds=lambda: None) -> dict:
    """Median ms of each variant, timed in rounds that run every variant once, so that a slow
    spell of the shared machine (seen to last a few hundred ms) hits all of them alike;
    ``between_rounds`` runs after each round (the peers' rounds)."""
    for fn in variants.values():
        fn()  # warm-up (and JIT)
    samples: dict = {name: [] for name in variants}
    for _ in range(reps):
        between_rounds()
        for name, fn in variants.items():
            start = CLOCK()
            fn()
            samples[name].append(CLOCK() - start)
    return {name: statistics.median(times) * 1e3 for name, times in samples.items()}


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up (and JIT)
    samples = []
    for _ in range(reps):
        start = CLOCK()
        fn()
        samples.append(CLOCK() - start)
    return statistics.median(samples) * 1e3


def numpy_loss(x: np.ndarray, y: np.ndarray) -> float:
    """The loss written the obvious NumPy way (what a user without klflow would do)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(np.where(y > 0, y * (np.log(y) - x), 0.0)))


MEMORY_PROBE = """
import sys
from pathlib import Path
import numpy as np
variant, log2 = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.standard_normal(1 << log2).astype(np.float32)
y = rng.random(1 << log2).astype(np.float32)
small_x, small_y = x[:1 << 16].copy(), y[:1 << 16].copy()  # big enough for the parallel path
if variant.startswith("torch"):
    import torch
    def run(a, b, backward):
        leaf = torch.from_numpy(a).requires_grad_(backward)
        loss = torch.nn.functional.kl_div(leaf, torch.from_numpy(b), reduction="sum")
        if backward:
            loss.backward()
else:
    import klflow as flow
    def run(a, b, backward):
        leaf = flow.from_numpy(a).requires_grad_(backward)
        loss = flow.nn.functional.kl_div(leaf, flow.from_numpy(b), reduction="sum")
        if backward:
            loss.backward()
backward = variant.endswith("fwd+bwd")
run(small_x, small_y, backward)  # compile, start the threads: the big call is the first big one
def read(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident size
before = read("VmRSS:")
run(x, y, backward)
print(read("VmHWM:") - before)
"""


PEER_PROBE = """
import json, os, sys, time
import numpy as np
peer, dtype, log2, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
clock = getattr(time, sys.argv[5])
rng = np.random.default_rng(log2)
x_np = rng.standard_normal(1 << log2).astype(dtype)
y_np = rng.random(1 << log2).astype(dtype)
batch = x_np.shape[0]  # 1-D data: batchmean divides by the length
if peer.startswith("torch"):
    import torch
    torch.set_num_threads(threads)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    kl = torch.nn.functional.kl_div
    compile_ = torch.compile if peer == "torch.compile" else (lambda f: f)
    loss = {r: compile_(lambda a, b, r=r: kl(a, b, reduction=r)) for r in ("sum", "batchmean", "none")}
    def forward_backward():
        leaf = x.detach().requires_grad_()
        loss["sum"](leaf, y).backward()
        return leaf.grad
    variants = {
        "sum": lambda: loss["sum"](x, y),
        "batchmean": lambda: loss["batchmean"](x, y),
        "none": lambda: loss["none"](x, y),
        "fwd+bwd": forward_backward,
    }
else:
    if threads == 1:  # XLA's own thread pool to one thread, like the others'
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    import jax
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    def elements(a, b):  # OneFlow's element: b > 0 ? b * (log b - a) : 0
        positive = b > 0
        return jnp.where(positive, b * (jnp.log(jnp.where(positive, b, 1)) - a), 0)
    total = jax.jit(lambda a, b: jnp.sum(elements(a, b)))
    mean_over_batch = jax.jit(lambda a, b: jnp.sum(elements(a, b)) / batch)
    none = jax.jit(elements)
    grad = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(elements(a, b))))
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    variants = {
        "sum": lambda: total(x, y).block_until_ready(),
        "batchmean": lambda: mean_over_batch(x, y).block_until_ready(),
        "none": lambda: none(x, y).block_until_ready(),
        "fwd+bwd": lambda: jax.block_until_ready(grad(x, y)),
    }
for fn in variants.values():
    fn()  # compile
    fn()
print("ready", flush=True)
# One round (every variant once) per request, so that the parent interleaves the peers' rounds
# with klflow's: a slow spell of the shared machine then hits all of them alike. The pause lets
# the peer's worker threads stop spinning before the parent times anything again.
for request in sys.stdin:
    if request.strip() != "round":
        break
    times = {}
    for name, fn in variants.items():
        start = clock()
        fn()
        times[name] = clock() - start
    time.sleep(0.3)
    print(json.dumps(times), flush=True)
"""

PEERS = ("torch", "torch.compile", "jax")
PEER_MODULE = {"torch": "torch", "torch.compile": "torch", "jax": "jax"}


def code_isa() -> tuple[str, str, dict]:
    """(CPU model, the vector ISA of klflow's code, environment for the peers' children).

    klflow's code is the host's unless ``NUMBA_CPU_NAME`` names another CPU; for an AVX2 level
    the peers are asked for AVX2 code too, so that the comparison is between like instruction sets.
    """
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    host_isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    cpu_name = os.environ.get("NUMBA_CPU_NAME", "")
    peer_env: dict = {}
    if cpu_name in ("", "host"):
        isa = f"{host_isa} (host code)"
    elif cpu_name in ("haswell", "x86-64-v3", "znver3", "znver2", "skylake"):
        isa = (
            f"AVX2 code (NUMBA_CPU_NAME={cpu_name}) on an {host_isa} CPU; PyTorch eager and JAX asked "
            "for AVX2 too, torch.compile keeps the host's"
        )
        peer_env = {"ATEN_CPU_CAPABILITY": "avx2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
    else:
        isa = f"code for NUMBA_CPU_NAME={cpu_name} on an {host_isa} CPU"
    return model, isa, peer_env


def installed_version(peer: str) -> str | None:
    """A peer's version, asked of a child process: importing PyTorch here would start its OpenMP
    workers in this process, and their spinning after each PyTorch call was seen to slow the
    next numba measurements by up to 10× on a two-core machine."""
    module = PEER_MODULE[peer]
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}; print({module}.__version__)"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() if done.returncode == 0 else None


class Peer:
    """A peer in a child process of its own (same sizes and distributions as the parent's arrays,
    same thread count), so that its threads stop with it; it runs one timed round of its
    ``sum``, ``batchmean``, ``none`` and forward+backward each time :meth:`round` asks."""

    def __init__(self, peer: str, dtype: str, log2: int, threads: int, env: dict) -> None:
        environment = dict(os.environ, **env)
        for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"):
            environment.pop(name, None)
        if peer == "torch.compile":
            # Inductor 2.13's kernels built with ATEN_CPU_CAPABILITY=avx2 failed from 2^20
            # elements on ("RuntimeError: unhandled error"): it keeps the host's instructions.
            environment.pop("ATEN_CPU_CAPABILITY", None)
        self.name = peer
        self.errors = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and stall the child
        self.process = subprocess.Popen(
            [sys.executable, "-c", PEER_PROBE, peer, dtype, str(log2), str(threads), self._clock(peer)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
            env=environment,
        )
        self.samples: dict[str, list[float]] = {}
        self.failed = self._read(lambda line: line == "ready") != "ready"

    @staticmethod
    def _clock(peer: str) -> str:
        """The child's clock: the parent's, except that JAX computes on threads of its own, so
        that its CPU time is the process's (PyTorch with one thread computes on the caller's)."""
        if CLOCK is time.thread_time and peer == "jax":
            return "process_time"
        return CLOCK.__name__

    def _read(self, wanted) -> str:
        """The child's next line that ``wanted`` accepts (libraries may print lines of their own);
        an empty string, and a note with the child's last error line, if it ended first."""
        while line := self.process.stdout.readline():
            if wanted(line.strip()):
                return line.strip()
        self.errors.seek(0)
        error = self.errors.read().strip().splitlines()[-3:]
        print(f"{self.name} failed (exit {self.process.wait()}): {error}", file=sys.stderr)
        return ""

    def round(self) -> None:
        if self.failed:
            return
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        line = self._read(lambda line: line.startswith("{"))
        if not line:
            self.failed = True
            return
        for mode, seconds in json.loads(line).items():
            self.samples.setdefault(mode, []).append(seconds)

    def close(self) -> dict:
        """Median ms per mode (none if the peer failed); the child exits."""
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        if self.failed:
            return {}
        return {mode: statistics.median(times) * 1e3 for mode, times in self.samples.items()}


def peak_growth_bytes(variant: str, log2: int) -> int:
    """Peak resident memory a fresh process adds during its first big call (Linux only)."""
    if not Path("/proc/self/clear_refs").exists():
        return -1
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, variant, str(log2)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def first_call_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); import numpy as np, klflow as flow; "
        "x = np.full(1000, -1.0, np.float32); y = np.full(1000, 0.5, np.float32); "
        "flow.nn.functional.kl_div(x, y, reduction='sum').item(); print(time.perf_counter() - t)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)  # fills the cache
    samples = []
    for _ in range(5):  # one fresh process each; the median, as single starts vary on a shared machine
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        samples.append(float(done.stdout.strip()))
    return statistics.median(samples)


def main() -> int:
    if "--pipeline" in sys.argv[1:]:
        import bench_pipeline  # beside this script

        bench_pipeline.main([a for a in sys.argv[1:] if a != "--pipeline"])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-log2", type=int, default=16)
    parser.add_argument("--max-log2", type=int, default=26)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--peers", nargs="*", default=list(PEERS), choices=PEERS, help="peers to time (none: no peers)"
    )
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch peers")
    parser.add_argument(
        "--no-extras", action="store_true", help="skip peak memory, the arithmetic alone and the first call"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread everywhere, timed by CPU time (the computing thread's; JAX's process's): "
        "ratios that a loaded machine's other jobs do not move (they take the core, not its CPU time)",
    )
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    global CLOCK
    if args.cpu_time:
        CLOCK = time.thread_time  # with one thread, every kernel runs on the calling thread
        flow.env.set_num_threads(1)
    threads = flow.env.get_num_threads()
    numba.set_num_threads(threads)  # the floors' prange loops: as many threads as klflow's
    model, isa, peer_env = code_isa()
    peers: dict[str, str] = {}
    for peer in args.peers:
        if args.no_torch and PEER_MODULE[peer] == "torch":
            continue
        version = installed_version(peer)
        if version is None:
            print(f"{peer}: {PEER_MODULE[peer]} is not installed, its columns are skipped", file=sys.stderr)
        else:
            peers[peer] = version
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{model}, {os.cpu_count()} cores, {threads} threads",
        "isa": isa,
        "peer_env": peer_env,
        "peers": peers,
        "torch": peers.get("torch") or peers.get("torch.compile"),
        "rows": [],
    }
    versions = ", ".join(f"{peer} {version}" for peer, version in peers.items()) or "no peers"
    print(f"CPU: {model}, {os.cpu_count()} cores, {threads} threads; vector ISA: {isa}", flush=True)
    print(f"{versions}; numba {numba.__version__}; {report['date']}", flush=True)
    rng = np.random.default_rng(0)
    header = (
        f"{'dtype':<8} {'n':>9} {'read':>7} {'r+w':>7} {'log':>7} | {'sum':>7} {'×':>5} {'bmean':>7} {'×':>5} "
        f"{'none':>7} {'×':>5} {'fwd+bwd':>8} {'×':>5} | {'numpy':>8}"
    )
    print(
        "times in ms; × columns: klflow / its floor (read floor for sum and batchmean, read+write "
        "floor for none and fwd+bwd); log: the targets' float64 log alone, no sum; peer rows: "
        "the peer's ms (peer ÷ klflow)"
    )
    print(header)
    modes = ("sum", "batchmean", "none", "fwd+bwd")
    for dtype_name in args.dtypes:
        dtype = np.dtype(dtype_name)
        for log2 in range(args.min_log2, args.max_log2 + 1, args.step):
            n = 1 << log2
            x = rng.standard_normal(n).astype(dtype)
            y = rng.random(n).astype(dtype)
            reps = args.reps
            row: dict = {"dtype": dtype_name, "n": n}
            xt, yt = flow.from_numpy(x), flow.from_numpy(y)

            def forward_backward():
                leaf = flow.from_numpy(x).requires_grad_()
                F.kl_div(leaf, yt, reduction="sum").backward()
                return leaf.grad

            variants = {
                "read_floor": lambda: read_floor(x, y),
                "read_write_floor": lambda: read_write_floor(x, y, np.empty_like(x)),
                "log_floor": lambda: log_floor(y, 4 * numba.get_num_threads()),
                "sum": lambda: F.kl_div(xt, yt, reduction="sum"),
                "batchmean": lambda: F.kl_div(xt, yt, reduction="batchmean"),
                "none": lambda: F.kl_div(xt, yt, reduction="none"),
                "fwd+bwd": forward_backward,
            }
            if log2 == args.max_log2:
                # The same floor into an output whose pages are already mapped: the difference is
                # what first-touch page faults (kernel zeroing) add to every fresh output.
                reused = np.zeros_like(x)
                variants["read_write_floor_reused"] = lambda: read_write_floor(x, y, reused)
            running = [Peer(peer, dtype_name, log2, threads, peer_env) for peer in peers]

            def peer_rounds() -> None:
                for peer in running:
                    peer.round()

            row.update(interleaved_median_ms(variants, reps, peer_rounds))
            for peer in running:
                row.update({f"{peer.name} {mode}": ms for mode, ms in peer.close().items()})
            row["numpy"] = median_ms(lambda: numpy_loss(x, y), max(3, reps // 2))
            report["rows"].append(row)
            rf, rw = row["read_floor"], row["read_write_floor"]
            print(
                f"{dtype_name:<8} {n:>9} {rf:>7.2f} {rw:>7.2f} {row['log_floor']:>7.2f} | "
                f"{row['sum']:>7.2f} {row['sum'] / rf:>5.2f} {row['batchmean']:>7.2f} {row['batchmean'] / rf:>5.2f} "
                f"{row['none']:>7.2f} {row['none'] / rw:>5.2f} {row['fwd+bwd']:>8.2f} {row['fwd+bwd'] / rw:>5.2f} | "
                f"{row['numpy']:>8.2f}",
                flush=True,
            )
            for peer in peers:
                cells = []
                for mode in modes:
                    ms = row.get(f"{peer} {mode}")
                    cells.append(f"{mode} {ms:.2f} ({ms / row[mode]:.2f}×)" if ms else f"{mode} -")
                print(f"{'':<8} {'':>9}   {peer:<14} " + "  ".join(cells), flush=True)

    if args.no_extras:
        finish(report, args)
        return 0
    # Peak memory at the largest size, float32, each variant in a fresh process.
    input_bytes = 4 << args.max_log2
    memory = {"input_bytes": input_bytes}
    for variant in ["klflow sum", "klflow fwd+bwd"] + (
        ["torch sum", "torch fwd+bwd"] if report["torch"] else []
    ):
        memory[variant] = peak_growth_bytes(variant, args.max_log2)
    report["memory"] = memory
    print(
        f"\npeak resident memory added (float32, n = 2^{args.max_log2}; one input is {input_bytes / 1e6:.0f} MB):"
    )
    for key, grown in memory.items():
        if key != "input_bytes":
            print(f"  {key:<16} {grown / 1e6:8.1f} MB = {grown / input_bytes:6.1%} of one input")
    largest = [r for r in report["rows"] if r["dtype"] == "float32" and r["n"] == 1 << args.max_log2]
    if largest:
        report["compute"] = compute_costs(largest[0]["read_floor"], 1 << args.max_log2, threads)
        allowed = report["compute"]["read_floor_ns_per_element_and_thread"]
        print(
            f"\narithmetic alone, one thread, L1-resident float32 block of {cpu.BLOCK} "
            f"(ns per element; the float32 2^{args.max_log2} read floor allows {allowed:.3f} per element and thread):"
        )
        for name, cost in report["compute"]["ns_per_element"].items():
            print(f"  {name:<42} {cost:6.3f} ns = {cost / allowed:5.2f}× the read floor's allowance")
        print(
            f"read+write floor at 2^{args.max_log2} float32: {largest[0]['read_write_floor']:.2f} ms into a fresh "
            f"output, {largest[0]['read_write_floor_reused']:.2f} ms into one already mapped (page faults)"
        )
    report["first_call_s"] = first_call_seconds()
    print(f"first call in a new process, warm on-disk cache (median of 5): {report['first_call_s']:.3f} s")

    finish(report, args)
    return 0


def finish(report: dict, args: argparse.Namespace) -> None:
    """Write the JSON report and the plot, where asked for."""
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(report, args.plot)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({row["dtype"] for row in report["rows"]})
    figure, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    for axis, dtype in zip(axes[0], dtypes, strict=False):
        rows = [r for r in report["rows"] if r["dtype"] == dtype]
        sizes = np.array([r["n"] for r in rows])
        for key, style in [
            ("read_floor", "k--"),
            ("read_write_floor", "k:"),
            ("log_floor", "k-."),
            ("sum", "o-"),
            ("batchmean", "s-"),
            ("none", "^-"),
            ("fwd+bwd", "v-"),
            ("numpy", "x-"),
            ("torch sum", "d-"),
            ("torch fwd+bwd", "d--"),
            ("torch.compile sum", "p-"),
            ("torch.compile fwd+bwd", "p--"),
            ("jax sum", "h-"),
            ("jax fwd+bwd", "h--"),
        ]:
            if key in rows[0]:
                label = {
                    "read_floor": "floor: read 2 inputs",
                    "read_write_floor": "floor: read 2, write 1",
                    "log_floor": "read targets, float64 log only",
                }.get(key, key)
                axis.plot(sizes, sizes / (np.array([r[key] for r in rows]) * 1e-3) / 1e9, style, label=label)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("elements")
        axis.set_ylabel("throughput (G elements / s)")
        axis.set_title(f"{dtype}, {report['machine']}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
