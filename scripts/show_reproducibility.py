#!/usr/bin/env python3
"""Shows that a global loss has the same bits whatever the number of MPI ranks and numba threads.

    .venv/bin/python scripts/show_reproducibility.py [--ranks 1 2 3 4 7] [--threads 1 2] [--log2n 20]

It launches the same program under ``mpiexec -n R`` with ``NUMBA_NUM_THREADS=T`` for every R and T.
Each run builds the same seeded data, splits it unevenly over its ranks, computes ``sum``, ``mean``
and ``batchmean`` for float32 and float64, and prints the result's bit pattern. For contrast it
also prints the textbook approach: each rank sums its part in float64 (``numpy.sum``) and the
partial sums are all-reduced, and rank 0 computes the same losses from the whole data as one local
tensor (float32 results there take the bounded fast path). The table shows one column per (ranks,
threads); klflow's rows must hold one value each, the local rows the global rows' value, and the
script exits non-zero if they do not.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from mpi_worker import report, run_worker

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ", one local tensor"


def bits(value: np.ndarray) -> str:
    value = np.asarray(value)
    unsigned = {4: np.uint32, 8: np.uint64, 2: np.uint16}[value.dtype.itemsize]
    return f"{int(value.view(unsigned)):0{value.dtype.itemsize * 2}x}"


def worker(log2n: int) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import klflow as flow
    import klflow.nn.functional as F
    from klflow.distributed import comm
    from klflow.distributed.layout import balanced_offsets

    rank, size = flow.env.get_rank(), flow.env.get_world_size()
    n = (1 << log2n) + 3  # uneven over every rank count
    rng = np.random.default_rng(2026)
    logits = rng.standard_normal((n, 8))
    x_full = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    y_full = rng.dirichlet(np.ones(8), size=n)
    offsets = balanced_offsets(n, size)
    mine = slice(offsets[rank], offsets[rank + 1])
    placement = flow.placement.all("cpu")
    results = {}
    for dtype in (np.float32, np.float64):
        x_local = x_full[mine].astype(dtype)
        y_local = y_full[mine].astype(dtype)
        x = flow.from_numpy(x_local).to_global(placement, flow.sbp.split(0))
        y = flow.from_numpy(y_local).to_global(placement, flow.sbp.split(0))
        for reduction in ("sum", "mean", "batchmean"):
            results[f"klflow {np.dtype(dtype).name} {reduction}"] = bits(
                F.kl_div(x, y, reduction=reduction).numpy()
            )
        terms = np.where(y_local > 0, y_local * (np.log(y_local) - x_local), 0).astype(np.float64)
        naive = comm.allreduce_sum(np.array([np.sum(terms)]), call="numpy partial sums")[0]
        results[f"numpy+allreduce {np.dtype(dtype).name} sum"] = bits(np.asarray(naive, dtype=np.float64))
    if rank == 0:
        # The whole data as one local tensor on one process: float32 takes the bounded fast
        # path there, which must give the global loss's bits.
        for dtype in (np.float32, np.float64):
            x = flow.from_numpy(x_full.astype(dtype))
            y = flow.from_numpy(y_full.astype(dtype))
            for reduction in ("sum", "mean", "batchmean"):
                results[f"klflow {np.dtype(dtype).name} {reduction}{LOCAL}"] = bits(
                    F.kl_div(x, y, reduction=reduction).numpy()
                )
        report(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4, 7])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--log2n", type=int, default=17)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.log2n)
        return 0

    columns, table = [], {}
    for ranks, threads in itertools.product(args.ranks, args.threads):
        result = run_worker(
            __file__, ranks, ["--log2n", str(args.log2n)], {"NUMBA_NUM_THREADS": str(threads)}
        )
        column = f"{ranks}r×{threads}t"
        columns.append(column)
        for key, value in result.items():
            table.setdefault(key, {})[column] = value
        print(f"  ran {column}", file=sys.stderr, flush=True)

    width = max(len(k) for k in table)
    print(f"(8 × {(1 << args.log2n) + 3} elements, split(0) over the ranks; bits of each result in hex)")
    print(f"{'':<{width}}  " + "  ".join(f"{c:>16}" for c in columns) + "  verdict")
    failed = False
    for key, row in table.items():
        distinct = len(set(row.values()))
        klflow_row = key.startswith("klflow")
        verdict = "identical" if distinct == 1 else f"{distinct} different values"
        if klflow_row and distinct != 1:
            failed = True
            verdict += "  <-- NOT REPRODUCIBLE"
        if key.endswith(LOCAL) and set(row.values()) != set(table[key.removesuffix(LOCAL)].values()):
            failed = True
            verdict += "  <-- DIFFERS FROM THE GLOBAL LOSS"
        print(f"{key:<{width}}  " + "  ".join(f"{row[c]:>16}" for c in columns) + f"  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
