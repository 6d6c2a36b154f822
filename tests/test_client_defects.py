"""Regression tests of defects found in the clients `connect` and `connect_async` make:
Sentinel connections that ignored the caller's deadline, asyncio pool limits that failed a
burst instead of waiting (Sentinel and Cluster), and ACL rules with which no user could
connect to a cluster."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from typing import Any

import pytest

from statekit import AccessDenied, LifecyclePolicy, ResilientStore, SessionStore, connect, connect_async
from statekit.aio import AsyncResilientStore, AsyncSessionStore
from statekit.testing import RedisSentinelGroup, start_redis_server


def turn(i: int) -> dict:
    return {"role": "user", "content": f"turn {i}"}


# -- 1. a Sentinel that does not answer costs a call its deadline, not redis-py's retries --

DEADLINE_MS = 100
#: The bound is the feature: a call with a 100 ms deadline that must ask the Sentinel where the
#: primary is (its store's first connection) costs the deadline plus at most 50 ms of margin for
#: the event loop, the fallback and a loaded 2-core machine. Before the fix it cost 15 s frozen
#: and 4.7 s with no Sentinel listening (redis-py's default retries, with backoff).
BOUND_S = 0.150
#: Each measurement is the median of this many calls, each through a store of its own (so each
#: must open its first connection and ask the Sentinel): one call delayed by a busy shared
#: machine does not fail the test, two do.
CALLS = 3


def _blocking_calls(url: str) -> list[tuple[float, Any]]:
    out = []
    for _ in range(CALLS):
        resilient = ResilientStore(SessionStore(connect(url)), timeout_ms=DEADLINE_MS)
        start = time.perf_counter()
        ctx = resilient.load_context("s")
        out.append((time.perf_counter() - start, ctx))
    return out


def _async_calls(url: str) -> list[tuple[float, Any]]:
    async def body() -> list[tuple[float, Any]]:
        out = []
        for _ in range(CALLS):
            resilient = AsyncResilientStore(AsyncSessionStore(connect_async(url)), timeout_ms=DEADLINE_MS)
            start = time.perf_counter()
            ctx = await resilient.load_context("s")
            out.append((time.perf_counter() - start, ctx))
            await resilient.aclose()
        return out

    return asyncio.run(body())


def _calls(url: str, what: str) -> dict[str, tuple[float, list[Any]]]:
    """The median duration and the contexts of `CALLS` calls, blocking and asyncio."""
    calls = {}
    for kind, runs in (("blocking", _blocking_calls(url)), ("asyncio", _async_calls(url))):
        calls[kind] = (statistics.median(elapsed for elapsed, _ in runs), [ctx for _, ctx in runs])
        shown = " ".join(f"{elapsed * 1000:.0f}" for elapsed, _ in runs)
        print(f"{kind}: median {calls[kind][0] * 1000:.0f} ms of {shown} ms ({what})")
    return calls


def _assert_degraded_within_bound(calls: dict[str, tuple[float, list[Any]]], what: str) -> None:
    for kind, (elapsed, contexts) in calls.items():
        assert all(ctx.degraded and ctx.source != "store" for ctx in contexts), kind
        assert elapsed <= BOUND_S, f"{kind}: {elapsed:.3f} s with {what}, over the {DEADLINE_MS} ms deadline"


@pytest.mark.realredis
def test_a_frozen_sentinel_costs_a_call_its_deadline(redis_sentinel_group: RedisSentinelGroup):
    group = redis_sentinel_group
    SessionStore(connect(group.url)).append_turn("s", turn(0))  # the group serves
    with group.sentinels_frozen():
        calls = _calls(group.url, "the Sentinel frozen")
    _assert_degraded_within_bound(calls, "the Sentinel frozen")


@pytest.mark.realredis
def test_no_sentinel_listening_costs_a_call_its_deadline(redis_sentinel_group: RedisSentinelGroup):
    group = redis_sentinel_group
    SessionStore(connect(group.url)).append_turn("s", turn(0))
    group.kill_sentinels()
    _assert_degraded_within_bound(_calls(group.url, "no Sentinel listening"), "no Sentinel listening")


def test_every_sentinel_connection_has_no_retries_and_the_callers_timeouts():
    """Each Sentinel's share of a deadline: the Sentinels are asked in turn, so each gets the
    deadline divided by their number, and with_timeouts makes a new Sentinel manager."""
    from statekit.backends import with_timeouts

    url = "redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc"  # connecting is lazy: nothing is dialled
    options = {"socket_timeout": 0.6, "connect_timeout": 0.3}
    for client in (connect(url, **options), connect_async(url, **options)):
        copy = with_timeouts(client, 0.1)
        for c, timeout in ((client, 0.3), (copy, 0.05)):
            manager = c.connection_pool.sentinel_manager
            assert len(manager.sentinels) == 2
            for sentinel in manager.sentinels:
                kwargs = sentinel.connection_pool.connection_kwargs
                assert kwargs["retry"].get_retries() == 0
                assert kwargs["socket_timeout"] == timeout and kwargs["socket_connect_timeout"] <= timeout
        assert copy.connection_pool.sentinel_manager is not client.connection_pool.sentinel_manager
        assert copy.connection_pool.connection_kwargs["socket_timeout"] == 0.1
        assert type(copy.connection_pool) is type(client.connection_pool)


def test_with_timeouts_keeps_an_asyncio_sentinel_pools_limit_and_wait():
    from statekit.backends import WaitingSentinelConnectionPool, with_timeouts

    client = connect_async("redis+sentinel://127.0.0.1:1/svc", max_connections=3, connect_timeout=0.7)
    # the copy's wait for a connection stays within its deadline (0.1 s), as every pool's does
    for c, wait in ((client, 0.7), (with_timeouts(client, 0.1), 0.1), (with_timeouts(client, 2), 0.7)):
        pool = c.connection_pool
        assert isinstance(pool, WaitingSentinelConnectionPool) and (pool.max_connections, pool.timeout) == (3, wait)
        assert pool.service_name == "svc"


@pytest.mark.realredis
def test_with_several_sentinels_a_frozen_one_leaves_time_to_ask_the_next():
    """Three Sentinels, asked in turn: with the first frozen, a 100 ms call still reaches the
    second within its deadline (each Sentinel gets a third of it); with all frozen, the call
    still costs its deadline, not three."""
    start_redis_server().stop()  # the fixtures' rule: skipped without redis-server, failed in CI
    with RedisSentinelGroup(sentinels=3) as group:
        SessionStore(connect(group.url)).append_turn("s", turn(0))
        with group.sentinels_frozen([0]):
            calls = _calls(group.url, "the first of three frozen")
        for kind, (elapsed, contexts) in calls.items():
            assert all(ctx.source == "store" and ctx.turns == [turn(0)] for ctx in contexts), kind
            assert elapsed <= BOUND_S, kind
        with group.sentinels_frozen():
            calls = _calls(group.url, "three Sentinels frozen")
        _assert_degraded_within_bound(calls, "three Sentinels frozen")


# -- 2. an asyncio pool limit makes a burst wait for a connection, on every backend --------

BURST = 40


async def _burst(client) -> list:
    store = AsyncSessionStore(client, LifecyclePolicy(window_turns=50))
    return await asyncio.gather(
        *(store.append_turn(f"b{i % 4}", turn(i), turn_id=f"t{i}") for i in range(BURST)), return_exceptions=True
    )


def _open_connections(client) -> list[int]:
    """How many connections each pool of `client` holds (one number per cluster node), read off
    redis-py's pools: they count them in no public attribute."""
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:
        return [len(node._connections) for node in nodes.nodes_cache.values()]
    pool = client.connection_pool
    return [len(pool._available_connections) + len(pool._in_use_connections)]


def _check_burst(url: str) -> None:
    async def body():
        # the wait for a connection far above a loaded machine's stalls (1 s, the default, once
        # ran out for 38 of 40 while a cluster client read its slot map beside 4 busy workers):
        # the defect failed a burst at once ("Too many connections"), whatever the wait
        client = connect_async(url, max_connections=2, connect_timeout=10)
        results = await _burst(client)
        opened = _open_connections(client)
        ctx = await AsyncSessionStore(client, LifecyclePolicy(window_turns=50)).load_context("b0")
        await client.aclose()
        return results, opened, ctx

    results, opened, ctx = asyncio.run(body())
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} of {BURST} appends failed: {failures[:3]}"
    assert max(opened) <= 2, f"the limit of 2 connections was passed: {opened}"
    assert len(ctx.turns) == BURST // 4


def test_a_burst_past_the_asyncio_pool_limit_waits_for_a_connection(any_url):
    _check_burst(any_url)


@pytest.mark.realredis
def test_a_burst_past_the_asyncio_sentinel_pool_limit_waits_for_a_connection(redis_sentinel_group):
    _check_burst(redis_sentinel_group.url)


@pytest.mark.realredis
def test_a_resilient_store_over_sentinel_keeps_its_breaker_closed_under_a_burst(redis_sentinel_group):
    async def body():
        client = connect_async(redis_sentinel_group.url, max_connections=2, connect_timeout=5)
        # a deadline far above a loaded machine's stalls (the default 100 ms once ran out for
        # all 40 while the machine ran kernels and a browser): the defect failed a burst at once
        # ("Too many connections"), whatever the deadline
        resilient = AsyncResilientStore(AsyncSessionStore(client, LifecyclePolicy(window_turns=50)), timeout_ms=5000)
        results = await asyncio.gather(
            *(resilient.append_turn(f"b{i % 4}", turn(i), turn_id=f"t{i}") for i in range(BURST))
        )
        state = (resilient.breaker_state, resilient.mode, resilient.buffered)
        await resilient.aclose()
        await client.aclose()
        return results, state

    results, state = asyncio.run(body())
    assert state == ("closed", "normal", 0)
    assert all(isinstance(r, int) for r in results), "every append was stored, none buffered"


def test_when_the_wait_for_a_connection_runs_out_the_error_says_so():
    """The wait is bounded by connect_timeout; then the store says the pool was exhausted."""
    from statekit import StoreUnavailable

    async def body():
        client = connect_async("fakeredis://", max_connections=1, connect_timeout=0.05)
        held = await client.connection_pool.get_connection()  # the only connection, busy
        try:
            with pytest.raises(StoreUnavailable, match=r"no connection of the pool \(max_connections=1\) was free"):
                await AsyncSessionStore(client).append_turn("s", turn(0))
        finally:
            await client.connection_pool.release(held)
        await client.aclose()

    asyncio.run(body())


@pytest.mark.realredis
def test_the_asyncio_cluster_client_waits_and_says_when_it_ran_out(redis_cluster):
    from statekit import StoreUnavailable
    from statekit.backends import backend_kind, with_timeouts

    async def body():
        client = connect_async(redis_cluster.url, max_connections=1, connect_timeout=0.05)
        assert backend_kind(client) == "cluster"
        copy = with_timeouts(client, 0.2)
        assert backend_kind(copy) == "cluster" and type(copy) is type(client)
        assert copy.connection_kwargs["max_connections"] == 1 and copy.connection_kwargs["socket_timeout"] == 0.2
        store = AsyncSessionStore(copy, namespace="pool-wait")  # the cluster is shared: a namespace of its own
        await store.append_turn("s", turn(0))
        async with copy.permit():  # the one permit taken: the next command waits, then gives up
            with pytest.raises(StoreUnavailable, match=r"max_connections=1"):
                await store.append_turn("s", turn(1))
        await copy.aclose()
        await client.aclose()

    asyncio.run(body())


# -- 3. every user statekit.acl prints can connect to a cluster; a refusal names its rule ---


@pytest.fixture
def cluster_user(redis_cluster):
    """A function that applies an `ACL SETUSER` line on every node of the cluster (ACLs are
    per node) and returns the user's cluster URL; the users are deleted afterwards."""
    admins = [node.client() for node in redis_cluster.nodes]
    redis_cluster.flushall()
    made: list[str] = []

    def make(line: str) -> str:
        name = line.split()[2]
        for admin in admins:
            admin.execute_command(*line.split())
        made.append(name)
        return redis_cluster.url.replace("redis+cluster://", f"redis+cluster://{name}:pw@")

    yield make
    for admin in admins:
        for name in made:
            admin.acl_deluser(name)
        admin.close()


def _run_component(component: str, url: str, ns: str) -> None:
    """The basic operation of `component`, as its user, on the cluster at `url`."""
    from statekit.workbook.examples import support_agent_migrations

    policy = LifecyclePolicy(window_turns=2, fold_batch=1, ttl_seconds=1)
    if component == "session_store":
        store = SessionStore(connect(url), policy, namespace=ns)
        for i in range(3):
            store.append_turn("s", turn(i))
        assert store.load_context("s").turns == [turn(1), turn(2)]
        store.update_state("s", lambda s: {"ticket_id": "T-1", "customer": "1"})
        assert store.get_state("s")[1] == 1

        async def body():
            client = connect_async(url)
            astore = AsyncSessionStore(client, policy, namespace=ns)
            await astore.append_turn("a", turn(0))
            ctx = await astore.load_context("a")
            await client.aclose()
            return ctx

        assert asyncio.run(body()).turns == [turn(0)]
    elif component == "resilient_store":
        resilient = ResilientStore(SessionStore(connect(url), policy, namespace=ns), timeout_ms=1000)
        resilient.append_turn("r", turn(0))
        ctx = resilient.load_context("r")
        assert ctx.source == "store" and ctx.turns == [turn(0)]
    elif component == "batch_migration":
        from statekit.migrate import migrate_namespace

        assert migrate_namespace(connect(url), ns, support_agent_migrations).failed == 0
    elif component == "health_scan":
        from statekit.observe import health_scan

        assert health_scan(connect(url), ns).sessions >= 1
    elif component == "calibrate":
        from statekit.observe.calibrate import measure

        assert measure(connect(url), ns, ttl_seconds=3600, finished_after_s=60).sessions >= 1
    elif component == "expiry_watcher":
        from statekit.observe import ExpiryWatcher

        watcher = ExpiryWatcher(connect(url), ns).start()
        try:
            assert len(watcher.nodes) == 3
        finally:
            watcher.stop()
    elif component == "audit_log":
        from statekit.observe import AuditLog

        client = connect(url)
        audit = AuditLog(client, stream=f"{ns}:audit", flush_every=1)
        audit.on_operation("append_turn", "s", 0.001, None)
        audit.flush()
        assert len(client.xrange(f"{ns}:audit")) == 1
    elif component == "langgraph_saver":
        from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata

        from statekit.langgraph import StatekitSaver

        saver = StatekitSaver.from_url(url, namespace=ns, keep_last=2)
        config = generate_config("t")
        for i in range(3):
            cp = generate_checkpoint(channel_values={"n": i}, channel_versions={"n": str(i + 1)})
            config = saver.put(config, cp, generate_metadata(step=i), {"n": str(i + 1)})
        assert len(list(saver.list(generate_config("t")))) == 2
    else:  # pragma: no cover - a component added to statekit.acl needs a case here
        raise AssertionError(f"no basic operation for {component}")


@pytest.mark.realredis
def test_each_components_printed_user_runs_it_on_a_cluster(cluster_user):
    from statekit.acl import COMPONENTS, setuser

    for component in COMPONENTS:  # in order: the store writes what the later ones read
        url = cluster_user(setuser(f"u-{component}", [component], "app", password="pw"))
        _run_component(component, url, "app")


@pytest.mark.realredis
@pytest.mark.parametrize("rule", ["+cluster|slots", "+command"])
def test_a_cluster_user_refused_what_the_client_sends_at_start_is_told_the_rule(cluster_user, rule):
    from statekit.acl import setuser

    line = setuser(f"no-{rule[1:].replace('|', '-')}", ["session_store"], "app", password="pw")
    assert f" {rule}" in line
    url = cluster_user(line.replace(f" {rule}", ""))
    with pytest.raises(AccessDenied, match=f"add {re.escape(rule)} to the user"):
        connect(url)

    async def body():
        client = connect_async(url)
        try:
            with pytest.raises(AccessDenied, match=f"add {re.escape(rule)} to the user"):
                await AsyncSessionStore(client).append_turn("s", turn(0))
            with pytest.raises(AccessDenied, match=f"add {re.escape(rule)} to the user"):
                await client.ping()
        finally:
            await client.aclose()

    asyncio.run(body())
