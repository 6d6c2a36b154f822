from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["statekit.testing"]

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "data" / "profiles"


@pytest.fixture
def profiles_dir() -> Path:
    return PROFILES


@pytest.fixture
def redis_url(redis_server) -> str:  # noqa: ANN001 - statekit.testing.RedisServer
    """URL of the session's real redis-server, flushed before the test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url
