"""Pure layout math: balanced splits and component shapes (no MPI)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klflow.distributed import layout


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_balanced_sizes_sum_and_differ_by_at_most_one(length, parts):
    sizes = layout.balanced_sizes(length, parts)
    assert len(sizes) == parts and sum(sizes) == length
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first n % k hold one more


def test_balanced_examples():
    assert layout.balanced_sizes(13, 3) == [5, 4, 4]
    assert layout.balanced_sizes(2, 4) == [1, 1, 0, 0]
    assert layout.balanced_offsets(13, 3) == [0, 5, 9, 13]


def test_component_shape_and_slices():
    assert layout.component_shape((13, 2), 0, 3, 2) == (4, 2)
    assert layout.component_shape((13, 7), 1, 3, 0) == (13, 3)
    assert layout.component_shape((13, 7), None, 3, 1) == (13, 7)
    assert layout.component_slices((13, 7), 1, 3, 1) == (slice(None), slice(3, 5))


@pytest.mark.parametrize(
    "shapes, dim, fragment",
    [
        ([(1, 2), (3, 2)], 0, "balanced split of 4 over 2 ranks is [2, 2]"),
        ([(2, 2), (2, 3)], 0, "differ off the split axis"),
        ([(2,), (2, 1)], 0, "different numbers of dimensions"),
        ([(2,), (2,)], 1, "needs at least 2 dimensions"),
    ],
)
def test_split_layout_problems_are_explained(shapes, dim, fragment):
    assert fragment in layout.split_layout_problem(shapes, dim)


def test_balanced_layout_has_no_problem():
    assert layout.split_layout_problem([(5, 2), (4, 2), (4, 2)], 0) is None
    assert layout.split_layout_problem([(1, 2), (0, 2), (0, 2)], 0) is None


def test_global_spec_component_shapes():
    from klflow import placement, sbp

    spec = layout.GlobalSpec(placement("cpu", [2, 0, 1]), (sbp.split(1),), (4, 7))
    assert [spec.component_shape(i) for i in range(3)] == [(4, 3), (4, 2), (4, 2)]
    assert spec.component_shape(None) == (0,)
    assert spec.component_numel(0) == 12
