"""Every CPU kernel asks for 512-bit vectors, for itself only, and gets them where the CPU has them;
the bounded kernel prefetches its next block where the code has no AVX-512.

The bits of the kernels do not depend on the vector width: tests/kernels/test_isa_levels.py runs
the same cases at every ISA level (``x86-64-v4`` and an AVX-512 host with 512-bit vectors,
``haswell`` with 256-bit ones) and compares the bytes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from compiled_kernels import HOST_FEATURES, compiled_afresh
from numba import njit

from klflow.kernels import cpu
from klflow.kernels.prefetch import prefetch_wanted
from klflow.kernels.vector_width import PREFERRED_WIDTH_ATTRIBUTE, use_full_vector_width

_ZMM = re.compile(r"%zmm\d+")


KERNELS = [
    pytest.param(cpu._make_bounded_kernel, (False, False), "bounded", id="bounded-prob"),
    pytest.param(cpu._make_bounded_kernel, (True, True), "bounded", id="bounded-log-grad"),
    pytest.param(cpu._make_sum_kernel, (False, True), "sum", id="exact-prob-grad"),
    pytest.param(cpu._make_pointwise_kernel, (False,), "pointwise", id="none-prob"),
    pytest.param(cpu._make_input_grad_kernel, (True, False), "input-grad", id="input-grad-log"),
    pytest.param(cpu._make_target_grad_kernel, (False, False), "target-grad", id="target-grad-prob"),
]


def _attributes_of(ir_text: str, function_name_part: str) -> str:
    """The attribute text of the defined LLVM function whose name contains the given part."""
    groups = dict(re.findall(r"^attributes (#\d+) = \{(.*)\}$", ir_text, flags=re.MULTILINE))
    for line in ir_text.splitlines():
        if line.startswith("define") and function_name_part in line:
            return " ".join(groups.get(ref, "") for ref in re.findall(r"#\d+", line)) + line
    raise AssertionError(f"no function {function_name_part!r} in the IR")


@pytest.mark.parametrize(("make", "flags", "kind"), KERNELS)
def test_every_kernel_asks_for_full_width_vectors(make, flags, kind):
    kernel, signature = compiled_afresh(make, flags, kind, np.float32)
    name = kernel.py_func.__name__
    assert PREFERRED_WIDTH_ATTRIBUTE in _attributes_of(kernel.inspect_llvm(signature), name)


def test_the_request_is_for_the_calling_function_only():
    @njit
    def asks(values):
        use_full_vector_width()
        return values.sum()

    @njit
    def plain(values):
        return asks(values) + values.sum()

    values = np.arange(4.0)
    assert plain(values) == 12.0
    ir_text = plain.inspect_llvm(plain.signatures[0])
    assert PREFERRED_WIDTH_ATTRIBUTE not in _attributes_of(ir_text, "plain")


@pytest.mark.skipif(not {"avx512f", "avx512dq"} <= HOST_FEATURES, reason="CPU without AVX-512")
@pytest.mark.parametrize(("make", "flags", "kind"), KERNELS[:4])
def test_kernels_use_512_bit_registers_on_avx512(make, flags, kind):
    kernel, signature = compiled_afresh(make, flags, kind, np.float32)
    assert _ZMM.search(kernel.inspect_asm(signature))


# ------------------------------------------------------------------ prefetch (AVX2 and older code)
PREFETCH_PROBE = """
import numpy as np
from numba import njit
from klflow.kernels import cpu, exact_sum
kernel = njit(nogil=True)(cpu._make_bounded_kernel(False, False))
a = np.linspace(0.1, 2.0, 64).astype(np.float32)
kernel(a, a, 0.0, np.empty(0, np.float32), exact_sum.new_state())
print(kernel.inspect_asm(kernel.signatures[0]).count("prefetcht0"))
"""


@pytest.mark.parametrize(
    ("cpu_name", "expected"),
    [("haswell", True), ("x86-64-v2", True), ("x86-64-v4", False), ("znver4", False)],
)
def test_the_bounded_kernel_prefetches_where_the_code_has_no_avx512(tmp_path, cpu_name, expected):
    environment = dict(
        os.environ, NUMBA_CPU_NAME=cpu_name, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path)
    )
    done = subprocess.run(
        [sys.executable, "-c", PREFETCH_PROBE], env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert (int(done.stdout.split()[-1]) > 0) is expected


def test_prefetch_decision_follows_avx512():
    assert prefetch_wanted("haswell", "")
    assert prefetch_wanted("generic", "")
    assert not prefetch_wanted("sapphirerapids", "")
    assert not prefetch_wanted("haswell", "+avx2,+avx512f")
    assert prefetch_wanted("rocketlake", "+avx2,-avx512f")
