"""Put ``tests/`` on ``sys.path`` (test files in subfolders import ``reference``) and make
hypothesis deterministic: the ``klflow`` profile derandomizes every property test, so a run of
the suite explores the same examples every time (a failure found is pinned with ``@example``).
``HYPOTHESIS_PROFILE=explore`` searches afresh with random seeds, for finding new cases locally.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import settings

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

settings.register_profile("klflow", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "klflow"))
