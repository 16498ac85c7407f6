"""The SBP rules of tensor arithmetic and reductions, one mesh axis at a time (pure: no MPI).

Entries are given in the *output's* dims (an operand of lower rank is aligned to the right, as
broadcasting aligns it). ``covers(d)`` tells whether an operand has output dim ``d`` at its full
extent (a broadcast operand may lack it, or hold it with size 1). For every axis a rule returns
what each operand must be boxed to first and the output's entry:

| operands     | add, sub              | mul            | div (a / b)             | exp, log, pow, ==, < |
|--------------|-----------------------|----------------|-------------------------|----------------------|
| P, scalar    | P (c on the 1st rank) | P              | P / c: P; c / P: P → B  | P → B                |
| P, P         | P                     | b → B; P       | b → B; P                | both → B             |
| P, B         | B → P (locally); P    | P              | P / B: P; B / P: P → B  | P → B                |
| P, S(d)      | P → S(d)              | P → S(d)       | P → S(d)                | P → S(d)             |
| S(d), S(d)   | S(d)                  | S(d)           | S(d)                    | S(d)                 |
| S(d), S(e)   | b → S(d)              | b → S(d)       | b → S(d)                | b → S(d)             |
| S(d), B      | S(d), B sliced        | S(d), B sliced | S(d), B sliced          | S(d), B sliced       |
| B, B         | B                     | B              | B                       | B                    |

("→ S(d)" and "sliced" become "→ B" and "kept" for an operand that does not cover d.) A reduction
over the dims ``reduced`` turns ``S(d)`` with d reduced into P, renumbers the other splits and keeps B and P.

>>> from klflow.distributed.sbp import split, broadcast, partial_sum
>>> binary_axis("mul", partial_sum, broadcast, lambda d: True, lambda d: True)
(klflow.sbp.partial_sum, klflow.sbp.broadcast, klflow.sbp.partial_sum)
>>> reduction_axis(split(1), {1}, False)
klflow.sbp.partial_sum
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from klflow.distributed.sbp import SbpParallel, broadcast, partial_sum, split

ADD, MUL, DIV, NONLINEAR = "add", "mul", "div", "nonlinear"
KINDS = (ADD, MUL, DIV, NONLINEAR)
Covers = Callable[[int], bool]


def aligned(entry: SbpParallel, operand_shape: Sequence[int], out_shape: Sequence[int]) -> SbpParallel:
    """An operand's entry in the output's dims; a split of a broadcast (size-1) dim is no split
    of the output: the operand is made broadcast first."""
    if not entry.is_split:
        return entry
    offset = len(out_shape) - len(operand_shape)
    dim = entry.dim + offset
    if operand_shape[entry.dim] != out_shape[dim]:
        return broadcast
    return split(dim)


def covering(operand_shape: Sequence[int], out_shape: Sequence[int]) -> Covers:
    """``covers(d)``: the operand holds output dim ``d`` at its full extent."""
    offset = len(out_shape) - len(operand_shape)

    def covers(d: int) -> bool:
        k = d - offset
        return k >= 0 and operand_shape[k] == out_shape[d]

    return covers


def _toward_split(entry: SbpParallel, covers: Covers, dim: int) -> SbpParallel:
    """What an operand's entry becomes next to an output split along ``dim``."""
    if entry.is_split and entry.dim == dim:
        return entry
    if covers(dim):
        return split(dim)
    return broadcast


def unary_axis(kind: str, entry: SbpParallel, tensor_first: bool = True) -> tuple[SbpParallel, SbpParallel]:
    """(what the operand is boxed to, the output's entry) for an op of a tensor and Python scalars
    (``tensor_first`` False: the scalar is the first operand, as in ``c / t``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of operation {kind!r}; expected one of {KINDS}")
    if not entry.is_partial_sum:
        return entry, entry
    if kind in (ADD, MUL) or (kind == DIV and tensor_first):
        return partial_sum, partial_sum
    return broadcast, broadcast


def binary_axis(
    kind: str, a: SbpParallel, b: SbpParallel, a_covers: Covers, b_covers: Covers
) -> tuple[SbpParallel, SbpParallel, SbpParallel]:
    """(a's target, b's target, the output's entry) on one mesh axis for ``a op b``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of operation {kind!r}; expected one of {KINDS}")
    split_dim = next((s.dim for s in (a, b) if s.is_split), None)
    if split_dim is not None:
        # A split of either operand decides the output; the other follows it (P is reduce-scattered).
        return _toward_split(a, a_covers, split_dim), _toward_split(b, b_covers, split_dim), split(split_dim)
    if not (a.is_partial_sum or b.is_partial_sum):
        return broadcast, broadcast, broadcast
    if kind == ADD:
        return partial_sum, partial_sum, partial_sum  # B becomes P locally: the first rank keeps it
    if kind == MUL:
        if a.is_partial_sum:
            return partial_sum, broadcast, partial_sum
        return broadcast, partial_sum, partial_sum
    if kind == DIV and a.is_partial_sum:
        return partial_sum, broadcast, partial_sum
    return broadcast, broadcast, broadcast


def reduction_axis(entry: SbpParallel, reduced: set[int], keepdim: bool) -> SbpParallel:
    """The output entry of a sum over the dims ``reduced`` (of the input's dims)."""
    if not entry.is_split:
        return entry
    if entry.dim in reduced:
        return partial_sum
    if keepdim:
        return entry
    return split(entry.dim - sum(1 for d in reduced if d < entry.dim))
