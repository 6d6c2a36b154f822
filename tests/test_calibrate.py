"""Calibration: a namespace measured read-only against its profile, on every backend.

The ground truth comes from `statekit.drills.calibrate`: a simulated production with
chosen parameters. The 100-seed recovery run and the 100,000-session sampling run are in
benchmarks/bench_calibrate.py (figures in docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest
import yaml

from statekit import AccessDenied, LifecyclePolicy, NeedsRealRedis, SessionStore, StateMetrics, connect
from statekit.acl import setuser
from statekit.cli import main
from statekit.decide.calibrate import calibrate, compare, decisions
from statekit.decide.lifecycle import recommend
from statekit.drills.calibrate import DRIFTED_PROFILE, Production, drifted_production, simulate
from statekit.observe.calibrate import measure, poisson_rate, quantile_estimate, read_prometheus

#: A small production for the recovery tests: ~40 sessions held, ~25 arriving in the window.
SMALL = Production(arrivals_per_s=0.03, turns_median=4, turns_sigma=0.5, bytes_median=600, bytes_sigma=0.5,
                   session_minutes=3)  # fmt: skip
SMALL_POLICY = LifecyclePolicy(window_turns=60, ttl_seconds=1200, max_bytes=400_000, summary_max_bytes=0,
                               summarizer=None)  # fmt: skip
PARAMETERS = ("new_sessions_per_s", "appends_per_s", "turns_per_session", "bytes_per_turn", "session_minutes")


def _empty(client) -> None:  # noqa: ANN001
    if hasattr(client, "get_primaries"):
        client.flushall(target_nodes="primaries")
    else:
        client.flushall()


def _recovered(client, seeds: range, sample: int | None = None) -> dict[str, int]:  # noqa: ANN001
    """For each parameter, in how many seeds its 99% interval covers the truth."""
    covered = dict.fromkeys(PARAMETERS, 0)
    for seed in seeds:
        _empty(client)
        sim = simulate(client, "prod", SMALL, SMALL_POLICY, seed=seed)
        m = measure(client, "prod", ttl_seconds=1200, finished_after_s=300, window_s=900, wait=sim.advance,
                    clock=sim.clock, sample=sample, seed=seed)  # fmt: skip
        assert m.sessions == sim.held_at_start
        for name, truth in sim.truth().items():
            covered[name] += m.estimates[name].covers(truth)
    return covered


def test_the_intervals_of_twenty_seeds_cover_the_simulated_truth_on_fakeredis():
    covered = _recovered(connect("fakeredis://"), range(20))
    assert all(n >= 18 for n in covered.values()), covered  # 99% intervals: 19.8 of 20 expected


@pytest.mark.realredis
def test_a_sampled_measure_covers_the_truth_on_a_real_server(redis_url):
    covered = _recovered(connect(redis_url), range(4), sample=25)
    assert all(n >= 3 for n in covered.values()), covered


@pytest.mark.realredis
def test_the_walk_reads_every_primary_of_a_cluster(redis_cluster):
    client = connect(redis_cluster.url)
    covered = _recovered(client, range(3))
    assert all(n >= 2 for n in covered.values()), covered
    m = measure(client, "prod", ttl_seconds=1200, finished_after_s=300)
    assert m.nodes == 3 and m.sessions == m.sampled > 0


def test_a_wrong_guess_is_outside_the_interval():
    """The intervals are not so wide that anything passes: the truth doubled or halved is out."""
    client = connect("fakeredis://")
    sim = simulate(client, "prod", SMALL, SMALL_POLICY, seed=3)
    m = measure(client, "prod", ttl_seconds=1200, finished_after_s=300)
    truth = sim.truth()
    for name in ("turns_per_session", "bytes_per_turn", "session_minutes"):
        assert m.estimates[name].covers(truth[name])
        assert not m.estimates[name].covers(truth[name] * 2) and not m.estimates[name].covers(truth[name] / 2)


def test_a_sample_of_the_sessions_brackets_the_exact_percentiles():
    client = connect("fakeredis://")
    store = SessionStore(client, SMALL_POLICY, namespace="big")
    for i in range(1500):
        store.append_turn(f"s{i}", {"role": "user", "content": "x" * (50 + (i * 7919) % 3000)})
    exact = measure(client, "big", ttl_seconds=1200, finished_after_s=300)
    sampled = measure(client, "big", ttl_seconds=1200, finished_after_s=300, sample=300, seed=1)
    assert exact.sampled == 1500 and sampled.sampled == 300 and exact.sessions == sampled.sessions == 1500
    for q in ("p50", "p95", "p99"):
        assert exact.bytes_percentiles[q].exact and not sampled.bytes_percentiles[q].exact
        assert sampled.bytes_percentiles[q].covers(exact.bytes_percentiles[q].value), q
    assert sampled.round_trips < exact.round_trips


def test_interval_helpers():
    rate = poisson_rate(100, 10.0)
    assert rate.value == 10 and 7 < rate.low < 10 < rate.high < 13.5
    half = poisson_rate(50, 10.0, thinning=0.5)
    assert half.value == 10 and half.high - half.low > rate.high - rate.low
    assert poisson_rate(0, 10.0).high > 0  # no arrivals seen is not a rate of zero for sure
    e = quantile_estimate(list(range(1000)), 95, population=100_000)
    assert e.low < 949.05 < e.high and not e.exact
    with pytest.raises(ValueError, match="window"):
        poisson_rate(1, 0)


# -- the flip and the gate --------------------------------------------------------------------


@pytest.fixture
def drifted(any_url):
    """The drifted production (40 turns per session where 14 were profiled), written."""
    client = connect(any_url)
    profile, production = drifted_production()
    sim = simulate(client, "chat", production, recommend(profile).policy, seed=1)
    yield any_url, client, profile, sim
    client.close()


def test_forty_turns_against_a_profile_of_fourteen_flip_the_memory_decision_and_the_gate_exits_1(
    drifted, tmp_path, capsys
):
    url, client, profile, sim = drifted
    cal = calibrate(client, "chat", profile)
    rows = {r["assumption"]: r for r in cal.table()}
    turns = rows["turns.per_session"]
    assert turns["assumed"] == 14 and turns["low"] <= sim.truth()["turns_per_session"] <= turns["high"]
    assert turns["flagged"] and turns["applied"] and turns["drift"] > 1
    assert not rows["turns.bytes_per_turn"]["flagged"]  # bytes per turn are as profiled
    assert cal.profile().turns.per_session == round(turns["measured"])
    flips = {f.decision: f for f in cal.flips()}
    assert (flips["memory.nodes"].before, flips["memory.nodes"].after) == (1, 2)
    assert "turns per session 14 -> " in flips["memory.nodes"].reason
    assert decisions(cal.profile())["memory.nodes"] == 2
    # the CLI: the gate, the calibrated profile and the HTML report
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    args = ["calibrate", url, "--namespace", "chat", "--profile", str(path), "--window", "0", "-q"]
    out = tmp_path / "calibrated.yaml"
    assert main([*args, "--fail-on", "drift", "--write-profile", str(out), "--report", str(tmp_path / "c.html")]) == 1
    printed = capsys.readouterr()
    assert "memory.nodes: 1 -> 2" in printed.out and "--fail-on drift: " in printed.err
    calibrated = yaml.safe_load(out.read_text())
    assert calibrated["turns"]["per_session"] > 30 and "calibrated" in out.read_text().splitlines()[0]
    assert "as profiled against as measured" in (tmp_path / "c.html").read_text()
    assert main(args) == 0  # without the gate, the same flips only print
    # the calibrated profile against the same production: nothing flips any more
    assert main([*args[:4], "--profile", str(out), "--window", "0", "-q", "--fail-on", "drift"]) == 0


def test_a_production_as_profiled_flips_nothing():
    client = connect("fakeredis://")
    profile, production = drifted_production(turns_median=13.4)  # a mean of 14 turns
    simulate(client, "chat", production, recommend(profile).policy, seed=2)
    cal = calibrate(client, "chat", profile)
    assert not cal.flips() and not [r for r in cal.table() if r["applied"]]
    assert cal.profile() == profile


def test_an_unreachable_server_or_a_bad_profile_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    assert main(["calibrate", "redis://127.0.0.1:1/0", "--namespace", "n", "--profile", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach Redis" in err
    path.write_text("service: x\n")
    assert main(["calibrate", "fakeredis://", "--namespace", "n", "--profile", str(path), "-q"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.realredis
def test_a_user_with_the_calibrate_rules_measures_and_one_without_is_refused(redis_server, tmp_path, capsys):
    admin = redis_server.client()
    admin.flushall()
    profile, production = drifted_production()
    simulate(connect(redis_server.url), "chat", production, recommend(profile).policy, seed=4)
    admin.execute_command(*setuser("cal", ["calibrate"], "chat", password="pw").split())
    admin.execute_command(*setuser("scan", ["health_scan"], "chat", password="pw").split())
    try:
        url = redis_server.url.replace("redis://", "redis://cal:pw@")
        assert calibrate(connect(url), "chat", profile).measurement.sessions > 0
        with pytest.raises(AccessDenied, match=r"\+strlen"):
            measure(connect(redis_server.url.replace("redis://", "redis://scan:pw@")), "chat", ttl_seconds=60,
                    finished_after_s=30)  # fmt: skip
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
        bad = redis_server.url.replace("redis://", "redis://scan:pw@")
        assert main(["calibrate", bad, "--namespace", "chat", "--profile", str(path), "--window", "0", "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "+strlen" in err
    finally:
        admin.acl_deluser("cal", "scan")


# -- replica lag and StateMetrics ---------------------------------------------------------------


def test_replica_lag_needs_a_real_server():
    client = connect("fakeredis://")
    profile, _ = drifted_production()
    with pytest.raises(NeedsRealRedis, match="fakeredis has no replication"):
        calibrate(client, "chat", profile, replica=connect("fakeredis://"))


@pytest.mark.realredis
def test_a_replica_in_step_keeps_bounded_staleness(redis_replica_pair):
    primary, replica = connect(redis_replica_pair.primary.url), connect(redis_replica_pair.replica.url)
    profile, production = drifted_production(turns_median=13.4)
    cal = calibrate(primary, "lag", profile, replica=replica)
    assert cal.replica_lag["samples"] == 20 and cal.replica_lag["worst_s"] <= 1
    assert cal.after["consistency.ticket_context.bound_holds"] is True
    late = compare(profile, cal.measurement, replica_lag={"samples": 5, "worst_s": 12.0})
    flip = {f.decision: f for f in late.flips()}["consistency.ticket_context.bound_holds"]
    assert (flip.before, flip.after) == (True, False) and "bounded staleness no longer holds" in flip.reason


def test_statemetrics_exposition_gives_latency_conflicts_and_degraded_share(tmp_path):
    metrics = StateMetrics()
    client = connect("fakeredis://")
    store = SessionStore(client, SMALL_POLICY, namespace="m", metrics=metrics)
    for i in range(20):
        store.append_turn("s", {"role": "user", "content": f"turn {i}"})
        store.load_context("s")
    figures = read_prometheus(metrics.prometheus())
    assert figures["latency_ms"]["append_turn"]["count"] == 20 and figures["latency_ms"]["append_turn"]["p99_ms"] > 0
    assert figures["conflict_ratio"] == 0.0
    path = tmp_path / "metrics.prom"
    path.write_text(metrics.prometheus())
    profile, _ = drifted_production()
    cal = calibrate(client, "m", profile, metrics=str(path))
    assert {"latency_budget_ms", "conflict_ratio"} <= {r["assumption"] for r in cal.table()}
    with pytest.raises(Exception, match="no statekit_"):
        read_prometheus("up 1\n")


def test_an_empty_namespace_measures_nothing_and_flips_nothing():
    import statekit

    profile, _ = drifted_production()
    cal = statekit.calibrate(connect("fakeredis://"), "nothing-here", profile)
    assert cal.measurement.sessions == 0 and not cal.flips() and cal.profile() == profile
    assert {r["assumption"]: r["measured"] for r in cal.table()}["turns.per_session"] is None
    assert "fewer than 2 sampled sessions" in cal.measurement.notes[0]


def test_the_live_review_pins_as_profiled_against_as_measured():
    from statekit.app import review_app

    client = connect("fakeredis://")
    profile, production = drifted_production()
    simulate(client, "chat", production, recommend(profile).policy, seed=5)
    app = review_app(profile)
    app.pin_calibration(calibrate(client, "chat", profile))
    table = app.comparison()
    assert list(table.columns) == ["as profiled", "as measured", "change vs first"]
    assert table.loc["nodes"].tolist() == [1, 2, "+100%"]
    assert table.loc["assumed: turns per session", "as profiled"] == 14
    assert "as measured" in app.sections["scenarios"].value


@pytest.mark.notebook
def test_the_review_is_rerun_with_the_measured_numbers(tmp_path, capsys):
    client = connect("fakeredis://calibrate-review")
    client.flushall()
    profile, production = drifted_production()
    simulate(client, "chat", production, recommend(profile).policy, seed=6)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    args = ["calibrate", "fakeredis://calibrate-review", "--namespace", "chat", "--profile", str(path), "--window", "0"]
    assert main([*args, "-q", "--review", str(tmp_path / "review")]) == 0
    review = yaml.safe_load((tmp_path / "review" / "chat_assistant.calibrated.yaml").read_text())
    assert review["turns"]["per_session"] > 30
    rerun = json.loads((tmp_path / "review" / "chat_assistant.calibrated.json").read_text())
    assert rerun["lifecycle"]["capacity"]["nodes"] == 2 and rerun["profile"]["turns"]["per_session"] > 30
    assert [f["decision"] for f in rerun["calibration"]["flips"]] == ["memory.nodes", "lifecycle.window_turns"]
    page = (tmp_path / "review" / "chat_assistant.calibrated.html").read_text()
    assert "Calibration: as profiled against as measured" in page and "memory.nodes: 1 -&gt; 2" in page
    assert "chat_assistant.calibrated.html" in capsys.readouterr().out
