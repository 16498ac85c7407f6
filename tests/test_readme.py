"""The README's Python examples run as written: every block that imports klflow runs as a
program, and the outputs it shows in ``# ...`` comments after a ``print`` (or a bare expression)
are what it prints. Blocks that name a file (``# train.py``) are run under mpiexec as the README
says, and the distillation example prints the same bits on 1, 2 and 3 ranks."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from mpi_jobs import ROOT, launch, mpiexec, needs_mpiexec, python_m_mpi4py

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _program_and_expected(block: str) -> tuple[str, list[str]]:
    """The block with each shown expression printed, and the output lines the block shows: the
    ``# `` comment lines right after an expression (a ``print`` call or a bare value)."""
    lines = block.splitlines()
    program, expected = [], []
    showing = False
    for i, line in enumerate(lines):
        if showing and line.startswith("# "):
            expected.append(line[2:])
            program.append(line)
            continue
        showing = i + 1 < len(lines) and lines[i + 1].startswith("# ") and _is_expression(line)
        if showing and not line.startswith("print("):
            line = f"print({line})"
        program.append(line)
    return "\n".join(program) + "\n", expected


def _is_expression(line: str) -> bool:
    if line.startswith((" ", "#")) or not line.strip():
        return False
    try:
        return isinstance(ast.parse(line).body[0], ast.Expr)
    except SyntaxError:
        return False


def _standalone() -> list[str]:
    return [b for b in BLOCKS if "import klflow" in b and not b.startswith("# ")]


def _named(name: str) -> str:
    return next(b for b in BLOCKS if b.startswith(f"# {name}\n"))


@pytest.mark.parametrize("index", range(len(_standalone())))
def test_standalone_examples_print_what_they_show(index, tmp_path):
    block = _standalone()[index]
    if "import torch" in block:
        pytest.importorskip("torch")
    program, expected = _program_and_expected(block)
    script = tmp_path / "example.py"
    script.write_text(program)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


# Every rank prints; unbuffered, print() writes the value and the newline separately and the
# launcher may interleave the ranks' pieces within a line. Buffered, each rank's lines arrive whole.
BUFFERED_OUTPUT = {"PYTHONUNBUFFERED": ""}


@needs_mpiexec
def test_train_py_prints_a_nonnegative_divergence_on_every_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_named("train.py"))
    result = launch(mpiexec("-n", "2", *python_m_mpi4py(str(script))), 600, BUFFERED_OUTPUT)
    assert result.returncode == 0, result.stdout
    values = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            values[int(parts[0])] = float(parts[1])
    assert sorted(values) == [0, 1] and len(set(values.values())) == 1
    assert 0.0 < values[0] < 10.0


@needs_mpiexec
def test_the_vocabulary_split_distillation_has_the_same_bits_on_any_rank_count(tmp_path):
    script = tmp_path / "distill.py"
    script.write_text(_named("distill.py"))
    printed = set()
    for ranks in (1, 2, 3):
        result = launch(mpiexec("-n", str(ranks), *python_m_mpi4py(str(script))), 600, BUFFERED_OUTPUT)
        assert result.returncode == 0, result.stdout
        values = [line for line in result.stdout.splitlines() if re.fullmatch(r"[0-9.e+-]+", line)]
        assert len(values) == ranks
        printed.update(values)
    assert len(printed) == 1
