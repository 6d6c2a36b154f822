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


# The coverage tests below simulate thousands of appends per run: on a real server, where Lua
# runs natively (fakeredis interprets each script's redis.call through Python, ten times the CPU).
# The estimates do not depend on the backend; the smaller tests here and below run on fakeredis.
@pytest.mark.realredis
def test_the_intervals_of_twenty_seeds_cover_the_simulated_truth(redis_url):
    covered = _recovered(connect(redis_url), range(20))
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
        with pytest.raises(AccessDenied, match=r"\+type"):
            measure(connect(redis_server.url.replace("redis://", "redis://scan:pw@")), "chat", ttl_seconds=60,
                    finished_after_s=30)  # fmt: skip
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
        bad = redis_server.url.replace("redis://", "redis://scan:pw@")
        assert main(["calibrate", bad, "--namespace", "chat", "--profile", str(path), "--window", "0", "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "+type" in err
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


# -- regressions: what a hostile run found ------------------------------------------------------


def _strict_json(text: str):  # noqa: ANN202
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


UNBOUNDED_METRICS = """\
# TYPE statekit_conflict_ratio gauge
statekit_conflict_ratio nan
# TYPE statekit_operation_duration_seconds histogram
statekit_operation_duration_seconds_bucket{operation="get",le="0.1"} 1
statekit_operation_duration_seconds_bucket{operation="get",le="+Inf"} 100
statekit_operation_duration_seconds_count{operation="get"} 100
statekit_operation_duration_seconds_sum{operation="get"} 500
"""


#: The (server, seed) pairs `_drifted_cli` has written the drifted production to in this
#: process. The tests that call it only read what is written (or fail before reading), so each
#: named server is written once per test process, not once per test (about 1.2 CPU-seconds each).
_WRITTEN: set[tuple[str, int]] = set()


def _drifted_cli(tmp_path, url: str, seed: int = 1) -> list[str]:  # noqa: ANN001
    """The arguments of `statekit calibrate` for the drifted production, written to the named
    fakeredis server `url` (once per process and seed), against the profile it drifted from."""
    if (url, seed) not in _WRITTEN:
        client = connect(url)
        client.flushall()
        profile, production = drifted_production()
        simulate(client, "chat", production, recommend(profile).policy, seed=seed)
        client.close()
        _WRITTEN.add((url, seed))
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    return ["calibrate", url, "--namespace", "chat", "--profile", str(path), "--window", "0", "-q"]


@pytest.mark.slow  # three whole calibrations
def test_json_is_strict_unbounded_and_unmeasured_figures_are_null_and_named_in_the_text(tmp_path, capsys):
    args = _drifted_cli(tmp_path, "fakeredis://i21-json")
    metrics = tmp_path / "m.prom"
    metrics.write_text(UNBOUNDED_METRICS)
    args += ["--sample", "10", "--metrics", str(metrics)]
    assert main([*args, "--json"]) == 0
    out = _strict_json(capsys.readouterr().out)  # no Infinity, no NaN
    rows = {r["label"]: r for r in out["rows"]}
    assert rows["largest session"]["high"] is None  # the max of a sample bounds nothing above
    assert rows["conflicts per CAS attempt"]["measured"] is None  # NaN in the exposition
    assert rows["p99 latency of the slowest operation"]["measured"] is None  # in the +Inf bucket
    assert out["metrics"]["latency_ms"]["get"]["p99_ms"] is None
    assert out["measurement"]["bytes_percentiles"]["max"]["high"] is None
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "unbounded]" in text and "not measured" in text
    assert main([*args, "--review", str(tmp_path / "review")]) == 0  # calibration.json, as --review writes it
    _strict_json((tmp_path / "review" / "chat_assistant.calibration.json").read_text())


def _coverage(client, seeds: range, sample: int) -> dict[str, int]:  # noqa: ANN001
    """In how many seeds the sampled interval covers the figure a full read gives."""
    hits = {"p50": 0, "p95": 0, "bytes_per_turn": 0, "p99 unbounded above": 0}
    for seed in seeds:
        _empty(client)
        simulate(client, "prod", SMALL, SMALL_POLICY, seed=seed)
        full = measure(client, "prod", ttl_seconds=1200, finished_after_s=300)
        part = measure(client, "prod", ttl_seconds=1200, finished_after_s=300, sample=sample, seed=seed)
        assert part.sampled == sample < full.sampled
        for q in ("p50", "p95"):
            hits[q] += part.bytes_percentiles[q].covers(full.bytes_percentiles[q].value)
        hits["bytes_per_turn"] += part.estimates["bytes_per_turn"].covers(full.estimates["bytes_per_turn"].value)
        hits["p99 unbounded above"] += part.bytes_percentiles["p99"].high == float("inf")
    return hits


@pytest.mark.realredis
def test_99_percent_intervals_of_five_sessions_cover_the_full_read(redis_url):
    """A sample of 5 of ~40 sessions: the intervals are 99%, so 95 of 100 seeds at least.
    A normal quantile on the mean and order statistics clamped to the sample's largest
    covered far fewer (p99 in about one seed in ten on a sample of 3)."""
    hits = _coverage(connect(redis_url), range(100), sample=5)
    assert all(n >= 95 for n in hits.values()), hits
    assert hits["p99 unbounded above"] == 100, hits  # five sessions cannot bound a p99


def test_the_interval_helpers_are_exact_on_small_samples():
    from statekit.observe.calibrate import mean_estimate, t99

    assert t99(4) == pytest.approx(4.6041) and t99(35) == t99(30) and t99(10**6) == pytest.approx(2.5808)
    e = mean_estimate([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (e.high - e.value) == pytest.approx(4.6041 * (2.5 / 5) ** 0.5)  # t with 4 degrees of freedom
    p99 = quantile_estimate([1, 2, 3, 4, 5], 99, population=40, floor=0.0)
    assert p99.high == float("inf") and p99.low == 4.0  # 4 of 5 below a p99 but for 1 chance in 1,000
    p50 = quantile_estimate(list(range(100)), 50, population=10_000)
    assert p50.low < 49.5 < p50.high < 99


def _mixed_namespace(client) -> int:  # noqa: ANN001
    """Five good sessions in 'mix', and every kind of bad one beside them; the good count."""
    store = SessionStore(client, recommend(drifted_production()[0]).policy, namespace="mix")
    for i in range(5):
        for j in range(3):
            store.append_turn(f"s{i}", {"role": "user", "content": "x" * (100 * (i + 1) + j)})
    return 5


def test_corrupt_meta_fields_are_counted_as_corrupt_not_as_empty_sessions(tmp_path, capsys):
    client = connect("fakeredis://i21-corrupt")
    client.flushall()
    good = _mixed_namespace(client)
    client.hset("mix:{c1}:meta", mapping={"v": "abc", "b": "xyz", "c": "notatime"})
    client.hset("mix:{c2}:meta", mapping={"v": "12.5", "b": "1e9"})
    client.hset("mix:{c3}:meta", mapping={"owner": "someone", "x": "1"})  # a hash of another shape
    client.hset("mix:{c4}:meta", mapping={"v": "3", "b": str(10**15)})  # a petabyte session
    client.hset("mix:{c5}:meta", mapping={"v": "-3", "b": "100"})
    m = measure(client, "mix", ttl_seconds=1200, finished_after_s=300)
    assert (m.sessions, m.sampled, m.corrupt) == (good + 5, good, 5)
    assert min(m.sizes) > 0 and max(m.sizes) < 10**6  # no zero, no petabyte among the sizes
    assert any("5 sessions could not be read: corrupt meta" in note for note in m.notes)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    assert main(["calibrate", "fakeredis://i21-corrupt", "--namespace", "mix", "--profile", str(path),
                 "--window", "0", "-q"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "5 sessions could not be read: corrupt meta" in out and "(all, 5 corrupt)" in out


def test_foreign_keys_are_skipped_counted_and_reported(tmp_path, capsys):
    client = connect("fakeredis://i21-foreign")
    client.flushall()
    good = _mixed_namespace(client)
    client.hset("mix:{a}b}:meta", "v", 3)  # a brace in the id
    client.hset(b"mix:{\xff\xfe}:meta", "v", 3)  # a name that is not UTF-8
    client.set("mix:{foo}:meta", "a string")  # a meta key of the wrong type
    client.xadd("mix:{bar}:meta", {"f": "v"})
    m = measure(client, "mix", ttl_seconds=1200, finished_after_s=300)
    assert (m.sessions, m.sampled, m.foreign) == (good, good, 4)
    assert m.estimates["sessions_held"].value == good
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    assert main(["calibrate", "fakeredis://i21-foreign", "--namespace", "mix", "--profile", str(path),
                 "--window", "0", "-q"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"{good} sessions in 'mix'" in out and f"{good} read (all; 4 foreign keys not counted)" in out
    assert "4 keys where a session's meta belongs: no session of 'mix'" in out


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("statekit_conflict_ratio\n", "not a usable Prometheus exposition"),
        ('statekit_operation_duration_seconds_bucket{operation="get",le="abc"} 3\n', "le='abc'"),
        (b"\xff\xfe\x00binary\x00", "not UTF-8"),
        ('# TYPE statekit_context_reads counter\nstatekit_context_reads_total{tier="store"} -5\n', "counts -5"),
    ],
    ids=["no value", "bucket edge not a number", "binary", "negative counter"],
)
def test_a_bad_metrics_file_exits_2_with_one_line_naming_it(tmp_path, capsys, text, why):
    args = _drifted_cli(tmp_path, "fakeredis://i21-metrics")
    path = tmp_path / "bad.prom"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main([*args, "--metrics", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(path) in captured.err and why in captured.err, captured.err
    assert "Traceback" not in captured.err and not captured.out


def test_valid_exposition_with_spaces_between_labels_is_read():
    text = (
        "# TYPE statekit_operation_duration_seconds histogram\n"
        'statekit_operation_duration_seconds_bucket{operation="get", le="0.1"} 99\n'
        'statekit_operation_duration_seconds_bucket{operation="get", le="+Inf"} 100\n'
        'statekit_operation_duration_seconds_count{operation="get"} 100\n'
        'statekit_operation_duration_seconds_sum{operation="get"} 1\n'
    )
    latency = read_prometheus(text)["latency_ms"]["get"]
    assert latency["p50_ms"] == latency["p95_ms"] == latency["p99_ms"] == pytest.approx(100.0)


def test_a_metrics_url_that_drips_bytes_fails_at_its_deadline():
    """A server sending a byte every 0.2 s never trips a per-read timeout; the fetch has an
    overall deadline (1 s here). Margin: the call must return within 1 s + 2 s."""
    import socket
    import threading
    import time

    from statekit.decide.calibrate import load_metrics
    from statekit.errors import InvalidInput

    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            for byte in b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 1000:
                if stop.wait(0.2):  # the server's slowness, not a wait for the client
                    return
                conn.sendall(bytes([byte]))

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/metrics"
    started = time.monotonic()
    try:
        with pytest.raises(InvalidInput, match=rf"metrics URL {url} did not answer within 1 s"):
            load_metrics(url, deadline_s=1.0)
        assert time.monotonic() - started < 3.0
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_the_metrics_are_read_before_the_measurement_and_its_window(tmp_path):
    client = connect("fakeredis://")
    profile, production = drifted_production()
    simulate(client, "chat", production, recommend(profile).policy, seed=1)
    waited: list[float] = []
    with pytest.raises(Exception, match="missing.prom"):
        calibrate(client, "chat", profile, window_s=600, wait=waited.append, metrics=str(tmp_path / "missing.prom"))
    assert waited == []  # failed before the window


@pytest.mark.parametrize("namespace", ["nope", ""])
def test_a_namespace_without_sessions_fails_the_gate_with_exit_2(tmp_path, capsys, namespace):
    args = _drifted_cli(tmp_path, "fakeredis://i21-ns")
    args[args.index("chat")] = namespace
    assert main([*args, "--fail-on", "drift"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decisions that flip" not in err
    assert ("holds no sessions" in err and "nothing to calibrate" in err) if namespace else "bad namespace" in err


@pytest.mark.parametrize("option", [["--window", "nan"], ["--window", "inf"], ["--tolerance", "inf"],
                                    ["--tolerance", "nan"]])  # fmt: skip
def test_non_finite_window_or_tolerance_is_refused(tmp_path, capsys, option):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(DRIFTED_PROFILE))
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "fakeredis://", "--namespace", "chat", "--profile", str(path), *option])
    assert exit_.value.code == 2 and "finite" in capsys.readouterr().err
