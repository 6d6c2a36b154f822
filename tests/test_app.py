"""The live review's logic without a browser: controls to a profile, scenarios, export."""

from __future__ import annotations

from pathlib import Path

import pytest

from statekit.app import apply, assumptions_of, compare, export_yaml, review_app
from statekit.decide.profile import WorkloadProfile
from statekit.errors import ProfileError
from statekit.workbook.review import run_review

PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"


@pytest.fixture
def profile(profiles_dir):
    return WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")


@pytest.mark.parametrize("name", [p.stem for p in sorted(PROFILES.glob("*.yaml"))])
def test_every_example_profile_round_trips_through_the_apps_controls(name):
    """The controls as they start say the profile as it is: a staleness of 0 stays 0 (a
    log-scale slider once clamped it to 0.01 and flipped a decision), and a window left at
    every turn stays so."""
    profile = WorkloadProfile.from_yaml(PROFILES / f"{name}.yaml")
    app = review_app(profile)
    assert apply(profile, app.current_values()).model_dump() == profile.model_dump()
    assert apply(profile, assumptions_of(profile)).model_dump() == profile.model_dump()


def test_assumptions_change_the_profile_and_bad_ones_are_refused(profile):
    changed = apply(profile, {"traffic_x": 10.0, "turns_per_session": 40, "can_send_full_context": True})
    assert changed.traffic.peak_concurrent_sessions == profile.traffic.peak_concurrent_sessions * 10
    assert changed.turns.per_session == 40 and changed.client.can_send_full_context
    with pytest.raises(ProfileError, match="unknown assumptions"):
        apply(profile, {"traffic": 2})
    with pytest.raises(ProfileError, match="traffic_x must be positive"):
        apply(profile, {"traffic_x": 0})
    with pytest.raises(ProfileError):
        apply(profile, {"latency_budget_ms": -1})


@pytest.mark.notebook  # its export renders the report: the design review notebook runs
def test_the_app_recomputes_compares_and_exports(profile, tmp_path):
    app = review_app(profile, out_dir=tmp_path, debounce_s=0.01)
    memory = app.review["lifecycle"]["capacity"]["total_bytes"]
    app.pin("as profiled")
    app.set(traffic_x=10.0)
    assert app.wait_idle(30)
    assert app.review["lifecycle"]["capacity"]["total_bytes"] > 5 * memory
    app.set(ttl_minutes=600)
    assert app.wait_idle(30)
    assert app.review["lifecycle"]["policy"]["ttl_seconds"] == 36_000
    app.pin("10x, 10 h TTL")
    table = app.comparison()
    assert list(table.columns) == ["as profiled", "10x, 10 h TTL", "change vs first"]
    assert table.loc["TTL, s", "change vs first"].startswith("+")
    assert "assumed: traffic, times the profile's" in table.index
    for i in range(3):  # at most three scenarios: the oldest goes
        app.pin(f"extra {i}")
    assert [s.name for s in app.scenarios] == ["extra 0", "extra 1", "extra 2"]
    paths = app.export()
    exported = WorkloadProfile.from_yaml(paths["profile"])
    assert exported.traffic.peak_concurrent_sessions == profile.traffic.peak_concurrent_sessions * 10
    (report,) = run_review([paths["profile"]], tmp_path / "reports", progress=False)
    assert report.verdict == "server-side session state"


def test_a_burst_of_changes_is_computed_once_for_the_last_values(profile):
    app = review_app(profile, debounce_s=2.0)  # far longer than the burst takes
    runs = []
    compute = app._recompute
    app._recompute = lambda: (runs.append(app.current_values()["traffic_x"]), compute())
    for x in (2.0, 3.0, 4.0, 5.0):
        app.set(traffic_x=x)
    assert app.wait_idle(30)
    assert runs == [5.0]
    assert app.review["profile"]["traffic"]["peak_concurrent_sessions"] == profile.traffic.peak_concurrent_sessions * 5


def test_compare_flags_a_decision_that_flips(profile):
    from statekit.app import _review

    strict = _review(profile, "fakeredis://")
    relaxed = _review(apply(profile, {"staleness.conversation": 5.0}), "fakeredis://")
    table = compare(
        [
            ("as profiled", assumptions_of(profile), strict),
            ("5 s stale ok", {**assumptions_of(profile), "staleness.conversation": 5.0}, relaxed),
        ]
    )
    assert table.loc["consistency: conversation"].tolist() == ["session", "consistent prefix", "flips"]
    assert table.loc["assumed: staleness.conversation"].tolist()[:2] == [0.0, 5.0]
    assert table.loc["memory, MB", "change vs first"] == ""
    assert export_yaml(profile).startswith("service: support_agent")


def test_a_store_that_goes_away_is_shown_in_the_status_line(profile):
    app = review_app(profile, debounce_s=0.01)
    memory = app.review["lifecycle"]["capacity"]["total_bytes"]
    app.redis_url = "redis://127.0.0.1:1/0"  # nothing listens there
    app.set(traffic_x=3.0)
    assert app.wait_idle(30)
    assert "Could not recompute" in app.status.value and "127.0.0.1:1" in app.status.value
    assert app.review["lifecycle"]["capacity"]["total_bytes"] == memory, "the last good numbers stay"
