"""An independent float64 NumPy reference for OneFlow's KL-divergence loss.

Nothing here imports klflow: the formulas are written out from OneFlow's documented semantics
(``docs``/DESIGN section 1) so that the tests compare klflow against a second implementation.

* element, ``log_target=False``: ``y > 0 ? y * (log(y) - x) : 0`` (a target that is 0, negative or
  NaN gives exactly 0, whatever ``x`` is);
* element, ``log_target=True``: ``exp(y) * (y - x)``;
* ``sum``: the exact sum of the float64 elements, rounded once (``math.fsum``);
  ``mean``: sum / numel (0 for an empty tensor); ``batchmean``: sum / shape[0] (NaN when
  shape[0] == 0, ``ValueError`` for a 0-dim tensor);
* gradients: ``d/dx = y > 0 ? -y : 0`` (log_target: ``-exp(y)``), ``d/dy = log(y) + 1 - x``
  (log_target: ``exp(y) * (y - x + 1)``, neither masked), times the upstream gradient and the
  reduction's scale.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

REDUCTIONS = ("none", "sum", "mean", "batchmean")
EPS64 = np.finfo(np.float64).eps


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def kl_elements(x, y, log_target: bool) -> np.ndarray:
    """Every loss element in float64, shaped like the inputs."""
    x, y = _f64(x), _f64(y)
    with np.errstate(all="ignore"):
        if log_target:
            return np.exp(y) * (y - x)
        positive = y > 0  # False for 0, negatives and NaN
        safe_y = np.where(positive, y, 1.0)
        return np.where(positive, safe_y * (np.log(safe_y) - x), 0.0)


def element_error_bound(x, y, log_target: bool) -> np.ndarray:
    """A bound on the float64 rounding error of one element computed in float64 arithmetic.

    The element is a product of a log (or exp) with an error under one ulp and a subtraction, so
    an implementation correct to a few float64 ulps may differ from this reference by about
    ``eps * |y| * (|log y| + |x|)`` (log_target: ``eps * exp(y) * (|y| + |x|)``) — relative 1e-15
    when the subtraction does not cancel, more when ``x`` is close to ``log y``.
    """
    x, y = _f64(x), _f64(y)
    with np.errstate(all="ignore"):
        if log_target:
            scale = np.exp(y) * (np.abs(y) + np.abs(x))
        else:
            positive = y > 0
            safe_y = np.where(positive, y, 1.0)
            scale = np.where(positive, safe_y * (np.abs(np.log(safe_y)) + np.abs(x)), 0.0)
    return 4 * EPS64 * np.nan_to_num(scale, nan=0.0, posinf=0.0)


def exact_sum(values) -> float:
    """The correctly rounded float64 sum of float64 values (NaN/inf as IEEE addition gives them)."""
    flat = _f64(values).ravel()
    if np.isnan(flat).any():
        return math.nan
    has_pos_inf = bool(np.isposinf(flat).any())
    has_neg_inf = bool(np.isneginf(flat).any())
    if has_pos_inf and has_neg_inf:
        return math.nan
    if has_pos_inf:
        return math.inf
    if has_neg_inf:
        return -math.inf
    try:
        return math.fsum(flat.tolist())
    except OverflowError:  # fsum gives up on intermediate overflow; rationals do not
        total = sum((Fraction(v) for v in flat.tolist()), Fraction(0))
        try:
            return float(total)
        except OverflowError:
            return math.inf if total > 0 else -math.inf


def reduction_divisor(reduction: str, shape: tuple[int, ...]) -> float:
    """What the exact sum is divided by (NaN result for an empty batch comes from 0/0)."""
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        numel = math.prod(shape)
        return float(numel) if numel > 0 else 1.0  # the empty sum 0 stays 0
    if reduction == "batchmean":
        if len(shape) == 0:
            raise ValueError("batchmean needs a batch dimension")
        return float(shape[0])
    raise ValueError(f"no divisor for reduction {reduction!r}")


def reduction_scale(reduction: str, shape: tuple[int, ...]) -> float:
    """d(reduced loss)/d(element): 1, 1/numel or 1/shape[0] (NaN for an empty batch)."""
    if reduction == "none":
        return 1.0
    divisor = reduction_divisor(reduction, shape)
    return 1.0 / divisor if divisor else math.nan


def kl_reduce(x, y, reduction: str, log_target: bool):
    """The loss as klflow's contract defines it, in float64.

    ``none`` returns the element array; the other modes return a Python float: the exact sum
    rounded once to float64, divided by the reduction's divisor.
    """
    elements = kl_elements(x, y, log_target)
    if reduction == "none":
        return elements
    total = exact_sum(elements)
    divisor = reduction_divisor(reduction, np.shape(elements))
    if divisor == 1.0:
        return total
    if divisor == 0.0:
        return math.nan  # 0/0 (and inf/0, nan/0) for an empty batch
    return total / divisor


def input_grad(x, y, log_target: bool, upstream=1.0, scale: float = 1.0) -> np.ndarray:
    """d loss / d input: ``(y > 0 ? -y : 0)`` or ``-exp(y)``, times upstream and scale."""
    y = _f64(y)
    with np.errstate(all="ignore"):
        if log_target:
            local = -np.exp(y)
        else:
            local = np.where(y > 0, -y, 0.0)
        return local * _f64(upstream) * scale


def target_grad(x, y, log_target: bool, upstream=1.0, scale: float = 1.0) -> np.ndarray:
    """d loss / d target: ``log(y) + 1 - x`` or ``exp(y) * (y - x + 1)``, not masked."""
    x, y = _f64(x), _f64(y)
    with np.errstate(all="ignore"):
        if log_target:
            local = np.exp(y) * (y - x + 1.0)
        else:
            local = np.log(y) + 1.0 - x
        return local * _f64(upstream) * scale


def target_grad_error_bound(x, y, log_target: bool, upstream=1.0, scale: float = 1.0):
    """Like :func:`element_error_bound`, for :func:`target_grad` (its sum of terms can cancel)."""
    x, y = _f64(x), _f64(y)
    with np.errstate(all="ignore"):
        if log_target:
            size = np.exp(y) * (np.abs(y) + np.abs(x) + 1.0)
        else:
            size = np.abs(np.log(y)) + 1.0 + np.abs(x)
        bound = 6 * EPS64 * size * np.abs(_f64(upstream) * scale)
    return np.nan_to_num(bound, nan=0.0, posinf=0.0)


# ------------------------------------------------------------------ comparison helpers
def ulp(value, dtype) -> np.ndarray:
    """The spacing of ``dtype`` at ``|value|`` rounded to ``dtype``, as float64."""
    dtype = np.dtype(dtype)
    with np.errstate(all="ignore"):
        rounded = np.abs(np.asarray(value, dtype=np.float64)).astype(dtype)
        return np.spacing(rounded).astype(np.float64)


def same_bits(got, want) -> bool:
    """Whether two arrays have the same dtype, shape and bits, NaN matching any NaN (the CPU and
    a GPU produce different NaN bit patterns)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    with np.errstate(invalid="ignore"):
        both_nan = np.isnan(got) & np.isnan(want)
    return bool(np.all((got.view(f"u{got.itemsize}") == want.view(f"u{want.itemsize}")) | both_nan))


def assert_close(got, ref64, dtype, *, bound=0.0, ulps: float = 1.0, what: str = "value") -> None:
    """``got`` (of ``dtype``) lies within ``ulps`` ulps of ``dtype`` plus ``bound`` of ``ref64``.

    NaN must sit exactly where the reference rounded to ``dtype`` has NaN, and infinities must
    match exactly (a float64 value that overflows ``dtype`` must come back as that infinity).
    """
    dtype = np.dtype(dtype)
    got = np.asarray(got)
    ref64 = np.asarray(ref64, dtype=np.float64)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref64.shape, f"{what}: shape {got.shape}, expected {ref64.shape}"
    with np.errstate(all="ignore"):
        want = ref64.astype(dtype).astype(np.float64)
        got64 = got.astype(np.float64)
        nan_got, nan_want = np.isnan(got64), np.isnan(want)
        assert np.array_equal(nan_got, nan_want), (
            f"{what}: NaN at {np.argwhere(nan_got != nan_want).tolist()[:5]}; "
            f"got {got64[nan_got != nan_want][:5]}, expected {want[nan_got != nan_want][:5]}"
        )
        special = ~nan_want & (np.isinf(got64) | np.isinf(want))
        assert np.array_equal(got64[special], want[special]), (
            f"{what}: infinities differ: got {got64[special][:5]}, expected {want[special][:5]}"
        )
        finite = ~nan_want & ~special
        tolerance = ulps * ulp(want, dtype) + np.broadcast_to(np.asarray(bound, np.float64), ref64.shape)
        error = np.abs(got64 - ref64)
        bad = finite & ~(error <= tolerance)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} values off; first at "
        f"{np.argwhere(bad)[0].tolist() if bad.ndim else []}: got {got64[bad][:3]}, "
        f"expected {ref64[bad][:3]} (tolerance {tolerance[bad][:3]})"
    )


_OVERFLOW_THRESHOLD = {  # the largest finite value plus half its ulp: from here on, rounding gives inf
    np.dtype(np.float16): Fraction(65520),
    np.dtype(np.float32): Fraction(2**128 - 2**103),
    np.dtype(np.float64): Fraction(2**1024 - 2**970),
}


def round_fraction(value: Fraction, dtype) -> np.ndarray:
    """A rational correctly rounded to ``dtype`` (nearest, ties to even) as a 0-d array: the
    neighbours of a first guess are compared as fractions. An exact zero is ``+0.0``; a nonzero
    value that rounds to zero keeps its sign."""
    dtype = np.dtype(dtype)
    if abs(value) >= _OVERFLOW_THRESHOLD[dtype]:
        return np.array(np.inf if value > 0 else -np.inf, dtype)
    with np.errstate(all="ignore"):
        guess = np.array(float(value)).astype(dtype)
        neighbours = [
            np.nextafter(guess, dtype.type(-np.inf)),
            guess,
            np.nextafter(guess, dtype.type(np.inf)),
        ]
    finite = [c for c in neighbours if np.isfinite(c)]
    best = min(finite, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(f"u{dtype.itemsize}")) & 1))
    if best == 0:
        best = dtype.type(-0.0) if value < 0 else dtype.type(0.0)
    return np.array(best, dtype)
