"""One report per job: under mpiexec only rank 0 prints pytest's progress and summaries.

The other ranks stay silent while they pass; a failure there (a test, a collection error, a
hang caught by pytest-timeout) is still printed, at once, marked with the rank that saw it.

    from rank_output import report_from_rank_zero_only
    report_from_rank_zero_only(config, rank)   # in pytest_configure
"""

from __future__ import annotations

import sys
import threading

import pytest
from _pytest._io import TerminalWriter


class _QuietStream:
    """Drops what pytest's reporter writes from the main thread; passes on what other threads write:
    pytest-timeout's thread method dumps a hung rank's stacks through the same writer."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is not threading.main_thread():
            self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


class _FailuresOnly:
    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.stream = sys.stderr

    def _show(self, report, what: str) -> None:
        text = getattr(report, "longreprtext", "") or str(report.longrepr)
        self.stream.write(f"\n[rank {self.rank}] {what} {report.nodeid}\n{text}\n")
        self.stream.flush()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter._tw = TerminalWriter(_QuietStream(self.stream))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self._show(report, f"FAILED ({report.when})")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._show(report, "ERROR collecting")

    def pytest_internalerror(self, excrepr) -> None:
        self.stream.write(f"\n[rank {self.rank}] INTERNAL ERROR\n{excrepr}\n")


def report_from_rank_zero_only(config: pytest.Config, rank: int) -> None:
    """Silence pytest's reporting on ``rank`` unless it is 0; its failures stay visible."""
    if rank != 0:
        config.pluginmanager.register(_FailuresOnly(rank), "klflow-rank-output")
