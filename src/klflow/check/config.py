"""The check job's configuration: a TOML file, validated key by key.

>>> cfg = parse({"data": {"shape": [8, 3]}})
>>> cfg.shape, cfg.dtypes
((8, 3), ('float32', 'float64', 'float16'))
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klflow.nn.functional import REDUCTIONS

_DTYPES = ("float16", "float32", "float64")
_SBP = re.compile(r"^(broadcast|partial_sum|split\((\d+)\))$")
_DEFAULT_TOLERANCES = {"float16": 2e-3, "float32": 1e-6, "float64": 1e-13}


class ConfigError(ValueError):
    """A bad configuration; the message names the key and the value found."""


@dataclass(frozen=True)
class CheckConfig:
    shape: tuple[int, ...]
    seed: int = 0
    zero_target_fraction: float = 0.05
    dtypes: tuple[str, ...] = ("float32", "float64", "float16")
    reductions: tuple[str, ...] = REDUCTIONS
    log_target: tuple[bool, ...] = (False, True)
    sbps: tuple[str, ...] = ("split(0)", "broadcast", "partial_sum")
    mixed_sbp: bool = True
    backward: bool = True
    bitwise: bool = True
    tolerances: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_TOLERANCES))


def _require(table: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # TOML booleans are Python bools, which are also ints: refuse them where a number is wanted.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ConfigError(f"{where}.{key} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "an integer", float: "a number", bool: "true or false", list: "a list", str: "a string"}.get(
            k, k.__name__
        )
        for k in kinds
    )


def _unknown_keys(table: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(
            f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(f'{where}.{k}' for k in extra)}; "
            f"known keys in [{where}]: {', '.join(sorted(allowed))}"
        )


def _string_list(table: dict, key: str, allowed: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    values = _require(table, key, list, where)
    if not values:
        raise ConfigError(f"{where}.{key} must not be empty")
    for value in values:
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise ConfigError(
                f"{where}.{key} has {value!r}; allowed values are {', '.join(repr(a) for a in allowed or ())}"
            )
    return tuple(values)


def parse(document: dict[str, Any]) -> CheckConfig:
    """Validate a parsed TOML document."""
    _unknown_keys(document, {"data", "run", "tolerance"}, "config")
    data = document.get("data")
    if not isinstance(data, dict) or "shape" not in data:
        raise ConfigError("data.shape is required: the logical shape of the test tensors, e.g. [1001, 37]")
    _unknown_keys(data, {"shape", "seed", "zero_target_fraction"}, "data")
    shape = _require(data, "shape", list, "data")
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ConfigError(f"data.shape must be a non-empty list of positive integers, got {shape!r}")
    kwargs: dict[str, Any] = {"shape": tuple(shape)}
    if "seed" in data:
        kwargs["seed"] = _require(data, "seed", int, "data")
    if "zero_target_fraction" in data:
        fraction = _require(data, "zero_target_fraction", (int, float), "data")
        if not 0 <= fraction <= 1:
            raise ConfigError(f"data.zero_target_fraction must be in [0, 1], got {fraction!r}")
        kwargs["zero_target_fraction"] = float(fraction)

    run = document.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"[run] must be a table, got {run!r}")
    _unknown_keys(
        run, {"dtypes", "reductions", "log_target", "sbps", "mixed_sbp", "backward", "bitwise"}, "run"
    )
    if "dtypes" in run:
        kwargs["dtypes"] = _string_list(run, "dtypes", _DTYPES, "run")
    if "reductions" in run:
        kwargs["reductions"] = _string_list(run, "reductions", REDUCTIONS, "run")
    if "log_target" in run:
        values = _require(run, "log_target", list, "run")
        if not values or not all(isinstance(v, bool) for v in values):
            raise ConfigError(f"run.log_target must be a non-empty list of true/false, got {values!r}")
        kwargs["log_target"] = tuple(values)
    if "sbps" in run:
        sbps = _string_list(run, "sbps", None, "run")
        for value in sbps:
            match = _SBP.match(value)
            if match is None:
                raise ConfigError(f"run.sbps has {value!r}; use 'broadcast', 'partial_sum' or 'split(<dim>)'")
            if match.group(2) is not None and int(match.group(2)) >= len(kwargs["shape"]):
                raise ConfigError(
                    f"run.sbps has {value!r}, but data.shape {list(kwargs['shape'])} has only "
                    f"{len(kwargs['shape'])} dimension(s)"
                )
        kwargs["sbps"] = sbps
    for key in ("mixed_sbp", "backward", "bitwise"):
        if key in run:
            kwargs[key] = _require(run, key, bool, "run")

    tolerance = document.get("tolerance", {})
    if not isinstance(tolerance, dict):
        raise ConfigError(f"[tolerance] must be a table, got {tolerance!r}")
    _unknown_keys(tolerance, set(_DTYPES), "tolerance")
    tolerances = dict(_DEFAULT_TOLERANCES)
    for key in tolerance:
        value = _require(tolerance, key, (int, float), "tolerance")
        if not 0 < value < 1:
            raise ConfigError(f"tolerance.{key} must be a relative tolerance in (0, 1), got {value!r}")
        tolerances[key] = float(value)
    kwargs["tolerances"] = tolerances
    return CheckConfig(**kwargs)


def load(path: str | Path) -> CheckConfig:
    """Read and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {str(path)!r}: {err.strerror}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    try:
        return parse(document)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
