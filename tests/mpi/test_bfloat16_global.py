"""bfloat16 global tensors: the loss and its gradients over split and broadcast inputs give the
single-process bits, and boxing moves bfloat16 data unchanged."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_everywhere

import klflow as flow
import klflow.nn.functional as F

BF16 = np.dtype(ml_dtypes.bfloat16)


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(BF16)
    y = rng.random(shape).astype(BF16)
    return x, y


def _bits(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a)).tobytes()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize(
    "sbp", [flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast], ids=["S0", "S1", "B"]
)
def test_loss_and_gradients_are_the_single_process_bits(reduction, sbp):
    x, y = _data((7, 5), seed=11)
    lx, ly = flow.from_numpy(x.copy()).requires_grad_(), flow.from_numpy(y.copy()).requires_grad_()
    local = F.kl_div(lx, ly, reduction=reduction)
    local.backward(flow.ones_like(local) if reduction == "none" else None)

    placement = flow.placement.all("cpu")
    gx = flow.from_numpy(x.copy()).to_global(placement, flow.sbp.broadcast).to_global(sbp=sbp)
    gy = flow.from_numpy(y.copy()).to_global(placement, flow.sbp.broadcast).to_global(sbp=sbp)
    gx.requires_grad_()
    gy.requires_grad_()
    loss = F.kl_div(gx, gy, reduction=reduction)
    assert_everywhere(loss.dtype == flow.bfloat16, f"{loss.dtype}")
    assert_everywhere(_bits(loss.numpy()) == _bits(local.numpy()), f"{reduction} {sbp}: value")
    loss.backward(flow.ones_like(loss) if reduction == "none" else None)
    assert_everywhere(_bits(gx.grad.numpy()) == _bits(lx.grad.numpy()), f"{reduction} {sbp}: input grad")
    assert_everywhere(_bits(gy.grad.numpy()) == _bits(ly.grad.numpy()), f"{reduction} {sbp}: target grad")


def test_boxing_moves_bfloat16_unchanged(world):
    rank, size = world
    x, _ = _data((9, 4), seed=2)
    g = flow.from_numpy(x.copy()).to_global(flow.placement.all("cpu"), flow.sbp.broadcast)
    for sbp in (flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast):
        boxed = g.to_global(sbp=sbp)
        assert_everywhere(boxed.dtype == flow.bfloat16 and _bits(boxed.numpy()) == _bits(x), f"{sbp}")
    # A partial sum of bfloat16 components: the value on rank 0, zeros elsewhere, summed exactly.
    part = flow.from_numpy(x.copy() if rank == 0 else np.zeros_like(x)).to_global(
        flow.placement.all("cpu"), flow.sbp.partial_sum
    )
    assert_everywhere(_bits(part.to_global(sbp=flow.sbp.broadcast).numpy()) == _bits(x), "partial_sum")
    flow.manual_seed(4)
    r = flow.randn(9, 4, dtype=flow.bfloat16, placement=flow.placement.all("cpu"), sbp=flow.sbp.split(0))
    flow.manual_seed(4)
    assert_everywhere(_bits(r.numpy()) == _bits(flow.randn(9, 4, dtype=flow.bfloat16).numpy()), "randn")
