"""What each operation communicates: counted at the one module that talks to MPI."""

from __future__ import annotations

import numpy as np
from conftest import assert_everywhere
from helpers import as_global, seeded

import klflow as flow
from klflow.distributed import comm

DATA_COLLECTIVES = ("allreduce", "allgatherv", "alltoallv", "reduce_scatter", "broadcast")


def _data_calls():
    return {name: comm.collective_counts[name] for name in DATA_COLLECTIVES if comm.collective_counts[name]}


def _count(action):
    comm.reset_counts()
    action()
    return _data_calls(), comm.collective_counts["agreement"]


def test_broadcast_to_split_moves_no_data(world, monkeypatch):
    x = as_global(seeded((9, 2)), flow.sbp.broadcast)
    calls, metadata = _count(lambda: x.to_global(sbp=flow.sbp.split(0)))
    assert_everywhere(calls == {}, f"{calls}")
    assert_everywhere(metadata == 1, f"{metadata} agreements")
    monkeypatch.setenv("KLFLOW_CHECK_SPMD", "0")
    calls, metadata = _count(lambda: x.to_global(sbp=flow.sbp.split(0)))
    assert_everywhere(calls == {} and metadata == 0, f"{calls}, {metadata}")


def test_split_to_broadcast_is_one_all_gather(world):
    x = as_global(seeded((9, 2)), flow.sbp.split(0))
    calls, _ = _count(lambda: x.to_global(sbp=flow.sbp.broadcast))
    assert_everywhere(calls == {"allgatherv": 1}, f"{calls}")


def test_each_edge_uses_its_collective(world):
    expectations = [
        (flow.sbp.partial_sum, flow.sbp.broadcast, {"allreduce": 1}),
        (flow.sbp.partial_sum, flow.sbp.split(0), {"reduce_scatter": 1}),
        (flow.sbp.split(0), flow.sbp.split(1), {"alltoallv": 1}),
        (flow.sbp.broadcast, flow.sbp.partial_sum, {}),
    ]
    for source, target, expected in expectations:
        x = as_global(seeded((9, 5)), source)
        calls, _ = _count(lambda x=x, target=target: x.to_global(sbp=target))
        assert_everywhere(calls == expected, f"{source}->{target}: {calls}")


def test_split_loss_is_local_until_materialised_then_one_all_reduce(world):
    x = as_global(seeded((11, 3)), flow.sbp.split(0))
    y = as_global(seeded((11, 3), positive=True, seed=2), flow.sbp.split(0))
    comm.reset_counts()
    loss = flow.nn.functional.kl_div(x, y, reduction="sum")
    assert_everywhere(_data_calls() == {}, f"loss itself: {_data_calls()}")
    comm.reset_counts()
    loss.item()
    assert_everywhere(_data_calls() == {"allreduce": 1}, f"materialising: {_data_calls()}")


def test_an_unprovable_float32_loss_takes_a_second_all_reduce(world):
    # Terms 1 and 2**-24 (log_target with y = 0: each term is -x) sum to a float32 rounding tie:
    # the bounded partials cannot decide it, and every rank all-reduces its exact state as well.
    x_full = -np.array([1.0, 0.0, 2.0**-24, 0.0], np.float32)
    x = as_global(x_full, flow.sbp.split(0))
    y = as_global(np.zeros_like(x_full), flow.sbp.split(0))
    loss = flow.nn.functional.kl_div(x, y, reduction="sum", log_target=True)
    comm.reset_counts()
    value = loss.item()
    assert_everywhere(_data_calls() == {"allreduce": 2}, f"materialising: {_data_calls()}")
    assert_everywhere(value == 1.0, f"{value!r}")


def test_broadcast_loss_needs_no_communication(world):
    x = as_global(seeded((6, 3)), flow.sbp.broadcast)
    y = as_global(seeded((6, 3), positive=True, seed=2), flow.sbp.broadcast)
    comm.reset_counts()
    loss = flow.nn.functional.kl_div(x, y, reduction="mean")
    value = loss.item()
    assert_everywhere(_data_calls() == {}, f"{_data_calls()}")
    assert_everywhere(np.isfinite(value))
