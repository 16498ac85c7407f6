"""The suite's property tests are deterministic unless a developer asks otherwise."""

import os

import pytest
from hypothesis import settings


@pytest.mark.skipif(
    os.environ.get("HYPOTHESIS_PROFILE", "klflow") != "klflow", reason="another profile asked for"
)
def test_property_tests_run_derandomized_without_a_shared_database():
    assert settings.default.derandomize is True
    assert settings.default.database is None
