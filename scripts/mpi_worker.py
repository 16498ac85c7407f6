"""Run a script's ``--worker`` mode under mpiexec and read back what rank 0 reported.

A worker prints one line ``RESULT <json>`` on rank 0; :func:`run_worker` returns the decoded object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")
MARK = "RESULT "


def report(result: object) -> None:
    """Called by the worker on rank 0."""
    print(MARK + json.dumps(result), flush=True)


def run_worker(script: str, ranks: int, arguments: list[str], extra_env: dict | None = None) -> object:
    """``mpiexec -n ranks python -m mpi4py script --worker arguments``; exits on failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(extra_env or {}))
    command = [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "mpi4py", script, "--worker", *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    line = next((text for text in done.stdout.splitlines() if text.startswith(MARK)), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(line[len(MARK) :])
