from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# jsonschema (imported by nbformat, papermill and the notebook tests) imports rfc3987_syntax
# whenever it is installed, which builds an Earley parser: about 2 CPU-seconds in every test
# process. No test and no statekit code checks an IRI's format, and neither papermill nor
# nbformat does for the notebook runs (tests/notebook_runs.py), so the test processes go without it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

pytest_plugins = ["statekit.testing"]

# In CI the property tests replay the same examples every run, so a result cannot depend on the
# draw; locally they explore new ones each time.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "data" / "profiles"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Every `realredis` test follows the fixtures' rule, also one that starts its servers
    without them (a drill in a review): skipped without redis-server, failed instead with
    STATEKIT_REQUIRE_REDIS=1."""
    if item.get_closest_marker("realredis"):
        from statekit.testing import skip_without_redis_server

        skip_without_redis_server()


@pytest.fixture
def profiles_dir() -> Path:
    return PROFILES


#: The tests that read `example_reviews` share one worker, so the run happens once.
EXAMPLE_REVIEWS = pytest.mark.xdist_group("example_reviews")


@pytest.fixture(scope="session")
def example_reviews(tmp_path_factory):  # noqa: ANN201 - dict of statekit.workbook.review.ReportFiles
    """One `run_review` of every example profile, as `statekit review data/profiles/*.yaml` runs
    it (one kernel, reset between profiles), by profile name: the tests of a review's notebook,
    HTML, JSON and index read its files (mark them EXAMPLE_REVIEWS)."""
    from statekit.workbook.review import run_review

    out = tmp_path_factory.mktemp("example-reviews")
    return {r.name: r for r in run_review(sorted(PROFILES.glob("*.yaml")), out, progress=False)}


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
    """The documentation blocks run by tests/test_docs.py (one test per page), and those skipped."""
    ran: set[str] = set()
    skipped: set[str] = set()
    failed_pages: set[str] = set()
    for outcome in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "test_docs.py::test_page[" not in getattr(report, "nodeid", ""):
                continue
            if outcome == "failed":
                failed_pages.add(report.nodeid)
            for name, blocks in getattr(report, "user_properties", []):
                if name == "docs_blocks":
                    ran.update(blocks["ran"])
                    skipped.update(blocks["skipped"])
    if ran or skipped or failed_pages:
        terminalreporter.write_line(
            f"documentation blocks: {len(ran)} executed, {len(skipped)} skipped"
            + (f"; {len(failed_pages)} pages failed" if failed_pages else "")
        )
