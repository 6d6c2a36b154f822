from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from statekit import LifecyclePolicy, NeedsRealRedis, ResilientStore, SessionStore, StateTooLarge, connect
from statekit.migrate import Migrations
from statekit.observe import AuditLog, ExpiryWatcher, StateMetrics, actor, health_scan
from statekit.observe import metrics as sk_metrics
from statekit.testing import FakeClock, FaultInjector


def turn(i: int, size: int = 50) -> dict:
    return {"role": "user", "content": f"m{i} " + "x" * size}


def test_percentiles_match_the_raw_samples():
    m = StateMetrics()
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=np.log(300e-6), sigma=0.6, size=20_000)  # seconds, around 300 us
    for s in samples:
        m.on_operation("load_context", "s", float(s), None)
    for q in (50, 95, 99):
        exact = np.percentile(samples * 1e6, q)
        # HdrHistogram keeps 2 significant digits: within 1% of the exact percentile
        assert abs(m.percentile_us("load_context", q) - exact) / exact < 0.01
    assert m.summary().loc["load_context", "calls"] == 20_000


def test_sub_millisecond_resolution_in_prometheus_buckets():
    m = StateMetrics()
    for us in (40, 80, 90, 200, 3_000):
        m.on_operation("append_turn", "s", us / 1e6, None)
    families = {f.name: f for f in text_string_to_metric_families(m.prometheus())}
    buckets = {
        s.labels["le"]: s.value
        for s in families["statekit_operation_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["5e-05"] == 1 and buckets["0.0001"] == 3 and buckets["0.0002"] == 4 and buckets["+Inf"] == 5
    assert min(float(le) for le in buckets if le != "+Inf") < 0.0001


def test_buckets_and_histograms_are_what_hdrhistograms_iterator_gives():
    """The Prometheus buckets and the plotted histograms read HdrHistogram's counts array:
    the same numbers as its recorded iterator, over values from 1 us to a minute."""
    m = StateMetrics()
    rng = np.random.default_rng(1)
    for s in rng.lognormal(mean=np.log(2e-3), sigma=2.5, size=5_000).clip(1e-6, 60):
        m.on_operation("load_context", "s", float(s), None)
    for b in rng.lognormal(mean=np.log(4_000), sigma=1.5, size=2_000):
        m.on_event("appended", "s", {"total": int(b) + 1})
    for hist, bounds, scale, plotted in (
        (m._latency["load_context"], sk_metrics.LATENCY_BUCKETS_S, 1e6, m.latency_histogram("load_context")),
        (m._sizes, sk_metrics.SIZE_BUCKETS_BYTES, 1, m.size_histogram()),
    ):
        recorded = [(it.value_iterated_to, it.count_at_value_iterated_to) for it in hist.get_recorded_iterator()]
        assert plotted == recorded and len(recorded) > 50
        expected = [
            (
                sk_metrics.bucket_label(b),
                sum(c for v, c in recorded if hist.get_lowest_equivalent_value(v) <= b * scale),
            )
            for b in bounds
        ]
        assert m._cumulative(hist, bounds, scale) == [*expected, ("+Inf", hist.get_total_count())]


def test_prometheus_names_follow_the_conventions():
    m = StateMetrics()
    store = SessionStore(connect("fakeredis://"), metrics=m)
    store.append_turn("s", turn(0))
    store.load_context("s")
    names = {f.name for f in text_string_to_metric_families(m.prometheus())}
    assert {
        "statekit_operation_duration_seconds",
        "statekit_operation_errors",
        "statekit_session_bytes",
        "statekit_lifecycle_events",
        "statekit_context_reads",
        "statekit_conflict_ratio",
    } <= names
    text = m.prometheus()
    assert 'statekit_lifecycle_events_total{kind="created"} 1.0' in text
    assert 'statekit_context_reads_total{tier="store"} 1.0' in text


def test_hit_rates_per_tier_and_degraded_events():
    m = StateMetrics()
    inj, clock = FaultInjector(), FakeClock()
    store = SessionStore(inj.client(), metrics=m)
    rs = ResilientStore(store, timeout_ms=50, fail_max=2, reset_timeout_s=0.1, listeners=[m], clock=clock)
    rs.append_turn("known", turn(0))
    rs.load_context("known")
    inj.fail()
    rs.load_context("known")
    rs.load_context("unknown")
    inj.heal()
    clock.advance(0.1)
    rs.load_context("known")
    assert m.hit_rates() == {"store": 0.5, "cache": 0.25, "default": 0.25}
    assert m.events["degraded"] == 1 and m.events["recovered"] == 1
    assert m.summary().loc["load_context", "errors"] >= 1


def test_conflict_rate_is_visible():
    m = StateMetrics()
    client = connect("fakeredis://")
    store = SessionStore(client, metrics=m, max_update_retries=5)
    other = SessionStore(client)
    n = {"i": 0}

    def contended(s):
        n["i"] += 1
        if n["i"] <= 3:
            other.update_state("s", lambda t: {"other": n["i"]})
        return {**s, "mine": True}

    store.update_state("s", contended)
    assert m.events["conflict"] == 3 and m.conflict_rate == 0.75


@pytest.mark.realredis
def test_every_event_kind_is_counted_on_a_real_server(fresh_redis_server):
    m = StateMetrics()
    client = connect(fresh_redis_server.url)
    policy = LifecyclePolicy(window_turns=2, fold_batch=1, ttl_seconds=1, max_bytes=2_000, summary_max_bytes=200)
    clock = FakeClock()
    with ExpiryWatcher(client, "sk", m) as watcher:
        store = SessionStore(client, policy, metrics=m, migrations=Migrations(current=1))
        for i in range(4):
            store.append_turn("s1", turn(i))  # created, appended, evicted, summarised
        with pytest.raises(StateTooLarge):
            store.append_turn("s1", turn(9, size=5_000))  # rejected
        v2 = Migrations(current=2)
        v2.step(1, 2)(lambda d: {**d, "v2": True})
        store.update_state("s2", lambda s: {"a": 1})
        SessionStore(client, policy, metrics=m, migrations=v2).get_state("s2")  # migrated
        rs = ResilientStore(
            SessionStore(connect(fresh_redis_server.url), policy),
            timeout_ms=100,
            fail_max=1,
            reset_timeout_s=0.2,
            listeners=[m],
            clock=clock,
        )
        rs.load_context("s1")
        fresh_redis_server.pause()
        try:
            rs.load_context("s1")  # degraded
        finally:
            fresh_redis_server.resume()
        clock.advance(0.2)
        rs.load_context("s1")  # recovered
        assert watcher.wait_for(2), "with a 1 s TTL both sessions expire, and Redis says so"
    for kind in (
        "created",
        "appended",
        "evicted",
        "summarised",
        "rejected",
        "expired",
        "migrated",
        "degraded",
        "recovered",
    ):
        assert m.events[kind] > 0, kind


def test_expiry_watcher_needs_a_real_server():
    with pytest.raises(NeedsRealRedis):
        ExpiryWatcher(connect("fakeredis://"), "sk")


@pytest.mark.realredis
def test_expiries_reconcile_with_the_stores_counts(fresh_redis_server):
    m = StateMetrics()
    client = connect(fresh_redis_server.url)
    with ExpiryWatcher(client, "sk", m) as watcher:
        short = SessionStore(client, LifecyclePolicy(ttl_seconds=1), metrics=m)
        long = SessionStore(client, LifecyclePolicy(ttl_seconds=3600), metrics=m)
        for i in range(5):
            short.append_turn(f"short-{i}", turn(i))
        for i in range(3):
            long.append_turn(f"long-{i}", turn(i))
        long.delete("long-0")
        assert watcher.wait_for(5), "the five 1 s sessions expire, and Redis says so"
        assert watcher.reconcile(m) == {"created": 8, "deleted": 1, "expired": 5, "live": 2, "unaccounted": 0}


def test_audit_trail_is_queryable_and_capped(tmp_path):
    client = connect("fakeredis://")
    audit = AuditLog(client, "audit", maxlen=1_000, flush_every=10)
    store = SessionStore(client, listeners=[audit])
    with actor("agent-7"):
        store.append_turn("s-1", turn(0))
        store.load_context("s-1")
    with actor("support-bob"):
        store.load_context("s-1")
        store.load_context("s-2")
    who = [(e["actor"], e["op"]) for e in audit.who_accessed("s-1")]
    assert who == [("agent-7", "append_turn"), ("agent-7", "load_context"), ("support-bob", "load_context")]
    assert [e["session"] for e in audit.touched_by("support-bob")] == ["s-1", "s-2"]
    for i in range(3_000):
        audit.on_operation("load_context", f"s-{i}", 0.0001, None)
    audit.flush()
    assert client.xlen("audit") < 1_500, "capped near maxlen"


def test_audit_entries_older_than_max_age_are_trimmed():
    client = connect("fakeredis://")
    old_ms = int((time.time() - 10 * 86_400) * 1000)
    client.xadd("audit", {"actor": "x", "op": "load_context", "session": "s", "ms": old_ms}, id=f"{old_ms}-0")
    audit = AuditLog(client, "audit", max_age_s=86_400)
    audit.on_operation("load_context", "s", 0.001, None)
    audit.flush()
    assert audit.oldest_ms() > old_ms


def test_audit_is_off_unless_attached():
    client = connect("fakeredis://")
    SessionStore(client).append_turn("s", turn(0))
    assert not any(k.startswith(b"statekit:audit") for k in client.keys("*"))


def test_health_scan_finds_ttl_retention_and_residency_problems():
    client = connect("fakeredis://")
    store = SessionStore(client, LifecyclePolicy(window_turns=3, fold_batch=1))
    for i in range(30):
        for j in range(i % 5 + 1):
            store.append_turn(f"s-{i}", turn(j, size=100 * (i + 1)))
    store.tag_region("s-1", "us-east-1")
    store.tag_region("s-2", "eu-west-1")
    client.persist("sk:{s-3}:log")  # someone removed a TTL by hand
    client.hset("sk:{s-4}:meta", "c", int((time.time() - 40 * 86_400) * 1000))  # 40 days old
    before = {k: client.dump(k) for k in client.keys("*")}
    report = health_scan(client, "sk", retention_days=30, allowed_regions=["eu-west-1"], sample_every=5)
    assert report.sessions == 30
    assert report.keys_without_ttl == ["sk:{s-3}:log"]
    assert report.retention_violations == ["s-4"]
    assert report.residency_violations == [("s-1", "us-east-1")]
    assert report.biggest[0][0] == "s-29" and report.size_percentiles["max"] == report.biggest[0][1]
    assert {k: client.dump(k) for k in client.keys("*")} == before, "the scan is read-only"
    assert any("no MEMORY USAGE" in n for n in report.notes) and not any("MEMORY" in f for f in report.findings)


@pytest.mark.realredis
def test_health_scan_samples_memory_on_a_real_server_and_changes_nothing():
    from statekit.testing import start_redis_server

    with start_redis_server(["--enable-debug-command", "yes"]) as server:
        client = connect(server.url)
        store = SessionStore(client)
        for i in range(200):
            store.append_turn(f"s-{i}", turn(i, size=500))
        digest = client.execute_command("DEBUG", "DIGEST")
        report = health_scan(client, "sk", sample_every=10)
        every = health_scan(client, "sk", sample_every=1)
        assert client.execute_command("DEBUG", "DIGEST") == digest
    assert report.sessions == 200 and report.sampled_memory_bytes["sessions_sampled"] == 20
    assert every.sampled_memory_bytes["sessions_sampled"] == 200
    assert report.sampled_memory_bytes["mean"] > 500


def test_health_command(capsys, tmp_path, profiles_dir):
    from statekit.cli import main

    # fakeredis:// is a private, empty server: the scan finds nothing, but the command runs end to end
    assert (
        main(
            ["health", "fakeredis://", "--namespace", "sk", "--profile", str(profiles_dir / "support_agent.yaml"), "-q"]
        )
        == 0
    )
    assert "0 sessions in 'sk'" in capsys.readouterr().out
    assert main(["health", "redis://127.0.0.1:1/0", "--namespace", "sk"]) == 2


@pytest.mark.realredis
def test_health_command_json(capsys, redis_url):
    import json

    from statekit.cli import main

    SessionStore(connect(redis_url)).append_turn("s", turn(0))
    assert main(["health", redis_url, "--namespace", "sk", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == 1
