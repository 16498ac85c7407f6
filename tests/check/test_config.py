"""The check job's config: defaults, and errors that name the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from klflow.check import config


def test_minimal_config_gets_defaults():
    cfg = config.parse({"data": {"shape": [4, 3]}})
    assert cfg.shape == (4, 3) and cfg.reductions == ("none", "batchmean", "sum", "mean")
    assert cfg.tolerances["float32"] == 1e-6


ROOT = Path(__file__).resolve().parents[2]


def test_bundled_configs_are_valid_and_ship_inside_the_package():
    bundled = config.bundled()
    assert {"default", "quick", "large"} <= set(bundled)
    package = Path(config.__file__).resolve().parent / "configs"
    for name, path in bundled.items():
        assert path.resolve().parent == package
        assert config.load(name) == config.load(path)


def test_the_checkouts_configs_folder_is_the_packaged_one_not_a_copy():
    assert (ROOT / "configs").resolve() == (Path(config.__file__).resolve().parent / "configs")


def test_names_are_bundled_configs_and_paths_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.resolve(None) == config.bundled()["default"]
    assert config.resolve("quick") == config.bundled()["quick"]
    assert config.resolve("quick.toml") == tmp_path / "quick.toml"
    assert config.resolve("sub/x") == tmp_path / "sub" / "x"
    with pytest.raises(
        config.ConfigError, match=r"no bundled config named 'quik'; bundled: default, large, mesh, quick"
    ):
        config.resolve("quik")


def test_every_key_the_parser_knows_is_documented():
    documented = {(key.section, key.name) for key in config.KEYS}
    document = {
        "data": {"shape": [4, 3], "seed": 1, "zero_target_fraction": 0.1},
        "run": {
            "dtypes": ["float32"],
            "reductions": ["sum"],
            "log_target": [True],
            "mesh": [1, 1],
            "sbps": ["broadcast, split(1)"],
            "mixed_sbp": False,
            "backward": False,
            "bitwise": False,
        },
        "tolerance": {"float16": 0.1, "float32": 0.1, "float64": 0.1},
    }
    assert {(section, key) for section, table in document.items() for key in table} == documented
    config.parse(document)
    text = config.describe_keys()
    for key in config.KEYS:
        assert f"{key.name} = {key.default}" in text


def test_mesh_configs_need_one_layout_per_axis_and_the_right_rank_count():
    cfg = config.parse({"data": {"shape": [4, 3]}, "run": {"mesh": [2, 2], "sbps": ["split(0), broadcast"]}})
    assert cfg.mesh == (2, 2) and cfg.sbps == ("split(0), broadcast",)
    config.check_mesh(cfg, 4)
    with pytest.raises(config.ConfigError, match=r"run.mesh \[2, 2\] has 4 places but the job has 2 rank"):
        config.check_mesh(cfg, 2)
    with pytest.raises(config.ConfigError, match="with 1 entries, but the mesh has 2 axes"):
        config.parse({"data": {"shape": [4, 3]}, "run": {"mesh": [2, 2], "sbps": ["split(0)"]}})
    with pytest.raises(config.ConfigError, match="needs run.sbps with one layout per mesh axis"):
        config.parse({"data": {"shape": [4, 3]}, "run": {"mesh": [2, 2]}})
    with pytest.raises(config.ConfigError, match="positive integers"):
        config.parse({"data": {"shape": [4, 3]}, "run": {"mesh": [2, 0], "sbps": ["broadcast, broadcast"]}})
    with pytest.raises(config.ConfigError, match="split\\(<dim>\\)' per mesh axis"):
        config.parse({"data": {"shape": [4, 3]}, "run": {"mesh": [2, 2], "sbps": ["split(0), S(1)"]}})


def test_memory_is_checked_before_anything_is_allocated():
    cfg = config.parse({"data": {"shape": [1000, 1000]}, "run": {"dtypes": ["float64"]}})
    needed = config.bytes_needed_per_rank(cfg)
    assert 10**6 * 144 <= needed <= 10**6 * 200  # measured peak: 144 bytes per float64 element
    config.check_memory(cfg, available_bytes=2 * needed, ranks_on_node=2)
    config.check_memory(cfg, available_bytes=None, ranks_on_node=2)  # unknown: not refused
    with pytest.raises(config.ConfigError) as info:
        config.check_memory(cfg, available_bytes=2 * needed - 2, ranks_on_node=2)
    text = str(info.value)
    assert "data.shape [1000, 1000] (1,000,000 elements) needs about 152.6 MiB per rank" in text
    assert "shared by 2 rank(s)" in text


@pytest.mark.parametrize(
    "document, fragment",
    [
        ({}, "data.shape is required"),
        ({"data": {"shape": [0, 3]}}, "data.shape must be a non-empty list of positive integers, got [0, 3]"),
        ({"data": {"shape": [4], "colour": 1}}, "unknown key data.colour"),
        ({"data": {"shape": [4], "seed": "x"}}, "data.seed must be an integer, got 'x'"),
        ({"data": {"shape": [4], "seed": True}}, "data.seed must be an integer, got True"),
        (
            {"data": {"shape": [4], "seed": -1}},
            "data.seed must be an integer >= 0 (NumPy's seeds are unsigned), got -1",
        ),
        (
            {"data": {"shape": [4], "zero_target_fraction": float("nan")}},
            "data.zero_target_fraction must be in [0, 1], got nan",
        ),
        (
            {"data": {"shape": [4]}, "run": {"dtypes": ["float32", "float32"]}},
            "run.dtypes lists 'float32' more than once",
        ),
        (
            {"data": {"shape": [4]}, "run": {"log_target": [True, True]}},
            "run.log_target lists True more than once",
        ),
        (
            {"data": {"shape": [4]}, "tolerance": {"float32": float("inf")}},
            "tolerance.float32 must be a relative tolerance in (0, 1), got inf",
        ),
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
