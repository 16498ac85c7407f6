"""Pure layout math: balanced splits, nested component ranges on meshes, assembling components,
and the axis-by-axis boxing plan (checked by simulating every step in NumPy, no MPI)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from klflow import placement
from klflow.distributed import boxing, layout
from klflow.distributed.sbp import broadcast, partial_sum, split


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


def test_one_axis_components():
    spec = layout.GlobalSpec(placement("cpu", [2, 0, 1]), (split(1),), (4, 7))
    assert [spec.component_shape_of(r) for r in (2, 0, 1)] == [(4, 3), (4, 2), (4, 2)]
    assert spec.component_slices_of(0) == (slice(0, 4), slice(3, 5))
    assert spec.component_shape_of(5) == (0,) and spec.component_numel_of(5) == 0
    assert spec.component_numel_of(2) == 12


def test_nested_split_of_one_dim_follows_oneflow():
    # (S(0), S(0)) on a 2 × 2 mesh splits dim 0 twice: 5 → [3, 2] on axis 0, then each again.
    mesh = placement("cpu", [[0, 1], [2, 3]])
    spec = layout.GlobalSpec(mesh, (split(0), split(0)), (5, 2))
    assert [spec.component_slices_of(r)[0] for r in range(4)] == [
        slice(0, 2),
        slice(2, 3),
        slice(3, 4),
        slice(4, 5),
    ]
    spec = layout.GlobalSpec(mesh, (split(0), split(1)), (5, 3))
    assert spec.component_shape_of(3) == (2, 1) and spec.component_slices_of(1) == (slice(0, 3), slice(2, 3))
    spec = layout.GlobalSpec(mesh, (broadcast, split(1)), (5, 3))
    assert spec.component_shape_of(2) == (5, 2) and spec.component_shape_of(3) == (5, 1)


def test_components_assemble_into_the_logical_shape():
    mesh = placement("cpu", [[0, 1, 2], [3, 4, 5]])
    for sbp, shape in [
        ((split(0), split(0)), (13, 7)),
        ((split(0), split(1)), (13, 7)),
        ((broadcast, split(1)), (13, 7)),
        ((partial_sum, split(0)), (2, 1)),
        ((split(1), broadcast), (3, 1)),
    ]:
        spec = layout.GlobalSpec(mesh, sbp, shape)
        shapes = {r: spec.component_shape_of(r) for r in mesh.rank_tuple}
        assert layout.logical_shape_of(shapes, mesh, sbp) == (shape, None)


@pytest.mark.parametrize(
    "shapes, sbp, fragment",
    [
        ({0: (3, 2), 1: (1, 2), 2: (2, 2), 3: (2, 2)}, (split(0), split(0)), "balanced split of 4 over 2"),
        ({0: (2, 2), 1: (2, 3), 2: (2, 2), 3: (2, 2)}, (split(0), broadcast), "same shape on every rank"),
        ({0: (2, 2), 1: (2, 2), 2: (2, 3), 3: (2, 2)}, (broadcast, split(0)), "differ off the split axis"),
        ({0: (2,), 1: (2,), 2: (2,), 3: (2,)}, (split(1), broadcast), "needs at least 2 dimensions"),
    ],
)
def test_bad_components_are_explained_with_their_ranks(shapes, sbp, fragment):
    shape, problem = layout.logical_shape_of(shapes, placement("cpu", [[0, 1], [2, 3]]), sbp)
    assert shape is None and fragment in problem and "rank" in problem


# ----------------------------------------------------------------- the boxing plan, simulated
def _components(full, spec):
    """Every rank's component of a logical value (partial-sum axes: the value at coordinate 0)."""
    out = {}
    for r in spec.placement.rank_tuple:
        piece = full[spec.component_slices_of(r)].copy()
        coords = spec.placement.coordinates_of(r)
        if not all(coords[a] == 0 for a in spec.partial_axes()):
            piece = np.zeros_like(piece)
        out[r] = piece
    return out


def _simulate_edge(components, spec, axis, a, b):
    """One plan step on every rank, as :mod:`boxing`'s edge does it on each axis group."""
    out = {}
    for r in spec.placement.rank_tuple:
        view = boxing._axis_view(spec, r, axis)
        members = [components[m] for m in view.members]
        if a.is_split:
            shared = np.concatenate(members, axis=a.dim)
        elif a.is_partial_sum:
            shared = sum(members)
        else:
            shared = components[r]
        assert shared.shape == view.shape, f"axis {axis} {a}->{b}: pieces do not fit the shared piece"
        if b.is_split:
            offsets = layout.balanced_offsets(view.shape[b.dim], view.parts)
            index = [slice(None)] * shared.ndim
            index[b.dim] = slice(offsets[view.index], offsets[view.index + 1])
            out[r] = shared[tuple(index)]
        elif b.is_partial_sum:
            out[r] = shared if view.index == 0 else np.zeros_like(shared)
        else:
            out[r] = shared
    return out


SIGNATURE_ENTRIES = [split(0), split(1), broadcast, partial_sum]


@pytest.mark.parametrize("hierarchy", [(2, 2), (2, 3), (3, 2), (1, 4), (4, 1)])
def test_every_two_axis_plan_acts_on_pieces_its_axis_groups_share(hierarchy):
    pairs = itertools.product(itertools.product(SIGNATURE_ENTRIES, repeat=2), repeat=2)
    for src, dst in pairs:  # all 256 pairs of signatures
        _check_plan(src, dst, hierarchy)


@given(
    st.tuples(*[st.sampled_from(SIGNATURE_ENTRIES)] * 3),
    st.tuples(*[st.sampled_from(SIGNATURE_ENTRIES)] * 3),
    st.sampled_from([(2, 2, 2), (2, 1, 3), (3, 2, 2)]),
)
@example((split(0), split(0), split(0)), (broadcast, split(0), split(1)), (2, 2, 2))
def test_three_axis_plans_act_on_pieces_their_axis_groups_share(src, dst, hierarchy):
    _check_plan(src, dst, hierarchy)


def _check_plan(src, dst, hierarchy):
    mesh = placement("cpu", np.arange(int(np.prod(hierarchy))).reshape(hierarchy))
    full = np.random.default_rng(0).standard_normal((13, 7))
    spec = layout.GlobalSpec(mesh, src, full.shape)
    components = _components(full, spec)
    for axis, a, b in boxing.plan(src, dst):
        assert spec.sbp[axis] == a
        components = _simulate_edge(components, spec, axis, a, b)
        sbp = list(spec.sbp)
        sbp[axis] = b
        spec = spec.with_sbp(sbp)
    assert spec.sbp == dst
    expected = _components(full, spec)
    partial_groups = {}
    for r in mesh.rank_tuple:
        key = tuple(c for a, c in enumerate(mesh.coordinates_of(r)) if a not in spec.partial_axes())
        partial_groups.setdefault(key, []).append(r)
    for ranks in partial_groups.values():  # partial components may differ; their sums may not
        np.testing.assert_allclose(sum(components[r] for r in ranks), sum(expected[r] for r in ranks))
        if not spec.partial_axes():
            assert all(np.array_equal(components[r], expected[r]) for r in ranks)


def test_plans_make_no_needless_steps():
    assert boxing.plan((split(0), broadcast), (split(0), broadcast)) == []
    assert boxing.plan((split(0), split(1)), (broadcast, split(1))) == [(0, split(0), broadcast)]
    assert len(boxing.plan((split(0), split(0)), (broadcast, split(0)))) == 3
    for a, b in itertools.product(SIGNATURE_ENTRIES, repeat=2):
        assert boxing.plan((a,), (b,)) == ([] if a == b else [(0, a, b)])
