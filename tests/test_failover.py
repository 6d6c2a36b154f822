"""Failover drills on real processes: a cluster of three primaries with a replica each."""

from __future__ import annotations

import pytest

from statekit.testing import RedisClusterServers, lost_writes_drill, start_redis_server, store_failover_drill


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
    those 30 were never acknowledged (WAIT returned 0), and nothing acknowledged is lost."""
    figures = lost_writes_drill(cluster_with_replicas, wait_replicas=wait_replicas, writes=300, lagging=30)
    print(figures)
    if wait_replicas:
        assert (figures["acknowledged"], figures["lost"]) == (270, 0)
    else:
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
