"""Elementwise tensor arithmetic with autograd, for local and global tensors: ``+ - * /``, ``**``
by a scalar, unary ``-``, ``exp``, ``log``, comparisons, ``reshape``/``view`` and ``clone``.

Broadcasting follows NumPy/OneFlow; a gradient is summed back (exactly) to its input's shape.
dtypes promote as in PyTorch/OneFlow: the wider float of two tensors (a 0-dim tensor defers to a
dimensioned one), a Python scalar keeps the tensor's dtype, ``bool`` tensors promote to the other
operand's float. On the CPU every ``+ - * /`` is NumPy's IEEE operation in the result dtype
(a Python scalar is first rounded to the tensor's dtype, as OneFlow's scalar operations do;
float16 is computed in float32 and rounded once, exact for ``+ - * /``); on CUDA the kernels of
:mod:`klflow.kernels.elementwise_cuda` give the same bits for ``+ - * /``.

Global tensors follow the rules of :mod:`klflow.distributed.sbp_rules` (operands are boxed to a
common signature first, recorded for autograd); partial-sum results keep an exact record
(:mod:`klflow.ops.partial_values`), so their values do not depend on the number of ranks.

>>> import klflow as flow
>>> x = flow.tensor([1.0, 2.0], requires_grad=True)
>>> y = (x * x + 1) / 2
>>> y.sum().backward(); x.grad.tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from klflow import dtypes
from klflow.autograd import graph
from klflow.distributed import sbp as sbp_module
from klflow.distributed import sbp_rules
from klflow.distributed.layout import GlobalSpec
from klflow.ops import global_tensors
from klflow.ops.partial_values import Deferred
from klflow.tensor import Tensor, as_tensor_arg

Operand = Tensor | float

ARITHMETIC = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power}
COMPARISONS = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}
_KIND = {"add": sbp_rules.ADD, "sub": sbp_rules.ADD, "mul": sbp_rules.MUL, "div": sbp_rules.DIV}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
_SYMBOL.update({"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="})


# ----------------------------------------------------------------- operands and dtypes
def operand(value: Any) -> Operand | None:
    """A tensor, a Python number (as float) or an array-like as a tensor; None if unsupported."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float)) or (isinstance(value, np.generic) and value.ndim == 0):
        if isinstance(value, (bool, np.bool_)):
            return value  # kept: True/False compare with bool tensors
        return float(value)
    if isinstance(value, np.ndarray):
        return as_tensor_arg(value, "operand")
    return None


def result_dtype(a: Operand, b: Operand) -> dtypes.dtype:
    """PyTorch's promotion for the dtypes klflow has (float16/32/64 and bool)."""
    if not isinstance(a, Tensor):
        a, b = b, a
    if not isinstance(b, Tensor):  # a tensor and a Python scalar
        if a.dtype == dtypes.bool_ and not isinstance(b, (bool, np.bool_)):
            return dtypes.float32  # the default float dtype
        return a.dtype
    if a.dtype == b.dtype:
        return a.dtype
    if a.dtype == dtypes.bool_:
        return b.dtype
    if b.dtype == dtypes.bool_:
        return a.dtype
    if (a.ndim == 0) != (b.ndim == 0):  # a 0-dim tensor does not widen a dimensioned one
        return b.dtype if a.ndim == 0 else a.dtype
    if {a.dtype.name, b.dtype.name} == {"float16", "bfloat16"}:
        return dtypes.float32  # neither holds the other
    return a.dtype if a.dtype.itemsize >= b.dtype.itemsize else b.dtype


def _compute_dtype(dtype: dtypes.dtype) -> np.dtype:
    """float16 computes in float32 (as NumPy and PyTorch), bfloat16 in float64 (rounded once
    from it, as klflow's bfloat16 does everywhere)."""
    if dtype == dtypes.float16:
        return np.dtype(np.float32)
    if dtypes.is_bfloat16(dtype):  # by name: asking does not load ml_dtypes
        return np.dtype(np.float64)
    return dtype.numpy


def _values(a: Any, dtype: dtypes.dtype) -> np.ndarray:
    """``a`` (an array or a Python scalar) as values of ``dtype``, each rounded once."""
    a = np.asarray(a)
    if a.dtype == dtype.numpy:
        return a
    if dtypes.is_bfloat16(dtype):
        return dtypes.cast_host(a.astype(np.float64), dtype)
    return a.astype(dtype.numpy)


def _rounded(out: np.ndarray, dtype: dtypes.dtype) -> np.ndarray:
    return dtypes.cast_host(np.asarray(out), dtype)


def broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise RuntimeError(
            f"The size of tensor a ({list(a)}) must match the size of tensor b ({list(b)}) at "
            f"every non-singleton dimension (they cannot be broadcast together)"
        ) from None


# ----------------------------------------------------------------- host and device math
def host_binary(op: str, a: Any, b: Any, value_dtype: dtypes.dtype) -> np.ndarray:
    """``a op b`` on host arrays or Python scalars: values of ``value_dtype`` (comparisons give
    bool; float16 is computed in float32 and rounded once)."""
    # Every operand is first a value of the result dtype (a Python scalar is rounded to it, as
    # OneFlow's scalar ops and NumPy do); float16 arithmetic then runs in float32, rounded once.
    compute = _compute_dtype(value_dtype)
    x = _values(a, value_dtype).astype(compute, copy=False)
    y = _values(b, value_dtype).astype(compute, copy=False)
    with np.errstate(all="ignore"):
        if op in COMPARISONS:
            return np.asarray(COMPARISONS[op](x, y))
        out = np.asarray(ARITHMETIC[op](x, y))
    return _rounded(out, value_dtype)


def host_unary(op: str, a: np.ndarray) -> np.ndarray:
    """``-a`` exactly; ``exp``/``log`` from klflow's float64 functions (the CUDA kernels' source,
    so both devices give the same bits), rounded to float32 first for float32 and float16."""
    dtype = dtypes.of_array(a.dtype)
    if op == "neg":
        return np.asarray(np.negative(a))
    from klflow.kernels import elementwise_cpu

    narrow = dtype in (dtypes.float32, dtypes.float16)
    out = getattr(elementwise_cpu, op)(np.asarray(a), np.dtype(np.float32 if narrow else np.float64))
    return _rounded(out, dtype)


def _device_operand(value: Any, compute: np.dtype) -> Any:
    from numba import cuda

    if isinstance(value, Tensor):
        return value._data
    return cuda.to_device(np.array([value], dtype=compute))


def _binary_data(op: str, a: Operand, b: Operand, value_dtype: dtypes.dtype, out_shape: tuple) -> Any:
    tensor = a if isinstance(a, Tensor) else b
    if not tensor.is_cuda:
        x = a._data if isinstance(a, Tensor) else a
        y = b._data if isinstance(b, Tensor) else b
        return host_binary(op, x, y, value_dtype)
    from klflow.kernels import elementwise_cuda

    # The kernel reads operands of any dtype exactly as float64; scalars come in the result dtype.
    x, y = _device_operand(a, value_dtype.numpy), _device_operand(b, value_dtype.numpy)
    out_dtype = np.dtype(np.bool_) if op in COMPARISONS else value_dtype.numpy
    return elementwise_cuda.binary(op, x, y, out_shape, out_dtype)


def _unary_data(op: str, t: Tensor) -> Any:
    if not t.is_cuda:
        return host_unary(op, t._data)
    from klflow.kernels import elementwise_cuda

    return elementwise_cuda.unary(op, t._data)


# ----------------------------------------------------------------- recording
def _record(out: Tensor, op_name: str, inputs: Sequence[Tensor | None], gradients: Callable) -> Tensor:
    if graph.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        layout = out._global.layout() if out._global is not None else None
        out.grad_fn = graph.FunctionNode(op_name, inputs, gradients, layout)
        out._requires_grad = True
    return out


def to_layout_of(grad: Tensor, like: Tensor) -> Tensor:
    """A gradient for ``like``: summed to its shape, in its gradient layout (global)."""
    from klflow.ops import sums

    if tuple(grad.shape) != tuple(like.shape):
        grad = sums.sum_to_shape(grad, tuple(like.shape))
    if grad.dtype != like.dtype:
        grad = grad.to(like.dtype)
    if like._global is not None:
        spec = global_tensors.gradient_spec(like._global.layout())
        grad = global_tensors.redistributed(grad, spec, "a gradient to its input's layout")
    return grad


# ----------------------------------------------------------------- binary operations
def binary(op: str, a: Any, b: Any) -> Tensor:
    """``a op b`` for ``op`` in add, sub, mul, div, pow and the comparisons; one side may be a
    Python number."""
    x, y = operand(a), operand(b)
    if x is None or y is None:
        bad = a if x is None else b
        raise TypeError(
            f"unsupported operand type(s) for {_SYMBOL[op]}: {type(a).__name__} and {type(b).__name__} "
            f"({type(bad).__name__} is neither a tensor nor a number)"
        )
    value_dtype = result_dtype(x, y)
    if value_dtype == dtypes.bool_ and op not in COMPARISONS and op != "mul":
        raise TypeError(
            f"{_SYMBOL[op]} of two bool operands is not supported; convert one with .float() first"
        )
    tensors = [v for v in (x, y) if isinstance(v, Tensor)]
    _check_pair(tensors, op)
    if tensors[0].is_global:
        return _global_binary(op, x, y, value_dtype)
    shape = broadcast_shape(*(t.shape for t in tensors)) if len(tensors) == 2 else tuple(tensors[0].shape)
    data = _binary_data(op, x, y, value_dtype, shape)
    out = Tensor(data, device=tensors[0].device)
    if op in COMPARISONS:
        return out
    return _record(out, op, [v if isinstance(v, Tensor) else None for v in (x, y)], _gradients(op, x, y, out))


def _check_pair(tensors: list[Tensor], op: str) -> None:
    if len(tensors) != 2:
        return
    a, b = tensors
    if a.is_global != b.is_global:
        raise RuntimeError(
            f"{_SYMBOL[op]} needs both tensors local or both global; got a "
            f"{'global' if a.is_global else 'local'} and a {'global' if b.is_global else 'local'} "
            f"tensor. Convert the local one with to_global()"
        )
    if not a.is_global and a.device != b.device:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, "
            f"{a.device} and {b.device}!"
        )


def _gradients(op: str, a: Operand, b: Operand, out: Tensor) -> Callable:
    """The backward of ``out = a op b`` in differentiable operations."""
    ta = a if isinstance(a, Tensor) else None
    tb = b if isinstance(b, Tensor) else None

    def gradients(g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        ga = gb = None
        if op == "add":
            ga, gb = g, g
        elif op == "sub":
            ga, gb = g, (-g if tb is not None else None)
        elif op == "mul":
            ga = g * b if ta is not None else None
            gb = g * a if tb is not None else None
        elif op == "div":
            ga = g / b if ta is not None else None
            gb = -g * ((a / b) / b) if tb is not None else None
        elif op == "pow":
            if ta is not None and tb is None:  # tensor ** scalar, as PyTorch: 0 for exponent 0
                ga = g * 0.0 if b == 0 else g * (ta ** (b - 1.0) * b)
            elif ta is not None:
                ga = g * (tb * ta ** (tb - 1.0))
            if tb is not None and ta is None:  # scalar ** tensor
                log_base = math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)
                gb = g * ((a**tb) * log_base)
            elif tb is not None:
                gb = g * ((ta**tb) * ta.log())
        return (
            to_layout_of(ga, ta) if ga is not None and ta is not None else None,
            to_layout_of(gb, tb) if gb is not None and tb is not None else None,
        )

    return gradients


# ----------------------------------------------------------------- unary operations
def unary(op: str, t: Tensor) -> Tensor:
    """``-t``, ``t.exp()`` or ``t.log()``."""
    if t.dtype == dtypes.bool_:
        if op == "neg":
            raise TypeError(
                "Negation, the `-` operator, on a bool tensor is not supported. If you are trying to "
                "invert a mask, use the `~` or `logical_not()` operator instead."
            )
        raise TypeError(f"{op}() of a bool tensor is not supported; convert it with .float() first")
    if t.is_global:
        return _global_unary(op, t)
    out = Tensor(_unary_data(op, t), device=t.device)
    return _record(out, op, [t], _unary_gradients(op, t, out))


def _unary_gradients(op: str, t: Tensor, out: Tensor) -> Callable:
    saved = out.detach()

    def gradients(g: Tensor) -> tuple[Tensor]:
        if op == "neg":
            return (-g,)
        if op == "exp":
            # When the gradient is itself differentiated the saved output must carry its graph.
            return (g * (t.exp() if graph.is_grad_enabled() else saved),)
        return (g / t,)

    return gradients


# ----------------------------------------------------------------- shapes
def _resolved_shape(shape: Sequence[int], numel: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise RuntimeError("only one dimension can be inferred")
    if any(s < -1 for s in shape):
        raise RuntimeError(f"invalid shape dimension {min(shape)}")
    known = math.prod(s for s in shape if s != -1)
    if unknown:
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    if math.prod(shape) != numel:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
    return shape


def shape_arguments(args: tuple) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def reshape(t: Tensor, shape: Sequence[int], op_name: str = "reshape") -> Tensor:
    """``t`` with another shape of the same number of elements (one dim may be -1)."""
    new_shape = _resolved_shape(shape, t.numel())
    old_shape = tuple(t.shape)
    if t.is_global:
        out, boxed = _global_reshape(t, new_shape)
        return _record(out, op_name, [boxed], lambda g: (to_layout_of(reshape(g, old_shape), boxed),))
    if t.is_cuda:
        from klflow.kernels import cuda as cuda_kernels

        out = Tensor(cuda_kernels._flat(t._data).reshape(new_shape), device=t.device)
    else:
        out = Tensor(t._data.reshape(new_shape), device=t.device)
    return _record(out, op_name, [t], lambda g: (reshape(g, old_shape),))


def clone(t: Tensor) -> Tensor:
    """A copy of ``t`` with its own memory; the gradient flows back unchanged."""
    if t.is_cuda:
        from klflow.kernels import cuda as cuda_kernels

        data = cuda_kernels.copy(t._data)
    else:
        data = t._data.copy()
    out = Tensor(data, device=t.device, global_info=t._global)
    return _record(out, "clone", [t], lambda g: (g,))


# ----------------------------------------------------------------- global tensors
def _check_placements(tensors: list[Tensor], what: str) -> None:
    """Mismatched placements: the same error on every rank of both placements (agreed)."""
    if len(tensors) < 2 or tensors[0].placement == tensors[1].placement:
        return
    a, b = tensors
    problem = RuntimeError(
        f"{what} needs both tensors on one placement; got {a.placement!r} and {b.placement!r}. "
        f"Move one with to_global(placement=...)"
    )
    group = global_tensors.communicator_of(a.placement, b.placement)
    if group is None:
        raise problem
    group.agree("check", f"{what} of tensors on different placements", problem, context=what)


def _first_on(spec: GlobalSpec, axes: Sequence[int]) -> bool:
    from klflow.distributed import comm

    coordinates = spec.placement.coordinates_of(comm.rank())
    return all(coordinates[axis] == 0 for axis in axes)


def _boxed(t: Tensor, sbp: Sequence[Any], reason: str) -> Tensor:
    if tuple(sbp) == tuple(t.sbp):
        return t
    return global_tensors.redistributed(t, t._global.with_sbp(sbp), reason)


def _global_binary(op: str, a: Operand, b: Operand, value_dtype: dtypes.dtype) -> Tensor:
    tensors = [v for v in (a, b) if isinstance(v, Tensor)]
    what = f"{_SYMBOL[op]} of global tensors"
    _check_placements(tensors, what)
    placement = tensors[0].placement
    kind = _KIND.get(op, sbp_rules.NONLINEAR)
    if len(tensors) == 2:
        out_shape = broadcast_shape(a.shape, b.shape)
        a_covers = sbp_rules.covering(a.shape, out_shape)
        b_covers = sbp_rules.covering(b.shape, out_shape)
        a_entries = [sbp_rules.aligned(s, a.shape, out_shape) for s in a.sbp]
        b_entries = [sbp_rules.aligned(s, b.shape, out_shape) for s in b.sbp]
        rules = [
            sbp_rules.binary_axis(kind, sa, sb, a_covers, b_covers)
            for sa, sb in zip(a_entries, b_entries, strict=True)
        ]
        a_target = [_operand_entry(t, a.shape, out_shape) for t, _, _ in rules]
        b_target = [_operand_entry(t, b.shape, out_shape) for _, t, _ in rules]
        out_sbp = tuple(o for _, _, o in rules)
        ba = _boxed(a, a_target, f"{what}: its first operand")
        bb = _boxed(b, b_target, f"{what}: its second operand")
    else:
        tensor = tensors[0]
        out_shape = tuple(tensor.shape)
        rules = [sbp_rules.unary_axis(kind, s, tensor_first=isinstance(a, Tensor)) for s in tensor.sbp]
        boxed = _boxed(tensor, [t for t, _ in rules], f"{what}: its tensor operand")
        out_sbp = tuple(o for _, o in rules)
        ba, bb = (boxed, b) if isinstance(a, Tensor) else (a, boxed)
    spec = GlobalSpec(placement, out_sbp, out_shape)
    out_dtype = dtypes.bool_ if op in COMPARISONS else value_dtype
    partial_axes = spec.partial_axes()
    if not global_tensors.is_member(placement):
        out = global_tensors.empty_component(spec, out_dtype.numpy)
    else:
        x, y = ba, bb
        if partial_axes and kind == sbp_rules.ADD and not _first_on(spec, partial_axes):
            # P + c: the scalar is added once (by the first rank), a B operand was zeroed by boxing.
            x = 0.0 if not isinstance(x, Tensor) else x
            y = 0.0 if not isinstance(y, Tensor) else y
        local_x = _local_view(x)
        local_y = _local_view(y)
        local_shape = _local_out_shape(local_x, local_y)
        data = _binary_data(op, local_x, local_y, value_dtype, local_shape)
        record = _deferred(op, (a, b), (ba, bb), spec, value_dtype) if partial_axes else None
        spec = GlobalSpec(placement, out_sbp, out_shape, record)
        out = Tensor(data, device=tensors[0].device, global_info=spec)
    if op in COMPARISONS:
        return out
    inputs = [v if isinstance(v, Tensor) else None for v in (ba, bb)]
    return _record(out, op, inputs, _gradients(op, ba, bb, out))


def _operand_entry(entry: Any, operand_shape: Sequence[int], out_shape: Sequence[int]) -> Any:
    """An output-dim entry back in the operand's own dims."""
    if not entry.is_split:
        return entry
    return sbp_module.split(entry.dim - (len(out_shape) - len(operand_shape)))


def _local_view(value: Operand) -> Operand:
    if isinstance(value, Tensor):
        return Tensor(value._data, device=value.device)
    return value


def _local_out_shape(x: Operand, y: Operand) -> tuple[int, ...]:
    shapes = [tuple(v.shape) for v in (x, y) if isinstance(v, Tensor)]
    return broadcast_shape(*shapes) if len(shapes) == 2 else shapes[0]


def _deferred(op: str, originals: tuple, boxed: tuple, spec: GlobalSpec, value_dtype: dtypes.dtype) -> Any:
    """The exact record of a partial-sum result: the op on the operands' values (None if an
    operand partial along the output's partial axes has no record of its own)."""
    axes = spec.partial_axes()
    operands = []
    for original, box in zip(originals, boxed, strict=True):
        if not isinstance(box, Tensor):
            operands.append(box)
            continue
        partial_here = any(box.sbp[axis].is_partial_sum for axis in axes)
        if not partial_here:
            operands.append(global_tensors.host(box).copy())
        elif original.sbp == box.sbp and original._global.partial is not None:
            operands.append(original._global.partial)
        elif all(not original.sbp[axis].is_partial_sum for axis in axes):
            operands.append(global_tensors.host(original).copy())  # B boxed to P for P + B
        else:
            return None
    return Deferred(lambda x, y: host_binary(op, x, y, value_dtype), operands)


def _global_unary(op: str, t: Tensor) -> Tensor:
    kind = sbp_rules.MUL if op == "neg" else sbp_rules.NONLINEAR
    rules = [sbp_rules.unary_axis(kind, s) for s in t.sbp]
    boxed = _boxed(t, [b for b, _ in rules], f"{op}() of a global tensor")
    spec = GlobalSpec(t.placement, tuple(o for _, o in rules), tuple(t.shape))
    if not global_tensors.is_member(t.placement):
        out = global_tensors.empty_component(spec, t.dtype.numpy)
    else:
        data = _unary_data(op, Tensor(boxed._data, device=boxed.device))
        record = None
        if spec.partial_axes() and boxed._global.partial is not None:
            record = Deferred(lambda v: host_unary(op, v), [boxed._global.partial])
        out = Tensor(
            data, device=boxed.device, global_info=GlobalSpec(spec.placement, spec.sbp, spec.shape, record)
        )
    return _record(out, op, [boxed], _unary_gradients(op, boxed, out))


def _split_after_reshape(old: Sequence[int], new: Sequence[int], dim: int) -> int | None:
    """The dim of ``new`` that a split of ``old`` along ``dim`` becomes when every component can
    reshape on its own (the elements before the dim and the dim itself are kept); else None."""
    before = math.prod(old[:dim])
    for d in range(len(new)):
        if math.prod(new[:d]) == before and new[d] == old[dim]:
            return d
    return None


def _global_reshape(t: Tensor, new_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    # A split survives when the dims up to it are unchanged; otherwise that axis is gathered first.
    targets = []
    out_sbp = []
    for s in t.sbp:
        new_dim = _split_after_reshape(t.shape, new_shape, s.dim) if s.is_split else None
        if s.is_split and new_dim is None:
            targets.append(sbp_module.broadcast)
            out_sbp.append(sbp_module.broadcast)
        else:
            targets.append(s)
            out_sbp.append(sbp_module.split(new_dim) if s.is_split else s)
    boxed = _boxed(t, targets, "reshape() of a global tensor")
    spec = GlobalSpec(t.placement, tuple(out_sbp), new_shape)
    if not global_tensors.is_member(t.placement):
        return global_tensors.empty_component(spec, t.dtype.numpy), boxed
    local_shape = spec.component_shape_of(_rank())
    if boxed.is_cuda:
        from klflow.kernels import cuda as cuda_kernels

        data = cuda_kernels._flat(boxed._data).reshape(local_shape)
    else:
        data = boxed._data.reshape(local_shape)
    record = None
    if spec.partial_axes() and boxed._global.partial is not None:
        shape_of_value = spec.with_sbp(
            [sbp_module.broadcast if s.is_partial_sum else s for s in spec.sbp]
        ).component_shape_of(_rank())
        record = Deferred(lambda v: np.reshape(v, shape_of_value), [boxed._global.partial])
    out = Tensor(
        data, device=boxed.device, global_info=GlobalSpec(spec.placement, spec.sbp, spec.shape, record)
    )
    return out, boxed


def _rank() -> int:
    from klflow.distributed import comm

    return comm.rank()
