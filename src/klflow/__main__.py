"""Command line: ``python -m klflow check --config FILE`` (run it under mpiexec for several ranks).

mpiexec -n 4 python -m mpi4py -m klflow check --config configs/default.toml
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m klflow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="compare the global loss in every layout with a float64 reference"
    )
    check.add_argument("--config", default="configs/default.toml", help="a TOML file (see configs/)")
    args = parser.parse_args(argv)

    from klflow import env
    from klflow.check import config, job

    try:
        cfg = config.load(args.config)
    except config.ConfigError as err:
        if env.get_rank() == 0:
            print(f"klflow check: bad config: {err}", file=sys.stderr)
        return 2
    return job.run(cfg)


if __name__ == "__main__":
    sys.exit(main())
