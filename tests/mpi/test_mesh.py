"""Hierarchical placements (nd-SBP) on every mesh the job's rank count allows (2×2, 1×4, 4×1 on
4 ranks; 2×3, 3×2 on 6; 1×n and n×1 otherwise): boxing between every pair of signatures, the
loss and its gradients against the single-process bits and a float64 reference, collectives
counted per mesh axis, and bad inputs as one error everywhere."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference
from conftest import assert_everywhere, raises_everywhere
from helpers import as_mesh_global, seeded

import klflow as flow
import klflow.nn.functional as F
from klflow.distributed import comm
from klflow.distributed.layout import GlobalSpec

ENTRIES = {
    "S0": flow.sbp.split(0),
    "S1": flow.sbp.split(1),
    "B": flow.sbp.broadcast,
    "P": flow.sbp.partial_sum,
}
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def meshes(size: int) -> list[tuple[int, int]]:
    shapes = [(a, size // a) for a in range(1, size + 1) if size % a == 0]
    if size >= 4:
        shapes = [s for s in shapes if s in {(2, 2), (1, 4), (4, 1), (2, 3), (3, 2)}]
    return shapes


def _mesh(hierarchy):
    return flow.placement("cpu", np.arange(int(np.prod(hierarchy))).reshape(hierarchy))


@pytest.fixture(params=[0, 1, 2], ids=["mesh0", "mesh1", "mesh2"])
def mesh(world, request):
    _, size = world
    shapes = meshes(size)
    if request.param >= len(shapes):
        pytest.skip(f"{size} ranks make only {len(shapes)} meshes")
    return _mesh(shapes[request.param])


def test_every_signature_pair_keeps_the_logical_value(mesh):
    me = flow.env.get_rank()
    full = seeded((13, 7), np.float64, seed=5)
    failures = []
    for src, dst in itertools.product(itertools.product(ENTRIES, repeat=2), repeat=2):
        x = as_mesh_global(full, mesh, [ENTRIES[k] for k in src])
        y = x.to_global(sbp=tuple(ENTRIES[k] for k in dst))
        value = y.numpy()
        spec = GlobalSpec(mesh, y.sbp, full.shape)
        ok = y.sbp == tuple(ENTRIES[k] for k in dst) and np.array_equal(value, full)
        if "P" not in dst:  # partial components are free to differ; their sum was checked above
            ok = ok and np.array_equal(y.to_local().numpy(), full[spec.component_slices_of(me)])
        if not ok:
            failures.append(f"{src}->{dst}")
    assert_everywhere(not failures, f"{mesh.hierarchy}: {failures[:5]}")


def test_changing_the_mesh_shape_of_the_same_ranks(mesh):
    full = seeded((13, 7), np.float32, seed=6)
    x = as_mesh_global(full, mesh, (ENTRIES["S0"], ENTRIES["S1"]))
    flat = flow.placement("cpu", list(mesh.rank_tuple))
    transposed = flow.placement("cpu", np.array(mesh.ranks).T)
    for placement, sbp in [(flat, (ENTRIES["S0"],)), (transposed, (ENTRIES["B"], ENTRIES["S0"]))]:
        y = x.to_global(placement=placement, sbp=sbp)
        assert_everywhere(y.placement == placement and np.array_equal(y.numpy(), full), f"{placement}")
        back = y.to_global(placement=mesh, sbp=x.sbp)
        assert_everywhere(np.array_equal(back.to_local().numpy(), x.to_local().numpy()))


LOSS_SIGNATURES = [
    ("S0", "S0"),
    ("S0", "B"),
    ("B", "S1"),
    ("S0", "S1"),
    ("B", "B"),
    ("P", "S0"),
    ("S1", "S0"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("signature", LOSS_SIGNATURES, ids="-".join)
def test_the_loss_on_a_mesh_has_the_single_process_bits(mesh, signature, dtype):
    sbp = tuple(ENTRIES[k] for k in signature)
    failures = []
    for log_target in (False, True):
        x_full = seeded((13, 7), dtype, seed=11)
        y_full = seeded((13, 7), dtype, seed=12, positive=not log_target)
        for reduction in REDUCTIONS:
            x, y = as_mesh_global(x_full, mesh, sbp), as_mesh_global(y_full, mesh, sbp)
            loss = F.kl_div(x, y, reduction=reduction, log_target=log_target)
            single = F.kl_div(x_full, y_full, reduction=reduction, log_target=log_target).numpy()
            value = loss.numpy()
            boxed = tuple(flow.sbp.broadcast if s.is_partial_sum else s for s in sbp)
            expected_sbp = (
                boxed
                if reduction == "none"
                else tuple(flow.sbp.partial_sum if s.is_split else s for s in boxed)
            )
            want = reference.kl_reduce(x_full, y_full, reduction, log_target)
            close = np.allclose(value.astype(np.float64), want, rtol=2e-3 if dtype == np.float16 else 1e-5)
            if loss.sbp != expected_sbp or value.tobytes() != single.tobytes() or not close:
                failures.append(f"{reduction} log_target={log_target}: sbp {loss.sbp}")
    assert_everywhere(not failures, f"{mesh.hierarchy} {signature}: {failures}")


@pytest.mark.parametrize("signature", [("S0", "B"), ("S0", "S1"), ("P", "S1"), ("B", "B")], ids="-".join)
def test_gradients_on_a_mesh_have_the_inputs_layout(mesh, signature):
    sbp = tuple(ENTRIES[k] for k in signature)
    x_full = seeded((13, 7), np.float32, seed=1)
    y_full = seeded((13, 7), np.float32, seed=2, positive=True)
    for reduction in ("sum", "batchmean", "none"):
        x = as_mesh_global(x_full, mesh, sbp, requires_grad=True)
        y = as_mesh_global(y_full, mesh, sbp, requires_grad=True)
        loss = F.kl_div(x, y, reduction=reduction)
        single_x, single_y = flow.from_numpy(x_full.copy()), flow.from_numpy(y_full.copy())
        single_x.requires_grad = single_y.requires_grad = True
        single = F.kl_div(single_x, single_y, reduction=reduction)
        if reduction == "none":
            upstream = seeded((13, 7), np.float32, seed=3)
            loss.backward(as_mesh_global(upstream, mesh, loss.sbp))
            single.backward(flow.from_numpy(upstream))
        else:
            loss.backward()
            single.backward()
        grad_sbp = tuple(flow.sbp.broadcast if s.is_partial_sum else s for s in sbp)
        for grad, want in ((x.grad, single_x.grad), (y.grad, single_y.grad)):
            assert_everywhere(grad.sbp == grad_sbp, f"{reduction}: gradient sbp {grad.sbp}")
            assert_everywhere(grad.numpy().tobytes() == want.numpy().tobytes(), f"{reduction}: gradient bits")


def _counts_by_communicator():
    return {c.members: dict(c.counts) for c in comm._communicators.values() if c.counts}


def test_boxing_communicates_on_the_axis_group_only(world):
    _, size = world
    if size != 4:
        pytest.skip("the 2 × 2 mesh needs 4 ranks")
    me = flow.env.get_rank()
    mesh = _mesh((2, 2))
    full = seeded((9, 5), np.float32)
    cases = [
        (("S0", "B"), ("B", "B"), 0, {"allgatherv": 1}),
        (("B", "S1"), ("B", "B"), 1, {"allgatherv": 1}),
        (("P", "B"), ("B", "B"), 0, {"allreduce": 1}),
        (("S0", "B"), ("S1", "B"), 0, {"alltoallv": 1}),
        (("S0", "S1"), ("B", "S1"), 0, {"allgatherv": 1}),  # axis 1 splits another dim: no interference
        (("B", "B"), ("S0", "S1"), None, {}),
    ]
    for src, dst, axis, expected in cases:
        x = as_mesh_global(full, mesh, [ENTRIES[k] for k in src])
        comm.reset_counts()
        x.to_global(sbp=tuple(ENTRIES[k] for k in dst))
        counts = _counts_by_communicator()
        want = {} if axis is None else {mesh.axis_group(me, axis): expected}
        assert_everywhere(counts == want, f"{src}->{dst}: {counts}")


def test_a_nested_split_changes_through_the_right_order(world):
    _, size = world
    if size != 4:
        pytest.skip("the 2 × 2 mesh needs 4 ranks")
    mesh = _mesh((2, 2))
    full = seeded((11, 3), np.float64, seed=9)
    x = as_mesh_global(full, mesh, (ENTRIES["S0"], ENTRIES["S0"]))
    comm.reset_counts()
    y = x.to_global(sbp=(ENTRIES["B"], ENTRIES["S0"]))
    steps = sum(sum(c.values()) for c in _counts_by_communicator().values())
    assert_everywhere(steps == 2, f"{_counts_by_communicator()}")  # two all-gathers, then a slice
    me = flow.env.get_rank()
    expected = full[GlobalSpec(mesh, y.sbp, full.shape).component_slices_of(me)]
    assert_everywhere(np.array_equal(y.to_local().numpy(), expected))


def test_ranks_outside_a_mesh_take_part_in_nothing(world):
    rank, size = world
    if size < 3:
        pytest.skip("needs a rank outside a 1 × 2 mesh")
    mesh = flow.placement("cpu", [[0, 1]])
    x = as_mesh_global(seeded((6, 4), np.float32), mesh, (ENTRIES["B"], ENTRIES["S0"]))
    y = as_mesh_global(seeded((6, 4), np.float32, positive=True), mesh, (ENTRIES["B"], ENTRIES["S0"]))
    comm.reset_counts()
    moved = x.to_global(sbp=(ENTRIES["B"], ENTRIES["B"]))
    loss = F.kl_div(moved, y, reduction="sum")
    inside = rank in (0, 1)
    counts = dict(comm.collective_counts)
    assert_everywhere(bool(counts) == inside, f"rank {rank}: {counts}")
    assert_everywhere(inside or moved.to_local().numel() == 0)
    value = loss.item()  # materialising gives the value to every rank, as in OneFlow
    assert_everywhere(np.isfinite(value))


def test_bad_mesh_arguments_are_one_error_everywhere(mesh):
    local = flow.from_numpy(np.zeros((4, 3), np.float32))
    raises_everywhere(
        ValueError, "needs an sbp tuple of 2 entries", lambda: local.to_global(mesh, flow.sbp.split(0))
    )
    raises_everywhere(
        ValueError,
        "has 3 entries but the placement has 2 mesh axes",
        lambda: local.to_global(mesh, (flow.sbp.split(0),) * 3),
    )
    raises_everywhere(
        ValueError,
        r"split\(dim=2\) needs a tensor with more than 2 dimensions",
        lambda: local.to_global(mesh, (flow.sbp.split(2), flow.sbp.broadcast)),
    )
    x = as_mesh_global(seeded((4, 3), np.float32), mesh, (ENTRIES["B"], ENTRIES["B"]))
    other = flow.placement("cpu", np.array(mesh.ranks).T) if mesh.hierarchy[0] != mesh.hierarchy[1] else None
    other = other or flow.placement("cpu", np.array(mesh.ranks)[:, ::-1])
    y = as_mesh_global(seeded((4, 3), np.float32, positive=True), other, (ENTRIES["B"], ENTRIES["B"]))
    raises_everywhere(ValueError, "same placement", lambda: F.kl_div(x, y))


def test_module_to_global_and_repr_on_a_mesh(mesh):
    module = flow.nn.Module()
    module.register_buffer("table", flow.tensor([[1.0, 2.0], [3.0, 4.0]]))
    module.to_global(mesh, (flow.sbp.broadcast, flow.sbp.split(1)))
    assert_everywhere(module.table.sbp == (flow.sbp.broadcast, flow.sbp.split(1)))
    text = repr(module.table)
    assert_everywhere(
        "sbp=(klflow.sbp.broadcast, klflow.sbp.split(dim=1))" in text and f"ranks={mesh.ranks}" in text, text
    )
