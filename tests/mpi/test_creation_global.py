"""Global creation: every rank makes only its own component, no data moves, and after
``manual_seed`` a random tensor's logical value is the single-process one whatever the rank
count, SBP or mesh (1-D placements on any N; 2×3 and 3×2 meshes on 6 ranks, 2×2 on 4)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_everywhere, raises_everywhere

import klflow as flow
from klflow.distributed import comm
from klflow.distributed.layout import GlobalSpec

DATA_COLLECTIVES = ("allreduce", "allgatherv", "alltoallv", "reduce_scatter", "broadcast")
ENTRIES = [flow.sbp.split(0), flow.sbp.split(1), flow.sbp.broadcast, flow.sbp.partial_sum]
SHAPE = (7, 5)  # uneven over 2, 3, 4 and 6 ranks; fewer rows than ranks on a 4×1 axis


def _single_process(make, seed, dtype, calls_before=0):
    flow.manual_seed(seed)
    for _ in range(calls_before):
        flow.rand(1)
    return make(*SHAPE, dtype=dtype).numpy()


def _check_component(t, expected, what):
    """This rank's component is its slice of ``expected`` (zeros off coordinate 0 of P axes)."""
    me = flow.env.get_rank()
    spec = GlobalSpec(t.placement, tuple(t.sbp), tuple(t.shape))
    local = t.to_local().numpy()
    if t.placement.index_of(me) is None:
        assert_everywhere(local.size == 0, f"{what}: outside the placement, got {local.shape}")
        return
    piece = expected[spec.component_slices_of(me)]
    coordinates = t.placement.coordinates_of(me)
    if not all(coordinates[a] == 0 for a in spec.partial_axes()):
        piece = np.zeros_like(piece)
    assert_everywhere(
        local.shape == piece.shape and np.array_equal(local.view(np.uint8), piece.view(np.uint8)),
        f"{what}: component {local.shape} differs from its slice {piece.shape}",
    )


def _placements(size):
    out = [flow.placement.all("cpu")]
    if size > 2:
        out.append(flow.placement("cpu", list(range(1, size))))  # rank 0 outside
    return out


@pytest.mark.parametrize("dtype", [flow.float32, flow.float64, flow.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("make", [flow.rand, flow.randn])
def test_random_logical_value_is_the_single_process_one(world, make, dtype):
    _, size = world
    expected = _single_process(make, 1234, dtype)
    for placement, sbp in itertools.product(_placements(size), ENTRIES):
        flow.manual_seed(1234)
        comm.reset_counts()
        g = make(*SHAPE, dtype=dtype, placement=placement, sbp=sbp)
        moved = {
            name: comm.collective_counts[name] for name in DATA_COLLECTIVES if comm.collective_counts[name]
        }
        agreements = comm.collective_counts["agreement"]
        assert_everywhere(moved == {} and agreements == 1, f"{sbp}: {moved}, {agreements} agreements")
        _check_component(g, expected, f"{placement!r} {sbp}")
        logical = g.numpy()
        assert_everywhere(
            np.array_equal(logical.view(np.uint8), expected.view(np.uint8)), f"{placement!r} {sbp} logical"
        )


def test_successive_calls_advance_alike_on_every_rank(world):
    expected = [_single_process(flow.rand, 5, flow.float32, calls_before=k) for k in range(3)]
    flow.manual_seed(5)
    made = [flow.rand(*SHAPE, placement=flow.placement.all("cpu"), sbp=flow.sbp.split(0)) for _ in range(3)]
    for k, t in enumerate(made):
        assert_everywhere(np.array_equal(t.numpy(), expected[k]), f"call {k}")
    assert_everywhere(not np.array_equal(expected[0], expected[1]), "calls differ")


def test_constants_over_every_sbp(world):
    _, size = world
    for placement, sbp in itertools.product(_placements(size), ENTRIES):
        comm.reset_counts()
        g = flow.full(SHAPE, 2.5, dtype=flow.float64, placement=placement, sbp=sbp)
        moved = [name for name in DATA_COLLECTIVES if comm.collective_counts[name]]
        assert_everywhere(moved == [], f"{sbp}: {moved}")
        _check_component(g, np.full(SHAPE, 2.5), f"{sbp}")
        assert_everywhere(np.array_equal(g.numpy(), np.full(SHAPE, 2.5)), f"{sbp} logical")
        z = flow.zeros_like(g)
        assert_everywhere(z.sbp == g.sbp and not z.numpy().any(), f"zeros_like {sbp}")


def _meshes(size):
    return [m for m in [(2, 2), (2, 3), (3, 2), (1, size), (size, 1)] if m[0] * m[1] == size]


def test_random_on_meshes(world):
    _, size = world
    expected = _single_process(flow.randn, 99, flow.float32)
    for hierarchy in _meshes(size):
        placement = flow.placement("cpu", np.arange(size).reshape(hierarchy))
        for sbp in itertools.product(ENTRIES, repeat=2):
            flow.manual_seed(99)
            g = flow.randn(*SHAPE, placement=placement, sbp=sbp)
            _check_component(g, expected, f"{hierarchy} {sbp}")
            logical = g.numpy()
            assert_everywhere(np.array_equal(logical, expected), f"{hierarchy} {sbp} logical")


def test_a_rank_with_another_shape_or_seed_is_an_error_everywhere(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    placement = flow.placement.all("cpu")
    rows = 7 if rank == 0 else 8
    raises_everywhere(
        comm.CollectiveMismatchError,
        r"rand\(size=\[7, 5\].*rand\(size=\[8, 5\]",
        lambda: flow.rand(rows, 5, placement=placement, sbp=flow.sbp.split(0)),
    )
    flow.manual_seed(1 if rank == 0 else 2)
    raises_everywhere(
        comm.CollectiveMismatchError,
        r"seed 1, random call 0.*seed 2, random call 0",
        lambda: flow.rand(7, 5, placement=placement, sbp=flow.sbp.split(0)),
    )
    # Nothing was drawn: the same seed everywhere now gives the single-process value.
    expected = _single_process(flow.rand, 3, flow.float32)
    flow.manual_seed(3)
    g = flow.rand(*SHAPE, placement=placement, sbp=flow.sbp.broadcast)
    assert_everywhere(np.array_equal(g.numpy(), expected), "after the errors")


def test_bad_arguments_on_one_rank_raise_everywhere(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    placement = flow.placement.all("cpu")
    sbp = flow.sbp.split(2) if rank == size - 1 else flow.sbp.split(0)
    raises_everywhere(
        ValueError, r"split\(dim=2\) needs a tensor with more than 2 dimensions",
        lambda: flow.zeros(*SHAPE, placement=placement, sbp=sbp),
    )  # fmt: skip


def test_cuda_placement_holds_the_cpu_bits(world):
    if not flow.cuda.is_available():
        pytest.skip("no CUDA device (the CUDA-simulator suite runs this with NUMBA_ENABLE_CUDASIM=1)")
    expected = _single_process(flow.randn, 17, flow.float32)
    flow.manual_seed(17)
    g = flow.randn(*SHAPE, placement=flow.placement.all("cuda"), sbp=flow.sbp.split(1))
    assert_everywhere(g.to_local().is_cuda, "component on the device")
    assert_everywhere(np.array_equal(g.numpy(), expected), "logical value")


def test_without_spmd_checks_nothing_is_exchanged(world, monkeypatch):
    monkeypatch.setenv("KLFLOW_CHECK_SPMD", "0")
    expected = _single_process(flow.rand, 8, flow.float64)
    flow.manual_seed(8)
    comm.reset_counts()
    g = flow.rand(*SHAPE, dtype=flow.float64, placement=flow.placement.all("cpu"), sbp=flow.sbp.split(1))
    counted = dict(comm.collective_counts)
    assert_everywhere(sum(counted.values()) == 0, f"{counted}")
    _check_component(g, expected, "unchecked")
