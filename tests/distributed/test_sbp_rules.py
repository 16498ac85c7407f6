"""The SBP rules table (pure functions): every row of the table in sbp_rules' docstring."""

from __future__ import annotations

import pytest

from klflow.distributed import sbp_rules
from klflow.distributed.sbp import broadcast as B
from klflow.distributed.sbp import partial_sum as P
from klflow.distributed.sbp import split

S0, S1 = split(0), split(1)


def everywhere(d):
    return True


def nowhere(d):
    return False


@pytest.mark.parametrize(
    "kind,a,b,want",
    [
        ("add", P, P, (P, P, P)),
        ("add", P, B, (P, P, P)),
        ("add", B, P, (P, P, P)),
        ("mul", P, P, (P, B, P)),
        ("mul", P, B, (P, B, P)),
        ("mul", B, P, (B, P, P)),
        ("div", P, B, (P, B, P)),
        ("div", B, P, (B, B, B)),
        ("div", P, P, (P, B, P)),
        ("nonlinear", P, B, (B, B, B)),
        ("add", P, S0, (S0, S0, S0)),
        ("mul", S1, P, (S1, S1, S1)),
        ("add", S0, S0, (S0, S0, S0)),
        ("mul", S0, S1, (S0, S0, S0)),
        ("div", S1, B, (S1, S1, S1)),
        ("nonlinear", B, S0, (S0, S0, S0)),
        ("add", B, B, (B, B, B)),
    ],
)
def test_binary_rules(kind, a, b, want):
    assert sbp_rules.binary_axis(kind, a, b, everywhere, everywhere) == want


def test_an_operand_that_lacks_the_split_dim_stays_broadcast():
    assert sbp_rules.binary_axis("mul", S0, B, everywhere, nowhere) == (S0, B, S0)
    assert sbp_rules.binary_axis("add", P, S1, nowhere, everywhere) == (B, S1, S1)


@pytest.mark.parametrize(
    "kind,entry,tensor_first,want",
    [
        ("add", P, True, (P, P)),
        ("mul", P, True, (P, P)),
        ("div", P, True, (P, P)),
        ("div", P, False, (B, B)),
        ("nonlinear", P, True, (B, B)),
        ("nonlinear", S1, True, (S1, S1)),
    ],
)
def test_scalar_rules(kind, entry, tensor_first, want):
    assert sbp_rules.unary_axis(kind, entry, tensor_first) == want


def test_alignment_reductions_and_bad_kinds():
    assert sbp_rules.aligned(S0, (4,), (3, 4)) == S1  # right-aligned as broadcasting aligns
    assert sbp_rules.aligned(S0, (1, 4), (3, 4)) == B  # a split of a broadcast dim is no split
    covers = sbp_rules.covering((1, 4), (3, 4))
    assert not covers(0) and covers(1)
    assert sbp_rules.reduction_axis(S1, {1}, False) == P
    assert sbp_rules.reduction_axis(split(2), {0}, False) == S1
    assert sbp_rules.reduction_axis(split(2), {0}, True) == split(2)
    assert sbp_rules.reduction_axis(B, {0}, False) == B and sbp_rules.reduction_axis(P, {0}, False) == P
    with pytest.raises(ValueError, match="unknown kind"):
        sbp_rules.binary_axis("matmul", B, B, everywhere, everywhere)
