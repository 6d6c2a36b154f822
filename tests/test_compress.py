"""Compression of what the store and the saver write (statekit.codec, issue 23): every record
kind round-trips, small or incompressible values stay raw, the byte cap counts stored bytes,
mixed fleets (records from before the codec, records of a rotated dictionary) read back, a
missing dictionary or a corrupt frame is a CorruptStateError that changes nothing, and the
round trips stay one per append and one per load. Each runs on fakeredis and on a real
redis-server."""

from __future__ import annotations

import asyncio
import base64
import os
import sys

import orjson
import pytest

import statekit as sk
from statekit import codec
from statekit.codec import Codec
from statekit.errors import CorruptStateError, MissingExtra, StateTooLarge
from statekit.store import dictionaries
from statekit.testing import count_round_trips
from statekit.testing.payloads import chat_turns

pytest.importorskip("zstandard")


@pytest.fixture
def url(any_url):
    """Each backend, emptied (conftest's `any_url`): fakeredis, a real server, a real cluster."""
    return any_url


@pytest.fixture
def client(any_client):
    return any_client


def policy(**kw):
    base = {
        "window_turns": 10,
        "ttl_seconds": 3600,
        "max_bytes": 500_000,
        "summary_max_bytes": 3000,
        "summarizer": sk.ExtractiveSummarizer(),
        "fold_batch": 4,
    }
    return sk.LifecyclePolicy(**{**base, **kw})


def forget_dictionaries() -> None:
    """What a fresh process knows: no dictionary yet."""
    codec._dictionaries.clear()
    codec._renew()  # and the compressors and decompressors made with them


def fill(store, sessions, turns=14, seed=0):
    for i in range(sessions):
        for turn in chat_turns(turns, seed + i):
            store.append_turn(f"s{i}", turn)


def trained_on(client, ns, sessions, seed, **train):
    """`sessions` sessions of chat turns written compressed into `ns`, and a dictionary trained
    on them (the namespace's newest from now on)."""
    fill(sk.SessionStore(client, policy=policy(), namespace=ns, codec=Codec()), sessions, seed=seed)
    return dictionaries.train(client, ns, size=8192, sample=2000, **train)


def log_of(client, ns, sid):
    return client.lrange(f"{ns}:{{{sid}}}:log", 0, -1)


def heads(records):
    return {r[r.index(b"\x1f") + 1] for r in records}


# -- the codec on its own -----------------------------------------------------------------


def test_small_and_incompressible_values_stay_raw():
    zc = Codec()
    small = {"role": "user", "content": "hi"}
    assert zc.encode(small) == codec.encode(small)
    # a token zstd cannot shrink (random bytes in base64, over min_bytes): never grown, stored raw
    blob = {"token": base64.b64encode(os.urandom(100)).decode()}
    assert len(codec.encode(blob)) > zc.min_bytes
    assert zc.encode(blob) == codec.encode(blob)
    for n in range(60, 3000, 97):  # nor any size of such a value
        value = {"attachment": base64.b64encode(os.urandom(n)).decode()}
        assert len(zc.encode(value)) <= len(codec.encode(value))
    big = chat_turns(40, 1)
    for turn in big:
        stored, raw = zc.encode(turn), codec.encode(turn)
        assert len(stored) <= len(raw)
        assert codec.decode(stored, "k") == turn
    assert any(zc.encode(t)[:1] == codec.FORMAT_ZSTD for t in big)


def test_text_and_frames_round_trip():
    zc = Codec()
    text = " ".join(t["content"] for t in chat_turns(12, 2))
    stored = zc.text(text)
    assert codec.is_frame(stored) and len(stored) < len(text.encode())
    assert codec.read_text(stored, "k") == text
    assert codec.read_text("plain ünïcode".encode(), "k") == "plain ünïcode"


def test_corrupt_frame_is_corrupt_state():
    zc = Codec()
    stored = zc.encode(chat_turns(8, 3)[1])
    assert stored[:1] == codec.FORMAT_ZSTD
    garbled = stored[:12] + bytes(b ^ 0x5A for b in stored[12:])
    with pytest.raises(CorruptStateError, match="k"):
        codec.decode(garbled, "k")
    with pytest.raises(CorruptStateError):
        codec.decode(stored[:5], "k")


@pytest.mark.parametrize("raw", [b"\x02", b"\x02" + codec.ZSTD_MAGIC, b"\x02" + codec.ZSTD_MAGIC + b"\x20\x05abc"])
def test_a_process_whose_first_zstd_contact_is_a_bad_frame_gets_corrupt_state(monkeypatch, raw):
    monkeypatch.setattr(codec, "_zstandard", None)  # as in a process that has not compressed yet
    with pytest.raises(CorruptStateError, match="k: "):
        codec.decode(raw, "k")


@pytest.mark.parametrize("declared", [2**30 + 1, 2**35, 2**62])
def test_a_frame_that_claims_a_huge_content_is_corrupt_state_not_an_allocation(declared):
    # a 16-byte frame whose header says it holds `declared` bytes: zstd would try to allocate them
    frame = codec.FORMAT_ZSTD + codec.ZSTD_MAGIC + b"\xe0" + declared.to_bytes(8, "little") + b"\x01\x00\x00"
    with pytest.raises(CorruptStateError, match="says it holds"):
        codec.decode(frame, "k")


def test_codec_without_zstandard_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setattr(codec, "_zstandard", None)
    with pytest.raises(MissingExtra, match=r"pip install 'statekit\[compress\]'"):
        Codec()
    assert codec.decode(codec.encode({"a": 1}), "k") == {"a": 1}  # raw records need no zstandard
    Codec(compress=False)


# -- the store --------------------------------------------------------------------------


def test_every_record_kind_round_trips_compressed(client):
    plain = sk.SessionStore(client, policy=policy(), namespace="p")
    packed = sk.SessionStore(client, policy=policy(), namespace="z", codec=Codec())
    turns = chat_turns(40, 5)
    state = {"ticket": {"id": "T-1", "notes": [t["content"] for t in turns[:6]]}}
    for store in (plain, packed):
        for turn in turns:
            store.append_turn("s", turn)
        store.update_state("s", lambda _s: state)
    a, b = plain.load_context("s"), packed.load_context("s")
    assert (b.turns, b.pending, b.summary) == (a.turns, a.pending, a.summary)
    assert b.summary and b.turns == turns[-10:]
    assert packed.get_state("s")[0] == state == plain.get_state("s")[0]
    assert codec.FORMAT_ZSTD[0] in heads(log_of(client, "z", "s"))
    assert codec.is_frame(client.get("z:{s}:summary"))
    assert client.get("z:{s}:state")[:1] == codec.FORMAT_ZSTD
    assert b.bytes < 0.75 * a.bytes  # the meta's byte count is what is stored


def test_state_through_migrations_compressed(client):
    m = sk.Migrations(current=2)

    @m.step(1, 2)
    def _(data):
        return {**data, "v2": True}

    old = sk.SessionStore(client, policy=policy(), namespace="m")
    notes = [t["content"] for t in chat_turns(10, 6)]
    old.update_state("s", lambda _s: {"notes": notes})
    new = sk.SessionStore(client, policy=policy(), namespace="m", migrations=m, codec=Codec())
    assert new.get_state("s")[0] == {"notes": notes, "v2": True}  # migrated on read, written back compressed
    assert client.get("m:{s}:state")[:1] == codec.FORMAT_ZSTD
    assert m.load(client.get("m:{s}:state")).data == {"notes": notes, "v2": True}


def test_byte_cap_counts_stored_bytes(client):
    turn = {"role": "assistant", "content": " ".join(t["content"] for t in chat_turns(30, 7))}
    raw_len = len(codec.encode(turn))
    stored_len = 3 + len(Codec(dictionaries=False).encode(turn))  # "t1" + separator + envelope and frame
    cap = int(stored_len * 1.5)
    assert raw_len > cap  # over the cap raw, under it compressed
    plain = sk.SessionStore(client, policy=policy(max_bytes=cap), namespace="p")
    with pytest.raises(StateTooLarge):
        plain.append_turn("s", turn, turn_id="t1")
    packed = sk.SessionStore(client, policy=policy(max_bytes=cap), namespace="z", codec=Codec(dictionaries=False))
    assert packed.append_turn("s", turn, turn_id="t1") == stored_len == len(log_of(client, "z", "s")[0])
    with pytest.raises(StateTooLarge) as err:  # a second one would take the session past the cap
        packed.append_turn("s", turn, turn_id="t2")
    assert err.value.size == 2 * stored_len  # reported in stored bytes
    assert packed.load_context("s").bytes == stored_len


def test_records_from_before_the_codec_read_back(client):
    old = sk.SessionStore(client, policy=policy(), namespace="f")
    turns = chat_turns(30, 8)
    for turn in turns[:20]:
        old.append_turn("s", turn)
    old.update_state("s", lambda _s: {"notes": [t["content"] for t in turns[:5]]})
    new = sk.SessionStore(client, policy=policy(), namespace="f", codec=Codec())
    for turn in turns[20:]:
        new.append_turn("s", turn)
    assert heads(log_of(client, "f", "s")) >= {1, 2}  # a mixed log
    for store in (old, new):  # and each version reads the other's
        ctx = store.load_context("s")
        assert ctx.turns == turns[-10:] and ctx.summary
    assert new.get_state("s")[0] == {"notes": [t["content"] for t in turns[:5]]}


def test_rotated_dictionary_records_read_back(client):
    a = trained_on(client, "r", 40, seed=100)
    writer_a = sk.SessionStore(client, policy=policy(), namespace="r", codec=Codec())
    turns_a = chat_turns(14, 500)
    for turn in turns_a:
        writer_a.append_turn("a", turn)
    assert writer_a._dicts.dict_id == a.dict_id
    b = dictionaries.train(client, "r", size=8192, sample=2000, seed=1)
    assert b.dict_id != a.dict_id and dictionaries.newest(client, "r") == b.dict_id
    writer_b = sk.SessionStore(client, policy=policy(), namespace="r", codec=Codec())
    turns_b = chat_turns(14, 501)
    for turn in turns_b:
        writer_b.append_turn("b", turn)
    for turn in chat_turns(4, 502):
        writer_b.append_turn("a", turn)  # session a now holds records of A and of B
    counts = dictionaries.census(client, "r")
    assert counts.get(a.dict_id) and counts.get(b.dict_id)
    forget_dictionaries()  # a reader in a fresh process
    reader = sk.SessionStore(client, policy=policy(), namespace="r")
    got_b = reader.load_context("b")
    assert got_b.turns == turns_b[-10:]
    got_a = reader.load_context("a")
    assert got_a.turns == (turns_a + chat_turns(4, 502))[-10:]
    assert codec.registered(a.dict_id) and codec.registered(b.dict_id)


def test_missing_dictionary_is_corrupt_state_naming_it(client):
    trained = trained_on(client, "x", 30, seed=200)
    writer = sk.SessionStore(client, policy=policy(), namespace="x", codec=Codec())
    for turn in chat_turns(6, 300):
        writer.append_turn("d", turn)
    before = log_of(client, "x", "d")
    client.delete(f"x:dict:{trained.dict_id}")
    forget_dictionaries()
    reader = sk.SessionStore(client, policy=policy(), namespace="x")
    with pytest.raises(CorruptStateError, match=f"{trained.dict_id}, which is not in Redis"):
        reader.load_context("d")
    assert log_of(client, "x", "d") == before  # nothing changed


def test_corrupt_stored_frame_is_corrupt_state(client):
    store = sk.SessionStore(client, policy=policy(), namespace="c", codec=Codec(dictionaries=False))
    for turn in chat_turns(4, 9):
        store.append_turn("s", turn)
    records = log_of(client, "c", "s")
    i = next(i for i, r in enumerate(records) if heads([r]) == {2})
    cut = records[i].index(b"\x1f") + 2
    client.lset("c:{s}:log", i, records[i][:cut] + bytes(b ^ 0x33 for b in records[i][cut:]))
    with pytest.raises(CorruptStateError, match="c:{s}:log"):
        store.load_context("s")


def test_round_trips_stay_one_per_append_and_load(client):
    seed_store = sk.SessionStore(client, policy=policy(), namespace="t", codec=Codec())
    fill(seed_store, 20, seed=400)
    dictionaries.train(client, "t", size=8192, sample=2000)
    forget_dictionaries()
    store = sk.SessionStore(client, policy=policy(window_turns=50, summary_max_bytes=0, summarizer=None), namespace="t",
                            codec=Codec())  # fmt: skip
    turns = chat_turns(8, 401)
    store.append_turn("s", turns[0])  # first sight: the newest pointer and the dictionary
    with count_round_trips() as rt:
        for turn in turns[1:]:
            store.append_turn("s", turn)
    assert rt.count == len(turns) - 1
    assert heads(log_of(client, "t", "s")) == {2} or 2 in heads(log_of(client, "t", "s"))
    with count_round_trips() as rt:
        ctx = store.load_context("s")
    assert rt.count == 1 and ctx.turns == turns
    forget_dictionaries()
    reader = sk.SessionStore(client, policy=policy(window_turns=50), namespace="t", codec=Codec())
    reader.load_context("s")  # first sight of the dictionary: one GET more
    with count_round_trips() as rt:
        assert reader.load_context("s").turns == turns
    assert rt.count == 1


def test_async_store_compressed(url):
    async def run():
        aclient = sk.connect_async(url)
        try:
            store = sk.AsyncSessionStore(aclient, policy=policy(), namespace="as", codec=Codec())
            turns = chat_turns(30, 11)
            for turn in turns:
                await store.append_turn("s", turn)
            await store.update_state("s", lambda _s: {"n": [t["content"] for t in turns[:4]]})
            ctx = await store.load_context("s")
            state, _ = await store.get_state("s")
            return turns, ctx, state
        finally:
            await aclient.aclose()

    turns, ctx, state = asyncio.run(run())
    assert ctx.turns == turns[-10:] and ctx.summary
    assert state == {"n": [t["content"] for t in turns[:4]]}
    plain = sk.SessionStore(sk.connect(url), policy=policy(), namespace="as")
    assert plain.load_context("s").turns == turns[-10:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_child_compresses(client, url):
    zc = Codec(dictionaries=False)
    turn = chat_turns(3, 12)[1]
    zc.encode(turn)  # the parent's thread has its compressor
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            store = sk.SessionStore(sk.connect(url), policy=policy(), namespace="fk", codec=zc)
            for t in chat_turns(10, 13):
                store.append_turn("child", t)
            code = 0 if codec.decode(zc.encode(turn), "k") == turn else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    if not url.startswith("fakeredis"):
        assert sk.SessionStore(client, policy=policy(), namespace="fk").load_context("child").turns == chat_turns(
            10, 13
        )


def test_resilient_store_buffers_and_replays_compressed_turns(client):
    store = sk.SessionStore(client, policy=policy(), namespace="rb", codec=Codec(dictionaries=False))
    turn = chat_turns(3, 14)[1]
    turn_id, record = store.prepare_turn("s", turn, None)
    assert record[len(turn_id) + 1] == 2
    assert store.record_turn(record) == turn
    store._append_encoded("s", turn_id, record)
    assert store.load_context("s").turns == [turn]


# -- dictionaries: the census and retiring ------------------------------------------------


def test_retire_refused_while_records_name_it(client):
    a = trained_on(client, "q", 30, seed=600)
    writer = sk.SessionStore(client, policy=policy(), namespace="q", codec=Codec())
    for turn in chat_turns(6, 700):
        writer.append_turn("uses-a", turn)
    with pytest.raises(sk.InvalidInput, match="newest"):
        dictionaries.retire(client, "q", a.dict_id)
    dictionaries.train(client, "q", size=8192, sample=2000, seed=2)
    with pytest.raises(sk.InvalidInput, match="stopped being the newest 0 s ago"):
        dictionaries.retire(client, "q", a.dict_id)  # a writer may not have looked up the newer one yet
    with pytest.raises(sk.InvalidInput, match="still named by"):
        dictionaries.retire(client, "q", a.dict_id, grace_s=0)
    assert client.exists(f"q:dict:{a.dict_id}")
    writer.delete("uses-a")
    dictionaries.retire(client, "q", a.dict_id, grace_s=0)
    assert not client.exists(f"q:dict:{a.dict_id}")
    assert a.dict_id not in {row["id"] for row in dictionaries.listing(client, "q")}


def test_dictionaries_have_no_ttl_and_are_not_sessions(client):
    trained = trained_on(client, "n", 20, seed=800)
    assert client.pttl(f"n:dict:{trained.dict_id}") == -1
    session_keys = list(client.scan_iter(match=sk.keys.key_pattern("n")))
    assert session_keys and not [k for k in session_keys if b":dict:" in k]
    assert all(client.pttl(k) > 0 for k in session_keys)
    from statekit.observe.health import health_scan

    assert health_scan(client, "n").keys_without_ttl == []  # `statekit health` does not flag them


# -- the CLI ----------------------------------------------------------------------------


def test_cli_dict_train_list_retire(client, url, capsys):
    from statekit.cli import main

    writer = sk.SessionStore(client, policy=policy(), namespace="cli", codec=Codec())
    fill(writer, 40, seed=900)
    assert main(["dict", "train", url, "--namespace", "cli", "--size", "8192", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["ratio_dictionary"] > out["ratio_zstd"] > 1.2
    assert dictionaries.newest(client, "cli") == out["dictionary"]
    assert main(["dict", "list", url, "--namespace", "cli"]) == 0
    assert f"{out['dictionary']}: 8,192 bytes" in capsys.readouterr().out
    assert main(["dict", "retire", url, str(out["dictionary"]), "--namespace", "cli"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newest" in err
    assert main(["dict", "train", url, "--namespace", "empty"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too few" in err


def test_cli_dict_unreachable_and_bad_url(capsys):
    from statekit.cli import main

    assert main(["dict", "train", "redis://127.0.0.1:1", "--namespace", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["dict", "list", "nosuch://x", "--namespace", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- the saver --------------------------------------------------------------------------


def _saver_graph(saver):
    from statekit.testing.payloads import langgraph_messages

    pytest.importorskip("langgraph")
    from langgraph.graph import START, MessagesState, StateGraph

    msgs = langgraph_messages(24, 21)
    it = iter(range(len(msgs)))

    def reply(state):
        i = next(it)
        return {"messages": [msgs[(2 * i + 1) % len(msgs)]]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    return builder.compile(checkpointer=saver), msgs


def _run_thread(saver, thread):
    graph, msgs = _saver_graph(saver)
    config = {"configurable": {"thread_id": thread}}
    for i in range(6):
        graph.invoke({"messages": [msgs[(2 * i) % len(msgs)]]}, config)
    return graph, config


def test_saver_compressed_round_trip_and_mixed_fleet(client):
    pytest.importorskip("langgraph")
    from statekit.langgraph import StatekitSaver

    plain = StatekitSaver(client, namespace="lg")
    graph, config = _run_thread(plain, "old")
    packed = StatekitSaver(client, namespace="lg", codec=Codec())
    _run_thread(packed, "new")
    values = client.hvals("lg:{new}:cp")
    assert any(codec.is_frame(v) for v in values)
    # the old thread, continued by the compressing saver, and every checkpoint read by both
    graph2, _ = _saver_graph(packed)
    graph2.invoke({"messages": [{"role": "user", "content": "and then?"}]}, config)
    for saver in (plain, packed):
        for thread in ("old", "new"):
            history = list(saver.list({"configurable": {"thread_id": thread}}))
            assert history and all(t.checkpoint["channel_values"] is not None for t in history)
    assert [m.content for m in plain.get_tuple(config).checkpoint["channel_values"]["messages"]] == [
        m.content for m in packed.get_tuple(config).checkpoint["channel_values"]["messages"]
    ]
    raw = StatekitSaver(client, namespace="lg2")
    _run_thread(raw, "t")
    z = StatekitSaver(client, namespace="lg3", codec=Codec(dictionaries=False))
    _run_thread(z, "t")
    assert z.footprint("t")["payload_bytes"] < 0.8 * raw.footprint("t")["payload_bytes"]


def test_saver_rotated_and_missing_dictionary(client):
    pytest.importorskip("langgraph")
    from statekit.langgraph import StatekitSaver

    writer = sk.SessionStore(client, policy=policy(), namespace="lgd", codec=Codec())
    fill(writer, 30, seed=1000)  # records to train on, in the saver's namespace
    a = dictionaries.train(client, "lgd", size=8192, sample=2000)
    _run_thread(StatekitSaver(client, namespace="lgd", codec=Codec()), "ta")
    b = dictionaries.train(client, "lgd", size=8192, sample=2000, seed=3)
    _run_thread(StatekitSaver(client, namespace="lgd", codec=Codec()), "tb")
    counts = dictionaries.census(client, "lgd")
    assert counts.get(a.dict_id) and counts.get(b.dict_id)
    forget_dictionaries()
    reader = StatekitSaver(client, namespace="lgd")
    for thread in ("ta", "tb"):
        assert len(reader.get_tuple({"configurable": {"thread_id": thread}}).checkpoint["channel_values"]["messages"])
    client.delete(f"lgd:dict:{a.dict_id}")
    forget_dictionaries()
    with pytest.raises(CorruptStateError, match=str(a.dict_id)):
        StatekitSaver(client, namespace="lgd").get_tuple({"configurable": {"thread_id": "ta"}})


def test_langgraph_conformance_suite_with_compression(url):
    """LangGraph's own suite, every capability, on a saver that compresses every value that
    zstd shrinks (min_bytes=0)."""
    pytest.importorskip("langgraph.checkpoint.conformance")
    from langgraph.checkpoint.conformance import checkpointer_test, validate

    from statekit.langgraph import StatekitSaver

    @checkpointer_test(name="StatekitSaver, compressed")
    async def saver():
        s = StatekitSaver.from_url(url, keep_last=None, codec=Codec(min_bytes=0))
        yield s
        await s.aclose()

    report = asyncio.run(validate(saver))
    assert len(report.results) == 8
    for name, result in report.results.items():
        assert result.detected and result.failures == [] and result.tests_failed == 0, name
        assert result.tests_passed >= 5, name
    assert report.passed_all_base() and report.passed_all()


# -- the memory model -----------------------------------------------------------------------


@pytest.mark.realredis
@pytest.mark.parametrize("which", ["support-agent", "drop-mode"])
def test_model_within_5_percent_of_info_memory_compressed(fresh_redis_server, profiles_dir, which):
    """1,000 sessions of realistic turns written compressed into an empty redis-server: the
    model, given the ratio measured on the turns, within 5 % of INFO memory's used_memory;
    and compression does save memory there."""
    from statekit.decide import sizing
    from statekit.decide.lifecycle import recommend
    from statekit.decide.profile import WorkloadProfile

    if which == "support-agent":
        pol = recommend(WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")).policy
    else:
        pol = sk.LifecyclePolicy(window_turns=20, summarizer=None, summary_max_bytes=0)
    client = sk.connect(fresh_redis_server.url, socket_timeout=10)
    turns = chat_turns(14, 5)
    m = sizing.measure(client, pol, 1_000, 14, 700, codec_=Codec(dictionaries=False), session_turns=turns)
    assert abs(m.error) <= 0.05, m.as_dict()
    raw = sizing.estimate_memory(pol, 1_000, 14, 700, session_turns=turns)
    assert m.estimate.per_session < 0.8 * raw.per_session


def test_plan_capacity_takes_the_profiles_ratio(profiles_dir):
    from statekit.decide.lifecycle import recommend
    from statekit.decide.profile import WorkloadProfile
    from statekit.decide.sizing import plan_capacity

    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    assert profile.turns.compression_ratio == 1.0
    pol = recommend(profile).policy
    plain = plan_capacity(profile, pol)
    packed = plan_capacity(
        profile.model_copy(update={"turns": profile.turns.model_copy(update={"compression_ratio": 2.5})}), pol
    )
    assert packed["compression_ratio"] == 2.5
    assert packed["stored_bytes_per_session"] < 0.5 * plain["stored_bytes_per_session"]
    assert packed["per_session_bytes"] < 0.7 * plain["per_session_bytes"]
    with pytest.raises(Exception, match="compression_ratio"):
        WorkloadProfile.model_validate(
            {**profile.model_dump(), "turns": {**profile.turns.model_dump(), "compression_ratio": 0.5}}
        )


def test_calibrate_measures_the_ratio_and_bytes_before_compression(client, profiles_dir):
    from statekit.decide.calibrate import calibrate
    from statekit.decide.lifecycle import recommend
    from statekit.decide.profile import WorkloadProfile

    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    pol = recommend(profile).policy
    plain = sk.SessionStore(client, policy=pol, namespace="cp")
    packed = sk.SessionStore(client, policy=pol, namespace="cz", codec=Codec(dictionaries=False))
    fill(plain, 60, seed=1100)
    fill(packed, 60, seed=1100)
    rows = {name: {r["assumption"]: r for r in calibrate(client, name, profile).table()} for name in ("cp", "cz")}
    assert rows["cp"]["turns.compression_ratio"]["measured"] == pytest.approx(1.0)
    assert not rows["cp"]["turns.compression_ratio"]["flagged"]
    ratio = rows["cz"]["turns.compression_ratio"]
    assert ratio["measured"] > 1.3 and ratio["flagged"] and ratio["applied"]
    plain_bytes = rows["cp"]["turns.bytes_per_turn"]["measured"]
    assert rows["cz"]["turns.bytes_per_turn"]["measured"] == pytest.approx(plain_bytes, rel=0.15)
    cal = calibrate(client, "cz", profile)
    assert cal.profile().turns.compression_ratio == pytest.approx(ratio["measured"], abs=0.01)


def test_readable_by_and_migration_read_states_compressed_with_a_dictionary(client):
    from pydantic import BaseModel

    from statekit.migrate import migrate_namespace, readable_by

    class Notes(BaseModel):
        notes: list[str]

    m = sk.Migrations(current=2)

    @m.step(1, 2)
    def _(data):
        return {"notes": data["notes"] + ["v2"]}

    writer = sk.SessionStore(client, policy=policy(), namespace="rb2", codec=Codec())
    fill(writer, 20, seed=1200)
    dictionaries.train(client, "rb2", size=8192, sample=2000)
    old = sk.SessionStore(client, policy=policy(), namespace="rb2", migrations=sk.Migrations(current=1), codec=Codec())
    notes = [t["content"] for t in chat_turns(6, 1201)]
    for i in range(3):
        old.update_state(f"s{i}", lambda _s: {"notes": notes})
    assert client.get("rb2:{s0}:state")[:1] == codec.FORMAT_ZSTD
    forget_dictionaries()  # another process: it meets the dictionary in the states
    assert readable_by(client, "rb2", Notes, m)["readable"] == 3
    report = migrate_namespace(client, "rb2", m)
    assert report.migrated == 3 and not report.errors
    assert sk.SessionStore(client, policy=policy(), namespace="rb2", migrations=m).get_state("s1")[0] == {
        "notes": [*notes, "v2"]
    }


def test_durable_buffer_keeps_compressed_turns_readable_after_a_restart(client, tmp_path):
    from statekit.resilience.buffer import DurableBuffer, _Pending

    writer = sk.SessionStore(client, policy=policy(), namespace="db", codec=Codec())
    fill(writer, 20, seed=1300)
    dictionaries.train(client, "db", size=8192, sample=2000)
    store = sk.SessionStore(client, policy=policy(), namespace="db", codec=Codec())
    store.append_turn("warm", chat_turns(2, 1301)[1])  # meets the newest dictionary
    turn = chat_turns(4, 1302)[3]
    turn_id, record = store.prepare_turn("s", turn, None)
    assert codec.dictionary_id(record[len(turn_id) + 2 :]) > 0
    buffer = DurableBuffer(tmp_path / "buf.sqlite")
    buffer.add(_Pending("append", "s", turn=turn, turn_id=turn_id, record=record))
    buffer.close()
    forget_dictionaries()  # a restarted process: it has not met the dictionary before it replays
    [row] = DurableBuffer(tmp_path / "buf.sqlite").load()
    assert row.turn == turn and row.record == record
    store._append_encoded("s", turn_id, record)
    assert store.load_context("s").turns == [turn]


def test_a_buffered_turn_replayed_after_a_rotation_is_written_with_the_newest_dictionary(client, tmp_path):
    """A record buffered with dictionary A is replayed, by a restarted process that has not met
    A, after B became the newest: it is written again with B (A fetched to read it)."""
    a = trained_on(client, "rot", 20, seed=1320)
    store = sk.SessionStore(client, policy=policy(), namespace="rot", codec=Codec())
    store.append_turn("warm", chat_turns(2, 1321)[1])
    turn = chat_turns(4, 1322)[3]
    turn_id, record = store.prepare_turn("s", turn, None)
    assert codec.dictionary_id(record[len(turn_id) + 2 :]) == a.dict_id
    b = dictionaries.train(client, "rot", size=8192, sample=2000, seed=9)
    forget_dictionaries()  # restarted: knows neither dictionary
    replayer = sk.SessionStore(client, policy=policy(), namespace="rot", codec=Codec())
    replayer._append_encoded("s", turn_id, record)
    [stored] = log_of(client, "rot", "s")
    assert codec.dictionary_id(stored[len(turn_id) + 2 :]) == b.dict_id
    assert replayer.load_context("s").turns == [turn]


def test_retire_with_rewrite_migrates_every_value_to_the_newest_dictionary(client, url, capsys):
    pytest.importorskip("langgraph")
    from statekit.cli import main
    from statekit.langgraph import StatekitSaver

    a = trained_on(client, "rw", 20, seed=1400)
    store = sk.SessionStore(client, policy=policy(), namespace="rw", codec=Codec())
    turns = chat_turns(30, 1401)
    for turn in turns:
        store.append_turn("s", turn)
    state = {"notes": [t["content"] for t in turns[:5]]}
    store.update_state("s", lambda _s: state)
    _run_thread(StatekitSaver(client, namespace="rw", codec=Codec()), "t")
    b = dictionaries.train(client, "rw", size=8192, sample=2000, seed=4)
    before = dictionaries.census(client, "rw")
    assert before.get(a.dict_id, 0) > 10
    reader = StatekitSaver(client, namespace="rw")
    thread = reader.get_tuple({"configurable": {"thread_id": "t"}})
    ctx, ttl = store.load_context("s"), client.pttl("rw:{s}:log")
    assert main(["dict", "retire", url, str(a.dict_id), "--namespace", "rw", "--grace", "0"]) == 2
    assert "still named by" in capsys.readouterr().err
    assert main(["dict", "retire", url, str(a.dict_id), "--namespace", "rw", "--rewrite"]) == 2
    assert "stopped being the newest" in capsys.readouterr().err  # nothing rewritten within the grace
    assert dictionaries.census(client, "rw") == before
    assert main(["dict", "retire", url, str(a.dict_id), "--namespace", "rw", "--rewrite", "--grace", "0"]) == 0
    assert "retired" in capsys.readouterr().out
    after = dictionaries.census(client, "rw")
    assert a.dict_id not in after and after[b.dict_id] >= before[a.dict_id]
    assert not client.exists(f"rw:dict:{a.dict_id}")
    forget_dictionaries()  # a fresh process: only B is in Redis now
    again = sk.SessionStore(client, policy=policy(), namespace="rw").load_context("s")
    assert (again.turns, again.pending, again.summary) == (ctx.turns, ctx.pending, ctx.summary)
    records = client.lrange("rw:{s}:log", 0, -1)
    held = sum(map(len, records)) + client.strlen("rw:{s}:summary") + client.strlen("rw:{s}:state")
    assert again.bytes == held  # the cap's byte count moved with the values
    assert 0 < client.pttl("rw:{s}:log") <= ttl
    assert store.get_state("s")[0] == state
    moved = StatekitSaver(client, namespace="rw").get_tuple({"configurable": {"thread_id": "t"}})
    assert moved.checkpoint["channel_values"] == thread.checkpoint["channel_values"]
    assert moved.metadata == thread.metadata
    fields = client.hgetall("rw:{t}:cp")  # the thread's byte count moved with its values too
    held = sum(len(v) for f, v in fields.items() if f[:2] in (b"c\0", b"v\0", b"b\0", b"w\0"))
    assert int(fields[b"bytes"]) == held


@pytest.mark.realredis
def test_bench_compress_runs_small_without_postgresql(tmp_path):
    """benchmarks/bench_compress.py end to end at a small size (the figures in docs/benchmarks.md
    come from the full size): every Redis section runs and reports its ratios. The comparison
    with AsyncPostgresSaver needs PostgreSQL and the bench extra (`make bench`); here it is left
    out on purpose (`--no-postgres`), and the report says so."""
    import subprocess
    from pathlib import Path

    pytest.importorskip("langgraph")
    root = Path(__file__).resolve().parent.parent
    args = ["--sessions", "30", "--threads", "2", "--steps", "3", "--iterations", "30", "--no-postgres"]
    run = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_compress.py"), *args, "--json", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = orjson.loads((tmp_path / "b.json").read_bytes())
    assert set(result["sessions"]) == {"raw", "zstd", "zstd+dict"}
    assert result["ratios"]["session used_memory zstd+dict / raw"] < 1
    assert result["latency"]["load"]["zstd+dict"]["round_trips_per_call"] == 1.0
    assert not result.get("postgres"), "--no-postgres measured PostgreSQL anyway"


# -- what an attack found ------------------------------------------------------------------


def _age_the_newest(client, ns: str, seconds: float) -> None:
    """As if the newest dictionary had been the newest for `seconds` (the server's clock)."""
    now_s, micros = client.time()
    client.set(sk.keys.newest_since_key(ns), str(int(now_s) * 1000 + int(micros) // 1000 - int(seconds * 1000)))


def test_retire_waits_until_every_writer_has_looked_up_the_newest(client):
    """A writer looks the newest dictionary up every refresh_s: retiring the old one right after
    a rewrite deleted a dictionary the writer went on using, and its next turn was unreadable
    to every other process."""
    a = trained_on(client, "g", 30, seed=3000)
    live = sk.SessionStore(client, policy=policy(), namespace="g", codec=Codec())
    live.append_turn("live", chat_turns(2, 3001)[1])
    b = dictionaries.train(client, "g", size=8192, sample=2000, seed=1)
    dictionaries.rewrite(client, "g", a.dict_id)
    with pytest.raises(sk.InvalidInput, match="stopped being the newest"):
        dictionaries.retire(client, "g", a.dict_id)
    live.append_turn("live", chat_turns(2, 3002)[1])  # within its refresh_s: still dictionary A
    assert dictionaries.census(client, "g").get(a.dict_id) == 1  # why retire waits
    _age_the_newest(client, "g", dictionaries.RETIRE_GRACE_S + 1)
    live._dicts.checked = float("-inf")  # its refresh_s has passed too, as the grace promises
    live.append_turn("live", chat_turns(2, 3003)[1])
    dictionaries.rewrite(client, "g", a.dict_id)
    dictionaries.retire(client, "g", a.dict_id)
    assert set(dictionaries.census(client, "g")) <= {0, b.dict_id}
    forget_dictionaries()  # another process
    assert len(sk.SessionStore(client, policy=policy(), namespace="g").load_context("live").turns) == 3


def test_resilient_appends_use_the_newest_dictionary_and_the_cap_counts_what_it_writes(client):
    """ResilientStore's appends never looked the dictionary up: they wrote without one, and a
    turn that fits the cap compressed with the dictionary was refused while Redis was healthy."""
    trained = trained_on(client, "rd", 30, seed=3100)
    turn = chat_turns(2, 3101)[1]
    plain_store = sk.SessionStore(client, policy=policy(), namespace="rd", codec=Codec(dictionaries=False))
    zstd_alone = len(plain_store.prepare_turn("s", turn, "t1")[1])
    tight = policy(max_bytes=zstd_alone - 1, summary_max_bytes=0, summarizer=None)
    store = sk.SessionStore(client, policy=tight, namespace="rd", codec=Codec())
    resilient = sk.ResilientStore(store, timeout_ms=2000)
    assert resilient.append_turn("fits", turn, turn_id="t1") is not None
    records = log_of(client, "rd", "fits")
    with_dict = len(records[0])
    assert with_dict < zstd_alone
    assert codec.dictionary_id(records[0][records[0].index(b"\x1f") + 2 :]) == trained.dict_id


def test_async_resilient_appends_use_the_newest_dictionary(client, url):
    trained = trained_on(client, "ard", 30, seed=3200)

    async def main() -> None:
        from statekit.aio import AsyncResilientStore, AsyncSessionStore, connect_async

        aclient = connect_async(url)
        try:
            store = AsyncSessionStore(aclient, policy=policy(), namespace="ard", codec=Codec())
            resilient = AsyncResilientStore(store, timeout_ms=2000)
            for turn in chat_turns(3, 3201):
                assert await resilient.append_turn("a", turn) is not None
        finally:
            await aclient.aclose()

    asyncio.run(main())
    named = {codec.dictionary_id(r[r.index(b"\x1f") + 2 :]) for r in log_of(client, "ard", "a") if heads([r]) == {2}}
    assert named == {trained.dict_id}


def test_a_fold_that_meets_a_missing_dictionary_does_not_fail_the_append_that_landed(client):
    trained = trained_on(client, "fm", 30, seed=3300)
    writer = sk.SessionStore(client, policy=policy(window_turns=3), namespace="fm", codec=Codec())
    for turn in chat_turns(6, 3301):  # 3 in the window, 3 parked: the next append folds 4
        writer.append_turn("f", turn)
    client.delete(f"fm:dict:{trained.dict_id}")
    forget_dictionaries()
    events = []

    class Seen(sk.StoreListener):
        def on_event(self, kind, session_id, info):
            events.append(kind)

    later = sk.SessionStore(client, policy=policy(window_turns=3), namespace="fm", listeners=[Seen()])
    before = len(log_of(client, "fm", "f"))
    later.append_turn("f", {"role": "user", "content": "one more"}, turn_id="late-1")  # does not raise
    assert len(log_of(client, "fm", "f")) == before + 1 and "fold_failed" in events
    later.append_turn("f", {"role": "user", "content": "one more"}, turn_id="late-1")  # a retry: stored once
    assert len(log_of(client, "fm", "f")) == before + 1
    with pytest.raises(CorruptStateError, match=str(trained.dict_id)):
        later.load_context("f")  # a read names the missing dictionary


def test_a_damaged_dictionary_is_corrupt_state_not_garbage_and_is_fetched_again_once_repaired(client):
    trained = trained_on(client, "dd", 30, seed=3400)
    writer = sk.SessionStore(client, policy=policy(), namespace="dd", codec=Codec())
    turns = chat_turns(6, 3401)
    for turn in turns:
        writer.append_turn("d", turn)
    key = f"dd:dict:{trained.dict_id}"
    good = client.get(key)
    half = len(good) // 2
    client.set(key, good[:half] + good[half:].replace(b"e", b"a"))  # the same id, other content
    forget_dictionaries()
    reader = sk.SessionStore(client, policy=policy(), namespace="dd")
    with pytest.raises(CorruptStateError, match="checksum"):
        reader.load_context("d")
    client.set(key, good)  # repaired: the same process reads it again
    ctx = reader.load_context("d")
    assert ctx.pending + ctx.turns == turns[-len(ctx.pending + ctx.turns) :]


def test_the_decode_cache_keeps_only_frames_that_hold_little():
    """A 140-byte frame can hold 2 MB: the cache keeps what frames decode to, so it kept 2 MB
    per entry (4 GB for 2,048)."""
    codec.cache_decoded(2048)
    small = Codec(min_bytes=0).encode({"content": "b" * 1000})
    for _ in range(2):  # the first decode makes this thread's decompressor; the second is cached
        codec.decode(small, "k")
    assert codec._recent.cache_info().currsize == 1
    big = Codec(min_bytes=0).encode({"content": "a" * 2_000_000})
    assert len(big) < codec.CACHED_FRAME_BYTES
    for _ in range(2):
        assert codec.decode(big, "k") == {"content": "a" * 2_000_000}
    assert codec._recent.cache_info().currsize == 1  # the 2 MB it holds are not kept


def test_training_a_namespace_with_glob_characters_reads_only_its_own_records(client):
    fill(sk.SessionStore(client, policy=policy(), namespace="ab", codec=Codec()), 30, seed=3500)
    with pytest.raises(sk.InvalidInput, match="too few"):
        dictionaries.train(client, "a*", size=8192, sample=2000)
    assert dictionaries.census(client, "a*") == {}


@pytest.mark.parametrize("size", ["99999999999", "1000000000", "10"])
def test_cli_dict_train_refuses_a_size_out_of_range_in_one_line(client, url, capsys, size):
    from statekit.cli import main

    with pytest.raises(SystemExit) as done:  # argparse's own exit for a bad argument
        main(["dict", "train", url, "--namespace", "x", "--size", size])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "1024 to 1048576" in err and "Traceback" not in err


def test_codec_arguments_are_checked():
    for bad in ({"refresh_s": float("nan")}, {"refresh_s": "5"}, {"level": True}, {"min_bytes": True}):
        with pytest.raises(sk.InvalidInput):
            Codec(**bad)
    with pytest.raises(sk.InvalidInput):
        codec.cache_decoded(True)
