"""The outside tools some tests drive (Debian's promtool and chromium): found on PATH, or the test
skips, and fails instead where CI forbids skipping."""

from __future__ import annotations

import os
import shutil

import pytest

from statekit.testing import require_real_redis


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if require_real_redis():
            pytest.fail(f"{message}, and CI forbids skipping this check", pytrace=False)
        pytest.skip(message)
    return path


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "Debian's chromium is not installed (apt-get install chromium)"
    if os.environ.get("STATEKIT_REQUIRE_BROWSER"):
        pytest.fail(message + "; STATEKIT_REQUIRE_BROWSER is set, so the browser tests may not skip")
    pytest.skip(message)
