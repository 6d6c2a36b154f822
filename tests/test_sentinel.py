"""Redis Sentinel: the `redis+sentinel://` URL form, and a store that follows a failover."""

from __future__ import annotations

import asyncio
import time

import pytest

from statekit import ConnectionURLError, LifecyclePolicy, ResilientStore, SessionStore, connect, connect_async
from statekit.aio import AsyncSessionStore
from statekit.backends import redact_url, with_timeouts
from statekit.testing import RedisSentinelGroup


def turn(i: int) -> dict:
    return {"role": "user", "content": f"turn {i}"}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names the service"),
        ("redis+sentinel://127.0.0.1:26379/a/b/c", "names the service"),
        ("redis+sentinel://127.0.0.1:26379/svc/x", "database 'x' is not a number"),
        ("redis+sentinel://127.0.0.1/svc", "needs host:port"),
        ("redis+sentinel://u:secret@127.0.0.1:notaport/svc", "not a number"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong_and_hide_the_password(url, why):
    for make in (connect, connect_async):
        with pytest.raises(ConnectionURLError, match=why) as error:
            make(url)
        assert "secret" not in str(error.value) and "redis+sentinel://" in str(error.value)


def test_a_sentinel_url_is_redacted_like_any_other():
    assert (
        redact_url("redis+sentinel://app:secret@h1:26379,h2:26379/svc")
        == "redis+sentinel://app:***@h1:26379,h2:26379/svc"
    )


@pytest.mark.realredis
def test_a_sentinel_port_another_group_holds_is_never_taken_for_our_own(redis_sentinel_group, monkeypatch):
    # Another group's Sentinel (same service name) answers on the port chosen for ours: ours
    # fails to bind and starts again on a fresh port; the group never names the other one.
    from statekit.testing import servers

    other = redis_sentinel_group
    real, handed = servers._free_port, []

    def first_the_taken_one(cluster: bool = False) -> int:
        port = other.ports[0] if not handed else real(cluster)
        handed.append(port)
        return port

    group = RedisSentinelGroup()
    monkeypatch.setattr(servers, "_free_port", first_the_taken_one)
    with group:
        assert handed[0] == other.ports[0] and group.ports[0] != other.ports[0]
        assert group.primary_port() == group.pair.primary.port != other.pair.primary.port


@pytest.mark.realredis
def test_a_sentinel_port_held_by_a_silent_listener_is_left_for_a_fresh_one(monkeypatch):
    # a port that accepts and never answers: ours fails to bind it and starts again elsewhere,
    # without the look at it raising a timeout (and leaving the group's processes running)
    import socket

    from statekit.testing import servers

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    taken = silent.getsockname()[1]
    real, handed = servers._free_port, []

    def first_the_taken_one(cluster: bool = False) -> int:
        port = taken if not handed else real(cluster)
        handed.append(port)
        return port

    group = RedisSentinelGroup()
    monkeypatch.setattr(servers, "_free_port", first_the_taken_one)
    try:
        with group:
            assert handed[0] == taken and group.ports[0] != taken
            assert group.primary_port() == group.pair.primary.port
    finally:
        silent.close()


@pytest.mark.realredis
def test_blocking_and_asyncio_stores_run_through_sentinel(redis_sentinel_group: RedisSentinelGroup):
    group = redis_sentinel_group
    store = SessionStore(connect(group.url), LifecyclePolicy(window_turns=3))
    store.append_turn("s", turn(0))
    assert store.client.connection_pool.service_name == "statekit"

    async def body():
        client = connect_async(group.url)
        astore = AsyncSessionStore(client, LifecyclePolicy(window_turns=3))
        await astore.append_turn("s", turn(1))
        ctx = await astore.load_context("s")
        await client.aclose()
        return ctx

    assert run(body()).turns == [turn(0), turn(1)]
    # a ResilientStore's own client keeps the Sentinel pool: the same service, its own timeouts
    copy = with_timeouts(store.client, 0.2)
    assert type(copy.connection_pool) is type(store.client.connection_pool)
    assert copy.connection_pool.service_name == "statekit"
    assert copy.connection_pool.connection_kwargs["socket_timeout"] == 0.2
    assert ResilientStore(store, timeout_ms=200).load_context("s").turns == [turn(0), turn(1)]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.realredis
def test_the_store_follows_a_sentinel_failover_and_loses_nothing_buffered(redis_sentinel_group: RedisSentinelGroup):
    """Kill the primary under a ResilientStore: it degrades and buffers; Sentinel promotes the
    replica; the store answers again within its reset timeout after the promotion (checked
    with a stated margin of 2 s for a loaded machine) and every buffered turn is stored once."""
    group = redis_sentinel_group
    reset_timeout_s = 1.0
    store = SessionStore(connect(group.url), LifecyclePolicy(window_turns=50))
    resilient = ResilientStore(store, timeout_ms=200, fail_max=2, reset_timeout_s=reset_timeout_s)
    for i in range(3):
        resilient.append_turn("s", turn(i), turn_id=f"t{i}")
    primary = connect(f"redis://127.0.0.1:{group.primary_port()}")
    assert primary.wait(1, 5000) == 1, "the turns before the failover reached the replica"
    killed_at = time.monotonic()
    old = group.kill_primary()
    for i in range(3, 8):  # the outage: buffered in order
        assert resilient.append_turn("s", turn(i), turn_id=f"t{i}") is None
    assert resilient.mode == "degraded" and resilient.buffered == 5
    new = group.wait_for_failover(old)
    promoted_at = time.monotonic()
    assert resilient.drain(timeout_s=30) == 0
    answered_at = time.monotonic()
    ctx = resilient.load_context("s")
    assert ctx.source == "store" and ctx.turn_ids == [f"t{i}" for i in range(8)]
    assert ctx.turns == [turn(i) for i in range(8)]
    assert resilient.mode == "normal" and resilient.stats.writes_replayed == 5
    assert connect(f"redis://127.0.0.1:{new}").info("replication")["role"] == "master"
    failover_s, back_s = promoted_at - killed_at, answered_at - promoted_at
    print(f"failover took {failover_s:.2f} s; the store answered {back_s:.2f} s after the promotion")
    assert back_s <= reset_timeout_s + 2.0
