"""Creating tensors: constants and counter-based random values, local or global.

A global tensor is made where it lives: each rank computes only its own component of the
logical value, and no data moves. Along a partial_sum mesh axis the first rank of the axis holds
the value and the others zeros (so the sum is the value). A global creation call is agreed over
every rank of the job first (its size, dtype, placement, SBP and, for random values, the
generator's seed and call number), so a rank that asks for something else, or whose generator
is elsewhere, makes every rank raise the same error instead of making different data.

>>> from klflow import dtypes
>>> create("constant", (2,), dtypes.float32, None, None, None, value=3.0).tolist()
[3.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klflow import dtypes
from klflow import random as generators
from klflow.device import device as Device
from klflow.distributed import comm
from klflow.distributed.layout import GlobalSpec
from klflow.ops import global_tensors
from klflow.tensor import Tensor

CPU_TYPE = "cpu"
SERIAL_BELOW = 1 << 15  # elements under which handing pieces to the worker threads costs more


def _strides(shape: tuple[int, ...]) -> np.ndarray:
    """C-order strides in elements."""
    strides = np.ones(len(shape), dtype=np.int64)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return strides


def _spans(n: int) -> list[tuple[int, int]]:
    """Pieces of ``range(n)`` for klflow's worker threads (one piece below ``SERIAL_BELOW``)."""
    from klflow.kernels import pool

    threads = pool.thread_count()
    if n < SERIAL_BELOW or threads == 1:
        return [(0, n)]
    step = -(-n // (threads * 2))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def _random_host(
    ranges: list[tuple[int, int]], shape: tuple[int, ...], dtype: dtypes.dtype, state: tuple, normal: bool
) -> np.ndarray:
    from klflow.kernels import philox, pool

    seed, offset = state
    extents = tuple(stop - start for start, stop in ranges)
    wide = np.float32 if dtype.numpy == np.float32 else np.float64  # the kernel writes these
    out = np.empty(int(np.prod(extents, dtype=np.int64)), dtype=wide)
    bits = philox.UNIFORM_BITS[dtype.name]
    if out.size:
        kernel = philox.fill_kernel(normal, bits)
        arguments = (
            np.array([start for start, _ in ranges], dtype=np.int64),
            np.array(extents, dtype=np.int64),
            _strides(shape),
            seed & 0xFFFFFFFF,
            seed >> 32,
            offset & 0xFFFFFFFF,
            offset >> 32,
        )
        spans = _spans(out.size)
        pool.run(lambda i: kernel(out, *spans[i], *arguments), len(spans))
    return dtypes.cast_host(out, dtype).reshape(extents)


def _random_device(
    ranges: list[tuple[int, int]],
    shape: tuple[int, ...],
    dtype: dtypes.dtype,
    state: tuple,
    normal: bool,
    device: Device,
) -> Any:
    from klflow import cuda
    from klflow.kernels import cuda_random, philox

    seed, offset = state
    extents = tuple(stop - start for start, stop in ranges)
    wide = np.float32 if dtype.numpy == np.float32 else np.float64
    numba_cuda = cuda._select(device)
    out = numba_cuda.device_array(int(np.prod(extents, dtype=np.int64)), dtype=wide)
    cuda_random.fill(
        out,
        np.array([start for start, _ in ranges], dtype=np.int64),
        np.array(extents, dtype=np.int64),
        _strides(shape),
        seed,
        offset,
        normal,
        philox.UNIFORM_BITS[dtype.name],
    )
    out = out.reshape(extents)
    return out if out.dtype == dtype.numpy else cuda.cast(out, dtype.numpy)


def _filled(extents: tuple[int, ...], value: float, dtype: dtypes.dtype, device: Device) -> Any:
    if device.type == CPU_TYPE:
        return np.full(extents, dtypes.cast_host(np.array(value), dtype), dtype=dtype.numpy)
    from klflow import conversion

    return conversion.full(extents, value, dtype, device)


def _component(
    kind: str,
    value: float | None,
    spec_shape: tuple[int, ...],
    ranges: list[tuple[int, int]],
    zero: bool,
    dtype: dtypes.dtype,
    device: Device,
    state: tuple | None,
) -> Any:
    """The data of one component: elements ``ranges`` of the logical value (zeros if ``zero``)."""
    extents = tuple(stop - start for start, stop in ranges)
    if kind == "constant" or zero:
        return _filled(extents, 0.0 if zero else value, dtype, device)
    normal = kind == "normal"
    if device.type == CPU_TYPE:
        return _random_host(ranges, spec_shape, dtype, state, normal)
    return _random_device(ranges, spec_shape, dtype, state, normal, device)


def create(
    kind: str,
    shape: tuple[int, ...],
    dtype: dtypes.dtype,
    device: Device | None,
    placement: Any,
    sbp: Any,
    *,
    value: float | None = None,
    requires_grad: bool = False,
    generator: generators.Generator | None = None,
    name: str = "tensor creation",
) -> Tensor:
    """A new tensor of ``kind`` ``"constant"`` (``value``), ``"uniform"`` or ``"normal"``:
    local on ``device``, or global on ``placement`` with ``sbp``."""
    random = kind != "constant"
    generator = generator or generators.default_generator
    if placement is None and sbp is None:
        device = device or Device("cpu")
        dtypes.check_device_supports(dtype, device)
        state = generator.take() if random else None
        ranges = [(0, n) for n in shape]
        data = _component(kind, value, shape, ranges, False, dtype, device, state)
        out = Tensor(data, device=device)
        out.requires_grad = requires_grad
        return out
    return _create_global(kind, shape, dtype, device, placement, sbp, value, requires_grad, generator, name)


def _create_global(
    kind: str,
    shape: tuple[int, ...],
    dtype: dtypes.dtype,
    device: Device | None,
    placement: Any,
    sbp: Any,
    value: float | None,
    requires_grad: bool,
    generator: generators.Generator,
    name: str,
) -> Tensor:
    random = kind != "constant"
    problem: Exception | None = None
    signature = None
    try:
        if placement is None:
            raise ValueError(f"{name}(): sbp={sbp!r} was given without placement=; pass both, or neither")
        if sbp is None:
            raise ValueError(
                f"{name}(): placement={placement!r} was given without sbp=; pass both, or neither"
            )
        if device is not None:
            raise ValueError(
                f"{name}(): device={str(device)!r} and placement= were both given; a global tensor's "
                f"device follows its placement, so pass one of them"
            )
        placement, signature = global_tensors._parse_arguments(placement, sbp)
        global_tensors._check_split_dims(signature, len(shape), shape)
        dtypes.check_device_supports(dtype, placement.type)
    except Exception as err:  # any class: reported to every rank by the agreement below
        problem = err
    state = generator.peek() if random else None
    fill = f", value {value!r}" if kind == "constant" else f", seed {state[0]}, random call {state[1]}"
    call = (
        f"{name}(size={list(shape)}, dtype={dtype}, placement={placement!r}, sbp={signature!r}, "
        f"requires_grad={requires_grad}{fill})"
    )
    if global_tensors.spmd_checks_enabled():
        comm.world().agree("check", call, problem, context=f"{name}()")
    elif problem is not None:
        raise problem
    if random:
        generator.take(state)
    spec = GlobalSpec(placement, signature, tuple(shape))
    me = comm.rank()
    if not global_tensors.is_member(placement):
        out = global_tensors.empty_component(spec, dtype.numpy)
    else:
        coordinates = placement.coordinates_of(me)
        zero = any(s.is_partial_sum and coordinates[axis] != 0 for axis, s in enumerate(signature))
        if kind == "constant" and value == 0:
            zero = False  # every component holds the zero itself, so that -0.0 sums to -0.0
        device = global_tensors._device_for(placement)
        data = _component(kind, value, spec.shape, spec.ranges_of(me), zero, dtype, device, state)
        out = Tensor(data, device=device, global_info=spec)
    out._requires_grad = bool(requires_grad)
    return out
