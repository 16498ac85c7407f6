"""softmax/log_softmax of global tensors equal the single-process bits: split along the softmax
dimension (rows spread over the ranks: maxima and exact sums exchanged), along another one, or
broadcast/partial_sum; on 1-D placements and meshes; gradients too, and the distillation
pipeline kl_div(log_softmax(s), log_softmax(t), batchmean, log_target=True)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_everywhere, raises_everywhere
from helpers import as_mesh_global, seeded

import klflow as flow
import klflow.nn.functional as F
from klflow.distributed import comm

S0, S1, S2 = flow.sbp.split(0), flow.sbp.split(1), flow.sbp.split(2)
B, P = flow.sbp.broadcast, flow.sbp.partial_sum


def _single(full: np.ndarray, dim: int, log: bool, upstream: np.ndarray):
    x = flow.from_numpy(full.copy())
    x.requires_grad = True
    out = (F.log_softmax if log else F.softmax)(x, dim=dim)
    out.backward(flow.from_numpy(upstream))
    return out.numpy(), x.grad.numpy()


def _check(placement, sbp, shape, dim, dtype, log):
    full = seeded(shape, dtype, seed=31) * dtype(4)
    upstream = seeded(shape, dtype, seed=32)
    want_out, want_grad = _single(full, dim, log, upstream)
    x = as_mesh_global(full, placement, sbp, requires_grad=True)
    out = (F.log_softmax if log else F.softmax)(x, dim=dim)
    out_sbp = tuple(B if s.is_partial_sum else s for s in sbp)
    out.backward(as_mesh_global(upstream, placement, out_sbp))
    problems = []
    if out.sbp != out_sbp:
        problems.append(f"output sbp {out.sbp}")
    if out.numpy().tobytes() != want_out.tobytes():
        problems.append("output bits")
    if x.grad.sbp != out_sbp or x.grad.numpy().tobytes() != want_grad.tobytes():
        problems.append(f"gradient (sbp {x.grad.sbp})")
    return problems


@pytest.mark.parametrize("log", [True, False], ids=["log_softmax", "softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.dtype(ml_dtypes.bfloat16).type])
@pytest.mark.parametrize("sbp", [S0, S1, S2, B, P], ids=str)
def test_one_axis_layouts_have_the_single_process_bits(world, sbp, dtype, log):
    placement = flow.placement.all("cpu")
    failures = []
    for dim in (2, -1, 1, 0):
        problems = _check(placement, (sbp,), (5, 4, 13), dim, dtype, log)
        if problems:
            failures.append(f"dim {dim}: {problems}")
    assert_everywhere(not failures, f"{sbp} {np.dtype(dtype)}: {failures}")


def test_a_split_softmax_dim_exchanges_and_another_does_not(world):
    _, size = world
    placement = flow.placement.all("cpu")
    full = seeded((4, 9), np.float32, seed=1)
    for sbp, exchanges in ((S1, size > 1), (S0, False)):
        x = as_mesh_global(full, placement, (sbp,))
        comm.reset_counts()
        F.log_softmax(x, dim=1)
        counts = dict(comm.collective_counts)
        moved = counts.get("allgatherv", 0) + counts.get("allreduce", 0)
        assert_everywhere((moved == 2) if exchanges else (moved == 0), f"{sbp}: collectives {counts}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocabulary_split_distillation_has_the_single_process_bits(world, dtype):
    placement = flow.placement.all("cpu")
    shape = (6, 4 * 5 + 3)  # vocabulary not a multiple of the rank count
    student_logits = seeded(shape, dtype, seed=41) * dtype(3)
    teacher_logits = seeded(shape, dtype, seed=42) * dtype(3)

    def pipeline(s, t):
        return F.kl_div(
            F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True
        )

    single_s = flow.from_numpy(student_logits.copy())
    single_t = flow.from_numpy(teacher_logits.copy())
    single_s.requires_grad = single_t.requires_grad = True
    single = pipeline(single_s, single_t)
    single.backward()
    s = as_mesh_global(student_logits, placement, (S1,), requires_grad=True)
    t = as_mesh_global(teacher_logits, placement, (S1,), requires_grad=True)
    loss = pipeline(s, t)
    loss.backward()
    value = loss.numpy()
    assert_everywhere(value.tobytes() == single.numpy().tobytes(), f"loss {value} vs {single.numpy()}")
    assert_everywhere(s.grad.numpy().tobytes() == single_s.grad.numpy().tobytes(), "student gradient bits")
    assert_everywhere(t.grad.numpy().tobytes() == single_t.grad.numpy().tobytes(), "teacher gradient bits")
    assert_everywhere(s.grad.sbp == (S1,), f"gradient sbp {s.grad.sbp}")
    # And the value is the divergence of the two distributions (float64 reference).
    ls = student_logits.astype(np.float64) - np.log(np.exp(student_logits.astype(np.float64)).sum(1))[:, None]
    lt = teacher_logits.astype(np.float64) - np.log(np.exp(teacher_logits.astype(np.float64)).sum(1))[:, None]
    expected = float(np.sum(np.exp(lt) * (lt - ls)) / shape[0])
    assert_everywhere(abs(float(value) - expected) <= 1e-5 * abs(expected), f"{value} vs {expected}")


def _meshes(size: int) -> list[tuple[int, int]]:
    return [(a, size // a) for a in (2, 3) if size % a == 0 and size // a > 1]


@pytest.mark.parametrize("signature", [(S0, S1), (S1, S1), (S1, S0), (B, S1), (P, S1), (S1, B)], ids=str)
def test_meshes_have_the_single_process_bits(world, signature):
    _, size = world
    shapes = _meshes(size)
    if not shapes:
        pytest.skip(f"{size} ranks make no 2-D mesh")
    failures = []
    for hierarchy in shapes:
        placement = flow.placement("cpu", np.arange(size).reshape(hierarchy))
        for log in (True, False):
            problems = _check(placement, signature, (7, 11), 1, np.float32, log)
            if problems:
                failures.append(f"{hierarchy} log={log}: {problems}")
    assert_everywhere(not failures, f"{signature}: {failures}")


def test_a_bad_dim_is_one_error_everywhere(world):
    x = as_mesh_global(seeded((3, 4), np.float32), flow.placement.all("cpu"), (S1,))
    raises_everywhere(
        comm.CollectiveError, r"IndexError: Dimension out of range", lambda: F.log_softmax(x, dim=2)
    )


@pytest.mark.parametrize("sbp", [S1, S0, B], ids=str)
def test_second_derivatives_equal_the_single_process_ones(world, sbp):
    placement = flow.placement.all("cpu")
    x_full = seeded((5, 9), np.float64, seed=51)
    w_full = seeded((5, 9), np.float64, seed=52)

    def second(x, w):
        loss = F.kl_div(
            F.log_softmax(x, dim=1), F.log_softmax(x * 0.5, dim=1), reduction="batchmean", log_target=True
        )
        (g,) = flow.autograd.grad(loss, x, create_graph=True)
        (g * w).sum().backward()
        return g.detach().numpy(), x.grad.numpy()

    single_x = flow.from_numpy(x_full.copy())
    single_x.requires_grad = True
    want_g, want_gg = second(single_x, flow.from_numpy(w_full))
    x = as_mesh_global(x_full, placement, (sbp,), requires_grad=True)
    got_g, got_gg = second(x, as_mesh_global(w_full, placement, (sbp,)))
    assert_everywhere(got_g.tobytes() == want_g.tobytes(), "first derivative bits")
    close = np.allclose(got_gg, want_gg, rtol=1e-12, atol=1e-15)
    assert_everywhere(close, f"second derivative: {np.abs(got_gg - want_gg).max()}")
