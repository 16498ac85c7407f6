"""Mistakes on one rank raise the same error on every rank; nothing is left waiting."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import raises_everywhere
from helpers import as_global, seeded

import klflow as flow
import klflow.nn.functional as F


def test_unbalanced_split_layout_is_refused_everywhere(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    rows = 3 if rank == size - 1 else 1  # the last rank holds more than the first: not balanced
    local = flow.from_numpy(np.zeros((rows, 2), np.float32))
    raises_everywhere(
        ValueError,
        r"rank .*balanced split",
        lambda: local.to_global(flow.placement.all("cpu"), flow.sbp.split(0)),
    )


def test_mismatched_trailing_shape_is_refused_everywhere(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    local = flow.from_numpy(np.zeros((2, 3 if rank == 0 else 4), np.float32))
    raises_everywhere(
        ValueError,
        r"differ off the split axis",
        lambda: local.to_global(flow.placement.all("cpu"), flow.sbp.split(0)),
    )


def test_broadcast_from_local_checks_shape_and_dtype_on_every_rank(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    shaped = flow.from_numpy(np.zeros((2, 2) if rank else (2, 3), np.float32))
    raises_everywhere(
        ValueError,
        r"same shape on every rank.*rank 0: \[2, 3\]",
        lambda: shaped.to_global(flow.placement.all("cpu"), flow.sbp.broadcast),
    )
    typed = flow.from_numpy(np.zeros((2,), np.float64 if rank == size - 1 else np.float32))
    raises_everywhere(
        ValueError,
        r"different dtypes.*float64",
        lambda: typed.to_global(flow.placement.all("cpu"), flow.sbp.broadcast),
    )


def test_ranks_asking_for_different_sbps_are_refused_everywhere(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    local = flow.from_numpy(np.zeros((size, size), np.float32))
    sbp = flow.sbp.split(0) if rank == 0 else flow.sbp.split(1)
    raises_everywhere(
        ValueError,
        r"asked for different placements/SBPs",
        lambda: local.to_global(flow.placement.all("cpu"), sbp),
    )
    x = as_global(seeded((size, size)), flow.sbp.broadcast)
    raises_everywhere(
        ValueError,
        r"called different klflow collectives.*rank 0: to_global.*rank 1: to_global",
        lambda: x.to_global(sbp=sbp),
    )


def test_placement_beyond_the_world_is_refused(world):
    rank, size = world
    local = flow.from_numpy(np.zeros(3, np.float32))
    raises_everywhere(
        ValueError,
        rf"names ranks \[{size}\] but the job has only {size} rank",
        lambda: local.to_global(flow.placement("cpu", [0, size]), flow.sbp.broadcast),
    )


def test_split_dim_beyond_the_tensor_is_refused(world):
    local = flow.from_numpy(np.zeros(3, np.float32))
    raises_everywhere(
        ValueError,
        r"split\(dim=1\) needs a tensor with more than 1 dimensions",
        lambda: local.to_global(flow.placement.all("cpu"), flow.sbp.split(1)),
    )


def test_loss_refuses_mixed_local_and_global_inputs(world):
    x = as_global(seeded((4, 2)), flow.sbp.split(0))
    y = flow.from_numpy(seeded((4, 2), positive=True))
    raises_everywhere(ValueError, r"both be local or both be global", lambda: F.kl_div(x, y))


def test_loss_refuses_different_placements(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    x = as_global(seeded((4, 2)), flow.sbp.broadcast, flow.placement("cpu", [0]))
    y = as_global(seeded((4, 2), positive=True), flow.sbp.broadcast, flow.placement("cpu", [1]))
    raises_everywhere(ValueError, r"same placement", lambda: F.kl_div(x, y))


def test_loss_called_differently_on_ranks_is_refused(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    x = as_global(seeded((4, 2)), flow.sbp.split(0))
    y = as_global(seeded((4, 2), positive=True), flow.sbp.split(0))
    reduction = "sum" if rank == 0 else "mean"
    raises_everywhere(
        ValueError,
        r"called different klflow collectives.*"
        r"rank 0: kl_div\(reduction='sum'.*rank 1: kl_div\(reduction='mean'",
        lambda: F.kl_div(x, y, reduction=reduction),
    )


def test_a_bad_argument_on_one_rank_stops_every_rank(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    local = flow.from_numpy(np.zeros((size, 2), np.float32))
    placement = "cpu" if rank == 0 else flow.placement.all("cpu")  # rank 0 passes a string
    raises_everywhere(
        TypeError,  # every problem found is a TypeError, so every rank raises one
        r"rank 0: placement must be a klflow.placement",
        lambda: local.to_global(placement, flow.sbp.split(0)),
    )
    x = as_global(seeded((size, 2)), flow.sbp.split(0))
    bad_dim = 5 if rank == 0 else 1
    raises_everywhere(
        ValueError,
        r"rank 0: split\(dim=5\) needs a tensor with more than 5 dimensions",
        lambda: x.to_global(sbp=flow.sbp.split(bad_dim)),
    )
    y = as_global(seeded((size, 2), positive=True), flow.sbp.split(0))
    reduction = "avg" if rank == 0 else "sum"
    raises_everywhere(
        ValueError,
        r"rank 0: 'avg' is not a valid value for reduction",
        lambda: F.kl_div(x, y, reduction=reduction),
    )


def test_the_same_mistake_everywhere_raises_the_plain_error(world):
    x = as_global(seeded((4, 2)), flow.sbp.split(0))
    y = as_global(seeded((4, 3), positive=True), flow.sbp.split(0))
    raises_everywhere(ValueError, r"^input and target must have the same shape", lambda: F.kl_div(x, y))
    raises_everywhere(TypeError, r"^log_target must be a bool", lambda: F.kl_div(x, x, log_target=1))


def test_a_target_that_cannot_be_converted_on_one_rank_stops_every_rank(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    x = as_global(seeded((size, 2)), flow.sbp.split(0))
    good = as_global(seeded((size, 2), positive=True), flow.sbp.split(0))  # every rank builds it
    target = [[1j, 2j]] * size if rank == 0 else good
    raises_everywhere(TypeError, r"rank 0: target: .*complex", lambda: F.kl_div(x, target))
