"""``klflow check`` as users launch it: help and errors once per job, the same exit code on every
rank, no ``Abort`` lines, relative configs through ``scripts/run``. Runs with this environment's
MPI (``scripts/test`` runs this file under MPICH and under Open MPI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from mpi_jobs import ROOT, launch, mpiexec, needs_mpiexec, python_m_mpi4py
from test_command import tiny_config

HANG_GUARD_S = 300  # a healthy launch ends in seconds; only a hang reaches this
CHECK = ("-m", "klflow", "check")
EXIT_MARK = re.compile(r"<<exit (\d+)>>")


def _each_rank_reports_its_exit(*arguments: str) -> list[str]:
    """A rank's command that prints its own exit code, so a test sees every rank's."""
    command = " ".join(python_m_mpi4py(*arguments))
    return ["sh", "-c", f'{command}; echo "<<exit $?>>"']


def _check_on(ranks: int, folder, *arguments: str):
    """``mpiexec -n ranks ... klflow check arguments`` in ``folder``; each rank prints its exit code."""
    command = mpiexec("-n", str(ranks), *_each_rank_reports_its_exit(*CHECK, *arguments))
    return launch(command, HANG_GUARD_S, cwd=folder)


@needs_mpiexec
def test_help_is_printed_once_per_job(tmp_path):
    done = launch(mpiexec("-n", "3", *python_m_mpi4py(*CHECK, "--help")), HANG_GUARD_S, cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("usage: python -m klflow check") == 1, done.stdout
    assert "[tolerance]" in done.stdout


@needs_mpiexec
def test_abbreviated_options_are_refused_once_with_exit_2_on_every_rank(tmp_path):
    done = _check_on(2, tmp_path, "--conf", "quick")
    assert EXIT_MARK.findall(done.stdout) == ["2", "2"], done.stdout
    assert done.stdout.count("error: unrecognized arguments: --conf quick") == 1, done.stdout
    assert "Abort" not in done.stdout


@needs_mpiexec
def test_a_bad_value_is_one_clear_error_and_exit_2_on_every_rank(tmp_path):
    tiny_config(tmp_path, seed="-1")
    done = _check_on(3, tmp_path, "--config", "tiny.toml")
    assert EXIT_MARK.findall(done.stdout) == ["2", "2", "2"], done.stdout
    message = f"klflow check: bad config: {tmp_path / 'tiny.toml'}: data.seed must be an integer >= 0"
    assert done.stdout.count(message) == 1, done.stdout
    assert "got -1" in done.stdout and "Abort" not in done.stdout and "Traceback" not in done.stdout


def _check_two_configs(folder, first: str, second: str):
    """One job, two programs (MPMD): rank 0 checks config ``first``, rank 1 ``second``."""
    one, two = (_each_rank_reports_its_exit(*CHECK, "--config", name) for name in (first, second))
    return launch(mpiexec("-n", "1", *one, ":", "-n", "1", *two), HANG_GUARD_S, cwd=folder)


@needs_mpiexec
def test_a_config_bad_on_one_rank_only_is_the_same_error_on_every_rank(tmp_path):
    tiny_config(tmp_path, name="good.toml")
    tiny_config(tmp_path, name="bad.toml", zero_target_fraction="1.5")
    done = _check_two_configs(tmp_path, "good.toml", "bad.toml")
    assert EXIT_MARK.findall(done.stdout) == ["2", "2"], done.stdout
    expected = (
        f"bad config: rank 1 (of 2): {tmp_path / 'bad.toml'}: "
        "data.zero_target_fraction must be in [0, 1], got 1.5"
    )
    assert done.stdout.count(expected) == 1, done.stdout
    assert "Abort" not in done.stdout


@needs_mpiexec
def test_ranks_given_different_good_configs_are_refused(tmp_path):
    tiny_config(tmp_path, name="a.toml")
    tiny_config(tmp_path, name="b.toml", seed="4")
    done = _check_two_configs(tmp_path, "a.toml", "b.toml")
    assert EXIT_MARK.findall(done.stdout) == ["2", "2"], done.stdout
    assert done.stdout.count("the ranks were given different configs") == 1, done.stdout
    assert "rank 0: a.toml; rank 1: b.toml" in done.stdout


@needs_mpiexec
def test_a_passing_check_ends_0_on_every_rank(tmp_path):
    tiny_config(tmp_path)
    done = _check_on(2, tmp_path, "--config", "tiny.toml")
    assert EXIT_MARK.findall(done.stdout) == ["0", "0"], done.stdout
    assert done.stdout.count("cases passed") == 1, done.stdout


# ----------------------------------------------------------------- scripts/run
def _scripts_run_environment():
    """scripts/run's environment for this test's MPI, if scripts/run has made it (never make one here)."""
    from mpi_jobs import MPI_FAMILY

    venv = ROOT / (".venv-openmpi" if MPI_FAMILY == "openmpi" else ".venv")
    if not (venv / ".klflow-install-stamp").exists():
        pytest.skip(f"scripts/run has not made {venv.name} yet")
    return {"KLFLOW_MPI": MPI_FAMILY or "mpich"}


@needs_mpiexec
def test_scripts_run_reads_a_relative_config_from_the_callers_folder(tmp_path):
    env = _scripts_run_environment()
    (tmp_path / "configs").mkdir()
    tiny_config(tmp_path / "configs", name="mine.toml")
    done = launch(
        [str(ROOT / "scripts" / "run"), "--config", "configs/mine.toml"],
        HANG_GUARD_S,
        {**env, "KLFLOW_RANKS": "3"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout
    assert "klflow check: 3 rank(s), shape [6, 4], seed 3" in done.stdout


@needs_mpiexec
def test_scripts_run_prints_help_once_and_refuses_a_bad_rank_count(tmp_path):
    env = _scripts_run_environment()
    done = launch([str(ROOT / "scripts" / "run"), "--help"], HANG_GUARD_S, env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.count("usage:") == 1, done.stdout
    done = launch([str(ROOT / "scripts" / "run")], HANG_GUARD_S, {**env, "KLFLOW_RANKS": "two"}, cwd=tmp_path)
    assert done.returncode == 2 and "KLFLOW_RANKS must be a positive integer, got 'two'" in done.stdout


def test_without_an_mpi_library_the_check_says_so_and_exits_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "klflow", "check", "--config", "quick"],
        capture_output=True,
        text=True,
        env={**os.environ, "MPI4PY_LIBMPI": str(tmp_path / "libmpi.so")},
    )
    assert done.returncode == 2
    assert done.stderr.startswith("klflow check: klflow's MPI layer needs an MPI library"), done.stderr
    assert "Traceback" not in done.stderr


@needs_mpiexec
def test_a_failing_check_ends_1_on_every_rank_without_aborting(tmp_path):
    # A tolerance no float32 result can meet: the cases that are not exact fail.
    path = tiny_config(tmp_path)
    path.write_text(path.read_text() + "[tolerance]\nfloat32 = 1e-300\n")
    done = _check_on(2, tmp_path, "--config", "tiny.toml")
    assert EXIT_MARK.findall(done.stdout) == ["1", "1"], done.stdout
    assert done.stdout.count("FAILED: ") == 1 and "Abort" not in done.stdout, done.stdout
