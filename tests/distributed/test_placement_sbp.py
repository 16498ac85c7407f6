"""Frozen placement and SBP values: equality, hashing, OneFlow's reprs, argument checks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import klflow as flow


def test_sbp_reprs_and_equality():
    assert repr(flow.sbp.split(0)) == "klflow.sbp.split(dim=0)"
    assert repr(flow.sbp.broadcast) == "klflow.sbp.broadcast"
    assert repr(flow.sbp.partial_sum) == "klflow.sbp.partial_sum"
    assert str(flow.sbp.split(2)) == "S(2)" and str(flow.sbp.broadcast) == "B"
    assert flow.sbp.split(1) == flow.sbp.split(1) != flow.sbp.split(0)
    assert len({flow.sbp.split(1), flow.sbp.split(1), flow.sbp.broadcast}) == 2


@pytest.mark.parametrize("bad", [-1, 1.0, "0", True])
def test_split_refuses_bad_dims(bad):
    with pytest.raises(
        (TypeError, ValueError), match=repr(bad).strip("'") if not isinstance(bad, str) else "0"
    ):
        flow.sbp.split(bad)


def test_placement_repr_equality_hash_and_pickle():
    p = flow.placement("cpu", [0, 1])
    assert repr(p) == 'klflow.placement(type="cpu", ranks=[0, 1])'
    assert p == flow.placement("cpu", (0, 1)) != flow.placement("cpu", [1, 0])
    assert hash(p) == hash(flow.placement("cpu", [0, 1]))
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(AttributeError):
        p.type = "cuda"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("tpu", [0]), "'tpu'"),
        (("cpu", []), "at least one rank"),
        (("cpu", [0, 0]), "distinct"),
        (("cpu", [-1]), "-1"),
        (("cpu", [[0, 1], [2]]), "equal lengths"),
        (("cpu", [[0, 1], [1, 2]]), "distinct"),
        (("cpu", [0, [1, 2]]), "[1, 2]"),
        (("cpu", 3), "3"),
        (("cpu", [True]), "True"),
        (("cpu", [1.0]), "1.0"),
        (("cpu", ["0"]), "'0'"),
        (("cpu", [[]]), "at least one rank"),
        (("cpu", {0: [0, 1]}), "form of older OneFlow releases is not supported"),
    ],
)
def test_placement_refuses_bad_arguments(args, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment.replace("[", r"\[")):
        flow.placement(*args)


@pytest.mark.parametrize(
    "ranks", [np.arange(3), np.array([0, 1, 2], np.int32), [np.int64(0), np.uint8(1), 2], range(3), (0, 1, 2)]
)
def test_placement_accepts_any_integer_sequence(ranks):
    p = flow.placement("cpu", ranks)
    assert p == flow.placement("cpu", [0, 1, 2])
    assert p.ranks == [0, 1, 2] and all(type(r) is int for r in p.ranks)
    assert repr(p) == 'klflow.placement(type="cpu", ranks=[0, 1, 2])'


def test_hierarchical_placements():
    mesh = flow.placement("cpu", ranks=[[0, 1], [2, 3]])
    assert mesh.hierarchy == (2, 2) and mesh.ndim == 2 and len(mesh) == 4
    assert mesh.ranks == [[0, 1], [2, 3]] and mesh.rank_tuple == (0, 1, 2, 3)
    assert repr(mesh) == 'klflow.placement(type="cpu", ranks=[[0, 1], [2, 3]])'
    assert mesh != flow.placement("cpu", [0, 1, 2, 3]) and mesh != flow.placement("cpu", [[0, 1, 2, 3]])
    assert hash(mesh) == hash(flow.placement("cpu", np.arange(4).reshape(2, 2)))
    assert pickle.loads(pickle.dumps(mesh)) == mesh
    assert mesh.coordinates_of(1) == (0, 1) and mesh.coordinates_of(7) is None
    assert mesh.axis_group(1, 0) == (1, 3) and mesh.axis_group(1, 1) == (0, 1)
    assert mesh.group_over(3, [0, 1]) == (0, 1, 2, 3) and mesh.group_over(3, [0]) == (1, 3)
    cube = flow.placement("cuda", np.arange(8).reshape(2, 1, 4))
    assert cube.hierarchy == (2, 1, 4) and cube.rank_at((1, 0, 2)) == 6
    assert cube.short() == "cuda 2×1×4 mesh of ranks 0-7"


def test_sbp_signatures_have_one_entry_per_mesh_axis():
    from klflow.distributed.sbp import as_signature

    assert as_signature(flow.sbp.split(0)) == (flow.sbp.split(0),)
    assert as_signature((flow.sbp.split(0), flow.sbp.broadcast), 2) == (flow.sbp.split(0), flow.sbp.broadcast)
    with pytest.raises(ValueError, match="needs an sbp tuple of 2 entries"):
        as_signature(flow.sbp.broadcast, 2)
    with pytest.raises(ValueError, match="has 1 entries but the placement has 2 mesh axes"):
        as_signature([flow.sbp.broadcast], 2)
    with pytest.raises(TypeError, match="got 'S0'"):
        as_signature(["S0"], 1)


def test_placement_all_covers_the_world():
    assert flow.placement.all("cpu") == flow.placement("cpu", [0])
