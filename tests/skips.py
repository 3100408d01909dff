"""The one way a test says it cannot run here.

On a developer's machine a test that lacks a tool or a capability (root, a network
namespace, NFQUEUE, socat, prometheus...) is skipped, and ``pytest -ra`` lists why.
Under CI (``CI=true``, as CI services set it) it fails instead, naming what is missing:
CI must never go green with the integration tests skipped.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under CI, fail it for the same reason."""
    if under_ci():
        pytest.fail(f"CI=true, so not skipped: {reason}", pytrace=False)
    pytest.skip(reason)
