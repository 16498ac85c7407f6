"""Multi-rank tests: run as ``mpiexec -n N python -m mpi4py -m pytest ... tests/mpi --expected-ranks=N``.

Every rank runs every test on the same seeded data. Assertions that could differ between ranks
go through :func:`assert_everywhere`, so all ranks learn whether all passed and fail together
instead of drifting out of step in later collectives. Rank 0 alone prints pytest's report; the
other ranks print only their failures (:mod:`rank_output`).
"""

from __future__ import annotations

import pytest
from rank_output import report_from_rank_zero_only


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--expected-ranks",
        type=int,
        default=None,
        help="the -n given to mpiexec; a mismatch (e.g. N singletons) aborts the run",
    )


def pytest_configure(config: pytest.Config) -> None:
    from mpi4py import MPI

    expected = config.getoption("--expected-ranks")
    size = MPI.COMM_WORLD.Get_size()
    report_from_rank_zero_only(config, MPI.COMM_WORLD.Get_rank())
    if expected is not None and size != expected:
        raise pytest.UsageError(
            f"COMM_WORLD has {size} rank(s) but --expected-ranks={expected}: mpiexec and mpi4py "
            f"do not match (each process may be a singleton)"
        )


@pytest.fixture
def world():
    import klflow as flow

    return flow.env.get_rank(), flow.env.get_world_size()


def assert_everywhere(condition: bool, message: str = "") -> None:
    """Assert on every rank that ``condition`` held on every rank (collective)."""
    from mpi4py import MPI

    outcomes = MPI.COMM_WORLD.allgather((bool(condition), message))
    failed = [(rank, msg) for rank, (ok, msg) in enumerate(outcomes) if not ok]
    assert not failed, "failed on " + "; ".join(f"rank {r}: {m}" for r, m in failed)


def raises_everywhere(exception: type[BaseException], match: str, action) -> str:
    """Run ``action`` and check every rank raised ``exception`` with a message matching ``match``."""
    import re

    try:
        action()
    except exception as err:
        text = str(err)
        ok = re.search(match, text) is not None
        assert_everywhere(ok, f"message {text!r} does not match {match!r}")
        return text
    assert_everywhere(False, f"no {exception.__name__} raised")
    return ""
