"""A write buffer that survives a crash: a process killed during an outage replays its turns."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from statekit import InvalidInput, LifecyclePolicy, ResilientStore, SessionStore, connect
from statekit.resilience import DurableBuffer
from statekit.resilience.buffer import _Pending

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from statekit import LifecyclePolicy, ResilientStore, SessionStore, connect
    url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SessionStore(connect(url), LifecyclePolicy(window_turns=1000, max_bytes=1 << 20))
    resilient = ResilientStore(store, timeout_ms=200, fail_max=1, durable_buffer=path)
    for i in range(n):
        assert resilient.append_turn("crash", {"n": i}, turn_id=f"c{i}") is None  # the server is down
        print(f"acknowledged c{i}", flush=True)  # the caller was told: buffered
    os.kill(os.getpid(), signal.SIGKILL)  # the process dies in the middle of the outage
    """
)


@pytest.mark.realredis
def test_turns_buffered_by_a_process_killed_mid_outage_are_replayed_on_restart(fresh_redis_server, tmp_path):
    """The crash drill: 50 turns acknowledged as buffered during an outage, the process killed
    with SIGKILL; the server comes back; a new process on the same buffer file replays them:
    0 lost, 0 duplicated, in order."""
    path = tmp_path / "buffer.sqlite"
    fresh_redis_server.kill()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, fresh_redis_server.url, str(path), "50"], capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    acknowledged = [line.split()[1] for line in child.stdout.splitlines() if line.startswith("acknowledged")]
    assert len(acknowledged) == 50
    fresh_redis_server.restart()
    store = SessionStore(connect(fresh_redis_server.url), LifecyclePolicy(window_turns=1000, max_bytes=1 << 20))
    resilient = ResilientStore(store, timeout_ms=500, durable_buffer=path)
    assert resilient.buffered == 50, "the new process found every buffered turn"
    assert resilient.drain(timeout_s=30) == 0
    ctx = resilient.load_context("crash")
    assert ctx.turn_ids == acknowledged, "every acknowledged turn, once, in order"
    assert ctx.turns == [{"n": i} for i in range(50)]
    print(f"acknowledged {len(acknowledged)}, present after replay {len(ctx.turn_ids)}, "
          f"duplicates {len(ctx.turn_ids) - len(set(ctx.turn_ids))}")  # fmt: skip
    resilient.durable.close()
    assert DurableBuffer(path).load() == [], "replayed turns leave the file"


def test_a_replay_interrupted_before_its_rows_are_removed_stores_each_turn_once(tmp_path):
    """A crash after a turn reached Redis but before its row left the file: the next start
    replays it again, and its turn id makes the second copy a no-op."""
    path = tmp_path / "buffer.sqlite"
    client = connect("fakeredis://")
    store = SessionStore(client, LifecyclePolicy(window_turns=100))
    buffer = DurableBuffer(path)
    for i in range(5):
        buffer.add(_Pending("append", "s", turn={"n": i}, turn_id=f"t{i}"))
    buffer.close()
    first = ResilientStore(store, durable_buffer=path)
    assert first.flush() == 5
    first.durable.close()
    again = DurableBuffer(path)
    for i in range(5):  # as if the rows had not been removed yet
        again.add(_Pending("append", "s", turn={"n": i}, turn_id=f"t{i}"))
    again.close()
    second = ResilientStore(store, durable_buffer=path)
    assert second.flush() == 5
    assert store.load_context("s").turn_ids == [f"t{i}" for i in range(5)]


def test_one_process_per_buffer_file(tmp_path):
    path = tmp_path / "buffer.sqlite"
    first = DurableBuffer(path)
    with pytest.raises(InvalidInput, match="in use by another process"):
        DurableBuffer(path)
    first.close()
    DurableBuffer(path).close()


def test_state_updates_stay_in_memory_and_say_so(tmp_path):
    from statekit.testing import FaultInjector

    events = []

    class Events:
        def on_event(self, kind, session_id, info):
            events.append((kind, dict(info)))

    faults = FaultInjector()
    resilient = ResilientStore(
        SessionStore(faults.client()), timeout_ms=100, durable_buffer=tmp_path / "b.sqlite", listeners=[Events()]
    )
    faults.fail()
    resilient.append_turn("s", {"n": 1}, turn_id="t1")
    resilient.update_state("s", lambda s: {"n": 1})
    buffered = [info for kind, info in events if kind == "buffered"]
    assert [(i["kind"], i["durable"]) for i in buffered] == [("append", True), ("state", False)]
    assert [p.kind for p in DurableBuffer.load(resilient.durable)] == ["append"]
