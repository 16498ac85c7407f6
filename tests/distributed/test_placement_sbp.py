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
        (("cpu", [[0, 1], [2, 3]]), "one-dimensional"),
        (("cpu", 3), "3"),
        (("cpu", [True]), "True"),
        (("cpu", [1.0]), "1.0"),
        (("cpu", ["0"]), "'0'"),
        (("cpu", np.array([[0], [1]])), "one-dimensional"),
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


def test_placement_all_covers_the_world():
    assert flow.placement.all("cpu") == flow.placement("cpu", [0])
