"""Rank, world size and the per-rank CPU thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import klflow as flow
from klflow import env


def test_world_of_one():
    assert flow.env.get_rank() == 0 and flow.env.get_world_size() == 1 and env.get_local_rank() == 0


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({}, 1),
        ({"MPI_LOCALNRANKS": "3"}, 3),  # MPICH's Hydra
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 4),  # Open MPI
        ({"PMI_SIZE": "2"}, 2),  # a launcher that only gives the world size: assume one node
        ({"MPI_LOCALNRANKS": "junk"}, 1),
    ],
)
def test_ranks_on_this_node_come_from_the_launcher(monkeypatch, variables, expected):
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert env.ranks_on_this_node() == expected


def test_default_threads_split_the_cores(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("MPI_LOCALNRANKS", str(cores))
    assert env.default_thread_count() == 1
    monkeypatch.setenv("MPI_LOCALNRANKS", str(cores * 8))
    assert env.default_thread_count() == 1  # never below one
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")
    assert env.default_thread_count() == cores


def _threads_in_fresh_process(extra_env: dict) -> int:
    code = "import klflow; print(klflow.env.get_num_threads())"
    environment = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "MPI_LOCALNRANKS")}
    environment.update(extra_env)
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


def test_import_sizes_the_thread_pool_per_rank():
    cores = len(os.sched_getaffinity(0))
    assert _threads_in_fresh_process({"MPI_LOCALNRANKS": str(cores)}) == 1
    assert _threads_in_fresh_process({}) == cores


def test_numba_num_threads_wins():
    assert _threads_in_fresh_process({"MPI_LOCALNRANKS": "2", "NUMBA_NUM_THREADS": "1"}) == 1


@pytest.mark.parametrize("variable", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"])
def test_the_launchers_rank_is_read_without_starting_mpi(monkeypatch, variable):
    for name in env._RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert env.launcher_rank() == 0
    monkeypatch.setenv(variable, "3")
    assert env.launcher_rank() == 3


def test_set_num_threads_refuses_nonsense():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            flow.env.set_num_threads(bad)
