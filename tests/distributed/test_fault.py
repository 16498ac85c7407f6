"""A job launched as the README says ends non-zero, not hung, when one rank raises or dies."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from mpi_jobs import needs_mpiexec, run_job

HANG_GUARD_S = 180  # far beyond a healthy run's few seconds; only a hang reaches it

pytestmark = needs_mpiexec

PRELUDE = """
import os, sys
import numpy as np
import klflow as flow
rank = flow.env.get_rank()
x = flow.from_numpy(np.ones((4, 2), np.float32)).to_global(flow.placement.all("cpu"), flow.sbp.split(0))
"""


def _run_job(tmp_path: Path, body: str):
    script = tmp_path / "job.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return run_job(script, 2, HANG_GUARD_S)


def test_an_exception_on_one_rank_ends_the_whole_job(tmp_path):
    result = _run_job(
        tmp_path,
        """
        if rank == 1:
            raise RuntimeError("rank 1 gives up")
        x.numpy()          # rank 0 waits in a collective rank 1 never joins
        print("rank 0 finished")
    """,
    )
    assert result.returncode != 0, result.stdout
    assert "rank 1 gives up" in result.stdout
    assert "rank 0 finished" not in result.stdout


def test_a_rank_that_dies_ends_the_whole_job(tmp_path):
    result = _run_job(
        tmp_path,
        """
        if rank == 1:
            os._exit(3)    # no Python cleanup, no MPI_Finalize
        x.numpy()
        print("rank 0 finished")
    """,
    )
    assert result.returncode != 0, result.stdout
    assert "rank 0 finished" not in result.stdout


def test_validation_errors_end_every_rank_with_the_same_message(tmp_path):
    result = _run_job(
        tmp_path,
        """
        local = flow.from_numpy(np.zeros((3 if rank else 1, 2), np.float32))
        try:
            local.to_global(flow.placement.all("cpu"), flow.sbp.split(0))
        except ValueError as err:
            print(f"<<rank {rank} caught: {err}>>", flush=True)
            sys.exit(5)
    """,
    )
    assert result.returncode != 0
    # The ranks' lines may interleave in the shared output: pick out each bracketed message.
    caught = dict(re.findall(r"<<rank (\d) caught: (.*?)>>", result.stdout, flags=re.S))
    assert set(caught) == {"0", "1"}, result.stdout
    assert caught["0"] == caught["1"] and "balanced split" in caught["0"]
