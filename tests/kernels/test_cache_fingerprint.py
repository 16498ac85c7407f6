"""numba's cache is emptied when any kernel source changes (a cached kernel inlines its siblings)."""

from __future__ import annotations

import os
import shutil

import klflow.kernels as kernels


def test_cache_is_emptied_when_a_sibling_source_changes(tmp_path, monkeypatch):
    package = tmp_path / "kernels"
    package.mkdir()
    for name in ("cpu.py", "exact_sum.py"):
        (package / name).write_text("# source\n")
    shutil.copy(kernels.__file__, package / "__init__.py")
    cache = package / "__pycache__"
    cache.mkdir()
    monkeypatch.setattr(kernels, "__file__", str(package / "__init__.py"))

    kernels._drop_stale_compiled_kernels()  # first look: records the fingerprint
    compiled = cache / "cpu.reduce-1.py311.1.nbc"
    compiled.write_bytes(b"code")
    kernels._drop_stale_compiled_kernels()  # nothing changed: the cache stays
    assert compiled.exists()

    sibling = package / "exact_sum.py"
    sibling.write_text("# edited\n")
    os.utime(sibling, ns=(1, 1))  # a new size and mtime
    kernels._drop_stale_compiled_kernels()
    assert not compiled.exists()
    assert (cache / "klflow-kernels.fingerprint").read_text() != ""
