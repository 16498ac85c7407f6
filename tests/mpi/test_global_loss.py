"""The loss on global tensors equals the single-process loss: values bit for bit, gradients too."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_everywhere
from helpers import as_global, local_piece, seeded

import klflow as flow
import klflow.nn.functional as F

REDUCTIONS = ["none", "sum", "mean", "batchmean"]
LAYOUTS = [flow.sbp.split(0), flow.sbp.split(1), flow.sbp.split(2), flow.sbp.broadcast, flow.sbp.partial_sum]


def _data(dtype, log_target, shape=(4 * 3 + 1, 5, 3)):
    x = seeded(shape, dtype, seed=11)
    y = seeded(shape, dtype, seed=12, positive=not log_target)
    if not log_target:
        y.reshape(-1)[::7] = 0  # zero targets must add exactly 0
        y.reshape(-1)[3::11] = -0.5
    return x, y


def _reference_sum(x, y, log_target):
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    if log_target:
        terms = np.exp(yd) * (yd - xd)
    else:
        terms = np.where(yd > 0, yd * (np.log(np.where(yd > 0, yd, 1)) - xd), 0.0)
    return math.fsum(terms.ravel().tolist())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sbp", LAYOUTS, ids=str)
def test_global_loss_equals_single_process(world, sbp, reduction, log_target, dtype):
    x_full, y_full = _data(dtype, log_target)
    x = as_global(x_full, sbp)
    y = as_global(y_full, sbp)
    out = F.kl_div(x, y, reduction=reduction, log_target=log_target)
    single = F.kl_div(
        flow.from_numpy(x_full), flow.from_numpy(y_full), reduction=reduction, log_target=log_target
    ).numpy()
    got = out.numpy()
    assert_everywhere(
        got.dtype == single.dtype and got.tobytes() == single.tobytes(),
        f"{sbp} {reduction}: {got.ravel()[:3]} vs {single.ravel()[:3]}",
    )
    if reduction == "none":
        expected_sbp = flow.sbp.broadcast if sbp.is_partial_sum else sbp
    else:
        expected_sbp = flow.sbp.partial_sum if sbp.is_split else flow.sbp.broadcast
    assert_everywhere(out.sbp == (expected_sbp,), f"output sbp {out.sbp}")
    if reduction == "sum":
        reference = _reference_sum(x_full, y_full, log_target)
        assert_everywhere(abs(float(got) - reference) <= abs(reference) * np.finfo(dtype).eps)


@pytest.mark.parametrize("sbp", LAYOUTS, ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_reduced_global_loss_is_a_scalar_with_the_logical_divisor(world, sbp, reduction):
    x_full, y_full = _data(np.float64, False)
    out = F.kl_div(as_global(x_full, sbp), as_global(y_full, sbp), reduction=reduction)
    assert_everywhere(tuple(out.shape) == (), f"{out.shape}")
    divisor = {"sum": 1, "mean": x_full.size, "batchmean": x_full.shape[0]}[reduction]
    expected = _reference_sum(x_full, y_full, False) / divisor
    assert_everywhere(abs(out.item() - expected) <= 1e-15 * abs(expected))


@pytest.mark.parametrize("sbp", LAYOUTS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_input_and_target_gradients_keep_the_layout(world, sbp, reduction):
    rank, size = world
    x_full, y_full = _data(np.float64, False)
    x = as_global(x_full, sbp, requires_grad=True)
    y = as_global(y_full, sbp, requires_grad=True)
    out = F.kl_div(x, y, reduction=reduction)
    if reduction == "none":
        ones = np.ones(out.to_local().shape)
        out.backward(flow.from_numpy(ones).to_global(out.placement, out.sbp))
    else:
        out.backward()
    lx = flow.from_numpy(x_full.copy()).requires_grad_()
    ly = flow.from_numpy(y_full.copy()).requires_grad_()
    single = F.kl_div(lx, ly, reduction=reduction)
    single.backward(flow.from_numpy(np.ones(x_full.shape)) if reduction == "none" else None)
    grad_sbp = flow.sbp.broadcast if sbp.is_partial_sum else sbp
    for leaf, reference in ((x, lx), (y, ly)):
        assert_everywhere(leaf.grad.sbp == (grad_sbp,), f"grad sbp {leaf.grad.sbp}")
        got = leaf.grad.numpy()
        assert_everywhere(
            np.array_equal(got, reference.grad.numpy(), equal_nan=True),
            f"{sbp} {reduction}: gradient differs",
        )


def test_gradient_flows_back_to_the_local_component(world):
    rank, size = world
    x_full, y_full = _data(np.float32, False, shape=(13, 4))
    x_local = flow.from_numpy(local_piece(x_full, 0, rank, size)).requires_grad_()
    x = x_local.to_global(flow.placement.all("cpu"), flow.sbp.split(0))
    y = as_global(y_full, flow.sbp.split(0))
    F.kl_div(x, y, reduction="batchmean").backward()
    expected = local_piece(np.where(y_full > 0, -y_full, 0) / 13, 0, rank, size)
    assert_everywhere(x_local.grad is not None and not x_local.grad.is_global)
    assert_everywhere(np.allclose(x_local.grad.numpy(), expected, rtol=1e-6, atol=0))


def test_target_in_another_layout_is_boxed_to_the_inputs(world):
    x_full, y_full = _data(np.float64, True)
    x = as_global(x_full, flow.sbp.split(1), requires_grad=True)
    y = as_global(y_full, flow.sbp.broadcast, requires_grad=True)
    out = F.kl_div(x, y, reduction="mean", log_target=True)
    single = F.kl_div(flow.from_numpy(x_full), flow.from_numpy(y_full), reduction="mean", log_target=True)
    assert_everywhere(out.numpy().tobytes() == single.numpy().tobytes())
    out.backward()
    assert_everywhere(x.grad.sbp == (flow.sbp.split(1),) and y.grad.sbp == (flow.sbp.broadcast,))


def test_loss_over_a_subset_placement(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    placement = flow.placement("cpu", list(range(1, size)))
    x_full, y_full = _data(np.float64, False)
    x = as_global(x_full, flow.sbp.split(0), placement, requires_grad=True)
    y = as_global(y_full, flow.sbp.split(0), placement)
    out = F.kl_div(x, y, reduction="sum")
    single = F.kl_div(flow.from_numpy(x_full), flow.from_numpy(y_full), reduction="sum")
    assert_everywhere(out.numpy().tobytes() == single.numpy().tobytes())
    out.backward()
    grad = x.grad.numpy()
    assert_everywhere(np.array_equal(grad, np.where(y_full > 0, -y_full, 0)))


def test_same_bits_for_any_rank_count_is_the_single_process_value(world):
    # Every rank count must land on the single-process bits; the suite runs with 2, 3 and 4.
    x_full = seeded((1000, 7), np.float32, seed=5)
    y_full = seeded((1000, 7), np.float32, seed=6, positive=True)
    out = F.kl_div(
        as_global(x_full, flow.sbp.split(0)), as_global(y_full, flow.sbp.split(0)), reduction="sum"
    )
    single = F.kl_div(x_full, y_full, reduction="sum")
    assert_everywhere(out.numpy().tobytes() == single.numpy().tobytes())


def _sum_of_terms(terms, reduction="sum"):
    """The split(0) global loss whose terms are exactly ``terms`` (log_target with y = 0: each
    term is -x)."""
    x_full = -np.asarray(terms, np.float32)
    y_full = np.zeros_like(x_full)
    split = flow.sbp.split(0)
    return F.kl_div(as_global(x_full, split), as_global(y_full, split), reduction=reduction, log_target=True)


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        ([1.0, 0.0, 2.0**-24, 0.0, 0.0], 1.0),  # 1 + 2**-24: a float32 tie, to even
        ([1.0, 2.0**-40, 2.0**-24, 0.0, 0.0], 1.0 + 2.0**-23),  # just above the tie
        ([1e20, 1.0, -1e20, 0.0, 0.0], 1.0),  # float64 block sums lose the 1
        ([1.0, -1.0, 0.0, 0.0, 0.0], 0.0),  # an exact zero stays +0
    ],
    ids=["tie", "above-tie", "cancelling", "zero"],
)
def test_float32_sums_the_bound_cannot_prove_are_exact_on_every_rank(world, terms, expected):
    # The bounded partials cannot decide these: every rank must fall back together (no hang)
    # and agree on the correctly rounded sum.
    got = _sum_of_terms(terms).numpy()
    assert_everywhere(got.tobytes() == np.float32(expected).tobytes(), f"{got!r}, expected {expected!r}")


def test_float32_mean_of_an_unprovable_sum_is_the_exact_quotient(world):
    got = _sum_of_terms([1e20, 1.0, -1e20, 0.0, 0.0], reduction="mean").numpy()
    assert_everywhere(got == np.float32(0.2), f"{got!r}")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_term_on_one_rank_gives_every_rank_the_same_result(world, bad):
    got = _sum_of_terms([1.0, 2.0, bad, 4.0, 5.0]).numpy()
    expected = np.float32(bad)  # the term itself: NaN, or +inf among finite terms
    assert_everywhere(got.tobytes() == expected.tobytes(), f"{got!r}")
