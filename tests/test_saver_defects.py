"""StatekitSaver's reproduced defects, one regression test (or a few) each.

1. a thread whose hash expired (its index left) is gone as a whole: no script recreates a
   key without a TTL, and both keys get one deadline;
2. writes saved for a checkpoint that keep_last already pruned are not kept;
3. a subgraph's checkpoints go with the root checkpoint they ran under;
4. a pruned checkpoint asked for by id raises CheckpointPruned (never existed: None);
5. every error of list/alist, a wrong password and footprint are translated;
6. a saver used from many event loops does not keep a client (and its sockets) per loop;
7. two writes to one special channel in one batch are counted once;
8. LangGraph's production savers' overwrite rule (upsert only for all-special batches);
9. setup()/asetup() exist, and the cap's message speaks of the saver.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import operator
import os
import socket
from collections import Counter
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata
from langgraph.checkpoint.serde.types import INTERRUPT
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from statekit import AccessDenied, CorruptStateError, StateTooLarge, StoreUnavailable, connect
from statekit.drills.agent_graph import graph_with_a_subgraph, support_graph
from statekit.errors import StatekitError
from statekit.langgraph import CheckpointPruned, StatekitSaver, ThreadPolicy


def run(coro):
    return asyncio.run(coro)


def history(saver: StatekitSaver, thread: str, n: int, ns: str = "") -> list[dict]:
    """n checkpoints (runs run-0 and run-1 alternating), each with one pending write."""
    parent = None
    stored = []
    for i in range(n):
        config = generate_config(thread, checkpoint_ns=ns)
        if parent:
            config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
        versions = {"a": f"{i + 1:032}.0"}
        cp = generate_checkpoint(channel_values={"a": f"value {i}"}, channel_versions=versions)
        parent = saver.put(config, cp, generate_metadata(step=i, run_id=f"run-{i % 2}"), versions)
        saver.put_writes(parent, [("a", f"w{i}")], f"task-{i}")
        stored.append(parent)
    return stored


def hash_of(url: str, saver: StatekitSaver, thread: str) -> dict[bytes, bytes]:
    client = connect(url)
    try:
        return client.hgetall(saver.keys(thread)[0])
    finally:
        client.close()


def orphan_writes(fields: dict[bytes, bytes]) -> list[bytes]:
    """Pending writes (`w\\0<ns>\\0<id>\\0...`) of no stored checkpoint (`c\\0<ns>\\0<id>`)."""
    stored = {tuple(f.split(b"\0")[1:3]) for f in fields if f.startswith(b"c\0")}
    return [f for f in fields if f.startswith(b"w\0") and tuple(f.split(b"\0")[1:3]) not in stored]


def payload(fields: dict[bytes, bytes]) -> int:
    """The bytes the cap counts: checkpoint records, their refs, channel values, writes."""
    return sum(len(v) for f, v in fields.items() if f[:2] in (b"c\0", b"v\0", b"b\0", b"w\0"))


# -- 1. the hash is the thread's anchor ------------------------------------------------------


@pytest.mark.parametrize("op", ["prune", "delete_for_runs", "put", "put_writes", "get_tuple", "list"])
def test_a_thread_whose_hash_expired_is_gone_as_a_whole(any_url, op):
    """The hash expired (or was evicted) while the index lives on: whatever runs next, no
    key of the namespace is left without a TTL, both keys share one deadline, and reads
    answer as for a missing thread."""
    saver = StatekitSaver.from_url(any_url, keep_last=3)
    stored = history(saver, "t", 5)
    client = connect(any_url)
    h, z = saver.keys("t")
    client.delete(h)
    assert client.exists(z) and client.pttl(z) > 0
    old = stored[-1]
    new = None
    if op == "prune":
        saver.prune(["t"])
    elif op == "delete_for_runs":
        saver.delete_for_runs(["run-0"])
    elif op == "put":
        cp = generate_checkpoint(channel_values={"a": "fresh"}, channel_versions={"a": "9"})
        new = saver.put(generate_config("t"), cp, generate_metadata(step=9), {"a": "9"})
    elif op == "put_writes":
        saver.put_writes(old, [("a", "late")], "task-late")
    elif op == "get_tuple":
        assert saver.get_tuple(old) is None and saver.get_tuple(generate_config("t")) is None
    else:
        assert list(saver.list(generate_config("t"))) == []
    assert saver.keys_without_ttl() == []
    assert saver.get_tuple(old) is None
    listed = [t.config for t in saver.list(generate_config("t"))]
    assert listed == ([new] if new else [])
    if client.exists(h):
        assert client.pexpiretime(h) == client.pexpiretime(z) > 0, "one deadline for both keys"
        fields = client.hgetall(h)
        members = client.zrange(z, 0, -1)
        assert all(m in fields for m in members if m[:2] in (b"c\0", b"w\0")), "no index entry of the old thread"
        assert int(fields[b"bytes"]) == payload(fields)
    client.close()


# -- 2. orphan writes -----------------------------------------------------------------------


def test_keep_last_1_keeps_no_writes_of_pruned_checkpoints(any_url):
    """A real graph with keep_last=1: LangGraph saves some writes after their checkpoint was
    pruned (its writes go out in the background); none of them is kept, and the byte count
    is what the thread holds."""
    saver = StatekitSaver.from_url(any_url, keep_last=1)
    graph = support_graph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "chat"}}
    for turn in range(60):
        graph.invoke({"messages": [f"question {turn}"]}, config)
    fields = hash_of(any_url, saver, "chat")
    assert orphan_writes(fields) == []
    assert saver.footprint("chat")["payload_bytes"] == payload(fields)
    assert graph.get_state(config).values["messages"][-1] == "answer to 'question 59'"


def test_writes_for_a_pruned_checkpoint_are_not_stored(any_url):
    saver = StatekitSaver.from_url(any_url, keep_last=1)
    stored = history(saver, "t", 3)
    before = hash_of(any_url, saver, "t")
    saver.put_writes(stored[0], [("a", "late"), (INTERRUPT, "late")], "task-late")
    assert hash_of(any_url, saver, "t") == before


# -- 3. subgraph namespaces ------------------------------------------------------------------


def census(saver: StatekitSaver, thread: str) -> tuple[set[str], Counter, list[str]]:
    """Root checkpoint ids; checkpoints per subgraph namespace; subgraph checkpoints whose
    root (`parents[""]`) is not a stored root checkpoint."""
    tuples = list(saver.list({"configurable": {"thread_id": thread}}))
    roots = {t.config["configurable"]["checkpoint_id"] for t in tuples if not t.config["configurable"]["checkpoint_ns"]}
    subs = [t for t in tuples if t.config["configurable"]["checkpoint_ns"]]
    per_ns = Counter(t.config["configurable"]["checkpoint_ns"] for t in subs)
    stray = [t.config["configurable"]["checkpoint_id"] for t in subs if t.metadata["parents"].get("") not in roots]
    return roots, per_ns, stray


#: The turns of the flat-thread test: 300 (the figure in docs/guarantees.md); fewer in `make check`.
TURNS = int(os.environ.get("STATEKIT_SAVER_TURNS", "300"))


def test_keep_last_bounds_a_graph_that_runs_a_subgraph_every_turn(any_url, capsys):
    saver = StatekitSaver.from_url(any_url, keep_last=2)
    graph = graph_with_a_subgraph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    sizes, index = {}, {}
    client = connect(any_url)
    for turn in range(1, TURNS + 1):
        graph.invoke({"log": [f"turn {turn}"]}, config)
        if turn in (30, TURNS):
            sizes[turn] = len(hash_of(any_url, saver, "t"))
            index[turn] = client.zcard(saver.keys("t")[1])
    client.close()
    roots, per_ns, stray = census(saver, "t")
    fields = hash_of(any_url, saver, "t")
    with capsys.disabled():
        print(
            f"\n[{any_url.split(':')[0]}] keep_last=2, {TURNS} turns with a subgraph: {len(roots)} root checkpoints, "
            f"{len(per_ns)} subgraph namespaces with {sum(per_ns.values())} checkpoints (most in one: "
            f"{max(per_ns.values(), default=0)}), {len(orphan_writes(fields))} orphan writes, "
            f"hash fields {sizes[30]} at turn 30 and {sizes[TURNS]} at turn {TURNS}"
        )
    assert len(roots) <= 2
    assert stray == [], "every subgraph checkpoint kept ran under a kept root checkpoint"
    assert max(per_ns.values(), default=0) <= 2
    assert orphan_writes(fields) == []
    assert int(fields[b"bytes"]) == payload(fields)
    assert sizes[TURNS] <= sizes[30] and index[TURNS] <= index[30], "the thread stays flat"
    assert graph.get_state(config).values["log"][-1] == "s2"


def test_prune_takes_the_subgraph_checkpoints_of_the_roots_it_drops(any_url):
    saver = StatekitSaver.from_url(any_url)
    graph = graph_with_a_subgraph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    for turn in range(10):
        graph.invoke({"log": [f"turn {turn}"]}, config)
    roots, per_ns, stray = census(saver, "t")
    assert len(per_ns) == 10 and stray == []
    saver.prune(["t"])
    roots, per_ns, stray = census(saver, "t")
    assert len(roots) == 1 and stray == [] and max(per_ns.values(), default=0) <= 1
    fields = hash_of(any_url, saver, "t")
    assert orphan_writes(fields) == [] and int(fields[b"bytes"]) == payload(fields)
    graph.invoke({"log": ["after prune"]}, config)
    assert graph.get_state(config).values["log"][-1] == "s2"


def test_delete_for_runs_takes_the_subgraph_checkpoints_of_the_roots_it_drops(any_url):
    """Subgraph checkpoints that name another run (metadata run_id) still go with their root."""
    saver = StatekitSaver.from_url(any_url)
    root = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(run_id="r1"), {})
    root_id = root["configurable"]["checkpoint_id"]
    child = generate_config("t", checkpoint_ns="sub:1")
    meta = generate_metadata(run_id="r2", parents={"": root_id})
    saver.put(child, generate_checkpoint(), meta, {})
    saver.put_writes(saver.get_tuple(child).config, [("a", 1)], "task")
    keep = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(run_id="r3"), {})
    saver.delete_for_runs(["r1"])
    assert [t.config for t in saver.list({"configurable": {"thread_id": "t"}})] == [keep]
    fields = hash_of(any_url, saver, "t")
    assert orphan_writes(fields) == [] and int(fields[b"bytes"]) == payload(fields)


# -- 4. a pruned checkpoint asked for by id ---------------------------------------------------


def test_a_pruned_checkpoint_asked_for_by_id_raises_checkpoint_pruned(any_url):
    saver = StatekitSaver.from_url(any_url, keep_last=2)
    graph = support_graph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"messages": ["question 1"]}, config)
    first = graph.get_state(config).config
    for turn in range(2, 5):
        graph.invoke({"messages": [f"question {turn}"]}, config)
    pruned = first["configurable"]["checkpoint_id"]
    with pytest.raises(LookupError, match=pruned) as err:
        saver.get_tuple(first)
    assert type(err.value).__name__ == "CheckpointPruned" and isinstance(err.value, StatekitError)
    with pytest.raises(LookupError, match=pruned):
        graph.update_state(first, {"messages": ["a fork of an empty state"]})
    assert graph.get_state(config).values["messages"][-1] == "answer to 'question 4'", "the thread is as it was"

    async def aget():
        try:
            return await saver.aget_tuple(first)
        finally:
            await saver.aclose()

    with pytest.raises(LookupError, match=pruned):
        run(aget())
    # a checkpoint that never existed stays None, as LangGraph expects
    assert saver.get_tuple(generate_config("t", checkpoint_id=str(uuid6(clock_seq=-1)))) is None
    assert saver.get_tuple(generate_config("another", checkpoint_id=pruned)) is None
    from statekit.langgraph import CheckpointPruned

    assert issubclass(CheckpointPruned, StatekitError) and issubclass(CheckpointPruned, LookupError)


def test_prune_makes_a_pruned_id_raise_too(any_url):
    from statekit.errors import StatekitError as Base

    saver = StatekitSaver.from_url(any_url)
    stored = history(saver, "t", 3)
    saver.prune(["t"])
    with pytest.raises(Base, match=stored[0]["configurable"]["checkpoint_id"]):
        saver.get_tuple(stored[0])
    assert saver.get_tuple(stored[-1]) is not None


# -- 5. errors --------------------------------------------------------------------------------


def test_list_reports_a_corrupt_thread_as_get_tuple_does(any_url):
    saver = StatekitSaver.from_url(any_url)
    history(saver, "t", 2)
    client = connect(any_url)
    z = saver.keys("t")[1]
    client.delete(z)
    client.set(z, "a string")
    with pytest.raises(CorruptStateError, match="WRONGTYPE"):
        saver.get_tuple(generate_config("t"))
    with pytest.raises(CorruptStateError, match="WRONGTYPE"):
        list(saver.list(generate_config("t")))

    async def alist():
        try:
            return [t async for t in saver.alist(generate_config("t"))]
        finally:
            await saver.aclose()

    with pytest.raises(CorruptStateError, match="WRONGTYPE"):
        run(alist())
    client.close()


@pytest.fixture
def users(redis_server):
    """A function that makes an ACL user (keys, commands) and returns its URL; removed after."""
    admin = redis_server.client()
    admin.flushall()
    made = []

    def make(name, keys, commands, password="pw"):
        admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=keys, commands=commands)
        made.append(name)
        return redis_server.url.replace("redis://", f"redis://{name}:{password}@")

    yield make
    for name in made:
        admin.acl_deluser(name)
    admin.close()


@pytest.mark.realredis
def test_a_refused_user_and_a_wrong_password_are_access_denied_everywhere(users):
    outside = StatekitSaver.from_url(users("lg-outside", ["other:*"], ["+@all"]))
    with pytest.raises(AccessDenied):
        outside.get_tuple(generate_config("t"))
    with pytest.raises(AccessDenied):
        list(outside.list(generate_config("t")))

    async def alist(saver):
        try:
            return [t async for t in saver.alist(generate_config("t"))]
        finally:
            await saver.aclose()

    with pytest.raises(AccessDenied):
        run(alist(outside))
    url = users("lg-user", ["lg:*"], ["+@all"])
    wrong = StatekitSaver.from_url(url.replace(":pw@", ":not-the-password@"))
    with pytest.raises(AccessDenied):
        wrong.get_tuple(generate_config("t"))
    with pytest.raises(AccessDenied):
        wrong.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})
    with pytest.raises(AccessDenied):
        list(wrong.list(None))
    with pytest.raises(AccessDenied):
        run(alist(wrong))


@pytest.mark.realredis
def test_footprint_without_memory_usage_is_access_denied_naming_the_rule(users):
    saver = StatekitSaver.from_url(users("lg-nomem", ["lg:*"], ["+@all", "-memory|usage"]))
    history(saver, "t", 2)
    with pytest.raises(AccessDenied, match=r"\+memory\|usage"):
        saver.footprint("t")


@pytest.mark.realredis
def test_footprint_counts_every_field_of_a_thread(redis_server):
    """A few large channel values among many small writes: MEMORY USAGE's sampled default
    extrapolates from 5 fields; the footprint reads them all (SAMPLES 0)."""
    redis_server.client().flushall()
    saver = StatekitSaver.from_url(redis_server.url)
    values = {f"big{i}": "x" * 300_000 for i in range(3)}
    versions = {k: "1" for k in values}
    config = saver.put(generate_config("t"), generate_checkpoint(channel_values=values, channel_versions=versions),
                       generate_metadata(), versions)  # fmt: skip
    for i in range(100):
        saver.put_writes(config, [("a", i), ("b", i), ("c", i)], f"task-{i}")
    fp = saver.footprint("t")
    assert fp["payload_bytes"] <= fp["memory_bytes"] <= 2 * fp["payload_bytes"] + 65_536, fp


# -- 6. clients across event loops --------------------------------------------------------------


def socket_fds() -> int:
    """Open socket file descriptors of this process."""
    gc.collect()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.realredis
@pytest.mark.parametrize("server", ["redis_server", "redis_cluster"])
def test_a_saver_used_from_many_event_loops_keeps_no_client_per_loop(request, server, capsys):
    """50 `asyncio.run` calls, each with a loop of its own: the saver releases the client
    of a loop that has ended (its sockets closed) and aclose() closes the rest."""
    url = request.getfixturevalue(server).url
    saver = StatekitSaver.from_url(url, namespace="loops")
    saver.delete_thread("t")
    config = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})
    before = socket_fds()

    async def use(i):
        await saver.aput_writes(config, [("a", i)], f"task-{i}")
        return await saver.aget_tuple(config)

    for i in range(50):
        assert len(run(use(i)).pending_writes) == i + 1
    during = socket_fds()
    run(saver.aclose())
    after = socket_fds()
    with capsys.disabled():
        print(f"\n[{server}] socket fds: {before} before, {during} after 50 asyncio.run uses, {after} after aclose()")
    assert during - before <= 4, "one loop's client at a time, not one per loop"
    assert after <= before, "aclose() closes every client the saver made"
    assert ("task-50", "a", 50) in run(use(50)).pending_writes, "the saver still works after aclose()"
    run(saver.aclose())


# -- 7. special writes counted once ----------------------------------------------------------------


def test_two_writes_to_one_special_channel_are_counted_once(any_url):
    saver = StatekitSaver.from_url(any_url, namespace="lg")
    config = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})
    saver.put_writes(config, [(INTERRUPT, "x" * 1000), (INTERRUPT, "y" * 1000)], "task")
    fields = hash_of(any_url, saver, "t")
    assert int(fields[b"bytes"]) == payload(fields)
    assert [w[2] for w in saver.get_tuple(config).pending_writes] == ["y" * 1000], "the batch's last one"
    # a cap that holds one such write but not two: the batch fits
    held = int(hash_of(any_url, saver, "t")[b"bytes"])
    capped = StatekitSaver.from_url(any_url, namespace="capped", policy=ThreadPolicy(max_bytes=held + 200))
    config = capped.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})
    base = int(hash_of(any_url, capped, "t")[b"bytes"])
    capped = StatekitSaver.from_url(any_url, namespace="capped", policy=ThreadPolicy(max_bytes=base + 1_500))
    capped.put_writes(config, [(INTERRUPT, "x" * 1000), (INTERRUPT, "y" * 1000)], "task")
    fields = hash_of(any_url, capped, "t")
    assert int(fields[b"bytes"]) == payload(fields) <= base + 1_500


# -- 8. LangGraph's overwrite rule ------------------------------------------------------------------


class Answers(TypedDict):
    answers: Annotated[list[str], operator.add]


def two_questions():
    def ask(state: Answers) -> dict:
        return {"answers": [interrupt("q1"), interrupt("q2")]}

    builder = StateGraph(Answers)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder


def test_time_travel_into_a_node_that_answered_two_interrupts_takes_the_new_answer(any_url):
    """As on PostgresSaver and SqliteSaver: the node's final writes (a regular write and its
    RESUME list in one batch) do not replace the RESUME list saved while it waited, so a
    resume from that checkpoint answers the second question anew."""
    saver = StatekitSaver.from_url(any_url)
    graph = two_questions().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"answers": []}, config)
    graph.invoke(Command(resume="a1"), config)
    assert graph.invoke(Command(resume="b1"), config)["answers"] == ["a1", "b1"]
    waiting = next(s for s in graph.get_state_history(config) if s.next == ("ask",))
    assert graph.invoke(Command(resume="b2"), waiting.config)["answers"] == ["a1", "b2"]


def test_put_writes_overwrites_only_a_batch_of_special_writes(any_url):
    saver = StatekitSaver.from_url(any_url)
    config = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(), {})

    def writes():
        return sorted((w[1], w[2]) for w in saver.get_tuple(config).pending_writes)

    saver.put_writes(config, [(INTERRUPT, "first")], "task")
    saver.put_writes(config, [("ch", 1), (INTERRUPT, "second")], "task")  # mixed: insert if absent
    assert writes() == [(INTERRUPT, "first"), ("ch", 1)]
    saver.put_writes(config, [(INTERRUPT, "third")], "task")  # all special: upsert
    saver.put_writes(config, [("ch", 2)], "task")
    assert writes() == [(INTERRUPT, "third"), ("ch", 1)]
    fields = hash_of(any_url, saver, "t")
    assert int(fields[b"bytes"]) == payload(fields)


# -- 9. drop-in friction -------------------------------------------------------------------------------


def test_setup_is_there_and_checks_the_server(any_url):
    saver = StatekitSaver.from_url(any_url)
    assert saver.setup() is None

    async def asetup():
        try:
            return await saver.asetup()
        finally:
            await saver.aclose()

    assert run(asetup()) is None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreUnavailable):
        StatekitSaver.from_url(f"redis://127.0.0.1:{port}").setup()


def test_a_thread_past_its_cap_is_told_in_the_savers_words(any_url):
    saver = StatekitSaver.from_url(any_url, policy=ThreadPolicy(max_bytes=10_000))
    graph = support_graph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "chat"}}
    turns = 0
    with pytest.raises(StateTooLarge) as err:
        for turns in range(200):  # noqa: B007 - the turn that failed is read after
            graph.invoke({"messages": [f"question {turns}"]}, config)
    text = str(err.value)
    assert "keep_last" in text and "max_bytes" in text and "prune" in text, text
    assert "window_turns" not in text and "session" not in text, text
    # the advice works: with keep_last the same cap holds twice as many turns, and more
    bounded = StatekitSaver.from_url(any_url, policy=ThreadPolicy(max_bytes=10_000, keep_last=5))
    graph = support_graph().compile(checkpointer=bounded)
    for turn in range(2 * turns + 2):
        graph.invoke({"messages": [f"question {turn}"]}, {"configurable": {"thread_id": "bounded"}})


def test_a_put_over_the_cap_that_its_own_prune_brings_under_is_stored(any_url):
    """With keep_last, the cap is checked against what the thread holds after the put's prune:
    a checkpoint that would pass the cap beside the one it replaces, and not without it, is
    stored (and the one it replaces goes, blob and all). One that passes it either way is
    refused, and the thread is left as it was."""
    saver = StatekitSaver.from_url(any_url, policy=ThreadPolicy(max_bytes=5_000, keep_last=1))

    def put(parent: dict | None, version: str, size: int) -> dict:
        config = generate_config("t")
        if parent:
            config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
        versions = {"a": version}
        cp = generate_checkpoint(channel_values={"a": version[-1] * size}, channel_versions=versions)
        return saver.put(config, cp, generate_metadata(), versions)

    first = put(None, f"{1:032}.0", 3_000)
    held = int(hash_of(any_url, saver, "t")[b"bytes"])
    assert held > 3_000 and 2 * held > 5_000, "the two checkpoints together pass the cap"
    second = put(first, f"{2:032}.0", 3_000)
    fields = hash_of(any_url, saver, "t")
    assert int(fields[b"bytes"]) == payload(fields) <= 5_000
    assert [t.config for t in saver.list({"configurable": {"thread_id": "t"}})] == [second]
    assert not any(f.startswith(b"b\0") and f.endswith(f"{1:032}.0".encode()) for f in fields), "its blob went too"
    with pytest.raises(StateTooLarge):
        put(second, f"{3:032}.0", 4_990)
    assert hash_of(any_url, saver, "t") == fields


def test_a_put_that_meets_a_corrupt_index_while_pruning_leaves_the_thread_as_it_was(any_url):
    """An index member the prune cannot parse (`p\\0<root>\\0` with no namespace and id) under the
    root checkpoint keep_last drops: the put fails as corrupt state, under the cap as over it,
    and writes nothing (Redis keeps what a script wrote before an error, so the script finds
    the fault in its dry run, before any write). Seen in an attack on a put that skipped the
    dry run under the cap: the dropped checkpoint's record and index entries were gone, its
    blobs and the byte count not."""
    saver = StatekitSaver.from_url(any_url, policy=ThreadPolicy(keep_last=1))
    client = connect(any_url)
    hash_key, index = saver.keys("t")
    first = saver.put(generate_config("t"), generate_checkpoint(channel_values={"a": "x"}, channel_versions={"a": "1"}),
                      generate_metadata(), {"a": "1"})  # fmt: skip
    client.zadd(index, {b"p\0" + first["configurable"]["checkpoint_id"].encode() + b"\0junk": 0})
    before = client.hgetall(hash_key), client.zrange(index, 0, -1)
    with pytest.raises(CorruptStateError, match="left as is"):
        saver.put(first, generate_checkpoint(channel_values={"a": "y"}, channel_versions={"a": "2"}),
                  generate_metadata(), {"a": "2"})  # fmt: skip
    assert (client.hgetall(hash_key), client.zrange(index, 0, -1)) == before
    assert saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}).config == first
    client.close()


def test_a_pruned_subgraph_checkpoint_asked_for_with_the_config_list_gave_raises_checkpoint_pruned(any_url):
    """The configs `list()` hands out name no root checkpoint (no `checkpoint_map`); a subgraph
    checkpoint whose root was pruned is still named as pruned, not answered as missing."""
    saver = StatekitSaver.from_url(any_url, keep_last=2)
    graph = graph_with_a_subgraph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"log": ["turn 0"]}, config)
    early = [t.config for t in saver.list(config) if t.config["configurable"]["checkpoint_ns"]]
    for turn in range(1, 4):
        graph.invoke({"log": [f"turn {turn}"]}, config)
    assert early
    for old in early:
        with pytest.raises(CheckpointPruned):
            saver.get_tuple(old)


def test_a_subgraph_checkpoint_of_a_life_before_the_thread_expired_is_not_stored(any_url):
    """The thread expires under a running turn, the next root checkpoint starts it afresh, and
    then the subgraph of the earlier turn saves a checkpoint under its (gone) root: it belongs
    to the earlier life, and would outlive every prune; it is not stored."""
    saver = StatekitSaver.from_url(any_url, keep_last=2)
    versions = {"a": f"{1:032}.0"}
    old_root = saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(step=0), {})
    client = connect(any_url)
    client.delete(saver.keys("t")[0])  # the thread's hash expires (its index a moment later)
    client.close()
    saver.put(generate_config("t"), generate_checkpoint(), generate_metadata(step=1), {})  # a new life
    root_id = old_root["configurable"]["checkpoint_id"]
    sub = generate_config("t", checkpoint_ns="sub:1")
    sub["configurable"]["checkpoint_map"] = {"": root_id}
    metadata = {**generate_metadata(step=0), "parents": {"": root_id}}
    saver.put(sub, generate_checkpoint(channel_values={"a": "x"}, channel_versions=versions), metadata, versions)
    namespaces = [t.config["configurable"]["checkpoint_ns"] for t in saver.list({"configurable": {"thread_id": "t"}})]
    assert namespaces == [""], "only the new life's root checkpoint"
