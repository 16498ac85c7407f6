"""The check job's config: defaults, and errors that name the key and the value."""

from __future__ import annotations

import pytest

from klflow.check import config


def test_minimal_config_gets_defaults():
    cfg = config.parse({"data": {"shape": [4, 3]}})
    assert cfg.shape == (4, 3) and cfg.reductions == ("none", "batchmean", "sum", "mean")
    assert cfg.tolerances["float32"] == 1e-6


def test_bundled_configs_are_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.toml")):
        config.load(path)


@pytest.mark.parametrize(
    "document, fragment",
    [
        ({}, "data.shape is required"),
        ({"data": {"shape": [0, 3]}}, "data.shape must be a non-empty list of positive integers, got [0, 3]"),
        ({"data": {"shape": [4], "colour": 1}}, "unknown key data.colour"),
        ({"data": {"shape": [4], "seed": "x"}}, "data.seed must be an integer, got 'x'"),
        ({"data": {"shape": [4], "seed": True}}, "data.seed must be an integer, got True"),
        (
            {"data": {"shape": [4], "zero_target_fraction": 2}},
            "data.zero_target_fraction must be in [0, 1], got 2",
        ),
        ({"data": {"shape": [4]}, "run": {"dtypes": ["int8"]}}, "run.dtypes has 'int8'"),
        ({"data": {"shape": [4]}, "run": {"reductions": ["avg"]}}, "run.reductions has 'avg'"),
        ({"data": {"shape": [4]}, "run": {"sbps": ["split(x)"]}}, "run.sbps has 'split(x)'"),
        ({"data": {"shape": [4]}, "run": {"sbps": ["split(1)"]}}, "has only 1 dimension"),
        (
            {"data": {"shape": [4]}, "run": {"log_target": [1]}},
            "run.log_target must be a non-empty list of true/false",
        ),
        (
            {"data": {"shape": [4]}, "run": {"backward": "yes"}},
            "run.backward must be true or false, got 'yes'",
        ),
        (
            {"data": {"shape": [4]}, "tolerance": {"float32": 0}},
            "tolerance.float32 must be a relative tolerance",
        ),
        ({"data": {"shape": [4]}, "tolerance": {"bfloat16": 0.1}}, "unknown key tolerance.bfloat16"),
        ({"data": {"shape": [4]}, "extra": {}}, "unknown key config.extra"),
    ],
)
def test_bad_configs_name_the_key(document, fragment):
    with pytest.raises(config.ConfigError) as info:
        config.parse(document)
    assert fragment in str(info.value)


def test_load_reports_the_file_and_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nshape = 1")
    with pytest.raises(config.ConfigError, match="bad.toml: not valid TOML"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(tmp_path / "missing.toml")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[data]\nshape = [3]\n[run]\nmixed = true\n")
    with pytest.raises(config.ConfigError, match=r"wrong.toml: unknown key run.mixed"):
        config.load(wrong)
