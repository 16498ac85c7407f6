"""The CUDA kernels' PTX: nothing is fused that the CPU computes unfused.

NVVM contracts a plain ``a * b + c`` into one FMA by default, and ptxas may fuse a ``mul.f64`` with
an ``add.f64``/``sub.f64`` that carries no rounding modifier; either would make the GPU's bits
differ from the CPU's. Each kernel is compiled to PTX for sm_90 twice, with numba-cuda's NVVM
defaults and with ``-fma=0``: the explicit fused multiply-adds (``cuda.fma``) are ``fma.rn.f64`` in
both, so equal counts mean NVVM contracted nothing by itself; and no ``mul.f64`` may feed an
unmodified ``add.f64``/``sub.f64``. A kernel written the old way is caught, so the check has teeth.

Needs numba-cuda with NVVM and NVRTC (``pip install 'klflow[cuda]' nvidia-cuda-nvcc-cu12
nvidia-cuda-nvrtc-cu12``), not a GPU; skipped elsewhere and under the simulator.
"""

from __future__ import annotations

import re

import pytest
from numba.core import config

pytestmark = pytest.mark.skipif(bool(config.ENABLE_CUDASIM), reason="the simulator compiles no PTX")

_NVVM_OPTIONS: dict[str, object] = {}


@pytest.fixture(scope="module")
def compile_ptx():
    """``compile(function, signature) -> (ptx with NVVM defaults, ptx with -fma=0)``."""
    try:
        from numba import cuda, float64

        cuda.compile_ptx(lambda a, b: a * b, (float64, float64), device=True, cc=(9, 0))
        import numba.cuda.cudadrv.nvvm as nvvm
        import numba.cuda.dispatcher as dispatcher
    except Exception as err:  # no numba-cuda, NVVM or NVRTC here
        pytest.skip(f"cannot compile PTX here: {type(err).__name__}: {str(err)[:120]}")
    patch = pytest.MonkeyPatch()
    original = nvvm.compile_ir

    def compile_ir(llvmir, **options):
        options.update(_NVVM_OPTIONS)
        return original(llvmir, **options)

    patch.setattr(nvvm, "compile_ir", compile_ir)
    if not cuda.is_available():  # device functions ask the current device for its architecture

        class Hopper:
            compute_capability = (9, 0)

        patch.setattr(dispatcher, "get_current_device", lambda: Hopper())

    def compile(function, signature, device=False):
        results = []
        for options in ({}, {"fma": False}):
            _NVVM_OPTIONS.clear()
            _NVVM_OPTIONS.update(options)
            ptx, _ = cuda.compile_ptx(function, signature, device=device, cc=(9, 0))
            results.append(ptx)
        _NVVM_OPTIONS.clear()
        return results

    yield compile
    patch.undo()


def fusable_pairs(ptx: str) -> list[str]:
    """Every PTX ``add.f64``/``sub.f64`` (no rounding modifier) fed by a ``mul.f64`` (none either)."""
    defined_by: dict[str, str] = {}
    pairs = []
    for line in ptx.splitlines():
        match = re.match(r"\s*(\S+)\s+(%fd\d+),\s*(.*);", line)
        if not match:
            continue
        op, destination, operands = match.groups()
        if op in ("add.f64", "sub.f64"):
            pairs += [line.strip() for r in re.findall(r"%fd\d+", operands) if defined_by.get(r) == "mul.f64"]
        defined_by[destination] = op
    return pairs


def _signatures():
    from numba import types

    from klflow.kernels import cuda as kernels

    def array(t):
        return types.Array(t, 1, "C")

    f16, f32, f64, flag = types.float16, types.float32, types.float64, types.boolean
    states = array(types.int64)

    def reduction(t):
        return (array(t), array(t), flag, flag, f64, array(t), flag, states, states)

    cases = [
        ("bounded f32", kernels.bounded_kernel, reduction(f32)),
        ("bounded f16", kernels.bounded_kernel, reduction(f16)),
        ("exact f64", kernels.exact_kernel, reduction(f64)),
        ("exact f32", kernels.exact_kernel, reduction(f32)),
        ("pointwise f64", kernels.pointwise_kernel, (array(f64), array(f64), flag, flag, array(f64))),
        ("pointwise f16", kernels.pointwise_kernel, (array(f16), array(f16), flag, flag, array(f16))),
        ("input grad f32", kernels.input_grad_kernel, (array(f32), array(f64), f64, flag, array(f32))),
        ("input grad f16", kernels.input_grad_kernel, (array(f16), array(f16), f64, flag, array(f16))),
        ("target grad f64", kernels.target_grad_kernel, (array(f64),) * 3 + (f64, flag, array(f64))),
        ("target grad f32", kernels.target_grad_kernel, (array(f32),) * 3 + (f64, flag, array(f32))),
    ]
    if kernels.bounded_kernel_f32x4 is not None:
        cases += [
            ("bounded f32x4", kernels.bounded_kernel_f32x4, reduction(f32)),
            ("pointwise f32x4", kernels.pointwise_kernel_f32x4, (array(f32), array(f32), flag, array(f32))),
        ]
    return cases


def test_the_check_catches_a_contractible_product(compile_ptx):
    from numba import float64

    def unfused(a, b, c):
        return a * b + c

    default, no_fma = compile_ptx(unfused, (float64, float64, float64), device=True)
    assert default.count("fma.rn.f64") == 1 and no_fma.count("fma.rn.f64") == 0


def test_no_kernel_fuses_what_the_cpu_rounds_twice(compile_ptx):
    report = []
    for name, kernel, signature in _signatures():
        default, no_fma = compile_ptx(kernel.py_func, signature)
        fused, explicit = default.count("fma.rn.f64"), no_fma.count("fma.rn.f64")
        pairs = fusable_pairs(default)
        assert explicit > 0, name  # the log/exp polynomials are there
        if fused != explicit or pairs:
            report.append(f"{name}: {fused} fma with NVVM's defaults, {explicit} with -fma=0; {pairs[:3]}")
    assert not report, "\n".join(report)
