"""Batch operations on every node of a cluster: migration, readability, health, through a reshard."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from statekit import Migrations, SessionStore, connect
from statekit.keys import key_pattern
from statekit.migrate import migrate_namespace, readable_by, version_census
from statekit.observe import health_scan
from statekit.walk import Walker
from statekit.workbook.examples import SupportAgentStateV3, support_agent_migrations


def _write_v1(url: str, namespace: str, n: int) -> None:
    """n sessions whose state was written by v1 code, from 8 threads."""
    v1 = SessionStore(connect(url), namespace=namespace, migrations=Migrations(current=1))

    def write(i: int) -> None:
        v1.update_state(f"s{i}", lambda s, i=i: {"ticket_id": f"T-{i}", "customer": f"C-{i}"})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(n)))


def test_a_walk_on_one_server_is_one_node_and_resumes_from_its_cursor():
    client = connect("fakeredis://")
    for i in range(50):
        client.set(f"ns:{{s{i}}}:state", b"x")
    walker = Walker(client, key_pattern("ns", "state"), batch=10)
    first = next(iter(walker))
    assert first.node == "server" and walker.cursors["server"] > 0
    rest = Walker(client, key_pattern("ns", "state"), batch=10, cursors=dict(walker.cursors))
    seen = set(first.keys) | {k for b in rest for k in b.keys}
    assert len(seen) == 50 and rest.finished


@pytest.mark.realredis
def test_every_batch_operation_sees_every_node_of_a_cluster(redis_cluster):
    client = connect(redis_cluster.url)
    client.flushall(target_nodes="primaries")
    _write_v1(redis_cluster.url, "app", 300)
    walker = Walker(client, key_pattern("app", "state"), batch=50)
    per_node = {}
    for batch in walker:
        per_node[batch.node] = per_node.get(batch.node, 0) + len(batch.keys)
    assert len(per_node) == 3 and sum(per_node.values()) == 300 and min(per_node.values()) > 50
    assert version_census(client, "app", support_agent_migrations) == {1: 300}
    before = readable_by(client, "app", SupportAgentStateV3)
    assert (before["sessions"], before["unreadable"]) == (300, 300)
    report = migrate_namespace(client, "app", support_agent_migrations, batch=50)
    assert (report.scanned, report.migrated, report.failed, report.conflicts) == (300, 300, 0, 0)
    assert readable_by(client, "app", SupportAgentStateV3) == {
        "sessions": 300, "readable": 300, "unreadable": 0, "errors": []
    }  # fmt: skip
    health = health_scan(client, "app")
    assert health.sessions == 300 and health.keys_without_ttl == []


@pytest.mark.realredis
def test_ten_thousand_sessions_migrate_once_through_a_reshard_interrupted_and_resumed(fresh_redis_cluster, tmp_path):
    """10,000 v1 sessions on three primaries. The migration is interrupted after 4,000; while
    it runs, 400 slots move from one primary to another and one more slot is left half-moved
    (its keys answer ASK); the resumed run finishes. Every session ends at v3, migrated
    exactly once, with its TTL; the health scan counts all 10,000 and finds a key made
    persistent on each node."""
    cluster = fresh_redis_cluster
    client = connect(cluster.url, socket_timeout=10)
    n = 10_000
    _write_v1(cluster.url, "big", n)
    state_keys = [f"big:{{s{i}}}:state" for i in range(n)]
    ttl_before = {k: client.pttl(k) for k in state_keys[:200]}
    source, target = cluster.nodes[0], cluster.nodes[1]
    assert cluster.owner(100) is source
    direct = source.client()
    half_moved = 100  # a slot of the source that holds keys
    while not direct.execute_command("CLUSTER", "COUNTKEYSINSLOT", half_moved):
        half_moved += 1
    moves = []

    def reshard_mid_run(_keys: int) -> None:
        moves.append(_keys)
        if len(moves) == 3:  # 400 slots of the source move to the target, keys and all
            for slot in range(half_moved + 1, half_moved + 401):
                cluster.move_slot(slot, target)
        if len(moves) == 5:  # one slot is left half-way: its moved keys answer ASK
            assert cluster.move_slot(half_moved, target, stop_after_keys=1) >= 1

    checkpoint = tmp_path / "migrate.json"
    first = migrate_namespace(
        client, "big", support_agent_migrations, batch=500, checkpoint=checkpoint, progress=reshard_mid_run,
        stop_after=4_000,
    )  # fmt: skip
    assert not first.finished and 4_000 <= first.scanned < n
    assert -1 in first.cursors.values() and len(first.cursors) >= 2, "a cursor per primary walked so far"
    cluster.move_slot(half_moved, target)  # the reshard completes between the two runs
    second = migrate_namespace(client, "big", support_agent_migrations, batch=500, checkpoint=checkpoint)
    assert second.finished and second.passes >= 2, "the slot map changed, so the walk ran again"
    assert (second.migrated, second.failed, second.conflicts) == (n, 0, 0), "each session migrated exactly once"
    assert version_census(client, "big", support_agent_migrations) == {3: n}
    for key, before in ttl_before.items():
        assert 0 < client.pttl(key) <= before, f"{key} kept its TTL"
    assert readable_by(client, "big", SupportAgentStateV3)["readable"] == n
    persistent = []
    for node in client.get_primaries():
        key = client.get_redis_connection(node).scan(0, match=key_pattern("big", "state"), count=1000)[1][0]
        client.persist(key)
        persistent.append(key.decode())
    health = health_scan(client, "big")
    assert health.sessions == n
    assert sorted(health.keys_without_ttl) == sorted(persistent)


@pytest.mark.realredis
def test_the_walk_names_each_node_as_it_reaches_it(redis_cluster):
    client = connect(redis_cluster.url)
    client.flushall(target_nodes="primaries")
    _write_v1(redis_cluster.url, "nodes", 30)
    reached = []
    migrate_namespace(client, "nodes", support_agent_migrations, on_node=reached.append)
    health_scan(client, "nodes", on_node=reached.append)
    primaries = sorted(n.name for n in client.get_primaries())
    assert reached == primaries + primaries
