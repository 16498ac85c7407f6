"""16-byte vector loads and stores for float32 CUDA kernels (numba-cuda only).

numba-cuda loads one 4-byte element per instruction; a reduction over float32 then keeps too
few bytes in flight to reach HBM bandwidth. These intrinsics emit PTX ``ld.global.nc.v4.f32`` /
``st.global.v4.f32``, moving four consecutive elements per instruction. They need 16-byte
aligned addresses: callers index multiples of 4 in arrays whose data pointer is 16-byte aligned
(:func:`aligned`). Importing this module raises ``ImportError`` where numba-cuda's extension API
is missing (numba's built-in CUDA target and its simulator): the scalar kernels are used there.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.cuda import cgutils
from numba.cuda.api_util import normalize_indices
from numba.cuda.extending import intrinsic  # numba-cuda only: ImportError elsewhere


def _element_pointer(context, builder, array_type, array, index_type, index):
    index_type, indices = normalize_indices(context, builder, index_type, index, array_type, array_type.dtype)
    array_struct = context.make_array(array_type)(context, builder, value=array)
    return cgutils.get_item_pointer(context, builder, array_type, array_struct, indices, wraparound=False)


@intrinsic
def load4(typingctx, array, index):
    """``(a[i], a[i+1], a[i+2], a[i+3])`` of a float32 array in one 16-byte load (i % 4 == 0)."""
    if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1):
        return None
    result = types.UniTuple(types.float32, 4)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        four = ir.LiteralStructType([ir.FloatType()] * 4)
        asm = ir.InlineAsm(
            ir.FunctionType(four, [pointer.type]),
            "ld.global.nc.v4.f32 {$0, $1, $2, $3}, [$4];",
            "=f,=f,=f,=f,l",
        )
        loaded = builder.call(asm, [pointer])
        values = [builder.extract_value(loaded, k) for k in range(4)]
        return context.make_tuple(builder, result, values)

    return result(array, index), codegen


@intrinsic
def store4(typingctx, array, index, a, b, c, d):
    """Write four float32 values to ``array[i:i+4]`` in one 16-byte store (i % 4 == 0)."""
    if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        values = [
            context.cast(builder, value, value_type, types.float32)
            for value, value_type in zip(args[2:], signature.args[2:], strict=True)
        ]
        asm = ir.InlineAsm(
            ir.FunctionType(ir.VoidType(), [pointer.type] + [ir.FloatType()] * 4),
            "st.global.v4.f32 [$0], {$1, $2, $3, $4};",
            "l,f,f,f,f",
            side_effect=True,
        )
        builder.call(asm, [pointer, *values])
        return context.get_dummy_value()

    return types.void(array, index, a, b, c, d), codegen


def aligned(array: Any) -> bool:
    """Whether a device array's data starts on a 16-byte boundary."""
    return array.__cuda_array_interface__["data"][0] % 16 == 0
