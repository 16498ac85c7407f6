"""Several ranks starting at once with an empty kernel cache compile, share it, and agree."""

from __future__ import annotations

import re
import textwrap

from mpi_jobs import needs_mpiexec, run_job

HANG_GUARD_S = 600  # a cold compile on a small machine takes a minute; only a hang reaches this

JOB = textwrap.dedent("""
    import numpy as np
    import klflow as flow
    rank = flow.env.get_rank()
    rng = np.random.default_rng(7)
    x = rng.standard_normal(50_000).astype(np.float32)
    y = rng.random(50_000).astype(np.float32)
    got = flow.nn.functional.kl_div(x, y, reduction="sum").item()
    terms = y.astype(np.float64) * (np.log(y.astype(np.float64)) - x.astype(np.float64))
    expected = float(np.float32(np.sum(terms)))
    verdict = "ok" if abs(got - expected) <= 2e-7 * abs(expected) else "WRONG"
    print(f"<<rank {rank}: {verdict} {got!r}>>", flush=True)
""")


def _entries(folder):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*.nbk")}


@needs_mpiexec
def test_ranks_share_an_empty_cache_then_load_it(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    written = {}
    for attempt in ("cold", "warm"):
        result = run_job(script, 2, HANG_GUARD_S, {"NUMBA_CACHE_DIR": str(tmp_path / "cache")})
        out = result.stdout
        assert result.returncode == 0, out
        # The ranks' lines may interleave in the shared output: pick out each bracketed report.
        results = re.findall(r"<<rank (\d): (\w+) (\S+)>>", out)
        assert sorted(r[0] for r in results) == ["0", "1"], out
        assert all(r[1] == "ok" for r in results), out
        assert len({r[2] for r in results}) == 1  # same bits on both ranks
        written[attempt] = _entries(tmp_path / "cache")
    assert written["cold"], "nothing was cached"
    assert written["warm"] == written["cold"], "the warm run compiled again instead of loading"
