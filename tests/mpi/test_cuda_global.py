"""Global tensors on a CUDA placement: each rank computes on its GPU, partial sums meet on the host.

Skipped without a GPU; scripts/test also runs it under numba's simulator on 2 ranks.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_everywhere
from helpers import as_global, local_piece, seeded
from reference import same_bits

import klflow as flow
import klflow.nn.functional as F

pytestmark = pytest.mark.skipif(not flow.cuda.is_available(), reason="no CUDA device or simulator")


@pytest.fixture(autouse=True)
def small_blocks():
    from numba.core import config

    from klflow.kernels import cuda as kernels

    kernels.set_block_size(8 if config.ENABLE_CUDASIM else None)
    yield
    kernels.set_block_size(None)


def _global(full, sbp, requires_grad=False):
    rank, size = flow.env.get_rank(), flow.env.get_world_size()
    local = local_piece(full, sbp.dim, rank, size) if sbp.is_split else full
    t = flow.tensor(local, device=flow.cuda.rank_device()).to_global(flow.placement.all("cuda"), sbp)
    t.requires_grad = requires_grad
    return t


@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
@pytest.mark.parametrize("sbp", [flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast], ids=str)
def test_cuda_placement_matches_the_cpu_reference(world, sbp, reduction):
    x_full = seeded((13, 5), np.float64, seed=1)
    y_full = seeded((13, 5), np.float64, seed=2, positive=True)
    x = _global(x_full, sbp, requires_grad=True)
    out = F.kl_div(x, _global(y_full, sbp), reduction=reduction)
    assert_everywhere(out.to_local().is_cuda, "output component is not on the GPU")
    expected = F.kl_div(x_full, y_full, reduction=reduction).numpy()
    assert_everywhere(np.allclose(out.numpy(), expected, rtol=1e-13, atol=0), f"{out.numpy()} vs {expected}")
    if reduction == "none":
        out.backward(
            flow.tensor(np.ones(out.to_local().shape), device=out.to_local().device).to_global(
                out.placement, out.sbp
            )
        )
        upstream = 1.0
    else:
        out.backward()
        upstream = 1.0 / {"sum": 1, "batchmean": 13}[reduction]
    assert_everywhere(x.grad.sbp == (sbp,) and x.grad.to_local().is_cuda)
    assert_everywhere(np.allclose(x.grad.numpy(), -y_full * upstream, rtol=1e-13, atol=0))


def test_cuda_boxing_stages_through_the_host(world):
    full = seeded((9, 4), np.float32, seed=3)
    x = _global(full, flow.sbp.split(0))
    for target in (flow.sbp.broadcast, flow.sbp.split(1), flow.sbp.partial_sum):
        y = x.to_global(sbp=target)
        assert_everywhere(y.to_local().is_cuda and np.array_equal(y.numpy(), full), f"{target}")


def _case(name, dtype, log_target):
    """(x, y) of shape (13, 5): random data, or terms of exactly -x that sum to a rounding tie
    (which the bounded path cannot prove, so the ranks' exact states decide)."""
    if name == "random":
        x = seeded((13, 5), dtype, seed=11)
        y = seeded((13, 5), dtype, seed=12, positive=not log_target)
        return x, y
    x = np.zeros((13, 5), dtype)
    half_ulp = np.finfo(dtype).eps / 2
    x.flat[[0, 21, 43, 64]] = -np.array([1.0, half_ulp, 3.0, -3.0], dtype)  # spread over the ranks
    y = np.zeros_like(x) if log_target else np.ones_like(x)
    return x, y


@pytest.mark.parametrize("case", ["random", "tie"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True], ids=["prob", "logt"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=["f16", "f32", "f64"])
def test_global_cuda_loss_has_the_single_process_cpu_bits(world, dtype, log_target, reduction, case):
    x_full, y_full = _case(case, dtype, log_target)
    single_x = flow.tensor(x_full, requires_grad=True)
    single = F.kl_div(single_x, flow.tensor(y_full), reduction=reduction, log_target=log_target)
    single.backward()
    for sbp in (flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast):
        x = _global(x_full, sbp, requires_grad=True)
        out = F.kl_div(x, _global(y_full, sbp), reduction=reduction, log_target=log_target)
        got = out.numpy()
        assert_everywhere(same_bits(got, single.numpy()), f"{sbp}: {got!r} vs {single.numpy()!r}")
        out.backward()
        assert_everywhere(same_bits(x.grad.numpy(), single_x.grad.numpy()), f"{sbp}: gradient")
        # The same data on a CPU placement: one value, whichever device computed it.
        on_cpu = F.kl_div(
            as_global(x_full, sbp), as_global(y_full, sbp), reduction=reduction, log_target=log_target
        )
        assert_everywhere(same_bits(on_cpu.numpy(), got), f"{sbp}: the CPU placement differs")


@pytest.mark.parametrize("sbp", [flow.sbp.split(1), flow.sbp.split(0)], ids=str)
def test_vocabulary_split_log_softmax_on_the_gpu_has_the_cpu_bits(world, sbp):
    s_full = seeded((3, 11), np.float32, seed=61) * np.float32(3)
    t_full = seeded((3, 11), np.float32, seed=62) * np.float32(3)

    def pipeline(s, t):
        loss = F.kl_div(
            F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True
        )
        loss.backward()
        return loss

    cpu_s = flow.from_numpy(s_full.copy())
    cpu_s.requires_grad = True
    cpu_loss = pipeline(cpu_s, flow.from_numpy(t_full.copy()))
    s = _global(s_full, sbp, requires_grad=True)
    loss = pipeline(s, _global(t_full, sbp))
    assert_everywhere(same_bits(loss.numpy(), cpu_loss.numpy()), f"loss {loss.numpy()} vs {cpu_loss.numpy()}")
    assert_everywhere(same_bits(s.grad.numpy(), cpu_s.grad.numpy()), "gradient bits")
