from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from statekit import Context, LifecyclePolicy, SessionStore, StateTooLarge, StoreListener, StoreUnavailable, connect
from statekit.resilience import ResilientStore
from statekit.testing import FakeClock, FaultInjector, count_round_trips


class Events(StoreListener):
    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def on_event(self, kind, session_id, info):
        self.seen.append((kind, dict(info)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]


def turn(i: int) -> dict:
    return {"role": "user", "content": f"message {i}"}


def make(injector: FaultInjector | None = None, **kwargs) -> tuple[ResilientStore, FaultInjector]:
    injector = injector or FaultInjector()
    policy = kwargs.pop("policy", LifecyclePolicy(window_turns=50, fold_batch=4))
    store = SessionStore(injector.client(), policy)
    kwargs.setdefault("timeout_ms", 50)
    return ResilientStore(store, **kwargs), injector


def test_normal_operation_passes_through():
    rs, _ = make()
    assert rs.append_turn("s", turn(0)) > 0
    ctx = rs.load_context("s")
    assert (ctx.source, ctx.degraded, ctx.turns, rs.mode) == ("store", False, [turn(0)], "normal")
    assert rs.update_state("s", lambda s: {"n": 1}) == {"n": 1}
    assert rs.get_state("s") == ({"n": 1}, 1)
    assert rs.delete("s") is True


@pytest.mark.parametrize("fault", ["fail", "hang", "slow"])
def test_reads_never_raise_and_say_where_they_came_from(fault):
    rs, inj = make(fallback=lambda sid: {"summary": f"default for {sid}"})
    rs.append_turn("known", turn(0))
    rs.load_context("known")  # cached
    {"fail": inj.fail, "hang": inj.hang, "slow": lambda: inj.slow(200)}[fault]()
    cached = rs.load_context("known")
    default = rs.load_context("unknown")
    assert (cached.source, cached.degraded, cached.turns) == ("cache", True, [turn(0)])
    assert (default.source, default.degraded, default.summary) == ("default", True, "default for unknown")
    assert rs.mode == "degraded"
    assert rs.get_state("known") == ({}, 0)


def test_default_context_without_a_fallback_and_from_a_context():
    rs, inj = make()
    inj.fail()
    assert rs.load_context("x") == Context("x", degraded=True, source="default")
    rs2, inj2 = make(fallback=lambda sid: Context(sid, summary="from ctx"))
    inj2.fail()
    assert rs2.load_context("y").summary == "from ctx"


@pytest.mark.parametrize(
    "fallback, why",
    [
        (lambda sid: {"sumary": "typo"}, "unknown Context fields ['sumary']"),
        (lambda sid: "a string", "returned a str"),
        (lambda sid: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["unknown field", "wrong type", "raises"],
)
def test_a_broken_fallback_degrades_to_an_empty_context_and_says_why(fallback, why, caplog):
    rec = Events()
    rs, inj = make(fallback=fallback, listeners=[rec])
    inj.fail()
    with caplog.at_level("ERROR", logger="statekit.resilience"):
        ctx = rs.load_context("x")
    assert ctx == Context("x", degraded=True, source="default")
    (event,) = [info for kind, info in rec.seen if kind == "fallback_failed"]
    assert why in event["error"] and why in caplog.text


def test_a_hung_store_costs_one_deadline_per_call_never_a_retry():
    rs, inj = make(timeout_ms=50, fail_max=100)
    inj.hang()
    for i in range(5):
        assert rs.append_turn("s", turn(i)) is None
    assert inj.attempts == 5, "one attempt per call (redis-py's default policy would retry each ten times)"
    pool = rs.store.client.connection_pool.connection_kwargs
    assert pool["socket_timeout"] == pool["socket_connect_timeout"] == 0.05, "each attempt ends at the 50 ms deadline"


def test_open_breaker_makes_no_round_trips_and_recovers_after_the_reset_timeout():
    events, clock = Events(), FakeClock()
    rs, inj = make(fail_max=3, reset_timeout_s=0.3, listeners=[events], clock=clock)
    rs.append_turn("s", turn(0))
    rs.load_context("s")
    inj.fail()
    for _ in range(3):
        rs.load_context("s")
    assert rs.breaker_state == "open"
    with count_round_trips() as rt:
        for _ in range(20):
            assert rs.load_context("s").source == "cache"
    assert rt.count == 0, "an open breaker must not touch the store"
    assert rs.stats.fast_fails == 20
    inj.heal()
    clock.advance(0.29)
    assert rs.load_context("s").source == "cache", "still open until the reset timeout"
    clock.advance(0.01)
    ctx = rs.load_context("s")
    assert ctx.source == "store" and rs.mode == "normal" and rs.breaker_state == "closed"
    assert [k for k in events.kinds() if k in ("degraded", "recovered")] == ["degraded", "recovered"]
    transitions = [(i["from"], i["to"]) for k, i in events.seen if k == "breaker"]
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_a_failed_probe_opens_the_breaker_again():
    clock = FakeClock()
    rs, inj = make(fail_max=1, reset_timeout_s=0.2, clock=clock)
    inj.fail()
    rs.load_context("s")
    clock.advance(0.2)
    rs.load_context("s")  # the probe fails
    assert rs.breaker_state == "open"
    assert rs.stats.store_calls == 2
    rs.load_context("s")
    assert rs.stats.store_calls == 2, "the failed probe restarted the reset timeout"
    clock.advance(0.2)
    inj.heal()
    assert rs.load_context("s").source == "store" and rs.breaker_state == "closed"


def test_caller_errors_do_not_trip_the_breaker():
    rs, _ = make(fail_max=2, policy=LifecyclePolicy(max_bytes=1_000, summary_max_bytes=100))
    for _ in range(5):
        with pytest.raises(StateTooLarge):
            rs.append_turn("s", {"content": "x" * 5_000})
    assert rs.breaker_state == "closed" and rs.mode == "normal"


def test_buffered_writes_replay_in_order_without_loss_or_duplicates():
    clock = FakeClock()
    rs, inj = make(reset_timeout_s=0.1, fail_max=2, clock=clock)
    rs.load_context("s")
    rs.append_turn("s", turn(0))  # keeps the cached context current
    inj.hang(deliver_late=True)  # timed-out writes will land when the server is healed
    for i in range(1, 8):
        assert rs.append_turn("s", turn(i)) is None
    rs.update_state("s", lambda s: {**s, "count": s.get("count", 0) + 1})
    assert rs.buffered == 8
    degraded = rs.load_context("s")
    assert degraded.source == "cache" and degraded.turns[-1] == turn(7), "buffered turns are visible"
    inj.heal()  # the late writes land now
    clock.advance(0.1)
    ctx = rs.load_context("s")
    assert ctx.source == "store" and rs.mode == "normal" and rs.buffered == 0
    assert ctx.turns == [turn(i) for i in range(8)], "each turn once, in order"
    assert rs.get_state("s")[0] == {"count": 1}
    assert rs.stats.writes_replayed == 8


def test_buffer_overflow_is_counted():
    events = Events()
    rs, inj = make(buffer_max_turns=3, listeners=[events])
    inj.fail()
    for i in range(5):
        rs.append_turn("s", turn(i))
    assert rs.buffered == 3 and rs.stats.buffer_overflow == 2
    assert events.kinds().count("overflow") == 2


def test_drop_and_raise_policies():
    rs, inj = make(write_policy="drop")
    inj.fail()
    assert rs.append_turn("s", turn(0)) is None and rs.update_state("s", lambda s: s) is None
    assert rs.stats.writes_dropped == 2 and rs.buffered == 0
    rs, inj = make(write_policy="raise")
    inj.fail()
    with pytest.raises(StoreUnavailable, match="append of session 's' not stored"):
        rs.append_turn("s", turn(0))
    assert rs.load_context("s").source == "default", "reads still degrade under 'raise'"


def test_flush_replays_on_demand_and_stops_at_a_failure():
    rs, inj = make(fail_max=100)
    inj.fail()
    for i in range(3):
        rs.append_turn("s", turn(i))
    assert rs.flush() == 0 and rs.buffered == 3
    inj.heal()
    assert rs.flush() == 3 and rs.buffered == 0 and rs.mode == "normal"


def test_bad_arguments():
    store = SessionStore(connect("fakeredis://"))
    for kwargs in (
        {"timeout_ms": 0},
        {"fail_max": 0},
        {"reset_timeout_s": 0},
        {"write_policy": "maybe"},
        {"buffer_max_turns": -1},
        {"fallback": "not callable"},
    ):
        with pytest.raises(ValueError):
            ResilientStore(store, **kwargs)


def test_bad_session_id_is_the_callers_error_even_when_degraded():
    from statekit import InvalidInput

    rs, inj = make()
    inj.fail()
    with pytest.raises(InvalidInput):
        rs.load_context("a{b}")


def test_calls_in_flight_do_not_serialise_threads():
    """pybreaker's lock is never held across a Redis call: four calls wait on the store at once."""
    rs, inj = make(timeout_ms=60_000)
    rs.append_turn("s", turn(0))
    inj.hold()
    threads = [threading.Thread(target=rs.load_context, args=("s",)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert inj.wait_held(4), "the calls went to the store one after another"
    finally:
        inj.heal()
    for t in threads:
        t.join()
    assert rs.stats.reads_from_store == 4


# -- a real redis-server: frozen, killed, paused -------------------------------------------


def _resilient(server, **kwargs) -> ResilientStore:
    policy = kwargs.pop("policy", LifecyclePolicy(window_turns=1_000, max_bytes=2_000_000, summary_max_bytes=100))
    return ResilientStore(SessionStore(connect(server.url), policy), **kwargs)


@pytest.mark.realredis
def test_frozen_server_degrades_then_recovers(fresh_redis_server):
    clock = FakeClock()
    rs = _resilient(fresh_redis_server, timeout_ms=100, fail_max=3, reset_timeout_s=0.5, clock=clock)
    rs.append_turn("s", turn(0))
    rs.load_context("s")
    fresh_redis_server.pause()
    try:
        for i in range(1, 6):
            assert rs.load_context("s").source == "cache"
            rs.append_turn("s", turn(i))
        assert rs.breaker_state == "open"
        # three calls met the 100 ms deadline, then the breaker opened: the other seven never reached Redis
        assert (rs.stats.store_calls, rs.stats.store_failures, rs.stats.fast_fails) == (2 + 3, 3, 7)
    finally:
        fresh_redis_server.resume()
    clock.advance(0.5)
    ctx = rs.load_context("s")
    assert ctx.source == "store" and rs.mode == "normal"
    assert ctx.turns == [turn(i) for i in range(6)]


@pytest.mark.realredis
def test_ten_second_outage_loses_and_duplicates_nothing(fresh_redis_server):
    """Writers keep appending through a 10 s freeze (SIGSTOP); a frozen server applies the
    requests in its socket buffer when thawed, so replays meet writes that did land."""
    rs = _resilient(fresh_redis_server, timeout_ms=100, fail_max=3, reset_timeout_s=1.0, buffer_max_turns=10_000)
    sessions = [f"s{i}" for i in range(5)]
    sent = {s: [] for s in sessions}
    n = 0
    for s in sessions:
        rs.append_turn(s, turn(n))
        sent[s].append(turn(n))
        n += 1
    os.kill(fresh_redis_server.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for s in sessions:
                rs.append_turn(s, turn(n))
                sent[s].append(turn(n))
                n += 1
            time.sleep(0.05)
    finally:
        os.kill(fresh_redis_server.pid, signal.SIGCONT)
    assert rs.buffered > 0 and rs.mode == "degraded"
    assert rs.drain(timeout_s=30) == 0, "the buffer replayed once the breaker's probe found the server"
    assert rs.buffered == 0 and rs.stats.buffer_overflow == 0
    plain = SessionStore(connect(fresh_redis_server.url), rs.store.policy)
    for s in sessions:
        assert plain.load_context(s).turns == sent[s], f"{s}: turns lost, duplicated or reordered"
    assert rs.mode == "normal"


@pytest.mark.realredis
def test_killed_and_restarted_server(fresh_redis_server):
    clock = FakeClock()
    rs = _resilient(fresh_redis_server, timeout_ms=100, fail_max=2, reset_timeout_s=0.3, clock=clock)
    rs.append_turn("s", turn(0))
    rs.load_context("s")
    fresh_redis_server.kill()
    for i in range(1, 4):
        assert rs.append_turn("s", turn(i)) is None
    assert rs.load_context("s").turns == [turn(i) for i in range(4)]
    fresh_redis_server.restart()  # empty: persistence is off
    clock.advance(0.3)
    ctx = rs.load_context("s")
    assert ctx.source == "store"
    assert ctx.turns == [turn(1), turn(2), turn(3)], "the buffered turns reach the new, empty server"


@pytest.mark.realredis
def test_client_pause_write_degrades_writes_not_reads(fresh_redis_server):
    rs = _resilient(fresh_redis_server, timeout_ms=100, fail_max=50)
    rs.append_turn("s", turn(0))
    admin = connect(fresh_redis_server.url)
    admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    try:
        assert rs.append_turn("s", turn(1)) is None  # the script writes: paused, times out, buffered
        assert rs.buffered == 1
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    ctx = rs.load_context("s")  # flushes first, then reads
    assert ctx.source == "store" and ctx.turns == [turn(0), turn(1)]


# -- decide, and the outage timeline ------------------------------------------------------


def test_recommended_settings_for_the_support_agent(profiles_dir):
    from statekit import WorkloadProfile
    from statekit.decide.resilience import recommend

    r = recommend(WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml"))
    # a 14-turn session outgrows its 10-turn window and keeps a summary: a request can make three
    # round trips (load, append, fold), so the 50 ms budget over 3, floored
    assert r["timeout_ms"] == 16 and r["worst_wait_ms"] == 48
    # 1,800 sessions x 14 requests / 1,500 s = 16.8 requests/s, x (2 + 1/4) store calls = 37.8 calls/s,
    # over 6 processes 6.3 a second each: 0.5 s of them is 3.15, so 4 (4 / 6.3 = 0.635 s)
    assert r["peak_store_calls_per_second"] == 37.8 and r["peak_store_calls_per_second_per_process"] == 6.3
    assert r["fail_max"] == 4 and abs(r["breaker_opens_after_s"] - 4 / 6.3) < 1e-9
    assert r["buffer_max_turns"] == 126  # 16.8/s / 6 x 30 s x 1.5
    assert r["buffer_fleet_turns"] == 756 and r["durable_buffer"] is False
    assert r["write_policy_by_state_class"] == {
        "conversation": "buffer",
        "ticket_context": "buffer",
        "refund_approval": "raise",
        "csat_events": "buffer",
    }
    assert set(r["reasons"]) >= {"timeout_ms", "fail_max", "buffer_max_turns"}


def test_fail_max_is_bounded(profiles_dir):
    from statekit import WorkloadProfile
    from statekit.decide.resilience import recommend

    analytics = recommend(WorkloadProfile.from_yaml(profiles_dir / "analytics_events.yaml"))
    assert analytics["fail_max"] == 20 and "lowered to the ceiling of 20" in analytics["reasons"]["fail_max"]
    agentic = recommend(WorkloadProfile.from_yaml(profiles_dir / "agentic_workflow.yaml"))
    assert agentic["fail_max"] == 3 and "raised to the floor of 3" in agentic["reasons"]["fail_max"]


def _timeline_checks(records):
    from statekit.drills.outage import summarize_timeline

    rows = {(r["series"], r["phase"]): r for r in summarize_timeline(records)}
    statekit = [r for r in records if r["series"].startswith("statekit")]
    assert not any(r["raised"] for r in statekit), "statekit never raises"
    during_sk = rows[("statekit ResilientStore", "during")]["calls"]
    during_plain = rows.get(("plain redis-py", "during"), {"calls": 0})["calls"]
    # the plain client is stuck on its first call for the whole outage; statekit keeps answering
    assert during_plain <= 4 and during_sk >= 10
    assert {r["source"] for r in statekit if r["source"]} >= {"store", "cache"}
    assert statekit[-1]["mode"] == "normal", "recovered after the outage"


def test_outage_timeline_on_fakeredis():
    from statekit.drills.outage import outage_timeline

    _timeline_checks(outage_timeline(before_s=0.3, outage_s=1.0, after_s=1.5, reset_timeout_s=0.5))


@pytest.mark.realredis
def test_outage_timeline_with_client_pause(fresh_redis_server):
    from statekit.drills.outage import outage_timeline

    # a 2 s pause: on a loaded machine the calls that open the breaker take longer than their
    # 100 ms timeouts, and a 1 s outage left room for only two calls after them
    _timeline_checks(
        outage_timeline(fresh_redis_server.url, before_s=0.3, outage_s=2.0, after_s=1.5, reset_timeout_s=0.5)
    )


def test_drain_waits_for_the_breakers_probe_and_replays_everything():
    clock = FakeClock()
    rs, inj = make(fail_max=1, reset_timeout_s=5, clock=clock)
    inj.fail()
    for i in range(3):
        rs.append_turn("s", turn(i))
    assert rs.drain(timeout_s=4) == 3 and clock.now() == pytest.approx(1_004), "gave up at its timeout"
    inj.heal()
    assert rs.drain(timeout_s=60) == 0 and rs.mode == "normal"
    assert clock.now() < 1_004 + 5 + 0.01, "woke for the next probe, not later"
    assert rs.load_context("s").turns == [turn(i) for i in range(3)]


def test_the_walkthrough_reads_cache_then_default_then_store_with_each_turn_once():
    from statekit.drills.outage import degraded_walkthrough

    steps = degraded_walkthrough()["steps"]
    assert [(s["source"], s["mode"]) for s in steps] == [
        ("store", "normal"),
        ("cache", "degraded"),
        ("default", "degraded"),
        ("store", "normal"),
    ]
    assert steps[2]["summary"].startswith("(context unavailable")
    assert steps[-1]["turns"] == ["My order 1009 has not arrived.", "Sorry to hear that: let me check."]
