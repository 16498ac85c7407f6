"""Arithmetic, reductions and second derivatives on global tensors: the SBP rules, and values and
gradients with the single-process bits on any number of ranks (and on a 2-D mesh)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_everywhere, raises_everywhere
from helpers import as_global, seeded

import klflow as flow
import klflow.nn.functional as F
from klflow.distributed.layout import GlobalSpec

S0, S1, B, P = flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast, flow.sbp.partial_sum


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def _losses(sbp, dtype=np.float32):
    x, y = seeded((7, 5), dtype, seed=1), seeded((7, 5), dtype, seed=2, positive=True)
    t = seeded((7, 5), dtype, seed=3, positive=True)
    gx, gy, gt = as_global(x, sbp), as_global(y, sbp), as_global(t, sbp)
    lx, ly, lt = flow.from_numpy(x), flow.from_numpy(y), flow.from_numpy(t)
    return (F.kl_div(gx, gy, "sum"), F.kl_div(gx, gt, "batchmean")), (
        F.kl_div(lx, ly, "sum"),
        F.kl_div(lx, lt, "batchmean"),
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("sbp", [S0, S1, B], ids=str)
def test_combined_losses_have_the_single_process_bits(sbp, dtype):
    (g1, g2), (l1, l2) = _losses(sbp, dtype)
    cases = {
        "l1 + l2": (g1 + g2, l1 + l2),
        "l1 - l2": (g1 - g2, l1 - l2),
        "l1 * 0.5": (g1 * 0.5, l1 * 0.5),
        "l1 / 7": (g1 / 7, l1 / 7),
        "-l1": (-g1, -l1),
        "l1 + 1": (g1 + 1.0, l1 + 1.0),
        "3 - l2": (3.0 - g2, 3.0 - l2),
        "(l1 + l2) * 0.25 + l1 / 3": ((g1 + g2) * 0.25 + g1 / 3, (l1 + l2) * 0.25 + l1 / 3),
        "l1.sum()": (g1.sum(), l1.sum()),
        "l1.reshape(1) * 2": (g1.reshape(1) * 2.0, l1.reshape(1) * 2.0),
        "l1.clone() + l2.view(1, 1)": (g1.clone() + g2.view(1, 1), l1.clone() + l2.view(1, 1)),
        "(l1 + l2).mean()": ((g1 + g2).mean(), (l1 + l2).mean()),
    }
    for name, (got, want) in cases.items():
        expected_sbp = (P,) if sbp.is_split else (B,)
        assert_everywhere(got.sbp == expected_sbp, f"{name}: sbp {got.sbp}")
        value = got.numpy()
        assert_everywhere(_same(value, want.numpy()), f"{name}: {value} vs {want.numpy()}")
        assert_everywhere(got.numel() != 1 or got.item() == want.item(), f"{name}: item")


def test_gradient_of_combined_losses_matches_single_process():
    x = seeded((7, 5), np.float32, seed=4)
    y = seeded((7, 5), np.float32, seed=5, positive=True)
    gx = as_global(x, S0, requires_grad=True)
    lx = flow.tensor(x, requires_grad=True)
    ((F.kl_div(gx, as_global(y, S0), "sum") * 0.5 + F.kl_div(gx, as_global(y, S0), "mean")) / 3).backward()
    (
        (F.kl_div(lx, flow.from_numpy(y), "sum") * 0.5 + F.kl_div(lx, flow.from_numpy(y), "mean")) / 3
    ).backward()
    assert_everywhere(gx.grad.sbp == (S0,), f"grad sbp {gx.grad.sbp}")
    assert_everywhere(_same(gx.grad.numpy(), lx.grad.numpy()), "gradient bits")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "sbp,dim,keepdim,want_sbp",
    [
        (S0, None, False, P),
        (S0, 0, False, P),
        (S0, 1, False, S0),
        (S1, 1, True, P),
        (S1, 0, False, S0),
        (B, (0, 1), False, B),
        (P, 1, False, P),
    ],
    ids=str,
)
def test_reductions_follow_the_rules_and_keep_the_single_process_bits(sbp, dim, keepdim, want_sbp, dtype):
    values = seeded((7, 6), dtype, seed=6) * np.asarray(10.0, dtype) ** np.arange(6).astype(dtype)
    t = as_global(values, sbp)
    local = flow.from_numpy(values)
    for mean in (False, True):
        got = t.mean(dim, keepdim) if mean else t.sum(dim, keepdim)
        want = local.mean(dim, keepdim) if mean else local.sum(dim, keepdim)
        assert_everywhere(got.sbp == (want_sbp,), f"sbp {got.sbp}")
        if sbp.is_partial_sum:  # plain components (no record): the float all-reduce
            assert_everywhere(np.allclose(got.numpy(), want.numpy(), rtol=1e-5), "value")
        else:
            assert_everywhere(_same(got.numpy(), want.numpy()), f"{got.numpy()} vs {want.numpy()}")


@pytest.mark.parametrize(
    "a_sbp,b_shape,b_sbp,want",
    [
        (S0, (7, 5), S0, S0),
        (S0, (7, 5), S1, S0),
        (S1, (5,), B, S1),
        (S0, (5,), B, S0),
        (B, (7, 5), S1, S1),
        (S0, (1, 5), B, S0),
        (B, (7, 1), S0, S0),
    ],
    ids=str,
)
def test_binary_ops_values_sbp_and_gradients(a_sbp, b_shape, b_sbp, want):
    a = seeded((7, 5), np.float64, seed=7)
    b = seeded(b_shape, np.float64, seed=8) + 3.0
    ga, gb = as_global(a, a_sbp, requires_grad=True), as_global(b, b_sbp, requires_grad=True)
    la, lb = flow.tensor(a, requires_grad=True), flow.tensor(b, requires_grad=True)
    gout = (ga * gb - ga / gb) + 2.0
    lout = (la * lb - la / lb) + 2.0
    assert_everywhere(gout.sbp == (want,), f"sbp {gout.sbp}")
    assert_everywhere(_same(gout.numpy(), lout.numpy()), "values")
    (gout.exp() * 0.001).sum().backward()
    (lout.exp() * 0.001).sum().backward()
    assert_everywhere(ga.grad.sbp == (a_sbp,) and gb.grad.sbp == (b_sbp,), f"{ga.grad.sbp} {gb.grad.sbp}")
    assert_everywhere(_same(ga.grad.numpy(), la.grad.numpy()), "grad a")
    assert_everywhere(_same(gb.grad.numpy(), lb.grad.numpy()), f"grad b {gb.grad.numpy()} {lb.grad.numpy()}")


def test_partial_times_broadcast_stays_partial_and_exact():
    (g1, _), (l1, _) = _losses(S0)
    w = seeded((3,), np.float32, seed=9)
    got = g1 * as_global(w, B)
    assert_everywhere(got.sbp == (P,), f"sbp {got.sbp}")
    assert_everywhere(_same(got.numpy(), (l1 * flow.from_numpy(w)).numpy()), "value")
    cmp = as_global(w, B) > g1
    assert_everywhere(cmp.dtype == flow.bool and cmp.sbp == (B,), f"{cmp.dtype} {cmp.sbp}")


def test_reshape_keeps_a_split_where_it_can():
    values = seeded((6, 4), np.float32, seed=10)
    t = as_global(values, S0)
    kept = t.reshape(6, 2, 2)
    flat = as_global(values, S1).reshape(-1)
    assert_everywhere(kept.sbp == (S0,) and flat.sbp == (B,), f"{kept.sbp} {flat.sbp}")
    assert_everywhere(
        _same(kept.numpy(), values.reshape(6, 2, 2)) and _same(flat.numpy(), values.reshape(-1)), ""
    )


def test_mismatched_placements_are_one_error_everywhere(world):
    _, size = world
    if size < 2:
        pytest.skip("needs two placements")
    a = flow.tensor([1.0, 2.0]).to_global(flow.placement("cpu", [0]), B)
    b = flow.tensor([1.0, 2.0]).to_global(flow.placement.all("cpu"), B)
    raises_everywhere(RuntimeError, "needs both tensors on one placement", lambda: a + b)
    raises_everywhere(RuntimeError, "both tensors local or both global", lambda: b + flow.tensor([1.0, 2.0]))


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "batchmean", "none"])
def test_second_derivatives_of_the_loss_match_single_process(reduction, log_target):
    x = seeded((5, 3), np.float64, seed=11) * 0.5
    y = seeded((5, 3), np.float64, seed=12, positive=not log_target) * (1.0 if log_target else 0.9) + (
        0.0 if log_target else 0.1
    )
    v = seeded((5, 3), np.float64, seed=13)

    def hessian_vector(tx, ty, vv, weights):
        loss = F.kl_div(tx, ty, reduction=reduction, log_target=log_target)
        if reduction == "none":
            loss = (loss * weights).sum()
        gx, gy = flow.autograd.grad(loss, [tx, ty], create_graph=True)
        return flow.autograd.grad((gx * vv).sum() + (gy * vv).sum(), [tx, ty], allow_unused=True)

    w = seeded((5, 3), np.float64, seed=14, positive=True)
    gx, gy = as_global(x, S0, requires_grad=True), as_global(y, S0, requires_grad=True)
    global_h = hessian_vector(gx, gy, as_global(v, S0), as_global(w, S0))
    local_h = hessian_vector(
        flow.tensor(x, requires_grad=True), flow.tensor(y, requires_grad=True), flow.tensor(v), flow.tensor(w)
    )
    for got, want in zip(global_h, local_h, strict=True):
        assert_everywhere((got is None) == (want is None), "unused inputs differ")
        if got is not None:
            assert_everywhere(got.sbp == (S0,), f"sbp {got.sbp}")
            values = got.numpy()
            assert_everywhere(np.allclose(values, want.numpy(), rtol=1e-13, atol=1e-15), "hessian-vector")

    # ... and both against float64 central differences of the gradient along v (x and y moved together).
    def loss64(xx, yy):
        if log_target:
            e = np.exp(yy) * (yy - xx)
        else:
            e = np.where(yy > 0, yy * (np.log(np.where(yy > 0, yy, 1.0)) - xx), 0.0)
        if reduction == "none":
            return float(np.sum(e * w))
        return float(np.sum(e)) / (e.shape[0] if reduction == "batchmean" else 1)

    def gradient64(xx, yy, h=1e-6):
        gx64, gy64 = np.empty_like(xx), np.empty_like(yy)
        for i in range(xx.size):
            d = np.zeros_like(xx)
            d.flat[i] = h
            gx64.flat[i] = (loss64(xx + d, yy) - loss64(xx - d, yy)) / (2 * h)
            gy64.flat[i] = (loss64(xx, yy + d) - loss64(xx, yy - d)) / (2 * h)
        return gx64, gy64

    step = 1e-4
    plus, minus = gradient64(x + step * v, y + step * v), gradient64(x - step * v, y - step * v)
    for got, p, m in zip(global_h, plus, minus, strict=True):
        want = (p - m) / (2 * step)
        values = np.zeros_like(want) if got is None else got.numpy()
        assert_everywhere(
            np.allclose(values, want, rtol=1e-4, atol=1e-4), f"finite differences {values - want}"
        )


def test_combined_losses_on_a_mesh(world):
    _, size = world
    if size < 4 or size % 2:
        pytest.skip("a 2×k mesh needs an even number of ranks, at least 4")
    mesh = flow.placement("cpu", np.arange(size).reshape(2, size // 2))
    x, y = seeded((6, 4), np.float32, seed=15), seeded((6, 4), np.float32, seed=16, positive=True)
    me = flow.env.get_rank()
    spec = GlobalSpec(mesh, (S0, S1), x.shape)
    gx = flow.from_numpy(np.array(x[spec.component_slices_of(me)])).to_global(mesh, (S0, S1))
    gy = flow.from_numpy(np.array(y[spec.component_slices_of(me)])).to_global(mesh, (S0, S1))
    l1 = F.kl_div(gx, gy, "sum")
    l2 = F.kl_div(gx, gy, "mean")
    got = (l1 + l2 * 0.5) / 3
    want = (
        F.kl_div(flow.from_numpy(x), flow.from_numpy(y), "sum")
        + F.kl_div(flow.from_numpy(x), flow.from_numpy(y), "mean") * 0.5
    ) / 3
    assert_everywhere(got.sbp == (P, P), f"sbp {got.sbp}")
    assert_everywhere(_same(got.numpy(), want.numpy()), "mesh value")
    s = gx.sum(0)
    assert_everywhere(s.sbp == (P, S0) and _same(s.numpy(), flow.from_numpy(x).sum(0).numpy()), f"{s.sbp}")


@pytest.mark.skipif(not flow.cuda.is_available(), reason="no CUDA device or simulator")
def test_arithmetic_on_a_cuda_placement_has_the_cpu_bits():
    from klflow.distributed.layout import balanced_offsets

    rank, size = flow.env.get_rank(), flow.env.get_world_size()
    x = seeded((5, 3), np.float32, seed=17)
    y = seeded((5, 3), np.float32, seed=18, positive=True)
    offsets = balanced_offsets(5, size)
    device = flow.cuda.rank_device()
    cuda = flow.placement.all("cuda")

    def on_gpu(values, requires_grad=False):
        piece = flow.tensor(values[offsets[rank] : offsets[rank + 1]], device=device).to_global(cuda, S0)
        piece.requires_grad = requires_grad
        return piece

    gx = on_gpu(x, requires_grad=True)
    out = (F.kl_div(gx, on_gpu(y), "sum") * 0.5 + (gx * gx).sum(0).sum()) / 3
    lx = flow.tensor(x, requires_grad=True)
    want = (F.kl_div(lx, flow.from_numpy(y), "sum") * 0.5 + (lx * lx).sum(0).sum()) / 3
    assert_everywhere(out.to_local().is_cuda and _same(out.numpy(), want.numpy()), "value")
    out.backward()
    want.backward()
    assert_everywhere(gx.grad.to_local().is_cuda and _same(gx.grad.numpy(), lx.grad.numpy()), "gradient")


def test_in_place_steps_on_global_tensors():
    (g1, _), (l1, _) = _losses(S0)
    g1 *= 0.5  # a partial-sum loss keeps its exact record
    assert_everywhere(g1.sbp == (P,) and _same(g1.numpy(), (l1 * 0.5).numpy()), "scaled loss")
    x = seeded((7, 5), np.float32, seed=19)
    y = seeded((7, 5), np.float32, seed=20, positive=True)
    w = as_global(x, S0, requires_grad=True)
    lw = flow.tensor(x, requires_grad=True)
    F.kl_div(w, as_global(y, S0), "batchmean").backward()
    F.kl_div(lw, flow.from_numpy(y), "batchmean").backward()
    with flow.no_grad():
        w -= 0.1 * w.grad
        lw -= 0.1 * lw.grad
    assert_everywhere(w.sbp == (S0,) and _same(w.numpy(), lw.numpy()), "updated parameter")


def test_a_bad_gradient_on_one_rank_is_one_error_everywhere(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs two ranks")
    x = as_global(seeded((4, 3), np.float64, seed=21), S0, requires_grad=True)
    out = x * 2.0
    good = flow.tensor(np.ones((4, 3))).to_global(flow.placement.all("cpu"), B)
    given = good if rank != size - 1 else flow.tensor(np.ones((4, 3)))  # the last rank passes a local one
    raises_everywhere(
        RuntimeError,
        "gradient must be global exactly when",
        lambda: flow.autograd.grad(out, x, grad_outputs=given),
    )
    (dx,) = flow.autograd.grad(x * 2.0, x, grad_outputs=good)  # the ranks are still in step
    assert_everywhere(dx.sbp == (S0,) and np.all(dx.numpy() == 2.0), "gradient after the error")


def test_second_derivatives_with_ranks_outside_the_placement(world):
    rank, size = world
    if size < 3:
        pytest.skip("needs a rank outside a two-rank placement")
    pair = flow.placement("cpu", [0, 1])
    x_full = seeded((4, 3), np.float64, seed=22)
    y_full = seeded((4, 3), np.float64, seed=23, positive=True) + 0.1
    inside = rank in (0, 1)

    def component(full):
        local = full[2 * rank : 2 * rank + 2].copy() if inside else np.empty((0,))
        t = flow.from_numpy(local).to_global(pair, S0)
        t.requires_grad = True
        return t

    def hessian_diagonal(x, y):
        gx, gy = flow.autograd.grad(F.kl_div(x, y, "sum", log_target=True), [x, y], create_graph=True)
        return flow.autograd.grad((gx * gy).sum(), [x, y])

    got = hessian_diagonal(component(x_full), component(y_full))
    want = hessian_diagonal(flow.tensor(x_full, requires_grad=True), flow.tensor(y_full, requires_grad=True))
    everyone = flow.tensor([1.0]).to_global(flow.placement.all("cpu"), B)  # the ranks are still in step
    for g, w in zip(got, want, strict=True):
        assert_everywhere(np.allclose(g.numpy(), w.numpy(), rtol=1e-13, atol=0), "second derivatives")
    assert_everywhere(everyone.numpy().tolist() == [1.0], "after")
