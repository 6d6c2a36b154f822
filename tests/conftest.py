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


#: The longest tests (seconds of wall time on two cores, four workers, where the run measured them),
#: started first, longest first: pytest-xdist hands tests out in the order they are collected
#: (after the groups, largest first), and with these in their files' places the last minute of a
#: run had workers waiting on failovers, drills and kernels while the CPU idled. Many of them
#: mostly wait (a failover, a drill's outage, a kernel), so they overlap the groups' CPU-bound
#: work. A test not listed keeps its place; one renamed only loses its head start.
FIRST = [
    "tests/test_fault_schedule.py::test_promises_hold_under_a_fault_schedule[cluster-sync]",  # 66
    "tests/test_notebooks.py::test_notebook_on_real_redis[03_consistency]",  # 36
    "tests/test_review.py::test_review_with_the_failover_drill_reports_the_writes_it_lost",  # 34
    "tests/test_fault_schedule.py::test_promises_hold_under_a_fault_schedule[redis-sync]",  # 33
    "tests/test_saver_defects.py::test_keep_last_bounds_a_graph_that_runs_a_subgraph_every_turn[fakeredis]",  # 33
    "tests/test_compress.py::test_bench_compress_runs_small_without_postgresql",  # 32
    "tests/test_fault_schedule.py::test_promises_hold_under_a_fault_schedule[fakeredis-sync]",  # 31
    "tests/test_docs.py::test_page[docs/guide/cli.md]",  # 27
    "tests/test_fault_schedule.py::test_promises_hold_under_a_fault_schedule[cluster-async]",  # 23
    "tests/test_saver_schedule.py::test_the_saver_keeps_its_bounds_under_a_fault_schedule[cluster]",  # 22
    "tests/test_model.py::test_the_store_answers_as_the_model_says[cluster]",  # 21
    "tests/test_model.py::test_the_store_answers_as_the_model_says[fakeredis]",  # 20
    "tests/test_lab_notebooks.py::test_lab_on_real_redis[lab1_degrade]",  # 16
    "tests/test_consistency.py::test_k_staleness_closed_form_matches_a_direct_simulation",  # 16
    "tests/test_sizing.py::test_model_within_5_percent_of_a_real_redis[long-summarised]",  # 15
    "tests/test_model.py::test_the_store_answers_as_the_model_says[redis]",  # 15
    "tests/test_network.py::test_the_drills_degrade_without_flapping_and_lose_nothing",  # 14
    "tests/test_network.py::test_the_cli_reports_a_drill_and_refuses_fakeredis",  # 14
    "tests/test_failover.py::test_the_expiry_watcher_hears_every_primary_and_follows_a_failover",  # 14
    "tests/test_walk.py::test_ten_thousand_sessions_migrate_once_through_a_reshard_interrupted_and_resumed",  # 14
    "tests/test_calibrate.py::test_the_review_is_rerun_with_the_measured_numbers",  # 14
    "tests/test_network.py::test_the_cli_drill_removes_its_keys_and_leaves_the_users",  # 13
    "tests/test_cli.py::test_app_stopped_by_a_signal_stops_voila_and_its_kernels[SIGINT]",  # 13
    "tests/test_fault_schedule.py::test_promises_hold_under_a_fault_schedule_with_compression[cluster-sync]",  # 13
    "tests/test_saver_defects.py::test_keep_last_bounds_a_graph_that_runs_a_subgraph_every_turn[redis]",  # 13
    "tests/test_sizing.py::test_model_within_5_percent_of_a_real_redis[drop-mode]",  # 13
    "tests/test_failover.py::test_acknowledged_writes_lost_in_a_failover_with_and_without_wait[1]",  # 12
    "tests/test_resilience.py::test_ten_second_outage_loses_and_duplicates_nothing",  # 11
    "tests/test_failover.py::test_a_resilient_store_degrades_through_a_cluster_failover_and_recovers_on_its_own",  # 10
    "tests/test_cli.py::test_app_stopped_by_a_signal_stops_voila_and_its_kernels[SIGTERM]",  # 10
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the longest tests first (see FIRST); the rest keep their order."""
    rank = {nodeid: i for i, nodeid in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(FIRST)))


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
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        url = cluster.url
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
