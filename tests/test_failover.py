"""Failover drills on real processes: a cluster of three primaries with a replica each."""

from __future__ import annotations

import pytest

from statekit.drills.failover import lost_writes_drill, store_failover_drill
from statekit.testing import RedisClusterServers, start_redis_server


@pytest.fixture
def cluster_with_replicas():
    start_redis_server().stop()  # skipped without redis-server, failed instead in CI
    cluster = RedisClusterServers(3, replicas=1, node_timeout_ms=1000).start()
    yield cluster
    cluster.stop()


@pytest.mark.realredis
@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_acknowledged_writes_lost_in_a_failover_with_and_without_wait(cluster_with_replicas, wait_replicas):
    """The replica is cut off for the last 30 of 300 writes, then the primary dies. Without
    WAIT the primary acknowledged all 300 and the promoted replica lacks the 30; with WAIT 1
    those 30 were never acknowledged (WAIT returned 0), and nothing acknowledged is lost.
    (On a loaded machine a write before the cut can miss WAIT's 50 ms too: it is counted as
    unconfirmed, not acknowledged, and the promise is the same.)"""
    figures = lost_writes_drill(cluster_with_replicas, wait_replicas=wait_replicas, writes=300, lagging=30)
    print(figures)
    if wait_replicas:
        assert figures["acknowledged_while_cut"] == 0, "WAIT confirmed a write the cut-off replica never had"
        assert figures["lost"] == 0
        assert figures["acknowledged"] == 270 - figures["unconfirmed_before_cut"] > 0
    else:
        assert (figures["acknowledged_while_cut"], figures["unconfirmed_before_cut"]) == (30, 0)
        assert (figures["acknowledged"], figures["lost"]) == (300, 30)
    assert figures["failover_s"] > 0


@pytest.mark.realredis
def test_a_resilient_store_degrades_through_a_cluster_failover_and_recovers_on_its_own(cluster_with_replicas):
    figures = store_failover_drill(cluster_with_replicas, turns_before=50, turns_during=20)
    print(figures)
    assert figures["replica_promoted"] and figures["degraded_during_outage"]
    assert (figures["buffered"], figures["replayed"], figures["still_buffered"]) == (20, 20, 0)
    assert figures["lost_from_buffer"] == 0 and figures["mode_after"] == "normal"
    # the bound is the feature: node timeout 1 s + election + the breaker's 0.5 s reset, with a
    # margin of 20 s for a loaded machine
    assert figures["recovered_s"] < 25


@pytest.mark.realredis
def test_the_expiry_watcher_hears_every_primary_and_follows_a_failover(cluster_with_replicas):
    from statekit import LifecyclePolicy, SessionStore, connect
    from statekit.observe import ExpiryWatcher

    cluster = cluster_with_replicas
    client = connect(cluster.url)
    store = SessionStore(client, LifecyclePolicy(ttl_seconds=1), namespace="exp")
    watcher = ExpiryWatcher(client, "exp", refresh_s=0.2).start()
    try:
        assert len(watcher.nodes) == 3
        sessions = [f"a{i}" for i in range(30)]
        for sid in sessions:
            store.append_turn(sid, {"n": 1})
        nodes = {client.get_node_from_key(store.keys(sid)[0]).name for sid in sessions}
        assert len(nodes) == 3, "the sessions live on every primary"
        assert watcher.wait_for(30, timeout_s=30), f"heard {len(watcher.expired)} of 30"
        primary = cluster.nodes[0]
        replica = cluster.replica_for(primary)
        primary.kill()
        assert watcher.wait_for_node(f"127.0.0.1:{replica.port}", timeout_s=30), "follows the promoted replica"
        cluster.wait_for_failover(primary)  # a client made before every node knows would be handed the dead node
        later = [f"b{i}" for i in range(30)]
        after = connect(cluster.url)
        try:
            for sid in later:
                SessionStore(after, LifecyclePolicy(ttl_seconds=1), namespace="exp").append_turn(sid, {"n": 2})
        finally:
            after.close()
        heard = watcher.wait_for(60, timeout_s=30)
        missing = sorted(set(sessions + later) - set(watcher.expired))
        where = {sid: client.get_node_from_key(store.keys(sid)[0]).name for sid in missing}
        assert heard, f"heard {len(watcher.expired)} of 60; missing {where}, watching {watcher.nodes}"
        assert sorted(watcher.expired) == sorted(sessions + later)
    finally:
        watcher.stop()


@pytest.mark.realredis
def test_replica_lag_is_measured_on_every_shard(cluster_with_replicas):
    from statekit.decide.consistency import cluster_replica_lag

    shards = cluster_replica_lag(cluster_with_replicas.url, writes=100)
    replicas = {f"127.0.0.1:{r.port}" for r in cluster_with_replicas.replicas}
    assert len(shards) == 3 and {s["replica"] for s in shards.values()} == replicas
    assert all(s["writes"] == 100 and 0 <= s["stale_fraction"] <= 1 and s["max_ms"] >= s["p50_ms"] > 0
               for s in shards.values())  # fmt: skip


@pytest.mark.realredis
def test_a_shard_without_a_replica_says_so(redis_cluster):
    from statekit.decide.consistency import cluster_replica_lag

    assert all(s == {"replica": None} for s in cluster_replica_lag(redis_cluster.url, writes=10).values())
