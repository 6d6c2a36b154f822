"""Error replies are failures too: what a failover, a full server, a busy script or a refused user
answer reaches the caller as a statekit error, and a ResilientStore degrades on the transient ones."""

from __future__ import annotations

import contextlib
import threading

import pytest
import redis

from statekit import AccessDenied, ResilientStore, SessionStore, StoreFull, StoreUnavailable, connect
from statekit.errors import classify_reply, reply_code
from statekit.testing import RedisReplicaPair, start_redis_server


def turn(i: int) -> dict:
    return {"role": "user", "content": f"turn {i}"}


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."), StoreUnavailable),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"), StoreUnavailable),
        (redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"), StoreUnavailable),
        (redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"), StoreUnavailable),
        (redis.exceptions.ResponseError("LOADING Redis is loading the dataset in memory"), StoreUnavailable),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script."), StoreUnavailable),
        (redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."), StoreFull),
        (
            redis.exceptions.NoPermissionError("NOPERM User app has no permissions to run the 'evalsha' command"),
            AccessDenied,
        ),  # fmt: skip
    ],
)
def test_each_error_reply_has_its_statekit_error(exc, kind):
    error = classify_reply(exc, "append_turn of session 's'")
    assert type(error) is kind
    assert reply_code(exc) in str(error) and "append_turn of session 's'" in str(error)


def test_other_replies_are_left_to_the_caller():
    assert classify_reply(redis.exceptions.ResponseError("ERR unknown command"), "x") is None
    assert classify_reply(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), "x") is None


@pytest.mark.realredis
def test_a_read_only_replica_degrades_writes_instead_of_raising(redis_replica_pair: RedisReplicaPair):
    """A client still pointed at a demoted primary gets READONLY: an outage, counted by the
    breaker, and the write is buffered."""
    store = SessionStore(connect(redis_replica_pair.replica_url))
    with pytest.raises(StoreUnavailable, match="READONLY"):
        store.append_turn("s", turn(0))
    resilient = ResilientStore(store, timeout_ms=500, fail_max=2)
    for i in range(3):
        assert resilient.append_turn("s", turn(i)) is None
    assert resilient.buffered == 3 and resilient.mode == "degraded"
    assert resilient.breaker_state == "open" and resilient.stats.store_failures == 2


@pytest.mark.realredis
def test_a_full_server_is_store_full_and_degrades():
    server = start_redis_server(["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"])
    try:
        admin = server.client()
        n = 0
        # fill it, in ever smaller pieces: each loop ends with the server's own OOM reply, and a
        # refused command's query buffer is freed, so the last pieces leave no room for a turn
        for size in (100_000, 1_000, 10):
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                while True:
                    admin.set(f"ballast:{n}", b"x" * size)
                    n += 1
        store = SessionStore(connect(server.url))
        with pytest.raises(StoreFull, match="maxmemory"):
            store.append_turn("s", turn(0))
        resilient = ResilientStore(store, timeout_ms=500)
        assert resilient.append_turn("s", turn(1)) is None and resilient.buffered == 1
        assert resilient.load_context("s").degraded
        admin.flushall()  # room again: the buffered turn is replayed
        assert resilient.flush() == 1 and resilient.load_context("s").turns == [turn(1)]
    finally:
        server.stop()


@pytest.mark.realredis
def test_a_busy_script_is_transient_and_the_store_recovers_after_script_kill():
    server = start_redis_server(["--busy-reply-threshold", "50"])
    try:
        store = SessionStore(connect(server.url, socket_timeout=5))
        store.append_turn("s", turn(0))
        hog = connect(server.url, socket_timeout=30)
        running = threading.Thread(target=lambda: _run_forever(hog), daemon=True)
        running.start()
        probe = connect(server.url, socket_timeout=5)
        while True:  # wait for the event: the server answers BUSY once the script passes 50 ms
            try:
                probe.ping()
            except redis.exceptions.ResponseError as exc:
                assert reply_code(exc) == "BUSY"
                break
        with pytest.raises(StoreUnavailable, match="BUSY"):
            store.load_context("s")
        probe.script_kill()
        running.join(timeout=10)
        assert store.load_context("s").turns == [turn(0)]
    finally:
        server.stop()


def _run_forever(client) -> None:
    with contextlib.suppress(redis.exceptions.ResponseError):  # killed by SCRIPT KILL
        client.eval("while true do end", 0)


@pytest.mark.realredis
def test_a_replica_cut_off_from_its_primary_answers_masterdown(fresh_redis_replica_pair: RedisReplicaPair):
    pair = fresh_redis_replica_pair
    replica = pair.replica.client()
    replica.config_set("replica-serve-stale-data", "no")
    pair.primary.kill()
    while replica.info("replication").get("master_link_status") != "down":
        pass  # the replica sees the closed link at once; wait for it to say so
    store = SessionStore(connect(pair.replica_url))
    with pytest.raises(StoreUnavailable, match="MASTERDOWN"):
        store.load_context("s")


@pytest.mark.realredis
def test_a_user_without_the_commands_gets_access_denied_not_a_degraded_mode(redis_server):
    admin = redis_server.client()
    admin.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+get", "+ping"])
    try:
        url = redis_server.url.replace("redis://", "redis://reader:pw@")
        store = SessionStore(connect(url))
        with pytest.raises(AccessDenied, match="NOPERM") as denied:
            store.append_turn("s", turn(0))
        assert "pw" not in str(denied.value)
        resilient = ResilientStore(store, timeout_ms=500)
        with pytest.raises(AccessDenied):
            resilient.append_turn("s", turn(0))
        assert resilient.mode == "normal" and resilient.stats.store_failures == 0
    finally:
        admin.acl_deluser("reader")
