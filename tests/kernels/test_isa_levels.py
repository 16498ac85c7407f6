"""The same bits on every x86-64 ISA level, and no floating-point contraction but the explicit one.

Each ``NUMBA_CPU_NAME`` (with ``NUMBA_CPU_FEATURES`` empty: that level's own instructions only)
runs tests/kernels/isa_cases.py in a process of its own, with a kernel cache of its own, and its
per-case digests must equal the host's. The polynomial helper of
kernels/fastmath.py fuses with ``llvm.fma`` (an FMA instruction, or libm's ``fma`` on CPUs
without one); nothing else may be fused, which the IR and assembly of the kernels show.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from compiled_kernels import HOST_FEATURES, compiled_afresh
from numba import njit

from klflow.kernels import cpu

CASES = Path(__file__).with_name("isa_cases.py")
HANG_GUARD_S = 1800  # each process compiles every kernel case; only a hang takes this long
# The features each level needs from the host to run at all (the x86-64 psABI levels).
LEVELS = {
    "generic": set(),
    "x86-64-v2": {"sse4.2", "ssse3", "popcnt"},
    "haswell": {"avx2", "fma", "bmi2", "f16c"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def _run_cases(cpu_name: str, cache: Path) -> subprocess.Popen:
    """isa_cases.py under ``NUMBA_CPU_NAME=cpu_name`` ("host": unset), with its own cache."""
    environment = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    environment.update(NUMBA_CACHE_DIR=str(cache), NUMBA_NUM_THREADS="1")
    if cpu_name != "host":
        # Without NUMBA_CPU_FEATURES numba adds the host's features to any name but "generic".
        environment.update(NUMBA_CPU_NAME=cpu_name, NUMBA_CPU_FEATURES="")
    return subprocess.Popen(
        [sys.executable, str(CASES)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(not {"sse2"} <= HOST_FEATURES, reason="not an x86-64 host")
def test_every_isa_level_gives_the_hosts_bits(tmp_path):
    runnable = [name for name, needs in LEVELS.items() if needs <= HOST_FEATURES]
    assert "generic" in runnable
    processes = {name: _run_cases(name, tmp_path / name) for name in ["host", *runnable]}
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=HANG_GUARD_S)
        assert process.returncode == 0, f"NUMBA_CPU_NAME={name}: exit {process.returncode}\n{err}"
        results[name] = json.loads(out)
    host = results.pop("host")
    assert len(host) == 3 * 2 * (1 + 3 * 2) * 3  # dtypes x log_target x (none + 3 reductions x 2) x 3
    for name, digests in results.items():
        differing = sorted(case for case in host if digests.get(case) != host[case])
        assert not differing, f"NUMBA_CPU_NAME={name} differs from the host in: {differing}"


# ------------------------------------------------------------------ contraction
_FMA_INSTRUCTION = re.compile(r"\bvf(?:n)?m(?:add|sub)(?:sub|add)?\d{3}[ps][sd]\b")
_CONTRACTING_FLAGS = re.compile(r"= f(?:add|sub|mul|neg)\s+(?:[a-z]+\s+)*(?:contract|fast)\b")


KERNELS = [
    pytest.param(cpu._make_bounded_kernel, (False, True), "bounded", id="bounded-prob-grad"),
    pytest.param(cpu._make_bounded_kernel, (True, True), "bounded", id="bounded-log-grad"),
    pytest.param(cpu._make_sum_kernel, (True, True), "sum", id="exact-log-grad"),
    pytest.param(cpu._make_pointwise_kernel, (True,), "pointwise", id="none-log"),
    pytest.param(cpu._make_target_grad_kernel, (False, True), "target-grad", id="target-grad-prob"),
]


@pytest.mark.skipif("fma" not in HOST_FEATURES, reason="CPU without FMA")
@pytest.mark.parametrize(("make", "flags", "kind"), KERNELS)
def test_the_only_fused_operations_are_the_explicit_ones(make, flags, kind):
    # The target gradient runs with an elementwise upstream (a y-shaped array).
    upstream = np.linspace(0.1, 2.0, 64) if kind == "target-grad" else None
    kernel, signature = compiled_afresh(make, flags, kind, upstream=upstream)
    optimised = kernel.inspect_llvm(signature)
    assert "fmuladd" not in optimised
    assert not _CONTRACTING_FLAGS.search(optimised)
    explicit = len(re.findall(r"call [^\n]*@llvm\.fma\.", optimised))
    assert explicit > 0
    # Every FMA instruction is one of the llvm.fma calls: none came from contracting a * b + c.
    assert len(_FMA_INSTRUCTION.findall(kernel.inspect_asm(signature))) == explicit


@pytest.mark.skipif("fma" not in HOST_FEATURES, reason="CPU without FMA")
def test_numba_does_not_contract_a_multiply_and_an_add():
    @njit
    def multiply_add(a, b, c, out):
        for i in range(a.size):
            out[i] = a[i] * b[i] + c[i]

    a = np.linspace(0.0, 1.0, 64)
    multiply_add(a, a, a, a.copy())
    assembly = multiply_add.inspect_asm(multiply_add.signatures[0])
    assert re.search(r"\bvmul[ps]d\b", assembly) and not _FMA_INSTRUCTION.search(assembly)
