"""StatekitSaver: LangGraph's own conformance suite, a real graph, TTLs, bounds and bad input."""

from __future__ import annotations

import asyncio
import datetime as dt
import operator
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES  # noqa: E402
from langgraph.checkpoint.conformance.spec import (  # noqa: E402
    test_copy_thread,
    test_delete_for_runs,
    test_delete_thread,
    test_get_tuple,
    test_list,
    test_prune,
    test_put,
    test_put_writes,
)
from langgraph.checkpoint.conformance.test_utils import (  # noqa: E402
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.types import Command, interrupt  # noqa: E402

from statekit import CorruptStateError, InvalidInput, StateTooLarge, StoreUnavailable, connect  # noqa: E402
from statekit.errors import ConnectionURLError  # noqa: E402
from statekit.langgraph import StatekitSaver, ThreadPolicy  # noqa: E402
from statekit.testing import count_round_trips  # noqa: E402

#: How many tests LangGraph's suite has per capability: every one must have run and passed.
SUITE = {
    "put": test_put.ALL_PUT_TESTS,
    "put_writes": test_put_writes.ALL_PUT_WRITES_TESTS,
    "get_tuple": test_get_tuple.ALL_GET_TUPLE_TESTS,
    "list": test_list.ALL_LIST_TESTS,
    "delete_thread": test_delete_thread.ALL_DELETE_THREAD_TESTS,
    "delete_for_runs": test_delete_for_runs.ALL_DELETE_FOR_RUNS_TESTS,
    "copy_thread": test_copy_thread.ALL_COPY_THREAD_TESTS,
    "prune": test_prune.ALL_PRUNE_TESTS,
}


def run(coro):
    return asyncio.run(coro)


def scan_all(url: str) -> dict[bytes, int]:
    """Every key on the server (each primary of a cluster) and its TTL in ms."""
    client = connect(url)
    options = {"target_nodes": client.PRIMARIES} if hasattr(client, "get_primaries") else {}
    keys = set(client.scan_iter(count=1000, **options))
    ttls = {k: client.pttl(k) for k in keys}
    client.close()
    return ttls


def test_the_suite_lists_every_capability():
    assert set(SUITE) == {c.value for c in ALL_CAPABILITIES}
    assert all(len(tests) >= 5 for tests in SUITE.values())


def test_langgraph_conformance_suite_passes_every_capability(any_url, capsys):
    """The maintainers' suite, every base and extended capability, on each backend. Gated on
    each capability's own counts (not `conformance_level()`, which says FULL when nothing
    ran), and printed so the report is in the test log."""

    @checkpointer_test(name=f"StatekitSaver on {any_url.split(':')[0]}")
    async def saver():
        s = StatekitSaver.from_url(any_url, keep_last=None)
        yield s
        await s.aclose()

    report = run(validate(saver))
    report.print_report()
    print({name: (r.tests_passed, r.tests_failed) for name, r in report.results.items()})
    results = report.results
    assert set(results) == set(SUITE)
    for name, tests in SUITE.items():
        result = results[name]
        assert result.detected, f"{name}: not detected as implemented"
        assert result.failures == [], f"{name}: {result.failures}"
        assert (result.passed, result.tests_passed, result.tests_failed) == (True, len(tests), 0), name
    assert report.passed_all_base() and report.passed_all()
    assert "FULL (8/8)" in capsys.readouterr().out


# -- the store's lessons, applied to threads -----------------------------------------------


async def _history(saver: StatekitSaver, thread: str, n: int, ns: str = "", value_bytes: int = 10) -> list[dict]:
    """n checkpoints, each updating channel 'a' (a new value per step) and keeping 'b'."""
    parent = None
    stored = []
    for i in range(n):
        config = generate_config(thread, checkpoint_ns=ns)
        if parent:
            config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
        versions = {"a": saver.get_next_version(None if i == 0 else f"{i:032}.0", None), "b": "1"}
        cp = generate_checkpoint(
            channel_values={"a": "x" * value_bytes + str(i), "b": "kept"}, channel_versions=versions
        )
        new = {"a": versions["a"], **({"b": "1"} if i == 0 else {})}
        parent = await saver.aput(config, cp, generate_metadata(step=i, run_id=f"run-{i % 2}"), new)
        await saver.aput_writes(parent, [("a", f"w{i}")], f"task-{i}")
        stored.append(parent)
    return stored


def test_every_key_of_every_thread_has_a_ttl_after_each_operation(any_url):
    policy = ThreadPolicy(ttl_seconds=3600, keep_last=2)

    async def body():
        saver = StatekitSaver.from_url(any_url, namespace="lg", policy=policy)
        await _history(saver, "t1", 5)
        await _history(saver, "t2", 3, ns="child:1")
        await saver.acopy_thread("t1", "t3")
        await saver.adelete_for_runs(["run-0"])
        await saver.aprune(["t2"])
        await saver.aclose()

    run(body())
    ttls = scan_all(any_url)
    assert len(ttls) == 6, sorted(ttls)  # three threads, two keys each
    assert all(0 < ttl <= 3_600_000 for ttl in ttls.values()), ttls


def test_keep_last_bounds_a_thread_and_frees_unreferenced_values(any_url):
    """50 checkpoints with keep_last=3: 3 remain, with their writes; only the values they
    reference stay; the thread's bytes stop growing; the byte count matches what is held."""

    async def body():
        saver = StatekitSaver.from_url(any_url, keep_last=3)
        stored = await _history(saver, "t", 50, value_bytes=200)
        left = [t async for t in saver.alist(generate_config("t"))]
        latest = await saver.aget_tuple(generate_config("t"))
        await saver.aclose()
        return stored, left, latest

    stored, left, latest = run(body())
    assert [t.config["configurable"]["checkpoint_id"] for t in left] == [
        s["configurable"]["checkpoint_id"] for s in reversed(stored[-3:])
    ]
    assert latest.checkpoint["channel_values"] == {"a": "x" * 200 + "49", "b": "kept"}
    assert [w[2] for w in latest.pending_writes] == ["w49"]
    client = connect(any_url)
    fields = client.hgetall(StatekitSaver.from_url(any_url).keys("t")[0])
    kinds = sorted(f[:1].decode() for f in fields if f != b"bytes")
    assert kinds == ["b"] * 4 + ["c"] * 3 + ["r"] * 4 + ["v"] * 3 + ["w"] * 3 + ["x"]  # a x3 and b x1
    assert fields[b"x\0"] == stored[-4]["configurable"]["checkpoint_id"].encode()  # the newest pruned
    payload = sum(len(v) for f, v in fields.items() if f[:2] in (b"c\0", b"v\0", b"b\0", b"w\0"))
    assert int(fields[b"bytes"]) == payload


def test_a_write_past_the_cap_raises_and_writes_nothing(any_url):
    async def body():
        saver = StatekitSaver.from_url(any_url, policy=ThreadPolicy(max_bytes=4_000))
        await _history(saver, "t", 3, value_bytes=100)
        client = connect(any_url)
        keys = saver.keys("t")
        before = client.hgetall(keys[0]), client.zrange(keys[1], 0, -1)
        config = generate_config("t")
        big = generate_checkpoint(channel_values={"a": "y" * 5_000}, channel_versions={"a": "9"})
        with count_round_trips() as trips, pytest.raises(StateTooLarge):
            await saver.aput(config, big, generate_metadata(), {"a": "9"})
        assert trips.count == 0, "a checkpoint over the cap on its own is not sent"
        medium = generate_checkpoint(channel_values={"a": "z" * 1_500}, channel_versions={"a": "8"})
        with pytest.raises(StateTooLarge):  # fits alone, not with what the thread holds
            for _ in range(5):
                await saver.aput(config, medium, generate_metadata(), {"a": "8"})
                medium = generate_checkpoint(channel_values={"a": "z" * 1_500}, channel_versions={"a": "8"})
        mid = client.hgetall(keys[0]), client.zrange(keys[1], 0, -1)
        with pytest.raises(StateTooLarge):
            await saver.aput_writes(saver_config(await saver.aget_tuple(config)), [("a", "w" * 5_000)], "task")
        after = client.hgetall(keys[0]), client.zrange(keys[1], 0, -1)
        await saver.aclose()
        return before, mid, after

    before, mid, after = run(body())
    assert mid == after, "the refused writes left the thread as it was"
    assert int(after[0][b"bytes"]) <= 4_000 and len(before[1]) < len(after[1])


def saver_config(tup):
    return tup.config


def test_one_round_trip_per_put_put_writes_and_get_tuple(any_url):
    async def body():
        saver = StatekitSaver.from_url(any_url)
        await _history(saver, "warm", 2)
        await saver.aget_tuple(generate_config("warm"))  # every script used below is loaded now
        config = generate_config("t")
        counts = []
        for i in range(5):
            cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": str(i + 1)})
            with count_round_trips() as trips:
                config = await saver.aput(config, cp, generate_metadata(step=i), {"a": str(i + 1)})
            counts.append(trips.count)
            with count_round_trips() as trips:
                await saver.aput_writes(config, [("a", i), ("b", i)], f"task-{i}")
            counts.append(trips.count)
            with count_round_trips() as trips:
                await saver.aget_tuple(config)
            counts.append(trips.count)
        with count_round_trips() as trips:
            await saver.adelete_thread("t")
        counts.append(trips.count)
        await saver.aclose()
        return counts

    assert run(body()) == [1] * 16


def test_blocking_methods_match_the_async_ones(any_url):
    saver = StatekitSaver.from_url(any_url, keep_last=2)
    config = generate_config("t")
    for i in range(4):
        cp = generate_checkpoint(channel_values={"n": i}, channel_versions={"n": str(i + 1)})
        config = saver.put(config, cp, generate_metadata(step=i), {"n": str(i + 1)})
    saver.put_writes(config, [("n", 99)], "task")
    listed = list(saver.list(generate_config("t")))
    assert [t.checkpoint["channel_values"] for t in listed] == [{"n": 3}, {"n": 2}]
    assert saver.get_tuple(generate_config("t")).pending_writes == [("task", "n", 99)]
    assert list(saver.list(generate_config("t"), filter={"step": 2})) == listed[1:]
    assert list(saver.list(generate_config("t"), before=listed[0].config)) == listed[1:]

    async def read():
        got = await saver.aget_tuple(generate_config("t"))
        await saver.aclose()
        return got

    assert run(read()) == listed[0]._replace(pending_writes=[("task", "n", 99)])
    saver.delete_thread("t")
    assert saver.get_tuple(generate_config("t")) is None
    saver.close()


def test_any_graph_state_round_trips_through_langgraph_serde():
    class Note(TypedDict):
        at: dt.datetime
        tags: set[str]

    value = {"at": dt.datetime(2026, 11, 28, 7, 0, tzinfo=dt.UTC), "tags": {"a", "b"}, "raw": b"\x00\xff"}

    async def body():
        saver = StatekitSaver.from_url("fakeredis://")
        cp = generate_checkpoint(channel_values={"note": value}, channel_versions={"note": "1"})
        config = await saver.aput(generate_config("t"), cp, generate_metadata(), {"note": "1"})
        await saver.aput_writes(config, [("note", value)], "task")
        return await saver.aget_tuple(config)

    got = run(body())
    assert got.checkpoint["channel_values"]["note"] == value
    assert got.pending_writes[0][2] == value


# -- a real graph: interrupt, restart, resume -----------------------------------------------


class State(TypedDict):
    steps: Annotated[list[str], operator.add]
    approved: bool


def _graph():
    def plan(state: State) -> dict:
        return {"steps": ["plan"]}

    def approve(state: State) -> dict:
        answer = interrupt({"question": "approve the refund?"})
        return {"steps": [f"approval:{answer}"], "approved": answer == "yes"}

    def act(state: State) -> dict:
        return {"steps": ["refund issued" if state["approved"] else "refund refused"]}

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node("approve", approve)
    builder.add_node("act", act)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "approve")
    builder.add_edge("approve", "act")
    builder.add_edge("act", END)
    return builder


def test_a_graph_interrupts_restarts_and_resumes_with_a_bounded_thread(any_url):
    """ainvoke until the interrupt; then new process-level objects (saver, compiled graph)
    on the same Redis resume it. keep_last=2 bounds the thread while a saver without it
    keeps every step; every key has a TTL."""
    config = {"configurable": {"thread_id": "refund-42"}}
    unbounded = {"configurable": {"thread_id": "refund-43"}}

    async def first_process():
        saver = StatekitSaver.from_url(any_url, keep_last=2, policy=ThreadPolicy(ttl_seconds=600))
        graph = _graph().compile(checkpointer=saver)
        out = await graph.ainvoke({"steps": [], "approved": False}, config)
        plain = StatekitSaver.from_url(any_url, policy=ThreadPolicy(ttl_seconds=600))
        await _graph().compile(checkpointer=plain).ainvoke({"steps": [], "approved": False}, unbounded)
        await saver.aclose()
        await plain.aclose()
        return out

    out = run(first_process())
    assert out["__interrupt__"][0].value == {"question": "approve the refund?"}

    async def second_process():
        saver = StatekitSaver.from_url(any_url, keep_last=2, policy=ThreadPolicy(ttl_seconds=600))
        graph = _graph().compile(checkpointer=saver)
        waiting = await graph.aget_state(config)
        result = await graph.ainvoke(Command(resume="yes"), config)
        history = [s async for s in graph.aget_state_history(config)]
        plain = StatekitSaver.from_url(any_url, policy=ThreadPolicy(ttl_seconds=600))
        plain_graph = _graph().compile(checkpointer=plain)
        await plain_graph.ainvoke(Command(resume="no"), unbounded)
        plain_history = [s async for s in plain_graph.aget_state_history(unbounded)]
        await saver.aclose()
        await plain.aclose()
        return waiting, result, history, plain_history

    waiting, result, history, plain_history = run(second_process())
    assert waiting.next == ("approve",)
    assert result["steps"] == ["plan", "approval:yes", "refund issued"] and result["approved"] is True
    assert len(history) == 2, "keep_last=2 keeps the two newest checkpoints"
    assert len(plain_history) == 5, "without a policy every step stays"
    assert plain_history[0].values["steps"][-1] == "refund refused"
    ttls = scan_all(any_url)
    assert len(ttls) == 4 and all(0 < t <= 600_000 for t in ttls.values())


# -- bad input and failures ----------------------------------------------------------------


def test_bad_ids_urls_and_policies_are_refused_clearly():
    saver = StatekitSaver.from_url("fakeredis://")
    cp = generate_checkpoint()
    with pytest.raises(InvalidInput, match="bad thread id"):
        saver.put(generate_config("a{b}"), cp, generate_metadata(), {})
    with pytest.raises(InvalidInput, match="NUL"):
        saver.put(generate_config("t", checkpoint_ns="x\0y"), cp, generate_metadata(), {})
    with pytest.raises(InvalidInput, match="prune strategy"):
        saver.prune(["t"], strategy="oldest")
    with pytest.raises(ConnectionURLError):
        StatekitSaver.from_url("nope://x")
    with pytest.raises(InvalidInput, match="keep_last"):
        ThreadPolicy(keep_last=0)
    with pytest.raises(InvalidInput, match="ttl_seconds"):
        ThreadPolicy(ttl_seconds=0)
    with pytest.raises(InvalidInput, match="aclient"):
        StatekitSaver(client=__import__("statekit").connect_async("fakeredis://"))
    with pytest.raises(InvalidInput, match="a client, an aclient or a url"):
        StatekitSaver()
    with pytest.raises(InvalidInput, match="asyncio client"):
        StatekitSaver(aclient=__import__("statekit").connect_async("fakeredis://")).put(
            generate_config("t"), cp, generate_metadata(), {}
        )


def test_a_corrupt_thread_is_reported_and_left_as_is():
    url = "fakeredis://lg-corrupt"
    saver = StatekitSaver.from_url(url)
    config = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})
    client = connect(url)
    keys = saver.keys("t")
    client.hset(keys[0], "bytes", "lots")
    with pytest.raises(CorruptStateError, match="bytes is not a number"):
        saver.put(config, generate_checkpoint(), generate_metadata(), {})
    field = next(f for f in client.hkeys(keys[0]) if f.startswith(b"c\0"))
    client.hset(keys[0], field, b"\xc1 not msgpack")
    with pytest.raises(CorruptStateError, match="cannot be read"):
        saver.get_tuple(config)
    assert client.hget(keys[0], field) == b"\xc1 not msgpack"
    client.delete(keys[1])
    client.set(keys[1], "a string")
    with pytest.raises(CorruptStateError, match="WRONGTYPE"):
        saver.get_tuple(generate_config("t"))


def test_an_unreachable_server_is_store_unavailable():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saver = StatekitSaver.from_url(f"redis://127.0.0.1:{port}")
    with pytest.raises(StoreUnavailable, match="thread 't'"):
        saver.get_tuple(generate_config("t"))

    async def body():
        with pytest.raises(StoreUnavailable):
            await saver.aput(generate_config("t"), generate_checkpoint(), generate_metadata(), {})
        with pytest.raises(StoreUnavailable):
            [t async for t in saver.alist(None)]

    run(body())
