"""klflow.torch.kl_div with placement/sbp under mpiexec: each rank passes its torch components,
gets the exact global loss (the single-process bits) and the gradients of its components."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_everywhere
from helpers import local_piece

import klflow as flow

torch = pytest.importorskip("torch")
import klflow.torch as kt  # noqa: E402


def _full(shape, seed, log_target):
    g = torch.Generator().manual_seed(seed)
    x = torch.log_softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, dim=1).float()
    y = torch.log_softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=1).float()
    return x, (y if log_target else y.exp())


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
@pytest.mark.parametrize("split_dim", [0, 1])
def test_components_give_the_global_loss_and_their_gradients(world, split_dim, reduction, log_target):
    rank, size = world
    shape = (2 * size + 1, 7)
    x_full, y_full = _full(shape, 5, log_target)
    xs, ys = x_full.clone().requires_grad_(), y_full.clone().requires_grad_()
    single = kt.kl_div(xs, ys, reduction=reduction, log_target=log_target)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    (single * upstream).sum().backward() if reduction == "none" else single.backward()

    def piece(t):
        return torch.from_numpy(local_piece(t.detach().numpy(), split_dim, rank, size))

    x, y = piece(x_full).requires_grad_(), piece(y_full).requires_grad_()
    sbp = flow.sbp.split(split_dim)
    loss = kt.kl_div(
        x, y, reduction=reduction, log_target=log_target, placement=flow.placement.all("cpu"), sbp=sbp
    )
    if reduction == "none":
        assert_everywhere(
            loss.detach().numpy().tobytes() == piece(single).detach().numpy().tobytes(), "component bits"
        )
        (loss * piece(upstream)).sum().backward()
    else:
        assert_everywhere(
            loss.detach().numpy().tobytes() == single.detach().numpy().tobytes(), f"{loss} vs {single}"
        )
        loss.backward()
    assert_everywhere(x.grad.numpy().tobytes() == piece(xs.grad).numpy().tobytes(), "input gradient bits")
    assert_everywhere(y.grad.numpy().tobytes() == piece(ys.grad).numpy().tobytes(), "target gradient bits")


def test_a_data_parallel_torch_model(world):
    rank, size = world
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    features = torch.randn(3 * size + 1, 5)
    teacher = torch.softmax(torch.randn(3 * size + 1, 4), dim=1)
    rows = local_piece(np.arange(features.shape[0]), 0, rank, size)
    loss = kt.kl_div(
        torch.log_softmax(model(features[rows]), dim=1),
        teacher[rows],
        reduction="batchmean",
        placement=flow.placement.all("cpu"),
        sbp=flow.sbp.split(0),
    )
    loss.backward()
    # The ranks' parameter gradients add up to the whole batch's (what an all-reduce would do).
    from mpi4py import MPI

    total = MPI.COMM_WORLD.allreduce(model.weight.grad.double().numpy(), op=MPI.SUM)
    reference = torch.nn.Linear(5, 4)
    reference.load_state_dict(model.state_dict())
    want = torch.nn.functional.kl_div(
        torch.log_softmax(reference(features), dim=1), teacher, reduction="batchmean"
    )
    want.backward()
    assert_everywhere(abs(loss.item() - want.item()) <= 1e-6, f"{loss.item()} vs {want.item()}")
    assert_everywhere(
        np.allclose(total, reference.weight.grad.double().numpy(), atol=1e-6), "weight gradient"
    )
