"""Tests that need a real service (PostgreSQL, the S3 server, promtool, openssl) skip where it is not installed,
so a developer without it still runs the rest; CI (`.ci/run` sets SHOPCLIP_REQUIRE_SERVICES=1 after installing them)
fails instead, so a missing package can never turn into a green run that tested nothing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_VARIABLE = "SHOPCLIP_REQUIRE_SERVICES"


def service_missing(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE} is set: required here)", pytrace=False)
    pytest.skip(reason)
