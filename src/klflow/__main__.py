"""Command line: ``python -m klflow check`` (the main job) and ``python -m klflow info``.

Run under mpiexec as ``mpiexec -n 4 python -m mpi4py -m klflow check --config quick``: help and
errors are printed once (by rank 0), and every rank ends with the same exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, NoReturn


class UsageError(Exception):
    """A command-line mistake; the text is what argparse would have printed."""


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations, printing on the job's rank 0 only, and handing usage errors
    back (so that every rank can learn of them) instead of exiting."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        from klflow import env

        if env.launcher_rank() == 0:  # before MPI starts: --help needs no MPI
            super()._print_message(message, file)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage()}{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    from klflow.check import command

    parser = _Parser(prog="python -m klflow", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{check,info}")
    command.add_parser(commands)
    commands.add_parser(
        "info",
        help="versions, the MPI library loaded, numba's threads, CUDA and the kernel cache",
        description=(
            "Print the versions of klflow, numba, llvmlite, numpy and mpi4py, the MPI library mpi4py "
            "loaded, numba's threading layer and threads per rank, CUDA availability and numba's "
            "kernel cache folder. Under mpiexec rank 0 prints it once, with the job's size."
        ),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code, the same on every rank of a job."""
    from klflow.check import command

    try:
        args, problem = build_parser().parse_args(argv), None
    except UsageError as err:
        args, problem = None, str(err)
    if args is not None and args.command == "info":
        from klflow import info

        return info.main()  # needs no working MPI: it reports what is wrong with it
    from klflow.distributed import comm

    try:
        # The first collective: an MPMD launch may give ranks different command lines.
        message = command.agree_on_problems(problem)
        printing = comm.rank() == 0
    except comm.MPIUnavailable as err:  # a single process, which can still be told what is wrong
        message, printing = problem or f"klflow check: {err}", True
    if message is not None:
        if printing:
            print(message, file=sys.stderr, flush=True)
        return 2
    return command.run(args)


def run() -> NoReturn:
    """``python -m klflow`` and the ``klflow`` script: :func:`main`, then a clean end of MPI.

    Every rank reaches this point with the same code; MPI is ended here so that a non-zero code
    is a plain exit under ``python -m mpi4py`` too, not an ``MPI_Abort`` of the job.
    """
    code = main()
    from klflow.distributed import comm

    comm.finalize()
    sys.exit(code)


if __name__ == "__main__":
    run()
