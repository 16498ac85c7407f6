"""Put ``tests/`` on ``sys.path`` (test files in subfolders import ``reference``) and make
hypothesis deterministic: the ``klflow`` profile derandomizes every property test, so a run of
the suite explores the same examples every time (a failure found is pinned with ``@example``).
``HYPOTHESIS_PROFILE=explore`` searches afresh with random seeds, for finding new cases locally.

With ``KLFLOW_SUITE_REPORT=FILE`` the run's counts go to FILE as one line,
``passed failed skipped errors`` (rank 0's under mpiexec), for the table ``scripts/test`` prints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import settings

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

settings.register_profile("klflow", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "klflow"))

SUITE_COUNTS = ("passed", "failed", "skipped", "error")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    path = os.environ.get("KLFLOW_SUITE_REPORT")
    mpi = sys.modules.get("mpi4py.MPI")
    if not path or (mpi is not None and mpi.Is_initialized() and mpi.COMM_WORLD.Get_rank() != 0):
        return
    counts = [
        sum(
            1
            for report in terminalreporter.stats.get(key, [])
            if getattr(report, "count_towards_summary", True)
        )
        for key in SUITE_COUNTS
    ]
    Path(path).write_text(" ".join(map(str, counts)) + "\n")
