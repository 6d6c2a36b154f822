from __future__ import annotations

import math
import socket

import numpy as np
import pytest

import statekit as sk
from statekit import NeedsRealRedis, ReplicationStalled, WorkloadProfile
from statekit import consistency as c


def test_reproduces_the_pbs_headline_for_linkedin_ssd():
    """PBS (VLDB 2012): with LinkedIn's SSD latency fit, N=3, R=W=1, about 97.4% of reads
    started right after a write commits return it."""
    p0 = c.t_visibility(c.PBS_FITS["LNKD-SSD"], 0.0, n=3, r=1, w=1, trials=200_000, seed=1)[0]
    noise = 3 * math.sqrt(0.974 * 0.026 / 200_000)  # three standard errors of the estimate
    assert abs(p0 - 0.974) <= noise + 0.001  # + the paper's rounding to one decimal of a percent


def test_visibility_grows_with_time_and_strict_quorums_are_always_consistent():
    t = np.linspace(0, 50, 200)
    p = c.t_visibility(c.PBS_FITS["LNKD-DISK"], t, trials=50_000)
    assert np.all(np.diff(p) >= 0) and p[0] < 0.5 < p[-1]
    assert np.all(c.t_visibility(c.PBS_FITS["LNKD-DISK"], t, r=2, w=2) == 1.0)  # R + W > N
    # SSDs converge faster than disks: more consistent at every t
    ssd = c.t_visibility(c.PBS_FITS["LNKD-SSD"], t, trials=50_000)
    assert np.all(ssd >= p - 0.01)


def test_same_seed_same_answer_and_another_seed_another_sample():
    """Speed is measured by benchmarks/bench_consistency.py, not here."""
    fit, t = c.PBS_FITS["YMMR"], np.linspace(0, 2000, 200)
    assert np.array_equal(c.t_visibility(fit, t, seed=7), c.t_visibility(fit, t, seed=7))
    assert not np.array_equal(c.t_visibility(fit, t, seed=7), c.t_visibility(fit, t, seed=8))


def test_the_notebook_tables_and_curves_come_from_the_model():
    curves = c.visibility_curves(points=50, trials=20_000)
    assert set(curves) == set(c.PBS_FITS) and set(curves["YMMR"]) == {"R=1, W=1", "R=1, W=2", "R=2, W=1"}
    t, p = curves["LNKD-DISK"]["R=1, W=1"]
    assert t[-1] == c.HORIZONS_MS["LNKD-DISK"] and np.array_equal(
        p, c.t_visibility(c.PBS_FITS["LNKD-DISK"], t, trials=20_000)
    )
    ssd_curves = curves["LNKD-SSD"]
    assert ssd_curves["R=2, W=1"][1][0] > ssd_curves["R=1, W=1"][1][0], "reading two replicas beats one"
    (ssd,) = [row for row in c.visibility_table() if row["fit"] == "LNKD-SSD"]
    assert ssd["consistent right after commit"] == pytest.approx(0.974, abs=0.003)
    assert ssd["99.9% consistent after (ms)"] == round(c.visibility_time(c.PBS_FITS["LNKD-SSD"], 0.999), 2)
    table = {row["quorum"]: row for row in c.k_staleness_table()}
    assert table["R=1 W=1"]["k=1"] == pytest.approx(1 / 3)
    assert table["R=2 W=1"]["k=5"] == pytest.approx(1 - (1 / 3) ** 5)


@pytest.mark.slow  # a simulation
def test_k_staleness_closed_form_matches_a_direct_simulation():
    rng = np.random.default_rng(0)
    n, r, w, k = 5, 1, 2, 2
    closed = c.k_staleness(n, r, w, k)
    trials = 100_000
    hits = 0
    for _ in range(trials):
        reads = set(rng.choice(n, r, replace=False))
        writes = [set(rng.choice(n, w, replace=False)) for _ in range(k)]
        hits += any(reads & ws for ws in writes)
    assert abs(hits / trials - closed) < 4 * math.sqrt(closed * (1 - closed) / trials)
    assert c.k_staleness(3, 2, 2) == 1.0 and c.k_staleness(3, 1, 1, 1) == pytest.approx(1 / 3)


def test_replica_stale_probability_from_lag_samples():
    lag = [0.5, 1.0, 1.0, 2.0, 10.0]
    assert list(c.replica_stale_probability(lag, [0, 1.0, 5, 10])) == pytest.approx([1.0, 0.4, 0.2, 0.0])


def test_distributions_validate_and_sample():
    rng = np.random.default_rng(0)
    assert c.pareto(2, 3).sample(rng, 10_000).min() >= 2
    assert abs(c.exponential(0.5).sample(rng, 100_000).mean() - 2) < 0.05
    assert set(c.empirical([1, 2]).sample(rng, 100)) == {1.0, 2.0}
    m = c.mixture([(0.9, c.pareto(1, 10)), (0.1, c.exponential(0.01))]).sample(rng, 50_000)
    assert 0.07 < (m > 20).mean() < 0.1
    for bad in (
        lambda: c.pareto(0, 1),
        lambda: c.exponential(0),
        lambda: c.empirical([]),
        lambda: c.mixture([]),
        lambda: c.t_visibility(c.PBS_FITS["YMMR"], 0, n=3, r=4, w=1),
    ):
        with pytest.raises(ValueError):
            bad()


def test_select_per_kind_of_state(profiles_dir):
    classes = []
    for name in ("support_agent", "quota_enforcement", "recommendations"):
        classes += WorkloadProfile.from_yaml(profiles_dir / f"{name}.yaml").state_classes
    by_name = {ch.state_class: ch for ch in c.select(classes)}
    assert by_name["conversation"].level == "session" and "sticky" in by_name["conversation"].routing
    assert by_name["refund_approval"].level == "strong" and by_name["refund_approval"].reads_from == "primary"
    assert by_name["token_quota"].level == "strong"
    ledger = by_name["billing_ledger"]
    assert ledger.level == "strong" and any("transactional database" in x for x in ledger.limits)
    assert any("WAIT" in x and "does not make Redis strongly consistent" in x for x in by_name["token_quota"].limits)
    prefs = by_name["shopper_preferences"]
    assert prefs.level == "bounded staleness" and prefs.staleness_bound_s == 5 and prefs.reads_from == "replica"
    assert by_name["click_events"].level == "eventual"
    for ch in by_name.values():
        assert 0 <= ch.stale_read_probability <= 1
        assert ch.stale_read_probability == 0 or ch.reads_from == "replica"


def test_rendezvous_routing_moves_about_one_in_n():
    for n in (2, 4, 8):
        assert abs(c.remap_fraction(n, 20_000) - 1 / n) < 0.02
    r = c.Router(["a", "b", "c"])
    assert r.route("s-1") == r.route("s-1")
    assert {r.route(f"s-{i}") for i in range(300)} == {"a", "b", "c"}
    with pytest.raises(ValueError):
        c.Router([])


@pytest.mark.realredis
def test_round_robin_replica_reads_are_stale_and_sticky_ones_never(lagging_redis_replica_pair):
    """Measured on a real replica held 50 ms behind; a session's requests come milliseconds apart."""
    pair = lagging_redis_replica_pair
    rr = c.simulate_routing(pair.primary_url, pair.replica_url, "round_robin", sessions=4, requests=10)
    sticky = c.simulate_routing(pair.primary_url, pair.replica_url, "sticky", sessions=4, requests=10)
    assert rr["reads"] == sticky["reads"] == 40
    assert rr["stale_reads"] > rr["reads"] / 2, "the replica is 50 ms behind: most replica reads miss a turn"
    assert sticky["stale_reads"] == 0 and sticky["primary_reads"] > 0, "the token sent stale reads to the primary"


def test_routing_needs_real_replication():
    with pytest.raises(NeedsRealRedis, match="no replication"):
        c.simulate_routing("fakeredis://", "fakeredis://", "sticky")


@pytest.mark.realredis
def test_no_lost_updates_with_compare_and_set_and_lost_ones_without(redis_url):
    occ = c.concurrent_increments(redis_url, instances=2, threads=4, increments=50)
    assert occ["final"] == occ["expected"] == 400 and occ["lost_updates"] == 0
    assert occ["conflicts"] > 0
    naive = c.concurrent_increments(redis_url, instances=2, threads=4, increments=50, naive=True)
    assert naive["lost_updates"] > 0, "eight unsynchronised get-then-set writers should lose updates"


@pytest.mark.realredis
def test_replica_lag_measured_with_and_without_wait(redis_replica_pair):
    pair = redis_replica_pair
    plain = c.measure_replica_lag(pair.primary_url, pair.replica_url, writes=300, load_writers=2)
    waited = c.measure_replica_lag(pair.primary_url, pair.replica_url, writes=300, wait=True, load_writers=2)
    assert len(plain["samples_ms"]) == 300 and min(plain["samples_ms"]) >= 0
    assert waited["stale_fraction"] == 0.0, "after WAIT 1 the replica has the write"
    assert plain["stale_fraction"] >= waited["stale_fraction"]
    # the measured samples feed the model
    p = c.replica_stale_probability(plain["samples_ms"], [0.0, 1_000.0])
    assert p[0] >= p[1] and p[1] == 0.0


def test_replica_lag_needs_real_servers():
    from statekit import NeedsRealRedis

    with pytest.raises(NeedsRealRedis):
        c.measure_replica_lag("fakeredis://", "fakeredis://", writes=1)


@pytest.mark.realredis
def test_replica_lag_refuses_a_primary_as_replica(redis_url):
    with pytest.raises(ValueError, match="is not a replica"):
        c.measure_replica_lag(redis_url, redis_url, writes=1)


@pytest.mark.realredis
def test_replica_lag_stops_at_its_deadline_when_replication_stops(fresh_redis_replica_pair):
    pair = fresh_redis_replica_pair
    with socket.socket() as s:  # a port nobody listens on: the replica's new primary never answers
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    sk.connect(pair.replica_url).execute_command("REPLICAOF", "127.0.0.1", dead_port)
    with pytest.raises(ReplicationStalled, match=r"has not shown write 1 of 5 0.5 s after .*master_link_status=down"):
        c.measure_replica_lag(pair.primary_url, pair.replica_url, writes=5, deadline_s=0.5)
    assert sk.connect(pair.primary_url).keys("lag-probe:*") == [], "the probe keys are removed"


def test_compare_and_set_loses_no_update_on_the_embedded_server_either():
    """The instances share one fakeredis server (each fakeredis:// client would have its own)."""
    occ = c.concurrent_increments("fakeredis://", instances=2, threads=2, increments=25)
    assert occ["final"] == occ["expected"] == 100 and occ["lost_updates"] == 0
