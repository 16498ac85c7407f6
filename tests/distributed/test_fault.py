"""Every fault ends the job non-zero, never a hang: jobs launched as subprocesses on 2, 3 and 4
ranks, with and without ``python -m mpi4py``, and a short collective timeout."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mpi_jobs import needs_mpiexec, run_job

TIMEOUT_S = 5  # KLFLOW_COLLECTIVE_TIMEOUT of the job that tests the watchdog
OTHER_TIMEOUT_S = 120  # the others' (a loaded machine must not make a healthy wait look hung)
HANG_GUARD_S = 240  # far beyond a healthy run (start-up included); only a hang reaches it

pytestmark = needs_mpiexec

PRELUDE = """
import os, sys, time
import numpy as np
import klflow as flow
import klflow.nn.functional as F
rank, size = flow.env.get_rank(), flow.env.get_world_size()
last = size - 1
placement = flow.placement.all("cpu")
x = flow.from_numpy(np.ones((4, 2), np.float32)).to_global(placement, flow.sbp.split(0))
y = flow.from_numpy(np.full((4, 2), 0.5, np.float32)).to_global(placement, flow.sbp.split(0))
"""

ranks = pytest.mark.parametrize("ranks", [2, 3, 4])
launchers = pytest.mark.parametrize("mpi4py_main", [False, True], ids=["python", "python-m-mpi4py"])


def _run(
    tmp_path: Path, body: str, ranks: int, mpi4py_main: bool = False, timeout_s: float = OTHER_TIMEOUT_S
):
    script = tmp_path / "job.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return run_job(script, ranks, HANG_GUARD_S, {"KLFLOW_COLLECTIVE_TIMEOUT": str(timeout_s)}, mpi4py_main)


@ranks
@launchers
def test_an_exception_on_one_rank_ends_the_whole_job(tmp_path, ranks, mpi4py_main):
    result = _run(
        tmp_path,
        """
        if rank == last:
            raise RuntimeError("the last rank gives up")
        x.numpy()          # the others wait in a collective the last rank never joins
        print("finished", flush=True)
        """,
        ranks,
        mpi4py_main,
    )
    assert result.returncode != 0, result.stdout
    assert "the last rank gives up" in result.stdout
    assert "finished" not in result.stdout


@ranks
def test_an_exception_inside_backward_on_one_rank_ends_the_job(tmp_path, ranks):
    result = _run(
        tmp_path,
        """
        from klflow.ops import kl_div as global_loss
        x.requires_grad = True
        loss = F.kl_div(x, y, reduction="sum")
        if rank == last:
            def broken(self, grad_output):
                raise RuntimeError("backward broke on the last rank")
            global_loss.GlobalLossNode.backward = broken
        loss.backward()
        x.grad.numpy()
        print("finished", flush=True)
        """,
        ranks,
    )
    assert result.returncode != 0, result.stdout
    assert "backward broke on the last rank" in result.stdout
    assert "finished" not in result.stdout


@ranks
@launchers
@pytest.mark.parametrize("code", [0, 3])
def test_a_rank_that_exits_early_ends_the_job_non_zero(tmp_path, ranks, mpi4py_main, code):
    result = _run(
        tmp_path,
        f"""
        if rank == last:
            sys.exit({code})
        x.numpy()
        print("finished", flush=True)
        """,
        ranks,
        mpi4py_main,
    )
    assert result.returncode != 0, result.stdout
    assert "finished" not in result.stdout
    if code == 0:  # the others learn why before the job ends
        assert f"rank {ranks - 1} has ended its program" in result.stdout, result.stdout


@ranks
def test_a_rank_whose_script_ends_early_answers_the_others_with_an_error(tmp_path, ranks):
    result = _run(
        tmp_path,
        """
        if rank != last:
            try:
                x.numpy()
            except flow.distributed.CollectiveMismatchError as err:
                print(f"<<rank {rank} caught: {err}>>", flush=True)
                sys.exit(7)
        """,
        ranks,
    )
    assert result.returncode == 7, result.stdout
    caught = dict(re.findall(r"<<rank (\d) caught: (.*?)>>", result.stdout, flags=re.S))
    assert set(caught) == {str(r) for r in range(ranks - 1)}, result.stdout
    assert all(f"rank {ranks - 1}: has ended its program" in text for text in caught.values())


@ranks
def test_os_exit_zero_on_one_rank_is_reported_as_a_failure(tmp_path, ranks):
    result = _run(
        tmp_path,
        """
        if rank == last:
            os._exit(0)    # no Python cleanup, no MPI_Finalize
        x.numpy()
        print("finished", flush=True)
        """,
        ranks,
    )
    assert result.returncode != 0, result.stdout
    assert "finished" not in result.stdout
    assert "called os._exit(0)" in result.stdout


def test_forked_children_keep_the_plain_os_exit(tmp_path):
    result = _run(
        tmp_path,
        """
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(2) as pool:
            squares = pool.map(abs, [-1, -2, -3])
        print(f"rank {rank} pool {squares}", flush=True)
        x.numpy()
        """,
        2,
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("pool [1, 2, 3]") == 2


@ranks
def test_a_rank_that_waits_too_long_ends_the_job_naming_the_late_ranks(tmp_path, ranks):
    result = _run(
        tmp_path,
        f"""
        if rank == last:
            time.sleep({TIMEOUT_S * 6})   # far past the others' timeout
        x.numpy()
        print("finished", flush=True)
        """,
        ranks,
        timeout_s=TIMEOUT_S,
    )
    assert result.returncode == 124, result.stdout
    assert "finished" not in result.stdout
    assert f"ranks [{ranks - 1}] of the world communicator have not arrived" in result.stdout, result.stdout
    assert "KLFLOW_COLLECTIVE_TIMEOUT=5 s" in result.stdout


@ranks
def test_validation_errors_end_every_rank_with_the_same_message(tmp_path, ranks):
    result = _run(
        tmp_path,
        """
        local = flow.from_numpy(np.zeros((3 if rank else 1, 2), np.float32))
        try:
            local.to_global(flow.placement.all("cpu"), flow.sbp.split(0))
        except ValueError as err:
            print(f"<<rank {rank} caught: {err}>>", flush=True)
            sys.exit(5)
        """,
        ranks,
    )
    assert result.returncode == 5
    # The ranks' lines may interleave in the shared output: pick out each bracketed message.
    caught = dict(re.findall(r"<<rank (\d) caught: (.*?)>>", result.stdout, flags=re.S))
    assert set(caught) == {str(r) for r in range(ranks)}, result.stdout
    assert len(set(caught.values())) == 1 and "balanced split" in caught["0"]


def test_a_bad_timeout_setting_is_a_clear_error(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(PRELUDE + "x.numpy()\n")
    result = run_job(script, 2, HANG_GUARD_S, {"KLFLOW_COLLECTIVE_TIMEOUT": "soon"}, mpi4py_main=True)
    assert result.returncode != 0
    assert "KLFLOW_COLLECTIVE_TIMEOUT='soon' is not a positive number of seconds" in result.stdout
