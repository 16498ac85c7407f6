"""``klflow check`` as users launch it: help and errors once per job, the same exit code on every
rank, no ``Abort`` lines, configs found from any folder. Runs with this environment's MPI
(``scripts/test`` runs this file under MPICH and under Open MPI)."""

from __future__ import annotations

import re

import pytest
from mpi_jobs import ROOT, launch, mpiexec, needs_mpiexec, python_m_mpi4py

from klflow.__main__ import main
from klflow.check import config, job

HANG_GUARD_S = 300  # a healthy launch ends in seconds; only a hang reaches this
CHECK = ("-m", "klflow", "check")
EXIT_MARK = re.compile(r"<<exit (\d+)>>")


def _each_rank_reports_its_exit(*arguments: str) -> list[str]:
    """A rank's command that prints its own exit code, so a test sees every rank's."""
    command = " ".join(python_m_mpi4py(*arguments))
    return ["sh", "-c", f'{command}; echo "<<exit $?>>"']


def _tiny_config(folder, name="tiny.toml", **data):
    body = {"shape": "[6, 4]", "seed": "3", **data}
    path = folder / name
    lines = "\n".join(f"{key} = {value}" for key, value in body.items())
    path.write_text(f'[data]\n{lines}\n[run]\ndtypes = ["float32"]\nsbps = ["split(0)", "broadcast"]\n')
    return path


# ----------------------------------------------------------------- one process
def test_no_arguments_runs_the_bundled_default_from_any_folder(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    out = capfd.readouterr().out
    default = config.load(config.DEFAULT_CONFIG)
    assert f"shape {list(default.shape)}" in out
    assert f"{len(job.cases(default))}/{len(job.cases(default))} cases passed" in out


def test_a_relative_config_path_is_read_from_the_current_folder(tmp_path, monkeypatch, capfd):
    (tmp_path / "sub").mkdir()
    _tiny_config(tmp_path / "sub")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--config", "sub/tiny.toml"]) == 0
    assert "shape [6, 4], seed 3" in capfd.readouterr().out


def test_a_config_too_large_for_memory_says_what_it_needs_before_allocating(tmp_path, capfd):
    huge = _tiny_config(tmp_path, shape="[100000, 100000, 100]")
    assert main(["check", "--config", str(huge)]) == 2
    err = capfd.readouterr().err
    assert re.search(
        r"data\.shape \[100000, 100000, 100\] \(1,000,000,000,000 elements\) needs about "
        r"[\d.]+ TiB per rank",
        err,
    ), err
    assert "MemoryError" not in err


def test_help_lists_every_option_and_config_key(capsys):
    with pytest.raises(SystemExit) as done:
        main(["check", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--config FILE|NAME" in text
    for key in config.KEYS:
        assert f"    {key.name} = {key.default}\n        {key.meaning}" in text
    for name in config.bundled():
        assert f"  {name} " in text


# ----------------------------------------------------------------- under mpiexec
@needs_mpiexec
def test_help_is_printed_once_per_job(tmp_path):
    done = launch(mpiexec("-n", "3", *python_m_mpi4py(*CHECK, "--help")), HANG_GUARD_S, cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("usage: python -m klflow check") == 1, done.stdout
    assert "[tolerance]" in done.stdout


@needs_mpiexec
def test_abbreviated_options_are_refused_once_with_exit_2_on_every_rank(tmp_path):
    done = launch(
        mpiexec("-n", "2", *_each_rank_reports_its_exit(*CHECK, "--conf", "quick")),
        HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert EXIT_MARK.findall(done.stdout) == ["2", "2"], done.stdout
    assert done.stdout.count("error: unrecognized arguments: --conf quick") == 1, done.stdout
    assert "Abort" not in done.stdout


@needs_mpiexec
def test_a_bad_value_is_one_clear_error_and_exit_2_on_every_rank(tmp_path):
    _tiny_config(tmp_path, seed="-1")
    done = launch(
        mpiexec("-n", "3", *_each_rank_reports_its_exit(*CHECK, "--config", "tiny.toml")),
        HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert EXIT_MARK.findall(done.stdout) == ["2", "2", "2"], done.stdout
    message = f"klflow check: bad config: {tmp_path / 'tiny.toml'}: data.seed must be an integer >= 0"
    assert done.stdout.count(message) == 1, done.stdout
    assert "got -1" in done.stdout and "Abort" not in done.stdout and "Traceback" not in done.stdout


def _mpmd(first: list[str], second: list[str]) -> list[str]:
    """Two programs in one job (MPMD): rank 0 runs ``first``, rank 1 ``second``."""
    return mpiexec("-n", "1", *first, ":", "-n", "1", *second)


@needs_mpiexec
def test_a_config_bad_on_one_rank_only_is_the_same_error_on_every_rank(tmp_path):
    _tiny_config(tmp_path, name="good.toml")
    _tiny_config(tmp_path, name="bad.toml", zero_target_fraction="1.5")
    done = launch(
        _mpmd(
            _each_rank_reports_its_exit(*CHECK, "--config", "good.toml"),
            _each_rank_reports_its_exit(*CHECK, "--config", "bad.toml"),
        ),
        HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert EXIT_MARK.findall(done.stdout) == ["2", "2"], done.stdout
    expected = (
        f"bad config: rank 1 (of 2): {tmp_path / 'bad.toml'}: "
        "data.zero_target_fraction must be in [0, 1], got 1.5"
    )
    assert done.stdout.count(expected) == 1, done.stdout
    assert "Abort" not in done.stdout


@needs_mpiexec
def test_ranks_given_different_good_configs_are_refused(tmp_path):
    _tiny_config(tmp_path, name="a.toml")
    _tiny_config(tmp_path, name="b.toml", seed="4")
    done = launch(
        _mpmd(
            _each_rank_reports_its_exit(*CHECK, "--config", "a.toml"),
            _each_rank_reports_its_exit(*CHECK, "--config", "b.toml"),
        ),
        HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert EXIT_MARK.findall(done.stdout) == ["2", "2"], done.stdout
    assert done.stdout.count("the ranks were given different configs") == 1, done.stdout
    assert "rank 0: a.toml; rank 1: b.toml" in done.stdout


@needs_mpiexec
def test_a_passing_check_ends_0_on_every_rank(tmp_path):
    _tiny_config(tmp_path)
    done = launch(
        mpiexec("-n", "2", *_each_rank_reports_its_exit(*CHECK, "--config", "tiny.toml")),
        HANG_GUARD_S,
        cwd=tmp_path,
    )
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
    _tiny_config(tmp_path / "configs", name="mine.toml")
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


def test_scripts_run_header_names_only_files_that_exist():
    header = (ROOT / "scripts" / "run").read_text().split("source", 1)[0]
    for name in re.findall(r"[\w./-]+\.toml", header):
        assert (ROOT / name).exists(), f"scripts/run names {name}, which does not exist"
    for name in re.findall(r"scripts/run --config ([a-z]\w*)\b", header):
        assert name in config.bundled(), f"scripts/run names a bundled config {name!r} that does not exist"


def test_the_job_prints_a_compiling_line_first_only_while_the_cache_is_cold(monkeypatch):
    import io

    cfg = config.parse({"data": {"shape": [4, 3]}, "run": {"dtypes": ["float32"], "reductions": ["sum"]}})
    for cold, expected_first in ((True, job.COMPILING), (False, "klflow check: 1 rank(s)")):
        monkeypatch.setattr(job.info, "kernels_need_compiling", lambda cold=cold: cold)
        out = io.StringIO()
        assert job.run(cfg, out, io.StringIO()) == 0
        assert out.getvalue().splitlines()[0].startswith(expected_first)


def test_tolerances_print_as_words_not_a_dict():
    cfg = config.parse({"data": {"shape": [4]}, "run": {"dtypes": ["float64", "float16"]}})
    assert job.format_tolerances(cfg) == "float64 1e-13, float16 0.002"
