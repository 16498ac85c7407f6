#!/usr/bin/env python3
"""The global loss on 1 and 2 ranks against the local kernel alone: what the global layer costs.

    .venv/bin/python scripts/bench_mpi.py [--ranks 1 2] [--meshes 2x2] [--min-log2 16] [--max-log2 24] [--json out.json]

With --meshes the same runs on a hierarchical placement of that shape, the data split over every
axis ((S(0), S(0)), so each rank holds 1/(ranks) of it, as on a flat placement).

For each size (elements per rank, float32) every rank times the local loss on its own data
(``kl_div`` on local tensors, ``sum``) and the global loss over split tensors materialised on
every rank (``kl_div(...).item()``: the agreement of the ``kl_div`` call, the local kernel, and the
agreement and all-reduce of the partial sums: for float32, the bounded fast path's block-sum
state and magnitude total). The difference is the communication overhead. It also times one
agreement alone (what every klflow collective pays before its data moves: the sequence number,
digest and problem flag of every rank checked by the coordinator) and the guarded all-reduce of
one exact-sum state and of one float64 scalar. Ranks are synchronised with an all-reduce before
each timed call; the slowest rank's time is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from mpi_worker import report, run_worker

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import klflow as flow
    import klflow.nn.functional as F
    from klflow.distributed import comm
    from klflow.kernels import exact_sum

    rank, size = flow.env.get_rank(), flow.env.get_world_size()
    if args.mesh:  # a hierarchical placement: the data split over both axes, (S(0), S(0))
        placement = flow.placement("cpu", np.arange(size).reshape(args.mesh))
        sbp = (flow.sbp.split(0),) * placement.ndim
    else:
        placement, sbp = flow.placement.all("cpu"), flow.sbp.split(0)
    sync = np.zeros(1)

    def slowest_ms(fn, reps: int) -> float:
        fn()
        samples = []
        for _ in range(reps):
            comm.allreduce_sum(sync, call="bench: line the ranks up")  # line the ranks up
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        mine = statistics.median(samples) * 1e3
        return max(comm.allgather_objects(mine, call="bench: the slowest rank"))

    def paired_ms(local_fn, global_fn, reps: int) -> tuple[float, float, float]:
        """Medians of the two, and of their per-pair difference (alternating cancels drift)."""
        local_fn(), global_fn()
        pairs = []
        for _ in range(reps):
            times = []
            for fn in (local_fn, global_fn):
                comm.allreduce_sum(sync, call="bench: line the ranks up")
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            times = max(
                comm.allgather_objects(tuple(times), call="bench: the slowest rank")
            )  # the slowest rank's pair
            pairs.append(times)
        local = statistics.median(p[0] for p in pairs) * 1e3
        global_ = statistics.median(p[1] for p in pairs) * 1e3
        overhead = statistics.median(p[1] - p[0] for p in pairs) * 1e3
        return local, global_, overhead

    rows = []
    rng = np.random.default_rng(rank)
    for log2 in range(args.min_log2, args.max_log2 + 1, args.step):
        n = 1 << log2
        x_local = rng.standard_normal(n).astype(np.float32)
        y_local = rng.random(n).astype(np.float32)
        xl, yl = flow.from_numpy(x_local), flow.from_numpy(y_local)
        xg = xl.to_global(placement, sbp)
        yg = yl.to_global(placement, sbp)
        reps = 61 if n <= (1 << 22) else 15  # per-pair differences: enough pairs for a stable median
        local, global_, overhead = paired_ms(
            lambda: F.kl_div(xl, yl, reduction="sum").item(),
            lambda: F.kl_div(xg, yg, reduction="sum").item(),
            reps,
        )
        rows.append({"n_per_rank": n, "local_ms": local, "global_ms": global_, "overhead_ms": overhead})
    state = exact_sum.new_state()
    scalar = np.ones(1)
    latency = {
        "agreement_us": slowest_ms(lambda: comm.agree("bench: an agreement alone"), 400) * 1e3,
        "state_allreduce_us": slowest_ms(lambda: comm.allreduce_sum(state, call="bench: state"), 200) * 1e3,
        "scalar_allreduce_us": slowest_ms(lambda: comm.allreduce_sum(scalar, call="bench: scalar"), 200)
        * 1e3,
    }
    if rank == 0:
        mesh = "×".join(map(str, args.mesh)) if args.mesh else str(size)
        result = {"ranks": size, "mesh": mesh, "threads": flow.env.get_num_threads(), "rows": rows, **latency}
        report(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--min-log2", type=int, default=16)
    parser.add_argument("--max-log2", type=int, default=24)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument(
        "--meshes", nargs="*", default=[], metavar="AxB", help="also run on these meshes, e.g. 2x2 (4 ranks)"
    )
    parser.add_argument("--mesh", type=int, nargs="+", help=argparse.SUPPRESS)  # the worker's mesh
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    sizes = ["--min-log2", str(args.min_log2), "--max-log2", str(args.max_log2), "--step", str(args.step)]
    results = [run_worker(__file__, ranks, sizes) for ranks in args.ranks]
    for mesh in args.meshes:
        shape = [int(n) for n in mesh.lower().split("x")]
        results.append(run_worker(__file__, int(np.prod(shape)), [*sizes, "--mesh", *map(str, shape)]))

    print(
        "float32 sum; times in ms, the slowest rank's median; overhead = median of (global − local) over paired runs"
    )
    print(
        f"{'ranks':>5} {'mesh':>5} {'thr/rank':>8} {'n / rank':>10} {'local':>9} {'global':>9} {'overhead':>9} {'%':>7}"
    )
    for result in results:
        for row in result["rows"]:
            overhead = row["overhead_ms"]
            print(
                f"{result['ranks']:>5} {result['mesh']:>5} {result['threads']:>8} {row['n_per_rank']:>10} {row['local_ms']:>9.3f} "
                f"{row['global_ms']:>9.3f} {overhead:>9.3f} {overhead / row['local_ms']:>7.1%}"
            )
    for result in results:
        print(
            f"{result['ranks']} rank(s), mesh {result['mesh']}: one agreement {result['agreement_us']:.1f} µs; guarded all-reduce of an "
            f"exact-sum state {result['state_allreduce_us']:.1f} µs, of one float64 {result['scalar_allreduce_us']:.1f} µs"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
