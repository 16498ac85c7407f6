"""Exact-text tests of tensor printing against OneFlow's documented output.

Each expected string is either OneFlow's (or PyTorch's) own documented output
with ``oneflow``/``torch`` renamed ``klflow``, or is worked out by hand from
the rules of OneFlow's ``python/oneflow/framework/tensor_str.py``; the comment
above each case names which.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

from klflow import printing
from klflow.printing import get_printoptions, set_printoptions, tensor_repr

F16, F32, F64 = "klflow.float16", "klflow.float32", "klflow.float64"
TWO_RANKS = 'klflow.placement(type="cpu", ranks=[0, 1])'
RANK_0 = 'klflow.placement(type="cpu", ranks=[0])'
SPLIT_0 = "(klflow.sbp.split(dim=0),)"
BROADCAST = "(klflow.sbp.broadcast,)"


def f32(values) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.fixture(autouse=True)
def fresh_options(monkeypatch):
    """Start every test from the default options with stdout not a terminal."""
    saved = dataclasses.replace(printing._OPTIONS)
    for field in dataclasses.fields(printing._PrintOptions):
        setattr(printing._OPTIONS, field.name, field.default)

    def no_terminal(*_args):
        raise OSError("not a terminal")

    monkeypatch.setattr(printing.os, "get_terminal_size", no_terminal)
    yield
    for field in dataclasses.fields(printing._PrintOptions):
        setattr(printing._OPTIONS, field.name, getattr(saved, field.name))


# --- The contract: OneFlow's KLDivLoss docstring -----------------------------


def test_kldivloss_doc_vector():
    # KLDivLoss(reduction="none") doc: fixed notation, one width for all,
    # the leading space reserved for the minus sign.
    values = f32([1.3514026, 0.0, -0.0836])
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([ 1.3514,  0.0000, -0.0836], dtype=klflow.float32)"
    )


def test_kldivloss_doc_vector_from_rounded_inputs():
    values = np.array([1.35140, 0.0, -0.08357], np.float32)
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([ 1.3514,  0.0000, -0.0836], dtype=klflow.float32)"
    )


@pytest.mark.parametrize(("value", "text"), [(0.4226, "0.4226"), (5.7801, "5.7801")])
def test_kldivloss_doc_scalars(value, text):
    # KLDivLoss(reduction="mean"/"sum") doc: 0-d tensors print without brackets.
    assert tensor_repr(np.array(value, np.float32), dtype_name=F32) == (
        f"tensor({text}, dtype=klflow.float32)"
    )


# --- Integer-valued floats ----------------------------------------------------


def test_integer_valued_floats_print_with_trailing_dot():
    # d2l autograd chapter (OneFlow edition): x.grad of 2*sum(x*x). Zero is
    # left out when choosing the width, so "0." is padded to "12."'s width.
    assert tensor_repr(f32([0, 4, 8, 12]), dtype_name=F32) == (
        "tensor([ 0.,  4.,  8., 12.], dtype=klflow.float32)"
    )


def test_integer_valued_floats_2d_with_negatives():
    # oneflow.Tensor docs: oneflow.tensor([[1., -1.], [1., -1.]]).
    assert tensor_repr(f32([[1, -1], [1, -1]]), dtype_name=F32) == (
        "tensor([[ 1., -1.],\n        [ 1., -1.]], dtype=klflow.float32)"
    )


def test_integer_valued_floats_diag():
    # oneflow.diag doc.
    assert tensor_repr(f32([1, 5, 9]), dtype_name=F32) == ("tensor([1., 5., 9.], dtype=klflow.float32)")


def test_integer_valued_scalar_and_zero_scalar():
    # oneflow.Tensor.nansum doc gives tensor(3., ...); an all-zero tensor has
    # no nonzero value to measure, so it keeps width 1 and prints "0.".
    assert tensor_repr(np.array(3.0, np.float32), dtype_name=F32) == ("tensor(3., dtype=klflow.float32)")
    assert tensor_repr(np.array(0.0, np.float32), dtype_name=F32) == ("tensor(0., dtype=klflow.float32)")


# --- Scientific notation ------------------------------------------------------


def test_scientific_for_wide_range_large_values():
    # OneFlow's test_tensor_str.py (float64 [[1.3, 2.4, 3.5], [-4.6, 5, 6e7]])
    # asserts "2.4000e+00", "-4.6000e+00", "6.0000e+07"; the ratio
    # 6e7 / 1.3 > 1000 switches to scientific, width 11 from "-4.6000e+00".
    values = np.array([[1.3, 2.4, 3.5], [-4.6, 5, 60000000]], np.float64)
    assert tensor_repr(values, dtype_name=F64) == (
        "tensor([[ 1.3000e+00,  2.4000e+00,  3.5000e+00],\n"
        "        [-4.6000e+00,  5.0000e+00,  6.0000e+07]], dtype=klflow.float64)"
    )


def test_scientific_for_integer_values_with_wide_range():
    # Same test file: integer-valued [[1, 2, 3], [4, 5, 600000]] shows
    # "6.0000e+05": integer mode also switches when max / min > 1000.
    values = np.array([[1, 2, 3], [4, 5, 600000]], np.float64)
    assert tensor_repr(values, dtype_name=F64) == (
        "tensor([[1.0000e+00, 2.0000e+00, 3.0000e+00],\n"
        "        [4.0000e+00, 5.0000e+00, 6.0000e+05]], dtype=klflow.float64)"
    )


def test_scientific_for_small_values():
    # d2l linear-regression chapter (OneFlow edition): the smallest magnitude
    # is below 1e-4; the grad_fn suffix no longer fits in 80 columns.
    values = f32([7.4911e-04, 1.6212e-05])
    assert tensor_repr(values, dtype_name=F32, grad_fn="broadcast_sub_backward") == (
        "tensor([7.4911e-04, 1.6212e-05], dtype=klflow.float32,\n       grad_fn=<broadcast_sub_backward>)"
    )


def test_scientific_for_ratio_above_1000_with_device():
    # OneFlow global-tensor guide, x.to_local() on rank 0: 1.2951 / 4.7072e-04
    # > 1000. The row is 76 columns by OneFlow's measure, so device wraps.
    values = f32(
        [
            [0.29186, -0.39442, 0.00047072, -0.32216, 0.17788],
            [-0.45284, 0.12361, -0.35962, 0.26651, 1.2951],
        ]
    )
    assert tensor_repr(values, dtype_name=F32, device="cuda:0") == (
        "tensor([[ 2.9186e-01, -3.9442e-01,  4.7072e-04, -3.2216e-01,  1.7788e-01],\n"
        "        [-4.5284e-01,  1.2361e-01, -3.5962e-01,  2.6651e-01,  1.2951e+00]],\n"
        "       device='cuda:0', dtype=klflow.float32)"
    )


def test_fixed_notation_with_device_then_dtype_wrapped():
    # Same guide, rank 1: fixed notation; device still fits, dtype wraps.
    values = f32(
        [
            [-0.4363, 0.9985, -2.5387, 0.3003, 0.3803],
            [0.0556, -0.8077, 1.1191, -2.1278, 0.1468],
        ]
    )
    assert tensor_repr(values, dtype_name=F32, device="cuda:1") == (
        "tensor([[-0.4363,  0.9985, -2.5387,  0.3003,  0.3803],\n"
        "        [ 0.0556, -0.8077,  1.1191, -2.1278,  0.1468]], device='cuda:1',\n"
        "       dtype=klflow.float32)"
    )


# --- nan, inf, negative zero -----------------------------------------------


def test_nan_takes_the_common_width():
    # oneflow asin doc: asin([-0.0126, 0.1886, -0.5606, 1.0285]).
    with np.errstate(invalid="ignore"):
        values = np.arcsin(f32([-0.0126, 0.1886, -0.5606, 1.0285]))
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([-0.0126,  0.1897, -0.5951,     nan], dtype=klflow.float32)"
    )


def test_inf_forces_scientific_notation():
    # OneFlow rule (unlike PyTorch): only zeros are set aside, so inf is the
    # largest magnitude and inf / 1.5 > 1000 selects scientific notation.
    values = f32([1.5, math.inf, -math.inf, 0.0])
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([1.5000e+00,        inf,       -inf, 0.0000e+00], dtype=klflow.float32)"
    )


def test_only_infinities_and_integers():
    # inf == ceil(inf) keeps integer mode; max > 1e8 then selects scientific,
    # and the width comes from "-inf".
    assert tensor_repr(f32([math.inf, -math.inf]), dtype_name=F32) == (
        "tensor([ inf, -inf], dtype=klflow.float32)"
    )


def test_mixed_nan_and_inf():
    # A NaN fails every comparison (max / min, max > 1e8, min < 1e-4), so the
    # notation stays fixed; nan and inf are right-aligned to "-2.0000".
    values = f32([math.inf, -2.0, 0.5, math.nan])
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([    inf, -2.0000,  0.5000,     nan], dtype=klflow.float32)"
    )


def test_negative_zero_in_integer_mode():
    # torch.ceil docstring: tensor([-0., -1., -1.,  1.]).
    assert tensor_repr(f32([-0.0, -1.0, -1.0, 1.0]), dtype_name=F32) == (
        "tensor([-0., -1., -1.,  1.], dtype=klflow.float32)"
    )


def test_negative_zero_in_fixed_mode():
    values = f32([1.0, 3.0, -0.0, -1.0, 0.5])
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([ 1.0000,  3.0000, -0.0000, -1.0000,  0.5000], dtype=klflow.float32)"
    )


# --- Alignment of negative values ----------------------------------------------


def test_negative_values_alignment():
    # oneflow.negative doc and oneflow._C.sin doc.
    assert tensor_repr(f32([-1.0, 1.0, -2.3]), dtype_name=F32) == (
        "tensor([-1.0000,  1.0000, -2.3000], dtype=klflow.float32)"
    )
    assert tensor_repr(f32([-0.5194, 0.1343, -0.4032, -0.2712]), dtype_name=F32) == (
        "tensor([-0.5194,  0.1343, -0.4032, -0.2712], dtype=klflow.float32)"
    )


def test_two_dimensional_widths_shared_across_rows():
    # oneflow.addmm doc (float64): width 8 from "100.6800" for every element.
    values = np.array([[100.68, 33.83, 126.87], [110.01, 43.48, 133.61]], np.float64)
    assert tensor_repr(values, dtype_name=F64) == (
        "tensor([[100.6800,  33.8300, 126.8700],\n"
        "        [110.0100,  43.4800, 133.6100]], dtype=klflow.float64)"
    )


# --- Nesting and line wrapping ---------------------------------------------


def test_vector_wraps_at_80_columns():
    # PyTorch PR #7632 example torch.randn(20): (80 - 7) // (7 + 2) = 8 per
    # line, continuation lines indented under the first element.
    values = f32(
        [
            0.8574,
            -1.1225,
            0.3135,
            1.7848,
            -0.8342,
            0.1214,
            -0.6393,
            -0.3480,
            1.4114,
            0.5102,
            -0.8206,
            1.6022,
            0.6310,
            1.9507,
            -1.5694,
            1.3168,
            0.1103,
            0.5242,
            0.3141,
            -0.0692,
        ]
    )
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([ 0.8574, -1.1225,  0.3135,  1.7848, -0.8342,  0.1214, -0.6393, -0.3480,\n"
        "         1.4114,  0.5102, -0.8206,  1.6022,  0.6310,  1.9507, -1.5694,  1.3168,\n"
        "         0.1103,  0.5242,  0.3141, -0.0692], dtype=klflow.float32)"
    )


def test_three_dimensional_blocks_and_row_wrapping():
    # One-hot encoding of "abc", shape (3, 1, 57), as printed by PyTorch: the
    # innermost rows sit at indent 9, (80 - 9) // 4 = 17 items per line,
    # and 3-D blocks are separated by a blank line.
    values = np.zeros((3, 1, 57), np.float32)
    for index in range(3):
        values[index, 0, index] = 1.0
    zeros_tail = (
        "          0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,\n"
        "          0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,\n"
        "          0., 0., 0., 0., 0., 0.]]"
    )
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([[[1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,\n"
        + zeros_tail
        + ",\n\n"
        "        [[0., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,\n"
        + zeros_tail
        + ",\n\n"
        "        [[0., 0., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,\n"
        + zeros_tail
        + "], dtype=klflow.float32)"
    )


def test_three_dimensional_single_row_with_wrapped_dtype():
    # oneflow.nn.functional.interpolate doc (linear, scale_factor=2).
    values = f32([[[1.0, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.0]]])
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([[[1.0000, 1.2500, 1.7500, 2.2500, 2.7500, 3.2500, 3.7500, 4.0000]]],\n"
        "       dtype=klflow.float32)"
    )


def test_three_dimensional_integer_blocks():
    # Rule: blocks of a 3-D tensor joined by ",\n\n" and indent + 1 spaces.
    values = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([[[ 0.,  1.,  2.],\n"
        "         [ 3.,  4.,  5.]],\n"
        "\n"
        "        [[ 6.,  7.,  8.],\n"
        "         [ 9., 10., 11.]]], dtype=klflow.float32)"
    )


# --- Summarisation above 1000 elements ---------------------------------------


def test_summarised_vector():
    # PyTorch PR #7632 example torch.randn(1001). Only the shown items set the
    # width, so the hidden 1e-9 values do not force scientific notation; the
    # dtype suffix no longer fits and wraps.
    values = np.full(1001, 1e-9, np.float32)
    values[:3] = [-0.5033, -0.4142, 0.7961]
    values[-3:] = [-0.9400, -0.4431, -0.6192]
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([-0.5033, -0.4142,  0.7961,  ..., -0.9400, -0.4431, -0.6192],\n       dtype=klflow.float32)"
    )


def test_summarised_matrix():
    # A (96, 50) embedding weight as printed by PyTorch: three rows and
    # columns at each end, "..." rows between; hidden entries are ignored.
    values = np.full((96, 50), 1000.0, np.float32)
    shown_rows = {
        0: ([-0.4441, 0.4617, 0.1288], [0.4624, 0.2199, -0.1290]),
        1: ([-0.4024, 0.2595, 0.4271], [0.3322, -0.1303, 0.0604]),
        2: ([0.2019, -0.1130, -0.1495], [-0.2575, 0.0146, -0.1554]),
        93: ([0.1529, 0.1099, -0.1428], [-0.1544, 0.1506, -0.0258]),
        94: ([0.1294, 0.0606, -0.0225], [-0.2985, 0.0162, -0.1880]),
        95: ([0.0975, -0.0968, -0.2453], [-0.2132, 0.1037, -0.2321]),
    }
    for row, (head, tail) in shown_rows.items():
        values[row, :3] = head
        values[row, -3:] = tail
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([[-0.4441,  0.4617,  0.1288,  ...,  0.4624,  0.2199, -0.1290],\n"
        "        [-0.4024,  0.2595,  0.4271,  ...,  0.3322, -0.1303,  0.0604],\n"
        "        [ 0.2019, -0.1130, -0.1495,  ..., -0.2575,  0.0146, -0.1554],\n"
        "        ...,\n"
        "        [ 0.1529,  0.1099, -0.1428,  ..., -0.1544,  0.1506, -0.0258],\n"
        "        [ 0.1294,  0.0606, -0.0225,  ..., -0.2985,  0.0162, -0.1880],\n"
        "        [ 0.0975, -0.0968, -0.2453,  ..., -0.2132,  0.1037, -0.2321]],\n"
        "       dtype=klflow.float32)"
    )


def test_summarised_tall_matrix_keeps_short_rows_whole():
    # A (N, 4) softmax output as printed by PyTorch: only the long dimension
    # is cut; the grad_fn suffix fits on the last line.
    values = np.full((300, 4), 0.25, np.float32)
    values[:3] = [
        [0.3033, 0.2106, 0.2452, 0.2409],
        [0.2837, 0.2427, 0.2772, 0.1964],
        [0.2531, 0.2589, 0.2593, 0.2287],
    ]
    values[-3:] = [
        [0.3547, 0.1965, 0.2106, 0.2383],
        [0.2942, 0.2076, 0.2231, 0.2751],
        [0.2361, 0.2187, 0.2966, 0.2485],
    ]
    assert tensor_repr(values, dtype_name=F32, grad_fn="StackBackward0") == (
        "tensor([[0.3033, 0.2106, 0.2452, 0.2409],\n"
        "        [0.2837, 0.2427, 0.2772, 0.1964],\n"
        "        [0.2531, 0.2589, 0.2593, 0.2287],\n"
        "        ...,\n"
        "        [0.3547, 0.1965, 0.2106, 0.2383],\n"
        "        [0.2942, 0.2076, 0.2231, 0.2751],\n"
        "        [0.2361, 0.2187, 0.2966, 0.2485]], dtype=klflow.float32,\n"
        "       grad_fn=<StackBackward0>)"
    )


def test_exactly_threshold_elements_are_not_summarised():
    # Summarisation needs numel > threshold (1000 by default).
    text = tensor_repr(np.ones(1000, np.float32), dtype_name=F32)
    assert "..." not in text
    assert text.count("1.") == 1000


# --- Empty tensors ------------------------------------------------------------


def test_empty_vector():
    # OneFlow's test_tensor_str.py: flow.tensor([]) prints "[]"; a 1-D empty
    # tensor does not show its size.
    assert tensor_repr(np.zeros((0,), np.float32), dtype_name=F32) == ("tensor([], dtype=klflow.float32)")


def test_empty_tensor_shows_its_size_before_dtype():
    # Rule (as in NumPy): an empty tensor that is not 1-D adds size=(...).
    assert tensor_repr(np.zeros((2, 0, 3), np.float32), dtype_name=F32) == (
        "tensor([], size=(2, 0, 3), dtype=klflow.float32)"
    )


def test_empty_global_tensor_with_all_suffixes():
    # Rule: placement, sbp, size, dtype, then requires_grad, wrapped at 80.
    values = np.zeros((0, 10), np.float32)
    assert tensor_repr(values, dtype_name=F32, placement=TWO_RANKS, sbp=SPLIT_0, requires_grad=True) == (
        'tensor([], placement=klflow.placement(type="cpu", ranks=[0, 1]),\n'
        "       sbp=(klflow.sbp.split(dim=0),), size=(0, 10), dtype=klflow.float32,\n"
        "       requires_grad=True)"
    )


# --- float16 and float64 ------------------------------------------------------


def test_float16_prints_its_float32_value():
    # OneFlow widens half tensors to float32 before formatting: half(0.1) is
    # 0.0999755859375 and half(1/3) is 0.333251953125.
    values = np.array([0.1, 1 / 3, -2.5], np.float16)
    assert tensor_repr(values, dtype_name=F16) == (
        "tensor([ 0.1000,  0.3333, -2.5000], dtype=klflow.float16)"
    )


def test_float16_rounding_visible_in_integer_mode():
    # half(2049) is 2048: the printed value is the stored one.
    values = np.array([2049.0, 3.0], np.float16)
    assert tensor_repr(values, dtype_name=F16) == ("tensor([2048.,    3.], dtype=klflow.float16)")


def test_float64_from_numpy():
    # OneFlow tensor-creation guide: flow.tensor(np.ones((2, 3))).
    assert tensor_repr(np.ones((2, 3)), dtype_name=F64) == (
        "tensor([[1., 1., 1.],\n        [1., 1., 1.]], dtype=klflow.float64)"
    )


def test_float64_rounds_its_exact_value():
    # oneflow.Tensor.new_full doc: 3.141592 in float64 prints 3.1416.
    assert tensor_repr(np.full((1, 2), 3.141592), dtype_name=F64) == (
        "tensor([[3.1416, 3.1416]], dtype=klflow.float64)"
    )


# --- Suffixes -----------------------------------------------------------------


def test_device_suffix_for_cuda_tensor():
    # oneflow.acosh doc (x2 on cuda).
    assert tensor_repr(f32([0.9624, 1.6094, 1.9827]), dtype_name=F32, device="cuda:0") == (
        "tensor([0.9624, 1.6094, 1.9827], device='cuda:0', dtype=klflow.float32)"
    )


@pytest.mark.parametrize("device", [None, "cpu", "cpu:0"])
def test_no_device_suffix_for_cpu_tensor(device):
    assert tensor_repr(f32([1.0]), dtype_name=F32, device=device) == ("tensor([1.], dtype=klflow.float32)")


def test_requires_grad_suffix_on_leaf():
    # d2l linear-regression chapter: net[0].bias.data.fill_(0) shows the bias.
    assert tensor_repr(f32([0.0]), dtype_name=F32, requires_grad=True) == (
        "tensor([0.], dtype=klflow.float32, requires_grad=True)"
    )


def test_grad_fn_suffix_on_result():
    # d2l autograd chapter: y = 2 * flow.sum(x * x).
    value = np.array(28.0, np.float32)
    assert tensor_repr(value, dtype_name=F32, grad_fn="scalar_mul_backward") == (
        "tensor(28., dtype=klflow.float32, grad_fn=<scalar_mul_backward>)"
    )


def test_grad_fn_replaces_requires_grad():
    # OneFlow DDP source comment: once b.grad is assigned, b prints grad_fn
    # and no longer requires_grad=True.
    assert (
        tensor_repr(f32([1.0]), dtype_name=F32, requires_grad=True, grad_fn="accumulate_grad")
        == "tensor([1.], dtype=klflow.float32, grad_fn=<accumulate_grad>)"
    )


def test_device_dtype_and_grad_fn_wrap_after_column_matrix():
    # OneFlow data-parallel guide, ddp_train.py result on cuda:0.
    values = f32([[2.00001], [2.99999]])
    assert tensor_repr(values, dtype_name=F32, device="cuda:0", grad_fn="accumulate_grad") == (
        "tensor([[2.0000],\n"
        "        [3.0000]], device='cuda:0', dtype=klflow.float32,\n"
        "       grad_fn=<accumulate_grad>)"
    )


def test_column_matrix_in_integer_mode_with_grad_fn():
    # OneFlow quick-start guide: w after training.
    assert tensor_repr(f32([[2.0], [3.0]]), dtype_name=F32, grad_fn="accumulate_grad") == (
        "tensor([[2.],\n        [3.]], dtype=klflow.float32, grad_fn=<accumulate_grad>)"
    )


def test_global_tensor_suffixes_at_80_columns():
    # oneflow.Tensor.global_to_global doc tensor; at 80 columns the sbp
    # suffix moves to the next line, indented by len("tensor(").
    assert tensor_repr(f32([0.0, 1.0]), dtype_name=F32, placement=TWO_RANKS, sbp=SPLIT_0) == (
        'tensor([0., 1.], placement=klflow.placement(type="cpu", ranks=[0, 1]),\n'
        "       sbp=(klflow.sbp.split(dim=0),), dtype=klflow.float32)"
    )


def test_global_tensor_suffixes_on_a_wide_terminal():
    # The same doc output, printed on a wide terminal: everything on one line.
    set_printoptions(linewidth=200)
    assert tensor_repr(f32([0.0, 1.0]), dtype_name=F32, placement=TWO_RANKS, sbp=SPLIT_0) == (
        'tensor([0., 1.], placement=klflow.placement(type="cpu", ranks=[0, 1]), '
        "sbp=(klflow.sbp.split(dim=0),), dtype=klflow.float32)"
    )


def test_global_parameters_in_state_dict_order():
    # OneFlow model-sharding guide, state_dict of a global Linear(2, 6),
    # printed on a terminal about 130 columns wide: placement, sbp, dtype,
    # requires_grad, each wrapped when it would pass the line width.
    set_printoptions(linewidth=130)
    weight = tensor_repr(
        np.ones((6, 2), np.float32),
        dtype_name=F32,
        placement=RANK_0,
        sbp=BROADCAST,
        requires_grad=True,
    )
    assert weight == (
        "tensor([[1., 1.],\n"
        "        [1., 1.],\n"
        "        [1., 1.],\n"
        "        [1., 1.],\n"
        "        [1., 1.],\n"
        '        [1., 1.]], placement=klflow.placement(type="cpu", ranks=[0]), '
        "sbp=(klflow.sbp.broadcast,), dtype=klflow.float32,\n"
        "       requires_grad=True)"
    )
    bias = tensor_repr(
        np.zeros(6, np.float32),
        dtype_name=F32,
        placement=RANK_0,
        sbp=BROADCAST,
        requires_grad=True,
    )
    assert bias == (
        'tensor([0., 0., 0., 0., 0., 0.], placement=klflow.placement(type="cpu", ranks=[0]), '
        "sbp=(klflow.sbp.broadcast,),\n"
        "       dtype=klflow.float32, requires_grad=True)"
    )


def test_global_tensor_ignores_device_and_prints_grad_fn_last():
    # Rule: a global tensor never shows device=; grad_fn comes after dtype.
    text = tensor_repr(
        np.array(0.4226, np.float32),
        dtype_name=F32,
        device="cuda:0",
        placement=TWO_RANKS,
        sbp=SPLIT_0,
        grad_fn="kl_div_loss_backward",
    )
    assert text == (
        'tensor(0.4226, placement=klflow.placement(type="cpu", ranks=[0, 1]),\n'
        "       sbp=(klflow.sbp.split(dim=0),), dtype=klflow.float32,\n"
        "       grad_fn=<kl_div_loss_backward>)"
    )


def test_placement_without_sbp_is_rejected():
    with pytest.raises(ValueError):
        tensor_repr(f32([1.0]), dtype_name=F32, placement=TWO_RANKS)


# --- Integer and bool tensors -------------------------------------------------


def test_integer_tensor_on_device():
    # oneflow.comm.all_reduce doc, rank 0.
    values = np.array([[1, 2], [3, 4]], np.int64)
    assert tensor_repr(values, dtype_name="klflow.int64", device="cuda:0") == (
        "tensor([[1, 2],\n        [3, 4]], device='cuda:0', dtype=klflow.int64)"
    )


def test_bool_tensor():
    # oneflow.isinf doc (v0.8.1).
    values = np.array([False, True, False, True, False])
    assert tensor_repr(values, dtype_name="klflow.bool") == (
        "tensor([False,  True, False,  True, False], dtype=klflow.bool)"
    )


# --- Print options ------------------------------------------------------------


def test_set_printoptions_precision_then_restore():
    # torch.set_printoptions doc: precision=2 gives 1.12, profile="default"
    # brings back 1.1235.
    values = f32([1.12345])
    set_printoptions(precision=2)
    assert tensor_repr(values, dtype_name=F32) == "tensor([1.12], dtype=klflow.float32)"
    set_printoptions(profile="default")
    assert tensor_repr(values, dtype_name=F32) == "tensor([1.1235], dtype=klflow.float32)"


def test_set_printoptions_threshold_then_restore():
    # torch.set_printoptions doc: threshold=5 summarises arange(10).
    values = np.arange(10, dtype=np.float32)
    set_printoptions(threshold=5)
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([0., 1., 2.,  ..., 7., 8., 9.], dtype=klflow.float32)"
    )
    set_printoptions(profile="default")
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([0., 1., 2., 3., 4., 5., 6., 7., 8., 9.], dtype=klflow.float32)"
    )


def test_sci_mode_forced_uses_widths_chosen_before_forcing():
    # OneFlow applies sci_mode after measuring widths in the automatic
    # notation (width 7 here), so longer scientific texts are not padded.
    set_printoptions(sci_mode=True)
    assert tensor_repr(f32([-0.25, 4.0, 0.5]), dtype_name=F32) == (
        "tensor([-2.5000e-01, 4.0000e+00, 5.0000e-01], dtype=klflow.float32)"
    )


def test_sci_mode_off_keeps_the_scientific_width():
    # Likewise the width measured in scientific notation (10) stays when
    # sci_mode=False forces fixed notation, so "0.0000" is padded to 10.
    set_printoptions(sci_mode=False)
    assert tensor_repr(f32([1e-5, 1.0]), dtype_name=F32) == (
        "tensor([    0.0000,     1.0000], dtype=klflow.float32)"
    )
    # Any later call without sci_mode returns to the automatic choice.
    set_printoptions(precision=4)
    assert tensor_repr(f32([1e-5, 1.0]), dtype_name=F32) == (
        "tensor([1.0000e-05, 1.0000e+00], dtype=klflow.float32)"
    )


def test_short_profile():
    set_printoptions(profile="short")
    assert get_printoptions() == {
        "precision": 2,
        "threshold": 1000,
        "edgeitems": 2,
        "linewidth": 80,
        "sci_mode": None,
    }
    values = np.linspace(0.0, 1.0, 1001, dtype=np.float32)
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([0.00, 0.00,  ..., 1.00, 1.00], dtype=klflow.float32)"
    )


def test_full_profile_never_summarises():
    set_printoptions(profile="full")
    assert get_printoptions()["threshold"] == math.inf
    assert "..." not in tensor_repr(np.ones(2000, np.float32), dtype_name=F32)


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError):
        set_printoptions(profile="long")


def test_default_options():
    assert get_printoptions() == {
        "precision": 4,
        "threshold": 1000,
        "edgeitems": 3,
        "linewidth": 80,
        "sci_mode": None,
    }


def test_linewidth_follows_the_terminal_until_set(monkeypatch):
    # OneFlow's default line width is the terminal's width (80 without one);
    # setting linewidth or a profile fixes it.
    monkeypatch.setattr(printing.os, "get_terminal_size", lambda *_args: os.terminal_size((40, 24)))
    values = f32([0.5, 0.25, 0.125, 0.0625, 0.75, 0.875])
    assert get_printoptions()["linewidth"] == 40
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([0.5000, 0.2500, 0.1250, 0.0625,\n        0.7500, 0.8750],\n       dtype=klflow.float32)"
    )
    set_printoptions(linewidth=80)
    assert tensor_repr(values, dtype_name=F32) == (
        "tensor([0.5000, 0.2500, 0.1250, 0.0625, 0.7500, 0.8750], dtype=klflow.float32)"
    )


def test_printoptions_context_restores_everything():
    with printing.printoptions(precision=1, linewidth=60):
        assert tensor_repr(f32([1.25]), dtype_name=F32) == "tensor([1.2], dtype=klflow.float32)"
        assert get_printoptions()["linewidth"] == 60
    assert get_printoptions() == {
        "precision": 4,
        "threshold": 1000,
        "edgeitems": 3,
        "linewidth": 80,
        "sci_mode": None,
    }
    assert printing._OPTIONS.linewidth is None
