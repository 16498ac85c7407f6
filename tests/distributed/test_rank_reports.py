"""Under mpiexec pytest reports once (rank 0), and a failure on another rank is still printed."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

from mpi_jobs import launch, mpiexec, needs_mpiexec

HANG_GUARD_S = 300
MPI_TESTS = Path(__file__).resolve().parents[1] / "mpi"

CONFTEST = f"""
import sys
sys.path.insert(0, {str(MPI_TESTS)!r})
from rank_output import report_from_rank_zero_only

def pytest_configure(config):
    from mpi4py import MPI
    report_from_rank_zero_only(config, MPI.COMM_WORLD.Get_rank())
"""

TESTS = """
from mpi4py import MPI

def test_passes_everywhere():
    assert True

def test_fails_on_rank_two_only():
    assert MPI.COMM_WORLD.Get_rank() != 2, "rank two disagrees"
"""


def _run(tmp_path: Path, ranks: int):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_ranks.py").write_text(textwrap.dedent(TESTS))
    # No -m mpi4py here: the failing rank must not abort the others before they report.
    return launch(
        mpiexec(
            "-n", str(ranks), sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no"
        ),
        HANG_GUARD_S,
        cwd=tmp_path,
    )


@needs_mpiexec
def test_one_summary_and_the_other_ranks_failures(tmp_path):
    done = _run(tmp_path, 3)
    out = done.stdout
    assert done.returncode != 0, out
    assert len(re.findall(r"^2 passed in ", out, flags=re.M)) == 1, out  # rank 0's summary, once
    assert "1 failed" not in out  # rank 2's summary stays quiet...
    assert (
        "[rank 2] FAILED (call) test_ranks.py::test_fails_on_rank_two_only" in out
    )  # ...its failure does not
    assert "rank two disagrees" in out
    assert "[rank 1]" not in out
