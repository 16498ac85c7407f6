"""Exact reductions of tensors: ``sum``/``mean`` over all elements or some dims, and the two shape
operations their gradients need (``sum_to_shape``, ``expand``).

Every output element is the correctly rounded exact sum of its terms (:mod:`klflow.kernels.
exact_rows`); a mean divides the correctly rounded float64 sum by the count and rounds once more to
the dtype, as the loss's ``mean`` does. So a result does not depend on the order of the terms, on
threads, or — for global tensors — on how many ranks hold them: a sum over a split dim is
partial_sum with the ranks' exact states as its record (:class:`klflow.ops.partial_values.
ExactStates`), which materialise to the single-process bits. A whole float32/float16 CUDA tensor
is summed on the device (compensated sums, decided on the host); other CUDA reductions go through
host memory.

>>> import klflow as flow
>>> x = flow.tensor([[1e8, 1.0, -1e8], [0.5, 0.25, 0.25]], dtype=flow.float32)
>>> x.sum(dim=1).tolist(), x.mean().item()
([1.0, 1.0], 0.3333333432674408)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from klflow.distributed import sbp as sbp_module
from klflow.distributed import sbp_rules
from klflow.distributed.layout import GlobalSpec
from klflow.distributed.partials import PartialSum
from klflow.kernels import exact_rows, rounding
from klflow.kernels.bounded_sum import BOUNDED_DTYPES, BoundedSum
from klflow.ops import global_tensors
from klflow.ops.arithmetic import _boxed, _record, to_layout_of
from klflow.ops.partial_values import Deferred, ExactStates
from klflow.tensor import Tensor, _normalize_dim


def reduced_dims(dim: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """``dim`` as sorted, distinct, non-negative dims (None: every dim)."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"dim must be an int or a tuple of ints, got {dim!r}")
    normalized = [_normalize_dim(d, ndim) for d in dims]
    if len(set(normalized)) != len(normalized):
        raise RuntimeError(f"dim {normalized[0]} appears multiple times in the list of dims")
    return tuple(sorted(normalized))


def _out_shape(shape: Sequence[int], dims: Sequence[int], keepdim: bool) -> tuple[int, ...]:
    if keepdim:
        return tuple(1 if d in dims else n for d, n in enumerate(shape))
    return tuple(n for d, n in enumerate(shape) if d not in dims)


def _rows(values: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """``values`` as a 2-D array: one row per output element, the reduced dims along it."""
    kept = [d for d in range(values.ndim) if d not in dims]
    moved = np.transpose(values, (*kept, *dims)) if values.ndim else values
    rows = math.prod(values.shape[d] for d in kept)
    return np.reshape(moved, (rows, -1)) if rows else np.zeros((0, 1), values.dtype)


def _round_sums(values: np.ndarray, dims: Sequence[int], divisor: int) -> np.ndarray:
    """The rounded sums over ``dims`` (not all dims), read in place where the reduced dims lead
    (column sums) or trail (row sums) in memory, else from a transposed copy."""
    if values.flags.c_contiguous and tuple(dims) == tuple(range(len(dims))):
        kept = math.prod(values.shape[len(dims) :])
        return exact_rows.round_row_sums(values.reshape(-1, kept), divisor, values.dtype, columns=True)
    return exact_rows.round_row_sums(_rows(values, dims), divisor, values.dtype)


def _states(values: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """Exact states of the sums over ``dims``, shaped (*kept dims, STATE_LEN)."""
    kept_shape = tuple(n for d, n in enumerate(values.shape) if d not in dims)
    states = exact_rows.row_states(_rows(values, dims))
    return states.reshape((*kept_shape, states.shape[-1]))


def _whole_sum(values: np.ndarray, divisor: int) -> tuple[np.ndarray, Any]:
    """(the sum of every element ÷ ``divisor``, rounded; the partial sum a global record keeps):
    the bounded fast path for float32/float16, proven or else recomputed exactly."""
    if values.dtype in BOUNDED_DTYPES and values.size:
        bounded = exact_rows.bounded_total(values)
        value = rounding.bounded_value(bounded.state, bounded.magnitude_total, divisor, values.dtype)
        if value is not None:
            return value, bounded
    states = _states(values, tuple(range(values.ndim)))
    return exact_rows.round_rows(states, divisor, values.dtype), states


def _device_whole_sum(t: Tensor, divisor: int) -> np.ndarray:
    """A float32/float16 CUDA tensor's whole sum: compensated sums on the device, decided on the
    host from their exact sum and the errors' bound (the host's exact sum where it cannot)."""
    from klflow.kernels import elementwise_cuda, exact_sum

    sums, errors, magnitude_total = elementwise_cuda.compensated_sum(t._data)
    state = exact_rows.row_states(np.stack([sums, errors]).reshape(1, -1))[0]
    exact_sum.normalize(state)
    value = rounding.bounded_value(state, magnitude_total, divisor, t.dtype.numpy)
    if value is not None:
        return value
    return host_reduce(_host(t), tuple(range(t.ndim)), False, divisor)


def host_reduce(values: np.ndarray, dims: Sequence[int], keepdim: bool, divisor: int) -> np.ndarray:
    """The exact sums over ``dims`` ÷ ``divisor``, rounded to ``values``' dtype (host arrays)."""
    if len(dims) == values.ndim:
        rounded, _ = _whole_sum(values, divisor)
    else:
        rounded = _round_sums(values, dims, divisor)
    return rounded.reshape(_out_shape(values.shape, dims, keepdim))


def _host(t: Tensor) -> np.ndarray:
    from klflow.conversion import host_values

    return np.asarray(host_values(t))


def _on_device(host: np.ndarray, like: Tensor) -> Any:
    if not like.is_cuda:
        return host
    from klflow import cuda

    return cuda.to_device(host, like.device)


def reduce(t: Tensor, dim: Any = None, keepdim: bool = False, mean: bool = False) -> Tensor:
    """``t.sum(dim, keepdim)`` or ``t.mean(dim, keepdim)``."""
    if not t.dtype.is_floating_point:
        raise TypeError(
            f"{'mean' if mean else 'sum'}() of a {t.dtype} tensor is not supported (klflow has no "
            f"integer dtypes); convert it first, e.g. with .float()"
        )
    dims = reduced_dims(dim, t.ndim)
    shape = tuple(t.shape)
    divisor = math.prod(shape[d] for d in dims) if mean else 1
    if t.is_global:
        out, source = _global_reduce(t, dims, bool(keepdim), divisor)
    elif t.is_cuda and len(dims) == t.ndim and t.dtype.numpy in BOUNDED_DTYPES and t.numel():
        out = Tensor(
            _on_device(_device_whole_sum(t, divisor).reshape(_out_shape(shape, dims, keepdim)), t),
            device=t.device,
        )
        source = t
    else:
        out = Tensor(_on_device(host_reduce(_host(t), dims, bool(keepdim), divisor), t), device=t.device)
        source = t
    keep_shape = _out_shape(shape, dims, True)

    def gradients(g: Tensor) -> tuple[Tensor]:
        from klflow.ops.arithmetic import reshape

        spread = expand(reshape(g, keep_shape), shape, source)
        return (to_layout_of(spread / divisor if mean else spread, source),)

    return _record(out, "mean" if mean else "sum", [source], gradients)


def _global_reduce(t: Tensor, dims: tuple[int, ...], keepdim: bool, divisor: int) -> tuple[Tensor, Tensor]:
    reduces_split = any(s.is_split and s.dim in dims for s in t.sbp)
    if reduces_split and t._global.partial_axes():
        # New partial axes beside old ones: make the old ones whole first (exactly, from their record).
        t = _boxed(
            t, [sbp_module.broadcast if s.is_partial_sum else s for s in t.sbp], "sum() of a global tensor"
        )
    out_sbp = tuple(sbp_rules.reduction_axis(s, set(dims), keepdim) for s in t.sbp)
    spec = GlobalSpec(t.placement, out_sbp, _out_shape(t.shape, dims, keepdim))
    if not global_tensors.is_member(t.placement):
        return global_tensors.empty_component(spec, t.dtype.numpy), t
    values = _host(t)
    component_shape = spec.component_shape_of(_rank())
    record = None
    if reduces_split and len(dims) == values.ndim:
        value, partial = _whole_sum(values, divisor)
        data = value.reshape(component_shape)
        record = _loss_like_partial(partial, values, divisor, t.dtype)
    elif reduces_split:
        states = _states(values, dims)
        data = exact_rows.round_rows(states, divisor, values.dtype).reshape(component_shape)
        record = ExactStates(states.reshape((*component_shape, states.shape[-1])), divisor, values.dtype)
    else:
        data = host_reduce(values, dims, keepdim, divisor).reshape(component_shape)
    if record is None and t._global.partial is not None and spec.partial_axes():
        record = Deferred(lambda v: host_reduce(v, dims, keepdim, divisor), [t._global.partial])
    out = Tensor(_on_device(data, t), device=t.device, global_info=GlobalSpec(*_fields(spec), record))
    return out, t


def _loss_like_partial(partial: Any, values: np.ndarray, divisor: int, dtype: Any) -> PartialSum:
    """A whole sum's record, as a loss keeps its own: the bounded block sums with the exact
    recomputation for the rare undecided total, or the exact state itself."""
    if isinstance(partial, BoundedSum):
        return PartialSum(
            partial.state,
            partial.magnitude_total,
            divisor,
            dtype,
            lambda: _states(values, tuple(range(values.ndim))).reshape(-1),
        )
    return PartialSum(partial.reshape(-1), 0.0, divisor, dtype)


def _fields(spec: GlobalSpec) -> tuple:
    return spec.placement, spec.sbp, spec.shape


def _rank() -> int:
    from klflow.distributed import comm

    return comm.rank()


def sum_to_shape(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t`` summed over its broadcast dims down to ``shape`` (the gradient of broadcasting)."""
    from klflow.ops.arithmetic import reshape

    lead = t.ndim - len(shape)
    dims = [d for d in range(t.ndim) if d < lead or (shape[d - lead] == 1 and t.shape[d] != 1)]
    out = reduce(t, tuple(dims), keepdim=True) if dims else t
    return reshape(out, shape) if tuple(out.shape) != tuple(shape) else out


def expand(t: Tensor, shape: tuple[int, ...], like: Tensor | None = None) -> Tensor:
    """``t`` broadcast to ``shape`` (a new array); for a global ``t`` the result takes the
    gradient layout of ``like`` (a tensor of that shape), so no rank builds more than its piece."""
    shape = tuple(shape)
    source_shape = tuple(t.shape)
    if tuple(t.shape) == shape:
        return t
    if t.is_global:
        target = global_tensors.gradient_spec(like._global.layout()) if like is not None else None
        out_sbp = target.sbp if target is not None else tuple(sbp_module.broadcast for _ in t.sbp)
        covers = sbp_rules.covering(source_shape, shape)
        lead = len(shape) - len(source_shape)
        need = [
            sbp_module.split(s.dim - lead) if s.is_split and covers(s.dim) else sbp_module.broadcast
            for s in out_sbp
        ]
        boxed = _boxed(t, need, "expand() of a global tensor")
        spec = GlobalSpec(t.placement, tuple(out_sbp), shape)
        if not global_tensors.is_member(t.placement):
            out = global_tensors.empty_component(spec, t.dtype.numpy)
        else:
            local = _broadcast_data(boxed, spec.component_shape_of(_rank()))
            out = Tensor(local, device=t.device, global_info=spec)
        source = boxed
    else:
        out = Tensor(_broadcast_data(t, shape), device=t.device)
        source = t
    return _record(out, "expand", [source], lambda g: (to_layout_of(g, source),))


def _broadcast_data(t: Tensor, shape: tuple[int, ...]) -> Any:
    if t.is_cuda:
        from klflow.kernels import elementwise_cuda

        return elementwise_cuda.binary("left", t._data, t._data, shape, t.dtype.numpy)
    return np.ascontiguousarray(np.broadcast_to(t._data, shape))
