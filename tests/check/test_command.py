"""``klflow check`` in one process: configs found from any folder, the help text, memory checked
before allocating, readable output. ``test_command_launched.py`` runs it under mpiexec."""

from __future__ import annotations

import re

import pytest
from mpi_jobs import ROOT

from klflow.__main__ import main
from klflow.check import config, job


def tiny_config(folder, name="tiny.toml", **data):
    """A small config file (float32, two layouts); ``data`` replaces keys of its [data] table."""
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
    tiny_config(tmp_path / "sub")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--config", "sub/tiny.toml"]) == 0
    assert "shape [6, 4], seed 3" in capfd.readouterr().out


def test_a_config_too_large_for_memory_says_what_it_needs_before_allocating(tmp_path, capfd):
    huge = tiny_config(tmp_path, shape="[100000, 100000, 100]")
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
