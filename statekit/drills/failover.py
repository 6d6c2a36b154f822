"""Failover drills on a cluster with replicas: acknowledged writes lost with and without
`WAIT 1`, and a `ResilientStore` through a failover (`statekit review --failover-drill`)."""

from __future__ import annotations

import os
import time
from typing import Any

from statekit.testing.servers import RedisClusterServers


def lost_writes_drill(
    cluster: RedisClusterServers, *, wait_replicas: int, writes: int = 300, lagging: int = 30, wait_timeout_ms: int = 50
) -> dict[str, Any]:
    """Kill a primary whose replica is behind, and count the acknowledged writes the
    promoted replica does not have.

    Writes go to one key of one shard on one connection, each followed, with
    `wait_replicas` > 0, by `WAIT wait_replicas wait_timeout_ms` on that connection (a write
    counts as acknowledged only if WAIT confirms it reached that many replicas). The replica
    is cut off for the last `lagging` writes (SIGSTOP, and its replication link closed: a
    partitioned replica); then the primary is killed (SIGKILL),
    the replica thawed, and the cluster promotes it. Returns the figures: writes sent,
    acknowledged (split into those written before the cut and while it), lost, and seconds
    from the kill to the promotion. On a loaded machine a write before the cut can still miss
    its `wait_timeout_ms` (`unconfirmed_before_cut` counts them: not acknowledged, though the
    replica has them, as the catch-up WAIT before the cut shows). `cluster` needs a replica per
    primary and is left with one primary fewer. Runs on real processes only.
    """
    import redis

    tag = f"drill-{os.urandom(4).hex()}"
    key = f"{tag}:{{{tag}}}:log"
    probe = redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port, socket_timeout=5)
    slot = int(probe.execute_command("CLUSTER", "KEYSLOT", key))
    probe.close()
    primary = cluster.owner(slot)
    replica = cluster.replica_for(primary)
    conn = redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=10)
    acknowledged: list[int] = []

    def write(i: int) -> None:
        pipe = conn.pipeline(transaction=False)
        pipe.rpush(key, i)
        if wait_replicas:
            pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms)
        replies = pipe.execute()
        if not wait_replicas or replies[1] >= wait_replicas:
            acknowledged.append(i)

    for i in range(writes - lagging):
        write(i)
    # the replica holds everything so far (on a loaded machine it could still be behind), so it
    # is behind by exactly the `lagging` writes that follow
    if conn.execute_command("WAIT", 1, 10_000) < 1:
        raise RuntimeError("the replica did not catch up within 10 s before the drill")
    replica.pause()
    # and cut its link: a frozen replica would still find the stream in its socket buffer on
    # waking, so the primary's writes from here on stay on the primary (a partitioned replica)
    admin = redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=5)
    admin.client_kill_filter(_type="replica")
    admin.close()
    try:
        for i in range(writes - lagging, writes):
            write(i)
        conn.close()
        killed = time.monotonic()
        primary.kill()
    finally:
        replica.resume()
    promoted = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=5)
    try:
        while promoted.info("replication").get("role") != "master":
            if time.monotonic() - killed > 60:
                raise RuntimeError("the replica was not promoted within 60 s")
            time.sleep(0.02)
        failover_s = time.monotonic() - killed
        present = {int(v) for v in promoted.lrange(key, 0, -1)}
    finally:
        promoted.close()
    lost = [i for i in acknowledged if i not in present]
    cut_at = writes - lagging
    before_cut = sum(1 for i in acknowledged if i < cut_at)
    return {
        "wait_replicas": wait_replicas,
        "writes_sent": writes,
        "acknowledged": len(acknowledged),
        "acknowledged_while_cut": len(acknowledged) - before_cut,
        "unconfirmed_before_cut": cut_at - before_cut,
        "lost": len(lost),
        "failover_s": round(failover_s, 2),
    }


def store_failover_drill(
    cluster: RedisClusterServers, *, turns_before: int = 50, turns_during: int = 20
) -> dict[str, Any]:
    """Kill the primary of a session's shard under a `ResilientStore` and let the cluster fail
    over: the store degrades (reads from its cache, appends buffered in order), then recovers
    on its own once the replica is promoted. Returns the figures: turns acknowledged before
    the kill and found afterwards, turns buffered and replayed, seconds from the kill to the
    promotion and to the store being normal with its buffer empty."""
    from statekit.backends import connect
    from statekit.lifecycle import LifecyclePolicy
    from statekit.resilience.store import ResilientStore
    from statekit.store.blocking import SessionStore

    store = SessionStore(connect(cluster.url), LifecyclePolicy(window_turns=1000, max_bytes=1 << 20))
    resilient = ResilientStore(store, timeout_ms=200, fail_max=2, reset_timeout_s=0.5)
    session = f"drill-{os.urandom(4).hex()}"
    for i in range(turns_before):
        resilient.append_turn(session, {"n": i}, turn_id=f"t{i}")
    slot = store.client.keyslot(store.keys(session)[0])
    primary = cluster.owner(slot)
    replica = cluster.replica_for(primary)
    killed = time.monotonic()
    primary.kill()
    for i in range(turns_before, turns_before + turns_during):
        resilient.append_turn(session, {"n": i}, turn_id=f"t{i}")
    degraded = resilient.mode == "degraded"
    buffered = resilient.buffered
    left = resilient.drain(timeout_s=60)
    recovered_s = time.monotonic() - killed
    ctx = resilient.load_context(session)
    promoted = cluster.owner(slot) is replica
    stored = set(ctx.turn_ids)
    return {
        "turns_before_kill": turns_before,
        "lost_before_kill": sum(f"t{i}" not in stored for i in range(turns_before)),
        "degraded_during_outage": degraded,
        "buffered": buffered,
        "replayed": resilient.stats.writes_replayed,
        "lost_from_buffer": sum(f"t{i}" not in stored for i in range(turns_before, turns_before + turns_during)),
        "still_buffered": left,
        "replica_promoted": promoted,
        "recovered_s": round(recovered_s, 2),
        "mode_after": resilient.mode,
    }


def failover_drills(writes: int = 300, lagging: int = 30) -> dict[str, Any]:
    """The failover drills a design review reports, each on a cluster of its own (three
    primaries with a replica each, started on loopback and stopped by their pids): lost
    acknowledged writes without WAIT and with WAIT 1, and a ResilientStore through a
    failover. Needs redis-server on this machine."""
    import datetime as dt

    import redis

    figures: dict[str, Any] = {"measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    for wait_replicas in (0, 1):
        with RedisClusterServers(3, replicas=1, node_timeout_ms=1000) as cluster:
            probe = redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port, socket_timeout=5)
            version = probe.info("server")["redis_version"]
            probe.close()
            figures[f"wait_{wait_replicas}"] = lost_writes_drill(
                cluster, wait_replicas=wait_replicas, writes=writes, lagging=lagging
            )
    with RedisClusterServers(3, replicas=1, node_timeout_ms=1000) as cluster:
        figures["store"] = store_failover_drill(cluster)
    figures["setup"] = f"Redis {version} Cluster, 3 primaries with a replica each, cluster-node-timeout 1000 ms"
    return figures
