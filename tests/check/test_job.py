"""The check job in one process: it passes on correct results and reports failures."""

from __future__ import annotations

import io

import numpy as np

from klflow.check import config, job


def _small(**run):
    return config.parse(
        {"data": {"shape": [9, 4], "seed": 3}, "run": {"dtypes": ["float32", "float64"], **run}}
    )


def test_the_job_passes_and_prints_a_table():
    out, progress = io.StringIO(), io.StringIO()
    assert job.run(_small(), out, progress) == 0
    text = out.getvalue()
    assert any(line.startswith("dtype") and "same bits" in line for line in text.splitlines())
    cases = len(job.cases(_small()))
    assert f"{cases}/{cases} cases passed" in text


def test_reference_is_independent_and_exact():
    x = np.array([0.5, 1.0], np.float64)
    y = np.array([0.25, 0.0], np.float64)
    value, grad = job.reference(x, y, "sum", False)
    assert value == 0.25 * (np.log(0.25) - 0.5)
    assert grad.tolist() == [-0.25, 0.0]


def test_a_wrong_result_fails_the_job(monkeypatch):
    original = job.reference

    def off_by_a_little(x, y, reduction, log_target):
        value, grad = original(x, y, reduction, log_target)
        return value * (1 + 1e-3), grad

    monkeypatch.setattr(job, "reference", off_by_a_little)
    out = io.StringIO()
    assert job.run(_small(reductions=["sum"], sbps=["split(0)"]), out, io.StringIO()) == 1
    assert "FAILED" in out.getvalue()


def test_cases_cover_mixed_layouts():
    cfg = _small(sbps=["split(0)", "broadcast"], reductions=["sum"], log_target=[False])
    pairs = {(c[1], c[2]) for c in job.cases(cfg)}
    assert pairs == {
        ("split(0)", "split(0)"),
        ("broadcast", "broadcast"),
        ("split(0)", "broadcast"),
        ("broadcast", "split(0)"),
    }
