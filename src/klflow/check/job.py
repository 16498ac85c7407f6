"""The reduction-correctness job: the global loss in every layout against a float64 reference.

Every rank builds the same seeded data, spreads it over the job in each configured SBP, computes
every reduction × log_target × dtype (and the input gradient), and compares the materialised
result with an independent float64 NumPy reference, and bit for bit with the single-process
klflow value. Rank 0 prints the table; every rank exits non-zero on any mismatch.

    mpiexec -n 4 python -m mpi4py -m klflow check --config quick
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

import klflow as flow
from klflow import info
from klflow.check.config import CheckConfig
from klflow.distributed.layout import GlobalSpec

PROGRESS_EVERY_S = 2.0


@dataclass
class CaseResult:
    dtype: str
    input_sbp: str
    target_sbp: str
    reduction: str
    log_target: bool
    value: float | None
    error: float
    grad_error: float | None
    same_bits: bool
    passed: bool


# ----------------------------------------------------------------- data and reference
def make_data(cfg: CheckConfig, dtype: np.dtype, log_target: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded log-probabilities and targets; some probability targets are 0 or negative."""
    rng = np.random.default_rng(cfg.seed)
    shape = cfg.shape
    logits = rng.standard_normal(shape) * 2.0
    x = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    target_logits = rng.standard_normal(shape) * 2.0
    log_p = target_logits - np.log(np.sum(np.exp(target_logits), axis=-1, keepdims=True))
    if log_target:
        y = log_p
    else:
        y = np.exp(log_p)
        masked = rng.random(shape) < cfg.zero_target_fraction
        y[masked] = np.where(rng.random(int(masked.sum())) < 0.5, 0.0, -0.25)
    return x.astype(dtype), y.astype(dtype)


def reference(x: np.ndarray, y: np.ndarray, reduction: str, log_target: bool) -> tuple[Any, np.ndarray]:
    """The float64 loss and input gradient, written independently of klflow's kernels."""
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    if log_target:
        terms = np.exp(yd) * (yd - xd)
        grad = -np.exp(yd)
    else:
        positive = yd > 0
        safe = np.where(positive, yd, 1.0)
        terms = np.where(positive, yd * (np.log(safe) - xd), 0.0)
        grad = np.where(positive, -yd, 0.0)
    if reduction == "none":
        return terms, grad
    total = math.fsum(terms.ravel().tolist())
    divisor = {"sum": 1, "mean": terms.size, "batchmean": terms.shape[0]}[reduction]
    return total / divisor, grad / divisor


# ----------------------------------------------------------------- spreading over the ranks
def parse_layout(sbp_name: str) -> tuple[flow.sbp.SbpParallel, ...]:
    """``"split(0), broadcast"`` as an SBP signature (one entry per mesh axis)."""
    names = {"broadcast": flow.sbp.broadcast, "partial_sum": flow.sbp.partial_sum}
    return tuple(
        names[entry] if entry in names else flow.sbp.split(int(entry[6:-1]))
        for entry in (part.strip() for part in sbp_name.split(","))
    )


def placement_of(cfg: CheckConfig) -> flow.placement:
    size = flow.env.get_world_size()
    ranks = np.arange(size).reshape(cfg.mesh) if cfg.mesh is not None else range(size)
    return flow.placement("cpu", ranks)


def spread(cfg: CheckConfig, full: np.ndarray, sbp_name: str, requires_grad: bool) -> flow.Tensor:
    """The same logical value as a global tensor in layout ``sbp_name`` over the job's ranks."""
    rank = flow.env.get_rank()
    placement = placement_of(cfg)
    sbp = parse_layout(sbp_name)
    spec = GlobalSpec(placement, sbp, full.shape)
    local = np.array(full[spec.component_slices_of(rank)], order="C")
    partial_axes = spec.partial_axes()
    if partial_axes:
        # Components that add up exactly over the ranks of the partial axes: a short-mantissa head
        # on the first, its remainder on the second, zeros elsewhere.
        group = placement.group_over(rank, partial_axes)
        mantissa, exponent = np.frexp(local.astype(np.float64))
        head = np.ldexp(np.round(mantissa * 64.0) / 64.0, exponent).astype(full.dtype)
        tail = (local - head).astype(full.dtype)
        position = group.index(rank)
        if len(group) > 1:
            local = head if position == 0 else tail if position == 1 else np.zeros_like(local)
    tensor = flow.from_numpy(local).to_global(placement, sbp)
    tensor.requires_grad = requires_grad
    return tensor


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    got64 = np.asarray(got, dtype=np.float64)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, np.finfo(np.float64).tiny)
    if got64.shape != np.shape(ref):
        return math.inf
    with np.errstate(invalid="ignore"):
        error = float(np.max(np.abs(got64 - ref))) / scale if ref.size else 0.0
    return error if not math.isnan(error) else math.inf


def _ones_gradient(out: flow.Tensor) -> flow.Tensor:
    local_shape = tuple(out.to_local().shape)
    ones = np.ones(local_shape, dtype=out.dtype.numpy)
    return flow.from_numpy(ones).to_global(out.placement, out.sbp)


def run_case(
    cfg: CheckConfig, dtype_name: str, input_sbp: str, target_sbp: str, reduction: str, log_target: bool
) -> CaseResult:
    dtype = np.dtype(dtype_name)
    x_full, y_full = make_data(cfg, dtype, log_target)
    ref_value, ref_grad = reference(x_full, y_full, reduction, log_target)
    x = spread(cfg, x_full, input_sbp, cfg.backward)
    y = spread(cfg, y_full, target_sbp, False)
    out = flow.nn.functional.kl_div(x, y, reduction=reduction, log_target=log_target)
    got = out.numpy()
    error = _relative_error(got, np.asarray(ref_value))
    single = flow.nn.functional.kl_div(
        flow.from_numpy(x_full), flow.from_numpy(y_full), reduction=reduction, log_target=log_target
    ).numpy()
    same_bits = got.shape == single.shape and got.tobytes() == single.tobytes()
    grad_error = None
    if cfg.backward:
        out.backward(None if reduction != "none" else _ones_gradient(out))
        grad_error = _relative_error(x.grad.numpy(), ref_grad)
    tolerance = cfg.tolerances[dtype_name]
    passed = error <= tolerance and (grad_error is None or grad_error <= tolerance)
    if cfg.bitwise:
        passed = passed and same_bits
    value = float(got) if reduction != "none" else None
    return CaseResult(
        dtype_name, input_sbp, target_sbp, reduction, log_target, value, error, grad_error, same_bits, passed
    )


def cases(cfg: CheckConfig) -> list[tuple[str, str, str, str, bool]]:
    pairs = [(s, s) for s in cfg.sbps]
    if cfg.mixed_sbp and len(cfg.sbps) > 1:
        pairs += [(s, cfg.sbps[(i + 1) % len(cfg.sbps)]) for i, s in enumerate(cfg.sbps)]
    return [
        (dtype, a, b, reduction, log_target)
        for dtype, (a, b), reduction, log_target in itertools.product(
            cfg.dtypes, pairs, cfg.reductions, cfg.log_target
        )
    ]


def prepare_kernels(cfg: CheckConfig) -> None:
    """Compile the CPU kernels the cases use before running them, each rank its share.

    Kernels compile on first use and go to the on-disk cache the ranks of a node share; compiling
    a share each and then waiting for the others lets the ranks compile side by side instead of
    all compiling everything. A kernel another rank could not share (no common cache) compiles
    at its first use, as it would have anyway.
    """
    rank, size = flow.env.get_rank(), flow.env.get_world_size()
    groups = sorted(
        {(dtype, log_target, reduction == "none") for dtype in cfg.dtypes for reduction in cfg.reductions
         for log_target in cfg.log_target}
    )  # fmt: skip
    for dtype_name, log_target, elementwise in groups[rank::size]:
        dtype = np.dtype(dtype_name)
        x = np.linspace(-2.0, -0.5, 6).reshape(2, 3).astype(dtype)
        y = (
            (np.linspace(-3.0, -0.1, 6) if log_target else np.linspace(0.1, 0.9, 6))
            .reshape(2, 3)
            .astype(dtype)
        )
        reduction = "none" if elementwise else next(r for r in cfg.reductions if r != "none")
        xt = flow.from_numpy(x.copy())
        xt.requires_grad = cfg.backward
        out = flow.nn.functional.kl_div(xt, flow.from_numpy(y), reduction=reduction, log_target=log_target)
        if cfg.backward:
            out.backward(flow.from_numpy(np.ones_like(x)) if elementwise else None)
        flow.nn.functional.kl_div(
            flow.from_numpy(x), flow.from_numpy(y), reduction=reduction, log_target=log_target
        )
    if size > 1:  # every rank waits until all shares are compiled (an all-gather)
        every = flow.from_numpy(np.zeros(1)).to_global(flow.placement.all("cpu"), flow.sbp.split(0))
        every.to_global(sbp=flow.sbp.broadcast).numpy()


def _short(sbp_name: str) -> str:
    return ",".join(str(entry) for entry in parse_layout(sbp_name))


def format_row(r: CaseResult) -> str:
    value = f"{r.value:.9e}" if r.value is not None else "(elementwise)"
    grad = f"{r.grad_error:.1e}" if r.grad_error is not None else "-"
    return (
        f"{r.dtype:<8} {_short(r.input_sbp):<9} {_short(r.target_sbp):<9} {r.reduction:<9} "
        f"{str(r.log_target):<6} {value:>16} {r.error:>9.1e} {grad:>9} "
        f"{'yes' if r.same_bits else 'NO':>9} {'ok' if r.passed else 'FAIL':>6}"
    )


def format_tolerances(cfg: CheckConfig) -> str:
    """The relative tolerances of the dtypes this run checks, e.g. ``float32 1e-06, float64 1e-13``."""
    return ", ".join(f"{dtype} {cfg.tolerances[dtype]:g}" for dtype in cfg.dtypes)


COMPILING = (
    "klflow check: compiling klflow's kernels first, as numba's cache has none of them yet "
    "(once per machine and kernel version: later runs load them from the cache)"
)

HEADER = (
    f"{'dtype':<8} {'input':<9} {'target':<9} {'reduction':<9} {'log_t':<6} {'value':>16} "
    f"{'rel.err':>9} {'grad.err':>9} {'same bits':>9} {'status':>6}"
)


def run(cfg: CheckConfig, out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """Run every case; return 0 if all pass, 1 otherwise (the same on every rank)."""
    rank, size = flow.env.get_rank(), flow.env.get_world_size()
    todo = cases(cfg)
    say = (
        (lambda text, stream=out: print(text, file=stream, flush=True))
        if rank == 0
        else (lambda *a, **k: None)
    )
    if info.kernels_need_compiling():
        say(COMPILING)
    where = f"a {'×'.join(map(str, cfg.mesh))} mesh of {size} ranks" if cfg.mesh else f"{size} rank(s)"
    say(
        f"klflow check: {where}, shape {list(cfg.shape)}, seed {cfg.seed}, {len(todo)} cases; "
        f"relative tolerance {format_tolerances(cfg)}; "
        f"reduced values {'must be' if cfg.bitwise else 'need not be'} bitwise equal to one process's"
    )
    started = last_progress = time.monotonic()
    prepare_kernels(cfg)
    say(HEADER)
    results = []
    for number, case in enumerate(todo, 1):
        result = run_case(cfg, *case)
        results.append(result)
        say(format_row(result))
        now = time.monotonic()
        if now - last_progress > PROGRESS_EVERY_S and number < len(todo):
            say(f"  ... {number}/{len(todo)} cases, {now - started:.1f} s", progress)
            last_progress = now
    failed = [r for r in results if not r.passed]
    say(
        f"{len(results) - len(failed)}/{len(results)} cases passed in "
        f"{time.monotonic() - started:.1f} s on {size} rank(s)"
    )
    if failed:
        say(f"FAILED: {len(failed)} case(s) outside tolerance or not bitwise identical:")
        for r in failed:
            say("  " + format_row(r))
    return 1 if failed else 0
