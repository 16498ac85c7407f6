"""The check job's configuration: a TOML file, validated key by key.

Every key the file may hold is listed once, in :data:`KEYS` (section, name, default, meaning):
validation, the defaults and ``klflow check --help`` all read that table. The configs that ship
with klflow live in this package's ``configs/`` folder and are named without a path
(``--config quick``).

>>> cfg = parse({"data": {"shape": [8, 3]}})
>>> cfg.shape, cfg.dtypes
((8, 3), ('float32', 'float64', 'float16'))
>>> load("quick").shape
(64, 5)
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from klflow.nn.functional import REDUCTIONS

_DTYPES = ("float16", "float32", "float64")
_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8}
_SBP = re.compile(r"^(broadcast|partial_sum|split\((\d+)\))$")
_DEFAULT_TOLERANCES = {"float16": 2e-3, "float32": 1e-6, "float64": 1e-13}
DEFAULT_CONFIG = "default"


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
    mesh: tuple[int, ...] | None = None  # None: every rank in one row
    mixed_sbp: bool = True
    backward: bool = True
    bitwise: bool = True
    tolerances: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_TOLERANCES))

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


class Key(NamedTuple):
    section: str
    name: str
    default: str
    meaning: str


_DEFAULTS = CheckConfig(shape=(1,))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


KEYS: tuple[Key, ...] = (
    Key("data", "shape", "(required)", "logical shape of input and target, e.g. [1001, 37]"),
    Key(
        "data", "seed", _toml(_DEFAULTS.seed), "seed of the data, an integer >= 0; every rank draws the same"
    ),
    Key(
        "data",
        "zero_target_fraction",
        _toml(_DEFAULTS.zero_target_fraction),
        "share of probability targets set to 0 or negative (each must add exactly 0), in [0, 1]",
    ),
    Key("run", "dtypes", _toml(_DEFAULTS.dtypes), "floating dtypes to check: float16, float32, float64"),
    Key("run", "reductions", _toml(_DEFAULTS.reductions), "reductions to check: none, batchmean, sum, mean"),
    Key("run", "log_target", _toml(_DEFAULTS.log_target), "values of log_target to check"),
    Key(
        "run",
        "mesh",
        "(every rank in one row)",
        "a hierarchical placement: the mesh shape, e.g. [2, 2] (its product must be the rank count)",
    ),
    Key(
        "run",
        "sbps",
        _toml(_DEFAULTS.sbps),
        "layouts of the global tensors: split(<dim>), broadcast, partial_sum; on a mesh one per axis, "
        'comma-separated, e.g. "split(0), broadcast"',
    ),
    Key(
        "run", "mixed_sbp", _toml(_DEFAULTS.mixed_sbp), "also pair each layout with a target in the next one"
    ),
    Key("run", "backward", _toml(_DEFAULTS.backward), "also check the input gradient"),
    Key(
        "run",
        "bitwise",
        _toml(_DEFAULTS.bitwise),
        "reduced values must equal the single-process value bit for bit",
    ),
    *(
        Key(
            "tolerance",
            dtype,
            _toml(_DEFAULT_TOLERANCES[dtype]),
            f"relative error allowed for {dtype}, in (0, 1)",
        )
        for dtype in _DTYPES
    ),
)
_SECTIONS = ("data", "run", "tolerance")


def _known(section: str) -> set[str]:
    return {key.name for key in KEYS if key.section == section}


def describe_keys() -> str:
    """The config file's keys, their defaults and meaning, one per line (for ``--help``)."""
    lines = []
    for section in _SECTIONS:
        lines.append(f"  [{section}]")
        for key in (k for k in KEYS if k.section == section):
            lines.append(f"    {key.name} = {key.default}\n        {key.meaning}")
    return "\n".join(lines)


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


def _no_repeats(values: list, key: str) -> None:
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"{key} lists {', '.join(repeated)} more than once")


def _string_list(table: dict, key: str, allowed: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    values = _require(table, key, list, where)
    if not values:
        raise ConfigError(f"{where}.{key} must not be empty")
    for value in values:
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise ConfigError(
                f"{where}.{key} has {value!r}; allowed values are {', '.join(repr(a) for a in allowed or ())}"
            )
    _no_repeats(values, f"{where}.{key}")
    return tuple(values)


def check_mesh(cfg: CheckConfig, ranks: int) -> None:
    """The mesh must hold exactly the job's ranks."""
    if cfg.mesh is not None and math.prod(cfg.mesh) != ranks:
        raise ConfigError(
            f"run.mesh {list(cfg.mesh)} has {math.prod(cfg.mesh)} places but the job has {ranks} "
            f"rank(s): launch it with mpiexec -n {math.prod(cfg.mesh)}"
        )


def parse(document: dict[str, Any]) -> CheckConfig:
    """Validate a parsed TOML document."""
    _unknown_keys(document, set(_SECTIONS), "config")
    data = document.get("data")
    if not isinstance(data, dict) or "shape" not in data:
        raise ConfigError("data.shape is required: the logical shape of the test tensors, e.g. [1001, 37]")
    _unknown_keys(data, _known("data"), "data")
    shape = _require(data, "shape", list, "data")
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ConfigError(f"data.shape must be a non-empty list of positive integers, got {shape!r}")
    kwargs: dict[str, Any] = {"shape": tuple(shape)}
    if "seed" in data:
        seed = _require(data, "seed", int, "data")
        if seed < 0:
            raise ConfigError(f"data.seed must be an integer >= 0 (NumPy's seeds are unsigned), got {seed!r}")
        kwargs["seed"] = seed
    if "zero_target_fraction" in data:
        fraction = _require(data, "zero_target_fraction", (int, float), "data")
        if not 0 <= fraction <= 1:
            raise ConfigError(f"data.zero_target_fraction must be in [0, 1], got {fraction!r}")
        kwargs["zero_target_fraction"] = float(fraction)

    run = document.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"[run] must be a table, got {run!r}")
    _unknown_keys(run, _known("run"), "run")
    if "dtypes" in run:
        kwargs["dtypes"] = _string_list(run, "dtypes", _DTYPES, "run")
    if "reductions" in run:
        kwargs["reductions"] = _string_list(run, "reductions", REDUCTIONS, "run")
    if "log_target" in run:
        values = _require(run, "log_target", list, "run")
        if not values or not all(isinstance(v, bool) for v in values):
            raise ConfigError(f"run.log_target must be a non-empty list of true/false, got {values!r}")
        _no_repeats(values, "run.log_target")
        kwargs["log_target"] = tuple(values)
    if "mesh" in run:
        mesh = _require(run, "mesh", list, "run")
        if not mesh or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in mesh):
            raise ConfigError(f"run.mesh must be a non-empty list of positive integers, got {mesh!r}")
        kwargs["mesh"] = tuple(mesh)
    if "sbps" in run:
        sbps = _string_list(run, "sbps", None, "run")
        axes = len(kwargs.get("mesh") or (1,))
        for value in sbps:
            entries = [entry.strip() for entry in value.split(",")]
            if len(entries) != axes:
                raise ConfigError(
                    f"run.sbps has {value!r}, with {len(entries)} entries, but the mesh has {axes} "
                    f"ax{'is' if axes == 1 else 'es'}: give one layout per axis, comma-separated"
                )
            for entry in entries:
                match = _SBP.match(entry)
                if match is None:
                    raise ConfigError(
                        f"run.sbps has {value!r}; use 'broadcast', 'partial_sum' or 'split(<dim>)'"
                        + (" per mesh axis, comma-separated" if axes > 1 else "")
                    )
                if match.group(2) is not None and int(match.group(2)) >= len(kwargs["shape"]):
                    raise ConfigError(
                        f"run.sbps has {value!r}, but data.shape {list(kwargs['shape'])} has only "
                        f"{len(kwargs['shape'])} dimension(s)"
                    )
        kwargs["sbps"] = sbps
    elif kwargs.get("mesh") and len(kwargs["mesh"]) > 1:
        raise ConfigError(f"run.mesh {list(kwargs['mesh'])} needs run.sbps with one layout per mesh axis")
    for key in ("mixed_sbp", "backward", "bitwise"):
        if key in run:
            kwargs[key] = _require(run, key, bool, "run")

    tolerance = document.get("tolerance", {})
    if not isinstance(tolerance, dict):
        raise ConfigError(f"[tolerance] must be a table, got {tolerance!r}")
    _unknown_keys(tolerance, _known("tolerance"), "tolerance")
    tolerances = dict(_DEFAULT_TOLERANCES)
    for key in tolerance:
        value = _require(tolerance, key, (int, float), "tolerance")
        if not 0 < value < 1:
            raise ConfigError(f"tolerance.{key} must be a relative tolerance in (0, 1), got {value!r}")
        tolerances[key] = float(value)
    kwargs["tolerances"] = tolerances
    return CheckConfig(**kwargs)


# ----------------------------------------------------------------- where configs come from
def bundled() -> dict[str, Path]:
    """The configs that ship inside klflow, by name (``default``, ``quick``, ``large``)."""
    folder = resources.files("klflow.check") / "configs"
    return {
        Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")
    }


def resolve(name_or_path: str | Path | None) -> Path:
    """The file a ``--config`` value means: a bundled config's name (no folder, no ``.toml``), or a
    path, taken relative to the current folder like any command-line path."""
    if name_or_path is None:
        name_or_path = DEFAULT_CONFIG
    text = str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in text and not text.endswith(".toml"):
        configs = bundled()
        if text not in configs:
            raise ConfigError(
                f"no bundled config named {text!r}; bundled: {', '.join(sorted(configs))} "
                f"(a file needs a folder or a .toml suffix, e.g. ./{text}.toml)"
            )
        return configs[text]
    return Path(name_or_path).expanduser().absolute()


def load(name_or_path: str | Path | None = None) -> CheckConfig:
    """Read and validate a config: a bundled name, a file path, or None for the default."""
    path = resolve(name_or_path)
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


# ----------------------------------------------------------------- memory, before allocating
# Bytes each rank holds per logical element at the job's peak: the float64 data and reference
# (several float64 arrays, and the Python float list that ``math.fsum`` reads) and the inputs,
# outputs and gradients at the checked dtype. ``ru_maxrss`` over the baseline, shape
# [2048, 1024] on 1 and 2 ranks: 144 bytes per element for float64, 94 for float16, that is
# 80 + 8 x itemsize; the constants below add about 15 %.
_BYTES_PER_ELEMENT_FLOAT64_WORK = 96
_BYTES_PER_ELEMENT_PER_ITEM = 8


def bytes_needed_per_rank(cfg: CheckConfig) -> int:
    """About how much memory one rank needs for ``cfg`` (every rank holds the whole logical data)."""
    itemsize = max(_ITEMSIZE[d] for d in cfg.dtypes)
    return cfg.elements * (_BYTES_PER_ELEMENT_FLOAT64_WORK + _BYTES_PER_ELEMENT_PER_ITEM * itemsize)


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_memory(cfg: CheckConfig, available_bytes: int | None, ranks_on_node: int) -> None:
    """Refuse a config this rank cannot hold, before anything is allocated.

    ``available_bytes`` is the memory free on this node (None when unknown: then nothing is
    refused); the ranks on the node share it.
    """
    if available_bytes is None:
        return
    needed = bytes_needed_per_rank(cfg)
    share = available_bytes // max(1, ranks_on_node)
    if needed > share:
        raise ConfigError(
            f"data.shape {list(cfg.shape)} ({cfg.elements:,} elements) needs about {_size(needed)} per rank "
            f"(every rank holds the whole logical tensors and a float64 reference), but this rank has "
            f"{_size(share)} ({_size(available_bytes)} available on the node, shared by {ranks_on_node} "
            f"rank(s)); choose a smaller data.shape"
        )
