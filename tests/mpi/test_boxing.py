"""Every boxing edge, with uneven layouts, against the logical value known on every rank."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_everywhere
from helpers import as_global, local_piece, seeded

import klflow as flow
from klflow.distributed import comm

SBPS = {
    "S0": flow.sbp.split(0),
    "S1": flow.sbp.split(1),
    "B": flow.sbp.broadcast,
    "P": flow.sbp.partial_sum,
}


def _expected_local(full, sbp, rank, size):
    if sbp.is_split:
        return local_piece(full, sbp.dim, rank, size)
    return full  # broadcast; partial_sum components are checked through their sum


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("source", list(SBPS))
@pytest.mark.parametrize("target", list(SBPS))
def test_every_edge_keeps_the_logical_value(world, source, target, dtype):
    rank, size = world
    full = seeded((4 * 3 + 1, 2 * size + 1), dtype, seed=7)  # uneven along both axes
    x = as_global(full, SBPS[source])
    y = x.to_global(sbp=SBPS[target])
    assert_everywhere(y.sbp == (SBPS[target],), f"sbp {y.sbp}")
    assert_everywhere(tuple(y.shape) == full.shape, f"shape {y.shape}")
    local = y.to_local().numpy()
    if SBPS[target].is_partial_sum:
        total = comm.allreduce_sum(local.astype(np.float64), call="test: the sum of the components")
        ok = np.array_equal(total.astype(dtype), full)
    else:
        ok = np.array_equal(local, _expected_local(full, SBPS[target], rank, size))
    assert_everywhere(ok, f"{source}->{target}: local component differs")
    assert_everywhere(np.array_equal(y.numpy(), full), f"{source}->{target}: logical value differs")


def test_split_with_fewer_rows_than_ranks_gives_empty_components(world):
    rank, size = world
    full = seeded((1, 3), seed=1)
    x = as_global(full, flow.sbp.split(0))
    expected_rows = 1 if rank == 0 else 0
    assert_everywhere(x.to_local().shape[0] == expected_rows, f"{x.to_local().shape}")
    assert_everywhere(np.array_equal(x.numpy(), full))
    b = x.to_global(sbp=flow.sbp.broadcast)
    assert_everywhere(np.array_equal(b.to_local().numpy(), full))


def test_broadcast_takes_the_first_ranks_data(world):
    rank, size = world
    mine = np.full((2, 2), float(rank), dtype=np.float32)
    x = flow.from_numpy(mine).to_global(flow.placement.all("cpu"), flow.sbp.broadcast)
    assert_everywhere(np.array_equal(x.to_local().numpy(), np.zeros((2, 2))), "not rank 0's data")


def test_partial_sum_value_is_the_sum_of_components(world):
    rank, size = world
    mine = np.full((3,), float(rank + 1), dtype=np.float64)
    x = flow.from_numpy(mine).to_global(flow.placement.all("cpu"), flow.sbp.partial_sum)
    expected = np.full((3,), size * (size + 1) / 2)
    assert_everywhere(np.array_equal(x.numpy(), expected))
    assert_everywhere(
        float(flow.from_numpy(np.ones(1)).to_global(flow.placement.all("cpu"), flow.sbp.partial_sum).item())
        == size
    )


def test_subset_placement_leaves_other_ranks_empty(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    placement = flow.placement("cpu", list(range(size - 1, 0, -1)))  # reversed, without rank 0
    full = seeded((7, 3), seed=3)
    x = as_global(full, flow.sbp.split(0), placement)
    inside = placement.index_of(rank) is not None
    assert_everywhere((x.to_local().numel() > 0) == inside or full.shape[0] < len(placement))
    if not inside:
        assert_everywhere(x.to_local().numel() == 0, f"outside rank holds {x.to_local().shape}")
    else:
        assert_everywhere(True)
    # Every rank, inside or not, sees the logical value; the order follows the placement.
    assert_everywhere(np.array_equal(x.numpy(), full))
    for target in SBPS.values():
        y = x.to_global(sbp=target)
        assert_everywhere(np.array_equal(y.numpy(), full), f"subset {target}")


def test_changing_placement_goes_through_the_logical_value(world):
    rank, size = world
    full = seeded((5, 4), seed=4)
    x = as_global(full, flow.sbp.split(1))
    first_only = flow.placement("cpu", [0])
    y = x.to_global(placement=first_only, sbp=flow.sbp.broadcast)
    assert_everywhere(y.placement == first_only)
    expected_local = full if rank == 0 else np.empty((0,), np.float32)
    assert_everywhere(np.array_equal(y.to_local().numpy(), expected_local))
    z = y.to_global(placement=flow.placement.all("cpu"), sbp=flow.sbp.split(0))
    assert_everywhere(np.array_equal(z.to_local().numpy(), local_piece(full, 0, rank, size)))


def test_repr_prints_the_logical_value_with_placement_and_sbp(world):
    rank, size = world
    x = as_global(np.arange(3, dtype=np.float32), flow.sbp.split(0))
    text = repr(x)
    expected = (
        f'tensor([0., 1., 2.], placement=klflow.placement(type="cpu", ranks={list(range(size))}), '
        f"sbp=(klflow.sbp.split(dim=0),), dtype=klflow.float32)"
    )
    if len(expected) > 80:  # OneFlow wraps suffixes past the line width
        assert_everywhere(text.replace("\n       ", " ") == expected, text)
    else:
        assert_everywhere(text == expected, text)
