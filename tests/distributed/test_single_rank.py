"""A plain process is a world of one: global tensors work without mpiexec."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow
import klflow.nn.functional as F


def test_world_of_one():
    assert flow.env.get_rank() == 0 and flow.env.get_world_size() == 1


@pytest.mark.parametrize("sbp", [flow.sbp.split(0), flow.sbp.broadcast, flow.sbp.partial_sum])
def test_loss_on_a_world_of_one_matches_local(sbp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.random((5, 3)).astype(np.float32)
    p = flow.placement.all("cpu")
    gx = flow.from_numpy(x).to_global(p, sbp)
    gx.requires_grad = True
    out = F.kl_div(gx, flow.from_numpy(y).to_global(p, sbp), reduction="batchmean")
    local = F.kl_div(x, y, reduction="batchmean")
    assert out.numpy().tobytes() == local.numpy().tobytes()
    out.backward()
    assert np.array_equal(gx.grad.numpy(), np.where(y > 0, -y, 0) / np.float32(5))


def test_global_metadata_accessors():
    t = flow.tensor([[1.0, 2.0]])
    with pytest.raises(RuntimeError, match="only defined for global tensors"):
        t.placement
    with pytest.raises(RuntimeError, match="only defined for global tensors"):
        t.sbp
    g = t.to_global(flow.placement.all("cpu"), flow.sbp.split(1))
    assert g.is_global and not g.is_local
    assert g.placement == flow.placement("cpu", [0]) and g.sbp == (flow.sbp.split(1),)
    assert g.to_local().shape == (1, 2)
    assert t.to_local() is t


def test_to_global_argument_errors():
    t = flow.tensor([1.0])
    with pytest.raises(ValueError, match="needs both placement= and sbp="):
        t.to_global(flow.placement.all("cpu"))
    with pytest.raises(TypeError, match="klflow.placement"):
        t.to_global("cpu", flow.sbp.broadcast)
    with pytest.raises(ValueError, match="has 2 entries but the placement has 1 mesh axis"):
        t.to_global(flow.placement.all("cpu"), (flow.sbp.broadcast, flow.sbp.broadcast))
    g = t.to_global(flow.placement.all("cpu"), flow.sbp.broadcast)
    with pytest.raises(ValueError, match="needs placement=, sbp= or both"):
        g.to_global()
    with pytest.raises(RuntimeError, match="to_global"):
        t.to_consistent()


def test_to_global_without_change_returns_the_same_tensor():
    g = flow.tensor([1.0, 2.0]).to_global(flow.placement.all("cpu"), flow.sbp.split(0))
    assert g.to_global(sbp=flow.sbp.split(0)) is g
