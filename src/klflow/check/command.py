"""``klflow check``: its options, and the checks every rank agrees on before the job starts.

A config that is bad on any rank (unreadable there, different from the others' in an MPMD
launch, too large for the memory of that rank's node) is one clear error printed once by rank
0, and every rank ends with exit code 2; the job's own result (0 or 1) is agreed the same way.

    mpiexec -n 4 python -m mpi4py -m klflow check --config quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from klflow.check import config

SUMMARY = "compare the global loss in every layout with a float64 reference"


def _bundled_list() -> str:
    return "\n".join(f"  {name:<8} {path}" for name, path in sorted(config.bundled().items()))


DESCRIPTION = """\
The reduction-correctness check: build seeded data, spread it over the ranks in every
configured layout (SBP), compute every reduction x log_target x dtype and the input gradient,
and compare each with an independent float64 reference and bit for bit with the
single-process value. Rank 0 prints the table; exit code 0 when every case passes, 1 when
any fails, 2 for a bad config or command line (the same on every rank).

Run it under mpiexec for several ranks:
  mpiexec -n 4 python -m mpi4py -m klflow check --config quick
"""


def epilog() -> str:
    return f"""\
bundled configs (--config NAME):
{_bundled_list()}

config file keys (TOML; every key but data.shape is optional):
{config.describe_keys()}

Any other key, a wrong type or a value out of range is an error that names the key and value.
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    check = commands.add_parser(
        "check",
        help=SUMMARY,
        description=DESCRIPTION,
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--config",
        metavar="FILE|NAME",
        default=config.DEFAULT_CONFIG,
        help=(
            "a TOML file (a path, relative to the current folder) or the name of a bundled config "
            f"(default: {config.DEFAULT_CONFIG!r})"
        ),
    )
    return check


# ----------------------------------------------------------------- agreeing across ranks
def describe_problems(problems: list[str | None]) -> str | None:
    """One message for every rank's problem (None where a rank had none), or None if no rank had one.

    >>> describe_problems(["bad", "bad"])
    'bad'
    >>> describe_problems([None, "bad", None, "bad"])
    'ranks 1, 3 (of 4): bad'
    """
    found: dict[str, list[int]] = {}
    for rank, problem in enumerate(problems):
        if problem is not None:
            found.setdefault(problem, []).append(rank)
    if not found:
        return None
    if len(found) == 1 and sum(len(r) for r in found.values()) == len(problems):
        return next(iter(found))
    lines = []
    for problem, ranks in found.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        lines.append(f"{who} (of {len(problems)}): {problem}")
    return "\n".join(lines)


def agree_on_problems(problem: str | None) -> str | None:
    """Collective: every rank gets the same description of every rank's problem (None: no problem)."""
    from klflow.distributed import comm

    return describe_problems(comm.allgather_objects(problem, call="klflow check: every rank's problems"))


def available_memory() -> int | None:
    """Bytes this node can still give: ``MemAvailable``, or the cgroup's limit when lower (None: unknown)."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2 (Slurm, containers): the limit of this process's group, less what it uses
        group = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1].split(":", 2)[2]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit.isdigit():
            candidates.append(int(limit) - int((folder / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        pass
    return min(candidates) if candidates else None


def _prepare(name_or_path: str) -> tuple[config.CheckConfig | None, str | None, str]:
    """(config, problem, fingerprint) on this rank; the fingerprint compares configs across ranks."""
    from klflow import env

    try:
        cfg = config.load(name_or_path)
        config.check_mesh(cfg, env.get_world_size())
        config.check_memory(cfg, available_memory(), env.ranks_on_this_node())
    except config.ConfigError as err:
        return None, str(err), ""
    return cfg, None, repr(cfg)


def run(args: argparse.Namespace, out: TextIO | None = None, errors: TextIO | None = None) -> int:
    """The whole command on this rank (collective); returns the exit code, the same on every rank."""
    from klflow.check import job

    out, errors = out or sys.stdout, errors or sys.stderr
    from klflow.distributed import comm

    cfg, problem, fingerprint = _prepare(args.config)
    rows = comm.allgather_objects((problem, fingerprint, str(args.config)), call="klflow check: the configs")
    message = describe_problems([row[0] for row in rows])
    if message is None and len({row[1] for row in rows}) > 1:
        message = "the ranks were given different configs (each rank must check the same one): " + "; ".join(
            f"rank {rank}: {row[2]}" for rank, row in enumerate(rows)
        )
    if message is not None:
        if comm.rank() == 0:
            print(f"klflow check: bad config: {message}", file=errors, flush=True)
        return 2
    status = job.run(cfg, out, errors)
    return max(comm.allgather_objects(status, call="klflow check: every rank's result"))
