"""statekit.aio: the asyncio store and resilient store, on fakeredis, a real server and a cluster."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from statekit import (
    Context,
    CorruptStateError,
    InvalidInput,
    LifecyclePolicy,
    SessionStore,
    StateTooLarge,
    StoreListener,
    StoreUnavailable,
    connect,
)
from statekit.aio import AsyncResilientStore, AsyncSessionStore, check_reachable_async, connect_async
from statekit.errors import ConnectionURLError
from statekit.resilience.buffer import _Pending
from statekit.testing import FakeClock, count_round_trips


def turn(i: int) -> dict:
    return {"role": "user", "content": f"turn {i}"}


class Recorder(StoreListener):
    def __init__(self) -> None:
        self.ops: list[tuple[str, str, dict, BaseException | None]] = []
        self.events: list[tuple[str, str]] = []

    def on_operation_detail(self, op, session_id, seconds, error, detail):
        self.ops.append((op, session_id, dict(detail), error))

    def on_event(self, kind, session_id, info):
        self.events.append((kind, session_id))


def run(coro):
    return asyncio.run(coro)


# -- the same store, awaited ---------------------------------------------------------------


def test_async_and_blocking_stores_read_each_others_sessions(any_url):
    policy = LifecyclePolicy(window_turns=2, fold_batch=1)

    async def body():
        client = connect_async(any_url)
        store = AsyncSessionStore(client, policy)
        for i in range(5):
            await store.append_turn("s", turn(i), turn_id=f"t{i}")
        assert await store.append_turn("s", turn(4), turn_id="t4") > 0  # a replay: stored once
        await store.update_state("s", lambda s: {**s, "n": 1})
        ctx = await store.load_context("s")
        await client.aclose()
        return ctx

    ctx = run(body())
    blocking = SessionStore(connect(any_url), policy)
    assert blocking.load_context("s") == ctx
    assert ctx.turns == [turn(3), turn(4)] and ctx.turn_ids == ["t3", "t4"]
    assert ctx.summary.splitlines() == ["user: turn 0", "user: turn 1", "user: turn 2"]
    assert blocking.get_state("s") == ({"n": 1}, 1)
    blocking.append_turn("s", turn(5), turn_id="t5")

    async def read_back():
        client = connect_async(any_url)
        store = AsyncSessionStore(client, policy)
        ctx = await store.load_context("s")
        state = await store.get_state("s")
        deleted = await store.delete("s"), await store.delete("s")
        await client.aclose()
        return ctx, state, deleted

    ctx2, state, deleted = run(read_back())
    assert ctx2.turns == [turn(4), turn(5)] and state == ({"n": 1}, 1) and deleted == (True, False)


def test_one_round_trip_per_append_and_per_load(any_url):
    """Counted on the connections themselves (every redis.asyncio send), after the scripts
    are loaded: one per append, one per load; the listener's own count agrees."""
    recorder = Recorder()

    async def body():
        client = connect_async(any_url)
        store = AsyncSessionStore(client, LifecyclePolicy(window_turns=50), listeners=[recorder])
        await store.append_turn("warm", turn(0))  # loads the script
        await store.load_context("warm")
        with count_round_trips() as appends:
            for i in range(20):
                await store.append_turn("s", turn(i))
        with count_round_trips() as loads:
            for _ in range(20):
                await store.load_context("s")
        await client.aclose()
        return appends.count, loads.count

    appends, loads = run(body())
    assert (appends, loads) == (20, 20)
    assert [d["round_trips"] for op, sid, d, _ in recorder.ops if sid == "s"] == [1] * 40


def test_concurrent_tasks_keep_their_own_round_trip_counts():
    """200 tasks in one loop: each operation's listener detail is its own, not a neighbour's."""
    recorder = Recorder()

    async def body():
        client = connect_async("fakeredis://aio-concurrent")
        store = AsyncSessionStore(client, listeners=[recorder])
        await store.load_context(await store.append_turn("warm", turn(0)) and "warm")  # scripts loaded
        recorder.ops.clear()
        await asyncio.gather(*(store.append_turn(f"s{i}", turn(i)) for i in range(200)))
        contexts = await asyncio.gather(*(store.load_context(f"s{i}") for i in range(200)))
        return contexts

    contexts = run(body())
    assert [c.turns for c in contexts] == [[turn(i)] for i in range(200)]
    details = [d for _, _, d, _ in recorder.ops]
    assert len(details) == 400
    assert {d["round_trips"] for d in details} == {1}


def test_async_summarizer_is_awaited_and_a_blocking_store_refuses_it_clearly():
    class AsyncSummarizer:
        label = "Model summary"

        async def __call__(self, summary, turns, budget):
            await asyncio.sleep(0)
            return (summary + " " + " ".join(t["content"] for t in turns)).strip()

    policy = LifecyclePolicy(window_turns=1, fold_batch=1, summarizer=AsyncSummarizer())

    async def body():
        store = AsyncSessionStore(connect_async("fakeredis://aio-summary"), policy)
        for i in range(3):
            await store.append_turn("s", turn(i))
        return await store.load_context("s")

    ctx = run(body())
    assert ctx.summary == "turn 0 turn 1" and ctx.summary_label == "Model summary"
    blocking = SessionStore(connect("fakeredis://"), policy)
    blocking.append_turn("s", turn(0))
    with pytest.raises(InvalidInput, match="AsyncSessionStore"):
        blocking.append_turn("s", turn(1))
    assert blocking.load_context("s").pending == [turn(0)], "the turn that landed stays parked, not lost"


def test_update_state_takes_a_coroutine_function():
    async def body():
        store = AsyncSessionStore(connect_async("fakeredis://aio-update"))

        async def bump(state):
            await asyncio.sleep(0)
            return {"n": state.get("n", 0) + 1}

        await asyncio.gather(*(store.update_state("s", bump) for _ in range(20)))
        return await store.get_state("s")

    state, version = run(body())
    assert state == {"n": 20} and version == 20


# -- errors: the blocking store's, awaited --------------------------------------------------


def test_bad_input_and_oversized_state_raise_and_write_nothing(any_url):
    async def body():
        client = connect_async(any_url)
        store = AsyncSessionStore(client, LifecyclePolicy(max_bytes=2_000, summary_max_bytes=500))
        await store.append_turn("s", turn(0))
        before = await store.load_context("s")
        with count_round_trips() as trips:
            with pytest.raises(StateTooLarge):
                await store.append_turn("s", {"role": "user", "content": "x" * 5_000})
            with pytest.raises(InvalidInput):
                await store.append_turn("bad{id}", turn(1))
            with pytest.raises(InvalidInput):
                await store.append_turn("s", turn(1), turn_id="has space")
        assert await store.load_context("s") == before
        with pytest.raises(StateTooLarge):  # over the cap with what the session holds: refused by the script
            for i in range(40):
                before = await store.load_context("s")
                await store.append_turn("s", {"role": "user", "content": "y" * 100, "i": i})
        after = await store.load_context("s")
        await client.aclose()
        return trips.count, before, after

    trips, before, after = run(body())
    assert trips == 0, "refused before anything was sent"
    assert after == before and after.bytes <= 2_000


def test_a_key_of_the_wrong_type_is_corrupt_state_naming_it(any_url):
    async def body():
        client = connect_async(any_url)
        store = AsyncSessionStore(client)
        await client.set(store.keys("s")[1], b"not a list")
        with pytest.raises(CorruptStateError, match=r"log is a string where a list belongs"):
            await store.append_turn("s", turn(0))
        with pytest.raises(CorruptStateError):
            await store.load_context("s")
        assert await client.get(store.keys("s")[1]) == b"not a list"
        await store.append_turn("other", turn(0))  # the connection is still usable
        await client.aclose()

    run(body())


def test_clients_of_the_wrong_kind_are_refused_with_the_class_to_use():
    with pytest.raises(InvalidInput, match="AsyncSessionStore"):
        SessionStore(connect_async("fakeredis://"))
    with pytest.raises(InvalidInput, match="connect_async"):
        AsyncSessionStore(connect("fakeredis://"))
    with pytest.raises(InvalidInput, match="AsyncResilientStore"):
        from statekit import ResilientStore

        ResilientStore(AsyncSessionStore(connect_async("fakeredis://")))
    with pytest.raises(InvalidInput, match="AsyncSessionStore"):
        AsyncResilientStore(SessionStore(connect("fakeredis://")))
    with pytest.raises(InvalidInput, match="decode_responses"):
        AsyncSessionStore(connect_async("fakeredis://", decode_responses=True))


@pytest.mark.parametrize("url", ["redis://", "nope://x", "redis://h:99999", "redis+cluster://", "redis://h/db"])
def test_connect_async_refuses_the_urls_connect_refuses(url):
    with pytest.raises(ConnectionURLError) as sync_error:
        connect(url)
    with pytest.raises(ConnectionURLError) as async_error:
        connect_async(url)
    assert str(async_error.value) == str(sync_error.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_is_store_unavailable():
    port = _closed_port()

    async def body():
        client = connect_async(f"redis://127.0.0.1:{port}", connect_timeout=0.5)
        with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
            await check_reachable_async(client, f"redis://127.0.0.1:{port}")
        with pytest.raises(StoreUnavailable, match="append_turn of session 's'"):
            await AsyncSessionStore(client).append_turn("s", turn(0))

    run(body())


# -- the resilient store under asyncio ------------------------------------------------------


class _Silent:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"redis://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.sock.close()


def test_a_hung_redis_costs_a_coroutine_the_deadline_and_never_blocks_the_loop():
    """The bound is the feature: a 100 ms deadline, checked with a 10x margin (1 s) for a
    loaded machine; redis-py's defaults would wait for the socket forever. The loop is shown
    free by order, not time: a task started after the hung call finishes before it."""

    async def body(url):
        store = AsyncResilientStore(AsyncSessionStore(connect_async(url)), timeout_ms=100, fail_max=3)
        order: list[str] = []

        async def hung_read():
            start = time.perf_counter()
            ctx = await store.load_context("s")
            order.append("read")
            return ctx, time.perf_counter() - start

        async def other_request():
            await asyncio.sleep(0)
            order.append("other request")

        (ctx, elapsed), _ = await asyncio.gather(hung_read(), other_request())
        return ctx, elapsed, order, store

    with _Silent() as url:
        ctx, elapsed, order, store = run(body(url))
    assert order == ["other request", "read"]
    assert ctx.degraded and ctx.source == "default"
    assert elapsed < 1.0, f"a 100 ms deadline took {elapsed:.2f} s"
    assert store.mode == "degraded" and store.stats.store_failures == 1


@pytest.mark.realredis
def test_async_resilient_store_buffers_through_an_outage_and_drains_after(fresh_redis_server):
    """Kill the server: reads fall back to the cache, appends are buffered in order, the
    breaker opens; restart it: `await drain()` replays every turn once, on a fake clock."""
    clock = FakeClock()
    events: list[str] = []

    class Events(StoreListener):
        def on_event(self, kind, session_id, info):
            events.append(kind)

    async def body():
        store = AsyncResilientStore(
            AsyncSessionStore(connect_async(fresh_redis_server.url), LifecyclePolicy(window_turns=10)),
            timeout_ms=200,
            fail_max=2,
            reset_timeout_s=5,
            clock=clock,
            listeners=[Events()],
        )
        await store.append_turn("s", turn(0), turn_id="t0")
        assert (await store.load_context("s")).source == "store"
        fresh_redis_server.kill()
        for i in range(1, 4):
            assert await store.append_turn("s", turn(i), turn_id=f"t{i}") is None
        cached = await store.load_context("s")
        assert cached.source == "cache" and cached.turns == [turn(i) for i in range(4)]
        assert store.breaker_state == "open" and store.buffered == 3
        assert await store.drain(1.0) == 3, "still down: nothing replayed, nothing lost"
        fresh_redis_server.restart()
        assert await store.drain(30.0) == 0
        ctx = await store.load_context("s")
        await store.aclose()
        return store, ctx

    store, ctx = run(body())
    assert ctx.source == "store" and ctx.turns == [turn(1), turn(2), turn(3)]  # t0 died with the server
    assert ctx.turn_ids == ["t1", "t2", "t3"]
    assert store.mode == "normal" and store.stats.writes_replayed == 3
    assert "degraded" in events and "recovered" in events and "replayed" in events


def test_only_one_flush_replays_a_buffered_update_even_with_concurrent_callers():
    """Two coroutines that both find writes buffered must not both replay an update (its
    function would run twice)."""
    calls: list[int] = []

    async def body():
        store = AsyncResilientStore(AsyncSessionStore(connect_async("fakeredis://aio-flush")), timeout_ms=200)

        def bump(state):
            calls.append(1)
            return {"n": state.get("n", 0) + 1}

        store._enqueue(_Pending("state", "s", fn=bump))
        await asyncio.gather(*(store.flush() for _ in range(5)))
        return await store.get_state("s")

    state, _ = run(body())
    assert state == {"n": 1} and len(calls) == 1


def test_async_resilient_store_serves_a_context_object_for_every_source():
    async def body():
        store = AsyncResilientStore(
            AsyncSessionStore(connect_async("fakeredis://aio-ctx")),
            fallback=lambda sid: {"summary": f"default for {sid}"},
        )
        await store.append_turn("s", turn(0))
        return await store.load_context("s"), store._fallback_context("unseen")

    live, default = run(body())
    assert isinstance(live, Context) and live.source == "store"
    assert default.source == "default" and default.summary == "default for unseen"
