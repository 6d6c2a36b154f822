from __future__ import annotations

import multiprocessing
import re
import statistics
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import (
    ConflictError,
    CorruptStateError,
    ExtractiveSummarizer,
    InvalidInput,
    LifecyclePolicy,
    LLMSummarizer,
    SessionStore,
    StateTooLarge,
    StoreListener,
    StoreUnavailable,
    connect,
)
from statekit.backends import backend_kind
from statekit.testing import before_round_trip, count_round_trips


class Recorder(StoreListener):
    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []
        self.ops: list[tuple[str, str, BaseException | None]] = []

    def on_event(self, kind, session_id, info):
        self.events.append((kind, session_id, dict(info)))

    def on_operation(self, op, session_id, seconds, error):
        assert seconds >= 0
        self.ops.append((op, session_id, error))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.events]


def turn(i: int, size: int = 0) -> dict:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}. " + "x" * size}


def snapshot(client, store, session_id) -> dict:
    """Every key of the session with its type and contents, to prove nothing was written."""
    out = {}
    for key in store.keys(session_id):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == b"string":
            out[key] = client.get(key)
    return out


# -- behaviour on every backend ---------------------------------------------------------


def test_append_and_load_keep_a_window_and_summarise_the_rest(any_client):
    policy = LifecyclePolicy(window_turns=4, fold_batch=3, max_bytes=20_000, summary_max_bytes=2_000)
    store = SessionStore(any_client, policy)
    for i in range(11):
        store.append_turn("s-1", turn(i), turn_id=f"t{i}")
    ctx = store.load_context("s-1")
    assert ctx.turns == [turn(i) for i in range(7, 11)]
    # 7 turns left the window; 6 were folded (two batches of 3), 1 waits in `pending`
    assert ctx.pending == [turn(6)]
    assert ctx.summary.splitlines() == [f"{turn(i)['role']}: message {i}." for i in range(6)]
    assert ctx.turn_ids == [f"t{i}" for i in range(6, 11)]
    assert ctx.exists and ctx.version > 11
    everything = "\n".join([ctx.summary] + [t["content"] for t in ctx.pending + ctx.turns])
    for i in range(11):
        assert f"message {i}." in everything, f"turn {i} was lost"


def test_byte_count_matches_what_is_stored(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=3, fold_batch=2))
    for i in range(9):
        reported = store.append_turn("s", turn(i, size=i * 10))
    store.update_state("s", lambda s: {"plan": ["a", "b"]})
    meta, log, summary, state = store.keys("s")
    stored = (
        sum(len(r) for r in any_client.lrange(log, 0, -1))
        + len(any_client.get(summary) or b"")
        + len(any_client.get(state) or b"")
    )
    assert store.load_context("s").bytes == stored
    assert reported <= stored


def test_keys_share_one_hash_tag(any_client):
    store = SessionStore(any_client, namespace="app")
    keys = store.keys("s-42")
    assert keys == ["app:{s-42}:meta", "app:{s-42}:log", "app:{s-42}:summary", "app:{s-42}:state"]
    if backend_kind(any_client) == "cluster":
        slots = {any_client.keyslot(k) for k in keys}
        assert len(slots) == 1


def test_same_turn_id_is_stored_once(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=5))
    store.append_turn("s", turn(0), turn_id="t0")
    first = store.append_turn("s", turn(1), turn_id="t1")
    again = store.append_turn("s", turn(1), turn_id="t1")
    again_older = store.append_turn("s", turn(0), turn_id="t0")
    assert first == again == again_older
    assert store.load_context("s").turns == [turn(0), turn(1)]


def test_every_write_slides_the_ttl_of_every_key(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=2, fold_batch=1, ttl_seconds=1000))
    for i in range(4):
        store.append_turn("s", turn(i))
    store.update_state("s", lambda s: {"k": 1})
    keys = store.keys("s")
    for key in keys:
        any_client.pexpire(key, 5_000)
    store.append_turn("s", turn(9))
    for key in keys:
        assert 990_000 < any_client.pttl(key) <= 1_000_000, key
    for key in keys:
        any_client.pexpire(key, 5_000)
    store.update_state("s", lambda s: {"k": 2})
    assert all(any_client.pttl(k) > 990_000 for k in keys)


def test_oversized_turn_is_rejected_and_nothing_is_written(any_client):
    policy = LifecyclePolicy(window_turns=3, max_bytes=2_000, summary_max_bytes=500)
    store = SessionStore(any_client, policy)
    store.append_turn("s", turn(0))
    before = snapshot(any_client, store, "s")
    with pytest.raises(StateTooLarge) as err:
        store.append_turn("s", turn(1, size=5_000))
    assert err.value.cap == 2_000 and err.value.size > 5_000
    assert "over its cap of 2000 bytes" in str(err.value)
    assert snapshot(any_client, store, "s") == before
    # the very first write of a session is checked too: no key appears
    with pytest.raises(StateTooLarge):
        store.append_turn("new", turn(0, size=5_000))
    assert snapshot(any_client, store, "new") == {}


def test_oversized_state_is_rejected_and_nothing_is_written(any_client):
    store = SessionStore(any_client, LifecyclePolicy(max_bytes=1_000, summary_max_bytes=100))
    store.update_state("s", lambda s: {"small": 1})
    before = snapshot(any_client, store, "s")
    with pytest.raises(StateTooLarge):
        store.update_state("s", lambda s: {"big": "y" * 2_000})
    assert snapshot(any_client, store, "s") == before


def test_missing_session_is_an_empty_context(any_client):
    store = SessionStore(any_client)
    ctx = store.load_context("nobody")
    assert (ctx.turns, ctx.summary, ctx.version, ctx.bytes, ctx.exists) == ([], "", 0, 0, False)
    assert store.get_state("nobody") == ({}, 0)
    assert store.delete("nobody") is False


def test_delete_removes_every_key(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=1, fold_batch=1))
    for i in range(3):
        store.append_turn("s", turn(i))
    store.update_state("s", lambda s: {"a": 1})
    assert store.delete("s") is True
    assert all(not any_client.exists(k) for k in store.keys("s"))


def test_update_state_counts_versions(any_client):
    store = SessionStore(any_client)
    for _ in range(5):
        store.update_state("s", lambda s: {"n": s.get("n", 0) + 1})
    assert store.get_state("s") == ({"n": 5}, 5)


def test_drop_mode_keeps_only_the_window(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=2, summarizer=None, summary_max_bytes=0))
    for i in range(6):
        store.append_turn("s", turn(i), turn_id=f"t{i}")
    ctx = store.load_context("s")
    assert ctx.turns == [turn(4), turn(5)] and ctx.pending == [] and ctx.summary == ""
    meta = any_client.hgetall(store.keys("s")[0])
    assert {k for k in meta if k.startswith(b"#")} == {b"#t4", b"#t5"}, "ids of dropped turns are forgotten"
    assert ctx.bytes == sum(len(r) for r in any_client.lrange(store.keys("s")[1], 0, -1))


def test_one_round_trip_per_load_and_per_steady_state_append(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=10, fold_batch=4))
    for i in range(40):  # warm up: scripts loaded, window full, a fold done
        store.append_turn("s", turn(i))
    store.load_context("s")
    per_append = []
    for i in range(40, 240):
        with count_round_trips() as rt:
            store.append_turn("s", turn(i))
        per_append.append(rt.count)
    with count_round_trips() as rt:
        store.load_context("s")
    assert rt.count == 1
    assert statistics.median(per_append) == 1
    assert sum(per_append) / len(per_append) <= 1.5
    assert sum(per_append) == 200 + 200 // 4, "one fold round trip per fold_batch appends"


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["", "a{b}", "a\nb", "tab\there", "x" * 257, 42, None, "s-1\n", "é" * 129, "s\ud800"],
    ids=["empty", "braces", "newline", "tab", "257 chars", "int", "None", "trailing newline", "258 bytes", "surrogate"],
)
def test_bad_session_ids_are_refused_and_nothing_is_written(bad):
    client = connect("fakeredis://")
    store = SessionStore(client)
    with pytest.raises(InvalidInput, match="bad session id"):
        store.append_turn(bad, turn(0))
    with pytest.raises(InvalidInput):
        store.load_context(bad)
    assert client.dbsize() == 0


@pytest.mark.parametrize("bad", ["", "has space", "a\x1fb", "x" * 129, "t-1\n", "é" * 65, "t\udc80"])
def test_bad_turn_ids_are_refused(bad):
    client = connect("fakeredis://")
    with pytest.raises(InvalidInput, match="bad turn id"):
        SessionStore(client).append_turn("s", turn(0), turn_id=bad)
    assert client.dbsize() == 0


@pytest.mark.parametrize("bad", [{"content": object()}, {"content": {1, 2}}, "just a string", ["a", "list"]])
def test_unserialisable_turns_are_refused(bad):
    client = connect("fakeredis://")
    with pytest.raises(InvalidInput):
        SessionStore(client).append_turn("s", bad)
    assert client.dbsize() == 0


def test_update_state_function_must_return_a_dict():
    client = connect("fakeredis://")
    store = SessionStore(client)
    with pytest.raises(InvalidInput, match="must return a dict"):
        store.update_state("s", lambda s: None)
    with pytest.raises(InvalidInput, match="cannot be serialised"):
        store.update_state("s", lambda s: {"x": object()})
    assert client.dbsize() == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window_turns": 0}, "window_turns must be a positive"),
        ({"window_turns": -3}, "window_turns must be a positive"),
        ({"ttl_seconds": -1}, "ttl_seconds must be a positive"),
        ({"max_bytes": 0}, "max_bytes must be a positive"),
        ({"fold_batch": 0}, "fold_batch must be a positive"),
        ({"summary_max_bytes": -1}, "summary_max_bytes must be"),
        ({"window_turns": 2.5}, "window_turns must be a positive whole number"),
        ({"summary_max_bytes": 0}, "a summarizer with summary_max_bytes=0"),
        ({"max_bytes": 1000, "summary_max_bytes": 1000}, "must be below max_bytes"),
        ({"summarizer": "not callable"}, "summarizer must be callable"),
    ],
)
def test_bad_policies_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LifecyclePolicy(**kwargs)


def test_bad_namespace_is_refused():
    with pytest.raises(InvalidInput):
        SessionStore(connect("fakeredis://"), namespace="a{b}")


# -- corrupt data, failures ---------------------------------------------------------------


def test_corrupt_record_names_the_key_and_leaves_other_sessions_alone(any_client):
    store = SessionStore(any_client)
    store.append_turn("good", turn(0))
    store.append_turn("bad", turn(0))
    log_key = store.keys("bad")[1]
    any_client.rpush(log_key, b"t9\x1f\x01{not json")
    with pytest.raises(CorruptStateError, match=r"sk:\{bad\}:log"):
        store.load_context("bad")
    assert store.load_context("good").turns == [turn(0)]
    assert any_client.llen(log_key) == 2, "a corrupt session is left as it was"


def test_corrupt_or_foreign_state_blob(any_client):
    store = SessionStore(any_client)
    for sid in ("s", "r"):  # a session as the store writes it: a meta hash, then foreign values beside it
        any_client.hset(store.keys(sid)[0], mapping={"v": 1, "sv": 1})
    any_client.set(store.keys("s")[3], b'{"plain": "json, no envelope"}')
    with pytest.raises(CorruptStateError, match="unknown encoding byte 0x7b"):
        store.get_state("s")
    any_client.set(store.keys("s")[3], b"\x01\xff\xfe")
    with pytest.raises(CorruptStateError, match="corrupt JSON"):
        store.get_state("s")
    any_client.rpush(store.keys("r")[1], b"no separator")
    with pytest.raises(CorruptStateError, match="without its turn id"):
        store.load_context("r")


def test_unreachable_server_is_store_unavailable():
    store = SessionStore(connect("redis://127.0.0.1:1/0"))
    with pytest.raises(StoreUnavailable, match="append_turn of session 's'"):
        store.append_turn("s", turn(0))


def test_fakeredis_outage_is_store_unavailable():
    client = connect("fakeredis://outage-test")
    store = SessionStore(client)
    store.append_turn("s", turn(0))
    client.connection_pool.connection_kwargs["server"].connected = False
    try:
        with pytest.raises(StoreUnavailable):
            store.load_context("s")
    finally:
        client.connection_pool.connection_kwargs["server"].connected = True
    assert store.load_context("s").turns == [turn(0)]


def test_a_failing_summarizer_loses_no_turn():
    calls = {"n": 0}

    def flaky(summary, turns, budget):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model timed out")
        return ExtractiveSummarizer()(summary, turns, budget)

    rec = Recorder()
    store = SessionStore(connect("fakeredis://"), LifecyclePolicy(window_turns=2, fold_batch=2, summarizer=flaky))
    store.listeners.append(rec)
    for i in range(4):
        store.append_turn("s", turn(i))
    assert "fold_failed" in rec.kinds()
    assert store.load_context("s").pending == [turn(0), turn(1)], "the turns stay parked"
    store.append_turn("s", turn(4))
    ctx = store.load_context("s")
    assert ctx.pending == [] and ctx.summary.splitlines() == [
        "user: message 0.",
        "assistant: message 1.",
        "user: message 2.",
    ]


def test_turns_parked_by_a_crashed_process_are_folded_by_the_next_append():
    client = connect("fakeredis://")
    policy = LifecyclePolicy(window_turns=2, fold_batch=2)
    crashed = SessionStore(client, policy)

    def dies_before_folding(session_id, keys, reply):
        return reply[1]
        yield  # a generator of no steps, like the real fold

    crashed._fold_parked = dies_before_folding
    for i in range(6):
        crashed.append_turn("s", turn(i))
    assert len(SessionStore(client, policy).load_context("s").pending) == 4
    SessionStore(client, policy).append_turn("s", turn(6))
    ctx = SessionStore(client, policy).load_context("s")
    assert len(ctx.summary.splitlines()) == 5 and ctx.turns == [turn(5), turn(6)]


def test_a_stale_fold_changes_nothing():
    client = connect("fakeredis://")
    store = SessionStore(client, LifecyclePolicy(window_turns=1, fold_batch=2))
    keys = store.keys("s")
    for i in range(3):
        args = [f"t{i}".encode() + b"\x1f\x01{}", f"t{i}", 1, 50_000, 60_000, 99, 0, "park"]
        client.eval(store._append.script, len(keys), *keys, *args)
    before = snapshot(client, store, "s")
    # fold version 7 was never current: another process folded first
    assert client.eval(store._fold.script, len(keys), *keys, "7", 2, "t0", b"summary", 60_000) == [0]
    # the right version but other turns at the head: also refused
    assert client.eval(store._fold.script, len(keys), *keys, "0", 2, "t1", b"summary", 60_000) == [0]
    assert snapshot(client, store, "s") == before


# -- concurrency ------------------------------------------------------------------------


def _concurrent_increments(store: SessionStore, threads: int, each: int) -> None:
    def work():
        for _ in range(each):
            store.update_state("counter", lambda s: {"n": s.get("n", 0) + 1})

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


@pytest.mark.realredis
def test_no_lost_update_under_concurrent_writers(redis_url):
    rec = Recorder()
    # two "app instances", each with its own connection pool and four threads
    stores = [SessionStore(connect(redis_url), listeners=[rec], max_update_retries=200) for _ in range(2)]
    runners = [threading.Thread(target=_concurrent_increments, args=(s, 4, 50)) for s in stores]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    state, version = stores[0].get_state("counter")
    assert state == {"n": 400} and version == 400
    assert rec.kinds().count("state_updated") == 400
    assert rec.kinds().count("conflict") > 0, "eight writers on one key must have collided"


def test_conflict_error_after_bounded_retries():
    client = connect("fakeredis://")
    store = SessionStore(client, max_update_retries=3)
    other = SessionStore(client)
    attempts = {"n": 0}

    def meddling(state):
        attempts["n"] += 1
        other.update_state("s", lambda s: {"other": attempts["n"]})  # always writes in between
        return {"mine": True}

    with pytest.raises(ConflictError, match="4 attempts"):
        store.update_state("s", meddling)
    assert attempts["n"] == 4
    assert store.get_state("s")[0] == {"other": 4}


def test_listener_sees_operations_and_events():
    rec = Recorder()
    store = SessionStore(connect("fakeredis://"), LifecyclePolicy(window_turns=1, fold_batch=1), metrics=rec)
    store.append_turn("s", turn(0), turn_id="a")
    store.append_turn("s", turn(0), turn_id="a")
    store.append_turn("s", turn(1))
    with pytest.raises(StateTooLarge):
        store.append_turn("s", turn(2, size=60_000))
    store.load_context("s")
    store.delete("s")
    assert rec.kinds() == [
        "created",
        "appended",
        "duplicate",
        "appended",
        "evicted",
        "summarised",
        "rejected",
        "deleted",
    ]
    assert [op for op, _, _ in rec.ops] == ["append_turn"] * 4 + ["load_context", "delete"]
    assert isinstance(rec.ops[3][2], StateTooLarge)


def test_context_messages():
    store = SessionStore(connect("fakeredis://"), LifecyclePolicy(window_turns=1, fold_batch=1))
    for i in range(3):
        store.append_turn("s", turn(i))
    msgs = store.load_context("s").messages()
    assert msgs[0]["role"] == "system" and "message 1." in msgs[0]["content"]
    assert msgs[1:] == [turn(2)]


# -- the summarizer ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    summary=st.text(max_size=500),
    turns=st.lists(st.fixed_dictionaries({"role": st.text(max_size=10), "content": st.text(max_size=400)}), max_size=8),
    budget=st.integers(0, 600),
)
def test_extractive_summary_is_deterministic_and_within_budget(summary, turns, budget):
    s = ExtractiveSummarizer()
    out = s(summary, turns, budget)
    assert len(out.encode("utf-8")) <= budget
    assert out == s(summary, turns, budget)
    if all("\n" not in t["role"] for t in turns):  # then its lines are the unbounded text's lines
        whole = s(summary, turns, 10**9)
        lines = whole.split("\n") if whole else []
        # the oldest lines go first, only as many as the budget needs
        keep = next(k for k in range(len(lines) + 1) if len("\n".join(lines[k:]).encode("utf-8")) <= budget)
        assert out == "\n".join(lines[keep:])


# -- the hand-packed wire ---------------------------------------------------------------


_RESP_ARGS = st.one_of(
    st.binary(max_size=50),
    st.text(max_size=30),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.binary(max_size=10).map(memoryview),
    st.binary(max_size=10).map(bytearray),
)


def _packers():
    """The store's packer over each byte packer this install has: pure Python, and hiredis."""
    from statekit.store import wire

    yield "python", wire._pack_py
    try:
        from hiredis import pack_command
    except ImportError:
        return
    yield "hiredis", lambda *args: pack_command(args)


def test_hiredis_is_installed_so_its_packer_is_compared_too():
    assert [name for name, _ in _packers()] == ["python", "hiredis"]


@settings(max_examples=300, deadline=None)
@given(
    rest=st.lists(_RESP_ARGS, max_size=12),
    encoding=st.sampled_from([("utf-8", "strict"), ("latin-1", "replace"), ("utf-16", "strict")]),
)
def test_pack_encodes_every_argument_as_redis_py_does(rest, encoding):
    """Same bytes as redis-py's own serializer and Encoder for what they accept, and their
    DataError for what they refuse. (redis-py's hiredis serializer, used when hiredis is
    installed, ignores the client's encoding; the Encoder's rules are the documented ones.)"""
    import redis
    from redis.connection import Encoder, PythonRespSerializer

    from statekit.store.wire import _packer

    args = ["EVALSHA", *rest]  # redis-py splits its first argument, the command name, on spaces
    encoder = Encoder(encoding[0], encoding[1], False)
    reference = PythonRespSerializer(6000, encoder.encode)
    packers = [(name, _packer(encoder, pack_bytes)) for name, pack_bytes in _packers()]
    packers.append(("default (hiredis whole-command fast path)", _packer(encoder)))
    for name, pack in packers:
        try:
            expected = b"".join(bytes(part) for part in reference.pack(*args))
        except (redis.exceptions.DataError, UnicodeError) as exc:
            with pytest.raises(type(exc)):
                pack(*args)
            continue
        assert pack(*args) == expected, name


def test_scripts_are_reloaded_after_script_flush(any_client):
    store = SessionStore(any_client, LifecyclePolicy(window_turns=2, fold_batch=1))
    store.append_turn("s", turn(0))
    any_client.script_flush()  # on a cluster redis-py sends it to every primary
    assert not any(any_client.script_exists(store._append.sha))
    for i in range(1, 4):  # append, fold, load, state: every script is missing now
        store.append_turn("s", turn(i))
    store.update_state("s", lambda s: {"ok": True})
    assert store.load_context("s").turns == [turn(2), turn(3)]
    assert store.get_state("s")[0] == {"ok": True}


@pytest.mark.realredis
def test_cluster_falls_back_to_redis_py_routing_when_a_slot_moves(redis_cluster, monkeypatch):
    client = connect(redis_cluster.url)
    client.flushall(target_nodes="primaries")
    store = SessionStore(client, LifecyclePolicy(window_turns=2, fold_batch=1))
    store.append_turn("s", turn(0))
    right = client.get_node_from_key(store.keys("s")[0])
    wrong = next(n for n in client.get_primaries() if n.name != right.name)
    wrong_pool = client.get_redis_connection(wrong).connection_pool
    # a stale slot map: the hand-packed calls go to the wrong node and get MOVED
    monkeypatch.setattr(store._wire, "_pool", lambda key: wrong_pool)
    client.script_flush()  # and the scripts must be loaded again on the way
    for i in range(1, 4):
        store.append_turn("s", turn(i))
    ctx = store.load_context("s")
    assert ctx.turns == [turn(2), turn(3)] and len(ctx.summary.splitlines()) == 2
    assert store.update_state("s", lambda s: {"n": 1}) == {"n": 1}


def test_client_that_decodes_responses_is_refused():
    import fakeredis

    with pytest.raises(InvalidInput, match="decode_responses=False"):
        SessionStore(fakeredis.FakeRedis(decode_responses=True))


def test_a_failed_call_does_not_poison_the_pool():
    """After a failed call the connection is dropped, so the next call reads its own reply."""
    client = connect("fakeredis://wire-test")
    store = SessionStore(client)
    store.append_turn("s", turn(0))
    server = client.connection_pool.connection_kwargs["server"]
    server.connected = False
    with pytest.raises(StoreUnavailable):
        store.load_context("s")
    server.connected = True
    assert store.load_context("s").turns == [turn(0)]
    assert store.append_turn("s", turn(1)) > 0


def test_a_key_of_the_wrong_type_is_corrupt_state_and_the_connection_stays_usable(any_client):
    store = SessionStore(any_client)
    store.append_turn("ok", turn(0))
    any_client.set(store.keys("bad")[0], "not a hash")
    for _ in range(3):  # the same pooled connection is reused each time
        with pytest.raises(CorruptStateError, match=r"sk:\{bad\}:meta"):
            store.load_context("bad")
        assert store.load_context("ok").turns == [turn(0)]


def test_ids_at_the_byte_limits_are_accepted():
    store = SessionStore(connect("fakeredis://"))
    store.append_turn("é" * 128, turn(0), turn_id="é" * 64)  # 256 and 128 bytes of UTF-8
    assert store.load_context("é" * 128).turn_ids == ["é" * 64]


# -- defects found in review: each of these failed before its fix ------------------------


@pytest.mark.realredis
def test_forked_workers_store_every_turn_with_generated_ids(redis_url):
    """Two workers forked from one parent append 1,000 turns each to one session."""
    from statekit.store.core import _new_turn_id

    _new_turn_id()  # the parent has drawn ids before it forks, as a preloaded app has
    policy = LifecyclePolicy(window_turns=2_500, max_bytes=5_000_000, summary_max_bytes=0, summarizer=None)
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()

    def worker(name: str) -> None:
        rec = Recorder()
        store = SessionStore(connect(redis_url, socket_timeout=10), policy, listeners=[rec])
        for i in range(1000):
            store.append_turn("shared", {"role": "user", "content": f"{name} {i}"})
        results.put((name, rec.kinds().count("appended"), rec.kinds().count("duplicate")))

    workers = [fork.Process(target=worker, args=(name,)) for name in ("a", "b")]
    for w in workers:
        w.start()
    reports = sorted(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert reports == [("a", 1000, 0), ("b", 1000, 0)], "every append stored, none taken for a replay"
    ctx = SessionStore(connect(redis_url), policy).load_context("shared")
    assert ctx.version == 2000 and len(ctx.turns) == 2000 and len(set(ctx.turn_ids)) == 2000


def test_a_turn_or_state_over_the_cap_on_its_own_is_refused_before_it_is_sent(any_client):
    rec = Recorder()
    store = SessionStore(any_client, LifecyclePolicy(max_bytes=2_000, summary_max_bytes=500), listeners=[rec])
    with count_round_trips() as rt, pytest.raises(StateTooLarge) as err:
        store.append_turn("s", turn(0, size=1_000_000))
    assert rt.count == 0 and err.value.size > 1_000_000 and err.value.cap == 2_000
    store.get_state("s")  # the connection is open and the script loaded
    with count_round_trips() as rt, pytest.raises(StateTooLarge):
        store.update_state("s", lambda s: {"blob": "x" * 5_000})
    assert rt.count == 1, "the state is read; the oversized write is never sent"
    assert rec.kinds().count("rejected") == 2
    assert snapshot(any_client, store, "s") == {}


def _wrong_meta_type(client, keys):
    client.set(keys[0], "not a hash")
    return keys[0]


def _meta_field_not_a_number(client, keys):
    client.hset(keys[0], mapping={"v": "seven", "b": "ten", "sv": "three", "fv": "x"})
    return keys[0]


def _log_is_a_hash(client, keys):
    client.hset(keys[1], "not", "a list")
    return keys[1]


def _state_is_a_list(client, keys):
    client.hset(keys[0], mapping={"v": 1, "sv": 1, "b": 10})
    client.rpush(keys[3], "not a string")
    return keys[3]


@pytest.mark.parametrize(
    "op, damage",
    [
        ("append_turn", _wrong_meta_type),
        ("append_turn", _meta_field_not_a_number),
        ("append_turn", _log_is_a_hash),
        ("load_context", _wrong_meta_type),
        ("load_context", _meta_field_not_a_number),
        ("load_context", _log_is_a_hash),
        ("get_state", _wrong_meta_type),
        ("get_state", _meta_field_not_a_number),
        ("get_state", _state_is_a_list),
        ("update_state", _wrong_meta_type),
        ("update_state", _meta_field_not_a_number),
        ("update_state", _state_is_a_list),
    ],
)
def test_data_the_store_did_not_write_is_corrupt_state_naming_the_key(any_client, op, damage):
    store = SessionStore(any_client)
    keys = store.keys("bad")
    key = damage(any_client, keys)
    before = snapshot(any_client, store, "bad")
    call = {
        "append_turn": lambda: store.append_turn("bad", turn(0)),
        "load_context": lambda: store.load_context("bad"),
        "get_state": lambda: store.get_state("bad"),
        "update_state": lambda: store.update_state("bad", lambda s: {"n": 1}),
    }[op]
    with pytest.raises(CorruptStateError, match=re.escape(key)) as err:
        call()
    assert "left as is" in str(err.value)
    assert snapshot(any_client, store, "bad") == before, "nothing was written"
    store.append_turn("ok", turn(0))  # the connection and other sessions are fine
    assert store.load_context("ok").turns == [turn(0)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tag_region_never_creates_a_key_without_a_ttl(any_client, n):
    """The session expires just before the n-th round trip of tag_region (or never, past its last)."""
    store = SessionStore(any_client, LifecyclePolicy(ttl_seconds=100))
    store.append_turn("s", turn(0))
    meta = store.keys("s")[0]
    with before_round_trip(n, lambda: any_client.delete(*store.keys("s"))) as rt:
        tagged = store.tag_region("s", "eu-west-1")
    expired = n <= rt.count
    assert tagged is not expired
    if expired:
        assert not any(any_client.exists(k) for k in store.keys("s")), "no key was recreated"
    else:
        assert any_client.hget(meta, "rg") == b"eu-west-1" and 0 < any_client.pttl(meta) <= 100_000


def test_tag_region_of_a_missing_session_creates_nothing():
    client = connect("fakeredis://")
    assert SessionStore(client).tag_region("nobody", "eu") is False
    assert client.dbsize() == 0
    with pytest.raises(InvalidInput, match="bad region"):
        SessionStore(client).tag_region("nobody", "")


# -- the summary says what it is ----------------------------------------------------------


def test_extractive_excerpts_are_not_sold_as_a_summary():
    store = SessionStore(connect("fakeredis://"), LifecyclePolicy(window_turns=1, fold_batch=1))
    for i in range(3):
        store.append_turn("s", turn(i))
    head = store.load_context("s").messages()[0]["content"]
    assert head.startswith("Excerpts of earlier turns (the first sentence of each")
    assert "Summary of" not in head


class FakeModel:
    """A model call that fails `failures` times, then folds by listing what it was given."""

    def __init__(self, failures: int = 0, answer: str | None = None):
        self.failures, self.answer, self.prompts = failures, answer, []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if self.failures:
            self.failures -= 1
            raise TimeoutError("the model did not answer in time")
        if self.answer is not None:
            return self.answer
        new = prompt.split("New turns:\n", 1)[1].split("\n\nNew summary:", 1)[0]
        old = prompt.split("Summary so far:\n", 1)[1].split("\n\nNew turns:", 1)[0]
        return "\n".join(x for x in (old if old != "(empty)" else "", new) if x)


def test_an_llm_summarizer_that_fails_loses_no_parked_turn():
    model = FakeModel(failures=2)
    rec = Recorder()
    policy = LifecyclePolicy(window_turns=2, fold_batch=2, summarizer=LLMSummarizer(model), summary_max_bytes=4_000)
    store = SessionStore(connect("fakeredis://"), policy, listeners=[rec])
    for i in range(5):  # folds offered after the 4th and 5th appends: both fail
        store.append_turn("s", turn(i))
    assert rec.kinds().count("fold_failed") == 2
    assert store.load_context("s").pending == [turn(0), turn(1), turn(2)], "every evicted turn is still parked"
    store.append_turn("s", turn(5))  # the model is back
    ctx = store.load_context("s")
    assert ctx.pending == [] and ctx.turns == [turn(4), turn(5)]
    assert [f"message {i}." in ctx.summary for i in range(4)] == [True] * 4
    assert ctx.messages()[0]["content"].startswith("Summary of the earlier conversation:\n")
    assert "Fold the new turns into the summary" in model.prompts[-1]


@pytest.mark.parametrize("answer", ["", "   ", None])
def test_an_empty_model_answer_is_a_failed_fold_not_an_empty_summary(answer):
    model = FakeModel(answer=answer if answer is not None else 42)
    policy = LifecyclePolicy(window_turns=1, fold_batch=1, summarizer=LLMSummarizer(model), summary_max_bytes=500)
    rec = Recorder()
    store = SessionStore(connect("fakeredis://"), policy, listeners=[rec])
    for i in range(3):
        store.append_turn("s", turn(i))
    assert rec.kinds().count("fold_failed") == 2 and "summarised" not in rec.kinds()
    assert store.load_context("s").pending == [turn(0), turn(1)]
