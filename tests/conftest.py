from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

pytest_plugins = ["statekit.testing"]

# In CI the property tests replay the same examples every run, so a result cannot depend on the
# draw; locally they explore new ones each time.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

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


@pytest.fixture(
    params=[
        "fakeredis",
        pytest.param("redis", marks=pytest.mark.realredis),
        pytest.param("cluster", marks=pytest.mark.realredis),
    ]
)
def any_url(request):
    """A URL of each backend, emptied: a named embedded server, a real server, a real cluster."""
    from statekit import connect

    if request.param == "fakeredis":
        url = f"fakeredis://test-{request.node.originalname}"
        connect(url).flushall()
    elif request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        connect(url).flushall()
    else:
        url = request.getfixturevalue("redis_cluster").url
        connect(url).flushall(target_nodes="primaries")
    return url


@pytest.fixture
def any_client(any_url):
    """A statekit client on each backend: embedded fakeredis, a real server, a real cluster."""
    from statekit import connect

    client = connect(any_url)
    yield client
    client.close()


def pytest_terminal_summary(terminalreporter):
    """The documentation blocks run (tests/test_docs.py), and how many were skipped or failed."""
    outcome_of: dict[str, str] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_docs.py::test_block[" not in nodeid:
                continue
            if outcome in ("failed", "error") or outcome_of.get(nodeid) != "failed":
                outcome_of[nodeid] = "failed" if outcome == "error" else outcome
    if outcome_of:
        counts = {k: list(outcome_of.values()).count(k) for k in ("passed", "failed", "skipped")}
        terminalreporter.write_line(
            f"documentation blocks: {len(outcome_of)} executed: {counts['passed']} passed, "
            f"{counts['failed']} failed, {counts['skipped']} skipped"
        )
