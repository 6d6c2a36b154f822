"""Regression tests for review numbers that did not hold up to a second computation.

Each test recomputes a number of the review from the profile by hand and holds the review to
it, for every example profile. (The alerts' own cases run under promtool in test_alerts.py.)
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from statekit import WorkloadProfile
from statekit.decide.lifecycle import recommend as recommend_lifecycle
from statekit.workbook import report
from statekit.workbook.review import build_review

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "data" / "profiles").glob("*.yaml"))


def _review(path: Path) -> tuple[WorkloadProfile, dict]:
    profile = WorkloadProfile.from_yaml(path)
    return profile, build_review(profile)


def _folds(profile: WorkloadProfile) -> bool:
    policy = recommend_lifecycle(profile).policy
    return policy.summarizer is not None and profile.turns.per_session > policy.window_turns


def _alert_threshold_s(expr: str) -> float:
    """The latency an alert expression compares with: a bucket bound it reads, or the number
    a quantile is compared with."""
    bound = re.findall(r'le="([^"]+)"', expr)
    return float(bound[0]) if bound else float(expr.rsplit(">", 1)[1])


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_the_latency_alert_fires_below_the_timeout(path):
    """Item 2: calls fail at the timeout, so the latency alert must read a threshold under it."""
    _, review = _review(path)
    timeout_s = review["resilience"]["timeout_ms"] / 1000
    (alert,) = [a for a in review["observability"]["alerts"] if "latency" in a["alert"]]
    assert _alert_threshold_s(alert["expr"]) < timeout_s, (alert["expr"], timeout_s)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_a_hung_store_costs_a_request_at_most_its_budget(path):
    """Item 3: a request makes a load and an append, and a third round trip when the append
    folds; each can wait the whole timeout."""
    profile, review = _review(path)
    trips = 3 if _folds(profile) else 2
    timeout = review["resilience"]["timeout_ms"]
    budget = profile.latency_budget_ms
    assert trips * timeout <= budget or timeout == 1, (trips, timeout, budget)
    assert f"{trips} x {timeout} = {trips * timeout} ms" in review["resilience"]["reasons"]["timeout_ms"]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_fail_max_comes_from_each_processs_calls_and_its_reason_states_the_real_window(path):
    """Item 4: the breaker counts per process; folds count only where the profile folds; the
    reason gives the window that the bounded fail_max really covers."""
    profile, review = _review(path)
    res = review["resilience"]
    t = profile.traffic
    requests = max(
        t.peak_concurrent_sessions * t.requests_per_session / (t.session_minutes * 60),
        t.new_sessions_per_day * t.requests_per_session / 86_400,
    )
    per_request = 2 + (1 / recommend_lifecycle(profile).policy.fold_batch if _folds(profile) else 0)
    per_process = requests * per_request / getattr(t, "app_instances", 1)
    assert res["peak_store_calls_per_second"] == round(requests * per_request, 2)
    expected = min(20, max(3, math.ceil(round(per_process * 0.5, 9))))
    assert res["fail_max"] == expected
    window = re.search(r"consecutive failures is ([0-9.e+-]+) s of them", res["reasons"]["fail_max"])
    assert window, res["reasons"]["fail_max"]
    assert float(window.group(1)) == pytest.approx(expected / per_process, rel=1e-2)
    # the buffer is each process's, from its share of the appends
    buffer = max(1, math.ceil(round(requests / getattr(t, "app_instances", 1) * 30 * 1.5, 9)))
    assert res["buffer_max_turns"] == buffer
    assert f"x 30 s of outage x 1.5 = {buffer:,} turns" in res["reasons"]["buffer_max_turns"]


def test_more_instances_spread_the_calls_over_more_breakers(profiles_dir):
    data = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml").model_dump()
    from statekit.decide.resilience import recommend

    one, many = ({**data, "traffic": {**data["traffic"], "app_instances": n}} for n in (1, 6))
    r1, r6 = (recommend(WorkloadProfile.from_dict(d)) for d in (one, many))
    assert r1["peak_store_calls_per_second_per_process"] == pytest.approx(
        6 * r6["peak_store_calls_per_second_per_process"]
    )
    assert r1["fail_max"] > r6["fail_max"] and r1["buffer_max_turns"] > r6["buffer_max_turns"]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_the_growth_chart_levels_where_the_capacity_plan_does(path):
    """Item 5: one steady state in one report."""
    _, review = _review(path)
    cap = review["lifecycle"]["capacity"]
    assert cap["growth_over_days"]["with_policy"][-1] == cap["total_bytes"]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_memory_cost_counts_the_session_and_its_ttl(path):
    """Item 6: a session's keys live its length and then its TTL, and are paid for all along."""
    profile, review = _review(path)
    cost = review["assessment"]["cost"]
    a = cost["assumptions"]
    n, b, window = profile.turns.per_session, profile.turns.bytes_per_turn, a["window_turns"]
    held = (min(n, window) * b + (a["summary_bytes"] if n > window else 0)) * a["memory_factor"]
    ttl = review["lifecycle"]["policy"]["ttl_seconds"]
    hours = (profile.traffic.session_minutes * 60 + ttl) / 3600
    expected = 1000 * held / 1e9 * hours * profile.costs.redis_price_per_gb_hour
    assert cost["server_memory_cost_per_1000_sessions"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_the_summary_marks_memory_not_needed_where_the_verdict_keeps_no_server_state(path):
    """Item 7."""
    _, review = _review(path)
    rows = {line.split("|")[1].strip(): line for line in report.decision_summary(review).splitlines()[2:]}
    (memory,) = [row for name, row in rows.items() if "Memory and nodes" in name]
    assert ("(not needed for this verdict)" in memory) is (not review["lifecycle"]["applies"]), memory


# -- the judgement calls, made explicit -------------------------------------------------------


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_the_read_gap_is_the_session_over_the_gaps_between_its_requests(path):
    profile, review = _review(path)
    t = profile.traffic
    assert review["consistency"]["read_gap_ms"] == pytest.approx(
        t.session_minutes * 60_000 / max(1, t.requests_per_session - 1)
    )


def test_the_support_agent_pays_per_request_from_turn_14_and_per_session_from_15(profiles_dir):
    _, review = _review(profiles_dir / "support_agent.yaml")
    cost = review["assessment"]["cost"]
    assert cost["token_break_even_turn"] == 14 and cost["session_token_break_even_turn"] == 15
    replay, server = cost["replay_prompt_tokens"], cost["server_prompt_tokens"]
    assert sum(server) >= sum(replay), "a typical 14-turn session does not pay yet"


def test_sessions_held_at_the_peak_include_the_ttl_tail(profiles_dir):
    profile, review = _review(profiles_dir / "support_agent.yaml")
    cap = review["lifecycle"]["capacity"]
    ttl = review["lifecycle"]["policy"]["ttl_seconds"]
    session_s = profile.traffic.session_minutes * 60
    assert cap["peak_held_sessions"] == math.ceil(
        profile.traffic.peak_concurrent_sessions * (session_s + ttl) / session_s
    )
    assert cap["active_sessions"] == max(cap["peak_held_sessions"], cap["daily_held_sessions"])
    (call,) = [j for j in review["judgements"] if "TTL tail" in j["name"]]
    assert f"{cap['active_sessions']:,}" in call["choice"]


def test_a_durable_workflow_gets_queue_workers_and_a_durable_buffer(profiles_dir):
    _, review = _review(profiles_dir / "agentic_workflow.yaml")
    assert review["resilience"]["durable_buffer"] is True
    (workflow,) = [c for c in review["consistency"]["classes"] if c["purpose"] == "workflow"]
    assert "sticky" not in workflow["routing"] and "queue" in workflow["routing"]
    _, support = _review(profiles_dir / "support_agent.yaml")
    (conversation,) = [c for c in support["consistency"]["classes"] if c["purpose"] == "conversation"]
    assert "sticky" in conversation["routing"] and support["resilience"]["durable_buffer"] is False


def test_the_growth_chart_holds_the_peak_from_the_first_day(profiles_dir):
    _, review = _review(profiles_dir / "support_agent.yaml")
    cap = review["lifecycle"]["capacity"]
    assert cap["sized_for"] == "peak"
    assert cap["growth_over_days"]["with_policy"][0] == cap["total_bytes"], "a peak can come on day one"


# -- edge profiles: the numbers and the words that state them agree ----------------------------


def _edge(profiles_dir: Path, **changes: dict) -> tuple[WorkloadProfile, dict]:
    data = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml").model_dump()
    data.pop("state_schema")
    for section, values in changes.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    profile = WorkloadProfile.from_dict(data)
    return profile, build_review(profile)


def test_a_slow_process_gets_a_buffer_of_at_least_one_turn_and_reasons_with_its_real_rate(profiles_dir):
    _, review = _edge(
        profiles_dir,
        traffic={"session_minutes": 1e6, "app_instances": 10_000, "peak_concurrent_sessions": 1,
                 "requests_per_session": 1, "new_sessions_per_day": 1},
    )  # fmt: skip
    res = review["resilience"]
    assert res["buffer_max_turns"] == 1 and "(never fewer than 1)" in res["reasons"]["buffer_max_turns"]
    assert "makes 0.0 store calls" not in res["reasons"]["fail_max"]
    assert "trips it fast" not in res["reasons"]["fail_max"] and "needs" in res["reasons"]["fail_max"]


def test_resilience_sizes_for_the_day_when_it_is_busier_than_the_peak(profiles_dir):
    _, review = _edge(profiles_dir, traffic={"peak_concurrent_sessions": 1, "new_sessions_per_day": 1_000_000})
    res = review["resilience"]
    assert res["peak_requests_per_second"] == round(1_000_000 * 14 / 86_400, 2)
    assert "on the day's average" in res["reasons"]["fail_max"]


def test_the_peak_never_holds_more_sessions_than_the_profile_starts(profiles_dir):
    _, review = _edge(profiles_dir, traffic={"session_minutes": 0.01})
    cap = review["lifecycle"]["capacity"]
    ttl = review["lifecycle"]["policy"]["ttl_seconds"]
    assert cap["peak_held_sessions"] == math.ceil(40_000 * max(1, (0.6 + ttl) / 86_400)) == 40_000


def test_a_ttl_capped_by_retention_says_so(profiles_dir):
    _, review = _edge(
        profiles_dir, traffic={"session_minutes": 3000}, compliance={"retention_days": 1},
        state={"long_running_steps": True},
    )  # fmt: skip
    (call,) = [j for j in review["judgements"] if j["name"] == "durable workflows"]
    assert "capped at the 1-day retention" in call["choice"] and "three task lengths (" not in call["choice"]
    assert "beyond the 1-day retention" in review["lifecycle"]["policy"]["reasons"]["ttl_seconds"]


def test_a_one_turn_session_has_break_evens_that_agree_and_no_none_in_words(profiles_dir):
    profile, review = _edge(profiles_dir, turns={"per_session": 1}, state={"context_window_turns": 1})
    cost = review["assessment"]["cost"]
    assert cost["session_token_break_even_turn"] is None or (
        cost["token_break_even_turn"] is not None
        and cost["token_break_even_turn"] <= cost["session_token_break_even_turn"]
    )
    assert "None" not in " ".join(review["assessment"]["reasons"])


def test_no_model_reading_the_turns_is_said_and_no_summary_tokens_are_charged(profiles_dir):
    _, review = _edge(profiles_dir, turns={"tokens_per_turn": 0})
    cost = review["assessment"]["cost"]
    assert sum(cost["server_prompt_tokens"]) == 0 and cost["server_token_cost_per_1000_sessions"] == 0
    assert cost["assumptions"]["summary_bytes"] > 0, "the summary is still stored"
    assert "no model reads the turns" in " ".join(review["assessment"]["reasons"])


def test_analytics_that_tolerates_no_staleness_reads_from_the_primary(profiles_dir):
    data = {"name": "counts", "purpose": "analytics", "staleness_tolerance_s": 0}
    profile, review = _edge(profiles_dir, state_classes=[data])
    (choice,) = review["consistency"]["classes"]
    assert choice["reads_from"] == "primary" and choice["stale_read_probability"] == 0.0
