"""``klflow.nn.functional``: the loss, softmax and log_softmax as functions, with all argument checking.

>>> import klflow as flow
>>> import klflow.nn.functional as F
>>> F.kl_div([-0.9021705, 0.08798598, 1.04686249], [1.22386942, -0.89729659, 0.01615712],
...          reduction="sum", log_target=True)
tensor(5.7801, dtype=klflow.float32)
"""

from __future__ import annotations

import warnings
from typing import Any

from klflow.ops import kl_div as kl_div_op
from klflow.ops import softmax as softmax_op
from klflow.tensor import Tensor, _normalize_dim, as_tensor_arg

REDUCTIONS = ("none", "batchmean", "sum", "mean")


def check_reduction(reduction: Any) -> str:
    """Return ``reduction`` if it is one OneFlow accepts, else raise a ``ValueError`` listing them."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction; expected one of "
            f"'none' | 'batchmean' | 'sum' | 'mean'"
        )
    return reduction


def check_log_target(log_target: Any) -> bool:
    if not isinstance(log_target, bool):
        raise TypeError(f"log_target must be a bool, got {type(log_target).__name__} {log_target!r}")
    return log_target


def check_pair(input: Tensor, target: Tensor) -> None:
    """Shapes, dtypes, devices and locality must agree (OneFlow does not broadcast or promote)."""
    if input.is_global != target.is_global:
        raise ValueError(
            "input and target must both be local or both be global tensors; got input "
            f"{'global' if input.is_global else 'local'} and target "
            f"{'global' if target.is_global else 'local'}. Convert the local one with "
            "to_global(placement, sbp)."
        )
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(
            f"input and target must have the same shape; got input shape {list(input.shape)} "
            f"and target shape {list(target.shape)} (KLDivLoss does not broadcast)"
        )
    if input.dtype != target.dtype:
        raise TypeError(
            f"input and target must have the same dtype; got input {input.dtype} and target "
            f"{target.dtype}. Convert one of them, e.g. target.to({input.dtype})."
        )
    if input.is_global:
        if input.placement != target.placement:
            raise ValueError(
                f"input and target must have the same placement; got input {input.placement!r} "
                f"and target {target.placement!r}"
            )
    elif input.device != target.device:
        raise ValueError(
            f"input and target must be on the same device; got input on {input.device} and "
            f"target on {target.device}"
        )


def kl_div(
    input: Tensor | Any,
    target: Tensor | Any,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """OneFlow's Kullback–Leibler divergence loss (see :class:`klflow.nn.KLDivLoss`).

    ``input`` holds log-probabilities; ``target`` probabilities (or log-probabilities with
    ``log_target=True``). Both may be klflow tensors or array-likes of the same shape and dtype.
    """
    # A global argument makes the call collective: every problem found below, even in
    # converting the other argument, must reach every rank before any of them raises.
    collective = any(isinstance(a, Tensor) and a.is_global for a in (input, target))
    problem: Exception | None = None
    try:
        input = as_tensor_arg(input, "input")
        target = as_tensor_arg(target, "target")
        reduction = check_reduction(reduction)
        log_target = check_log_target(log_target)
        check_pair(input, target)
        if reduction == "batchmean" and input.ndim == 0:
            raise ValueError(
                "reduction='batchmean' divides by the batch size input.shape[0], but the input is "
                "a 0-dim tensor with no batch dimension; use reduction='sum' or 'mean'"
            )
    except Exception as err:  # any class: on global inputs every rank must learn of it
        problem = err
    if collective:
        _agree_across_ranks(problem, input, target, reduction, log_target)
    elif problem is not None:
        raise problem
    return kl_div_op.kl_div(input, target, reduction, log_target)


def _agree_across_ranks(problem, input, target, reduction, log_target) -> None:
    """For global inputs a mistake on one rank must stop every rank of the placement before any
    collective, and every rank must be making the same call (an SPMD program). Ranks outside the
    placement take part in nothing."""
    from klflow.ops import global_tensors

    if not global_tensors.spmd_checks_enabled():
        if problem is not None:
            raise problem
        return
    placements = [t.placement for t in (input, target) if isinstance(t, Tensor) and t.is_global]
    group = global_tensors.communicator_of(placements[0])
    if group is None:
        if problem is not None:
            raise problem
        return
    call = "kl_div"
    if problem is None:  # the arguments may not even be tensors otherwise
        call = (
            f"kl_div(reduction={reduction!r}, log_target={log_target!r}) of input "
            f"{_argument(input)} and target {_argument(target)}"
        )
    group.agree("check", call, problem, context="kl_div")


def _argument(t: Tensor) -> str:
    from klflow.ops import global_tensors

    if not t.is_global:
        return "a local tensor"
    return f"{global_tensors.describe(t)}{' requiring grad' if t.requires_grad else ''}"


# ----------------------------------------------------------------- softmax and log_softmax
def implicit_softmax_dim(name: str, ndim: int, stacklevel: int = 3) -> int:
    """The dimension OneFlow and PyTorch pick when ``dim`` is not given (deprecated, with a
    warning): 0 for 0-, 1- and 3-dimensional inputs, else 1."""
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
        f"dim=X as an argument.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_call(x: Tensor | Any, dim: Any, log: bool) -> Tensor:
    name = "log_softmax" if log else "softmax"
    collective = isinstance(x, Tensor) and x.is_global
    problem: Exception | None = None
    normalized = 0
    try:
        x = as_tensor_arg(x, "input")
        if dim is None:
            dim = implicit_softmax_dim(name, x.ndim, stacklevel=4)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"{name}(): argument 'dim' must be int, not {type(dim).__name__}")
        normalized = _normalize_dim(dim, x.ndim)
        if not x.dtype.is_floating_point:
            raise RuntimeError(
                f'"{name}" not implemented for {x.dtype}: it needs a floating dtype (convert with '
                f"x.float() or x.double())"
            )
    except Exception as err:  # on a global input every rank must learn of it
        problem = err
    if collective:
        _agree_on_softmax(problem, x, name, normalized)
    elif problem is not None:
        raise problem
    return softmax_op.softmax(x, normalized, log)


def _agree_on_softmax(problem: Exception | None, x: Tensor, name: str, dim: int) -> None:
    from klflow.ops import global_tensors

    if not global_tensors.spmd_checks_enabled():
        if problem is not None:
            raise problem
        return
    group = global_tensors.communicator_of(x.placement)
    if group is None:
        if problem is not None:
            raise problem
        return
    call = name if problem is not None else f"{name}(dim={dim}) of {_argument(x)}"
    group.agree("check", call, problem, context=name)


def log_softmax(x: Tensor | Any, dim: int | None = None) -> Tensor:
    """``x_i - log(sum_j exp(x_j))`` along ``dim``, computed max-shifted in float64 and rounded
    once to ``x``'s dtype; the row sum is exact, so a global tensor split along ``dim`` gives the
    single-process bits on any number of ranks.

    >>> import klflow as flow
    >>> import klflow.nn.functional as F
    >>> F.log_softmax(flow.tensor([[0.4296, -1.1957, 2.5463], [1.2552, -1.5747, 0.6923]]), dim=1)
    tensor([[-2.2513, -3.8766, -0.1346],
            [-0.4877, -3.3176, -1.0506]], dtype=klflow.float32)
    """
    return _softmax_call(x, dim, True)


def softmax(x: Tensor | Any, dim: int | None = None) -> Tensor:
    """``exp(x_i) / sum_j exp(x_j)`` along ``dim`` (max-shifted, float64 inside, rounded once).

    >>> import klflow as flow
    >>> import klflow.nn.functional as F
    >>> F.softmax(flow.tensor([1.0, 2.0, 3.0]), dim=0)
    tensor([0.0900, 0.2447, 0.6652], dtype=klflow.float32)
    """
    return _softmax_call(x, dim, False)
