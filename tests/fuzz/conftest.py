"""Hypothesis profiles for the parser fuzz tests.

``ci`` (the default): 200 examples per test, derandomized (the same inputs on every run),
no deadline (a loaded machine must not fail a test for being slow). ``fuzz``: the longer
budget run by hand, random and with a larger example count::

    HYPOTHESIS_PROFILE=fuzz pytest -p no:cacheprovider tests/fuzz -q -s

(``HYPOTHESIS_FUZZ_EXAMPLES`` overrides its count, 20,000 by default.) Neither profile keeps
an example database: a failure prints its example, which becomes an ``@example`` regression.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
