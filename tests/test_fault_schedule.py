"""The fault-schedule test: hypothesis interleaves a resilient store's operations with the
faults production brings (a reply lost after the write landed, a freeze and its thaw with
the frozen writes landing late, a server down and back, the session's anchor key expiring
between two commands of an operation, a fork of a worker that holds a durable buffer), and a
checker holds the history against the README's promises after every step:

- a resilient call never raises on a store failure;
- every acknowledged turn is stored exactly once, in order (checked whenever nothing is
  buffered, and at the end, after the faults heal and the buffer drains);
- every update is applied at most once, and exactly once if acknowledged or buffered;
- the byte count the cap is checked against equals what the session's keys hold;
- a deleted session is never served, by the store or by a fallback;
- every key has a TTL;
- open file descriptors stay bounded.

It runs `ResilientStore` (with a durable buffer) and `AsyncResilientStore` on fakeredis, a
real server and the three-primary cluster. The faults are a `statekit.testing.Nemesis`,
which works where every redis-py client meets the network, so the same schedule runs on
every backend. The saver's schedule is in tests/test_saver_schedule.py.

`STATEKIT_FAULT_EXAMPLES` sets the examples per backend for `ResilientStore` (80 in the suite;
200 for the figures in docs/guarantees.md), `STATEKIT_FAULT_EXAMPLES_ASYNC` those for
`AsyncResilientStore` (half as many by default).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pytest
from fault_rules import NemesisRules, pttls
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from statekit import LifecyclePolicy, Migrations, SessionStore, StoreUnavailable, UnknownVersionError, connect
from statekit.aio import AsyncResilientStore, AsyncSessionStore, connect_async
from statekit.backends import backend_kind
from statekit.codec import Codec
from statekit.resilience import ResilientStore
from statekit.testing import FakeClock, Nemesis

SESSIONS = ("a", "b")
EXAMPLES = int(os.environ.get("STATEKIT_FAULT_EXAMPLES", "80"))
EXAMPLES_ASYNC = int(os.environ.get("STATEKIT_FAULT_EXAMPLES_ASYNC", str(max(1, EXAMPLES // 2))))
# the compressed run: turns of text that zstd shrinks, written by a store with a compressing codec
# beside the previous deploy's plain store (a mixed fleet)
EXAMPLES_COMPRESSED = int(os.environ.get("STATEKIT_FAULT_EXAMPLES_COMPRESSED", str(max(1, EXAMPLES // 4))))
TEXT = (
    "Assert statements are a convenient way to insert debugging assertions into a program. The simple "
    "form is equivalent to raising AssertionError when the expression is false."
)
STEPS = 30
RESET_S = 1.0
_namespaces = itertools.count()
STATS: dict[str, dict[str, int]] = {}


def increment(state: dict) -> dict:
    return {**state, "count": state.get("count", 0) + 1}


def migrations(current: int) -> Migrations:
    """State versions 1 and 2: the deploy under test reads version 1 (what the previous
    deploy, still running, writes), upgrades it on read and writes it back keeping its TTL."""
    m = Migrations(current=current)
    if current >= 2:

        @m.step(1, 2)
        def _(data: dict) -> dict:
            return {**data, "v2": True}

    return m


async def aincrement(state: dict) -> dict:
    return increment(state)


@dataclass
class Epoch:
    """One life of a session: from its creation to a delete or an expiry."""

    turns: list[str] = field(default_factory=list)  # turn ids issued, in order
    maybe: set[str] = field(default_factory=set)  # ids that may be missing (in flight when it expired)
    incs: int = 0  # increments issued
    maybe_incs: int = 0  # of which may be missing


@dataclass
class Session:
    epochs: list[Epoch] = field(default_factory=lambda: [Epoch()])
    live_from: int = 0  # the oldest life whose data the store may still hold
    served_from: int = 0  # the oldest life a read may serve: a delete moves it at once, buffered or not

    @property
    def now(self) -> Epoch:
        return self.epochs[-1]

    def ids(self, since: int) -> set[str]:
        return {t for e in self.epochs[since:] for t in e.turns}

    def deleted(self, landed: bool) -> None:
        self.epochs.append(Epoch())
        self.served_from = len(self.epochs) - 1
        if landed:
            self.live_from = self.served_from

    def expired(self) -> None:
        """Gone from the store as a whole; a fallback may still serve what this process saw."""
        self.epochs.append(Epoch())
        self.live_from = len(self.epochs) - 1


class FaultSchedule(NemesisRules):
    url: str = ""
    backend: str = ""
    asynchronous: bool = False
    compressed: bool = False
    #: The observer's client (the faults never touch it), one for every example of a run: a
    #: cluster client costs about 50 ms to make (COMMAND and CLUSTER SLOTS read and parsed).
    admin: Any = None
    #: The client the store under test is built on, and the previous deploy's, one for every
    #: example of a run too (the faults reach them as they reach any client). The resilient
    #: store makes its own copy of `base`, with its timeouts, afresh for each example.
    base: Any = None
    earlier: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.namespace = f"faults{next(_namespaces)}"
        self.nemesis = Nemesis(self.admin)
        self.nemesis.__enter__()
        self.clock = FakeClock()
        self.policy = LifecyclePolicy(window_turns=1000, ttl_seconds=3600, max_bytes=1 << 20, summarizer=None)
        self.checker = SessionStore(self.admin, self.policy, namespace=self.namespace, migrations=migrations(2))
        # the previous deploy, still running beside this one: a plain store writing state version 1
        self.previous = SessionStore(self.earlier, self.policy, namespace=self.namespace, migrations=migrations(1))
        self.dir = tempfile.mkdtemp(prefix="statekit-faults-")
        self.loop = asyncio.new_event_loop() if self.asynchronous else None
        options = dict(timeout_ms=2000, fail_max=2, reset_timeout_s=RESET_S, clock=self.clock, buffer_max_turns=10_000)
        codec = Codec(min_bytes=0, dictionaries=False) if self.compressed else None
        if self.asynchronous:
            self.rs: Any = AsyncResilientStore(
                AsyncSessionStore(
                    connect_async(self.url),
                    self.policy,
                    namespace=self.namespace,
                    migrations=migrations(2),
                    codec=codec,
                ),
                **options,
            )
        else:
            store = SessionStore(
                self.base, self.policy, namespace=self.namespace, migrations=migrations(2), codec=codec
            )
            self.rs = ResilientStore(store, durable_buffer=os.path.join(self.dir, "buffer.sqlite"), **options)
        self.sessions = {sid: Session() for sid in SESSIONS}
        self.dirty = True
        self.ids = itertools.count()
        self.fds = len(os.listdir("/proc/self/fd"))
        stats = STATS.setdefault(self.name(), {"examples": 0, "steps": 0, "faulted": 0, "forks": 0, "expired": 0})
        stats["examples"] += 1

    @classmethod
    def name(cls) -> str:
        return f"{cls.backend}/{'async' if cls.asynchronous else 'sync'}"

    def call(self, method: Any, *args: Any) -> Any:
        """A resilient call: it must never raise on a store failure."""
        STATS[self.name()]["steps"] += 1
        self.dirty = True  # what is stored may have changed: check it when the buffer is empty
        result = method(*args)
        if inspect.isawaitable(result):
            result = self.loop.run_until_complete(result)
        return result

    def teardown(self) -> None:
        try:
            self.final_check()
        finally:
            STATS[self.name()]["faulted"] += self.nemesis.faulted
            self.nemesis.__exit__()
            if self.asynchronous:
                self.loop.run_until_complete(self.rs.aclose())
                self.loop.close()
            else:
                self.rs.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def final_check(self) -> None:
        """Heal every fault, let the breaker probe, drain the buffer: then every write issued
        is stored exactly once (but those in flight when their session expired), and no key
        of the namespace, whatever its name, lacks a TTL."""
        self.nemesis.heal()
        self.clock.advance(RESET_S)
        assert self.call(self.rs.drain, 30) == 0, "the buffer drains once the store is back"
        self.settle()
        for sid in SESSIONS:
            self.check_exact(sid)
        options: dict[str, Any] = {"match": f"{self.namespace}:*"}
        if backend_kind(self.admin) == "cluster":
            options["target_nodes"] = self.admin.PRIMARIES
        with self.nemesis.spared():
            without = [k for k in self.admin.scan_iter(**options) if self.admin.pttl(k) == -1]
        assert not without, f"keys without a TTL: {without}"

    # -- what is stored ---------------------------------------------------------------

    def stored(self, sid: str) -> tuple[list[str], int]:
        with self.nemesis.spared():
            state, _ = self.checker.get_state(sid)  # first: it may migrate the state and write it back
            ctx = self.checker.load_context(sid)
            if ctx.version:  # the byte count the cap is checked against: what the keys hold
                meta, log, summary, blob = self.checker.keys(sid)
                records = self.admin.lrange(log, 0, -1)
                held = sum(map(len, records))
                held += self.admin.strlen(summary) + self.admin.strlen(blob)
                assert ctx.bytes == held, f"session {sid}: byte count {ctx.bytes}, {held} held"
                if self.compressed:  # read back exactly as written, from compressed records
                    assert all(r[r.index(b"\x1f") + 1] == 2 for r in records), f"session {sid}: a turn not compressed"
                    assert ctx.pending + ctx.turns == [{"id": t, "text": TEXT} for t in ctx.turn_ids]
        return ctx.turn_ids, state.get("count", 0)

    def settle(self) -> None:
        """Nothing buffered: every write issued has been applied (or dropped as rejected)."""
        if self.rs.buffered == 0:
            for session in self.sessions.values():
                session.live_from = len(session.epochs) - 1

    def check_exact(self, sid: str) -> None:
        ids, count = self.stored(sid)
        now = self.sessions[sid].now
        assert len(ids) == len(set(ids)), f"session {sid}: a turn stored twice: {ids}"
        assert set(ids) <= set(now.turns), f"session {sid}: turns of a deleted or expired life: {ids}"
        assert ids == [t for t in now.turns if t in set(ids)], f"session {sid}: out of order: {ids}"
        missing = [t for t in now.turns if t not in set(ids) and t not in now.maybe]
        assert not missing, f"session {sid}: acknowledged or buffered turns lost: {missing}"
        # three promises, three checks (hypothesis tells failures apart by where they fail)
        if now.incs == 0:
            assert count == 0, f"session {sid}: the state of a deleted or expired life: count {count}"
        assert count <= now.incs, f"session {sid}: an update applied twice: count {count} after {now.incs}"
        assert count >= now.incs - now.maybe_incs, (
            f"session {sid}: an acknowledged or buffered update lost: count {count} after {now.incs} "
            f"({now.maybe_incs} in flight at an expiry)"
        )

    # -- operations -------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        pass

    @rule(sid=st.sampled_from(SESSIONS))
    def append(self, sid: str) -> None:
        tid = f"t{next(self.ids)}"
        session = self.sessions[sid]
        session.now.turns.append(tid)
        self.call(self.rs.append_turn, sid, {"id": tid, "text": TEXT} if self.compressed else {"id": tid}, tid)

    @rule(sid=st.sampled_from(SESSIONS))
    def update(self, sid: str) -> None:
        self.sessions[sid].now.incs += 1
        self.call(self.rs.update_state, sid, aincrement if self.asynchronous else increment)

    @precondition(lambda self: self.rs.buffered == 0)  # another process: its order against our buffer is open
    @rule(sid=st.sampled_from(SESSIONS))
    def previous_deploy_updates(self, sid: str) -> None:
        """The previous deploy (no resilient wrapper) increments and writes version 1: the next
        read here migrates it and writes it back, keeping its TTL."""
        now = self.sessions[sid].now
        self.dirty = True
        try:
            self.previous.update_state(sid, increment)
        except UnknownVersionError:
            return  # this deploy wrote version 2 already: the previous one refuses it, untouched
        except StoreUnavailable:
            now.maybe_incs += 1  # it may have landed, its reply lost: the caller cannot know
        now.incs += 1

    @rule(sid=st.sampled_from(SESSIONS))
    def delete(self, sid: str) -> None:
        landed = self.call(self.rs.delete, sid) is not None
        self.sessions[sid].deleted(landed)

    @rule(sid=st.sampled_from(SESSIONS))
    def load(self, sid: str) -> None:
        ctx = self.call(self.rs.load_context, sid)
        session = self.sessions[sid]
        served = [t["id"] for t in ctx.pending + ctx.turns]
        assert len(served) == len(set(served)), f"a turn served twice: {served} ({ctx.source})"
        since = session.live_from if ctx.source == "store" else session.served_from
        stale = set(served) - session.ids(since)
        assert not stale, f"session {sid}: served turns of a deleted or expired life ({ctx.source}): {sorted(stale)}"

    @rule(sid=st.sampled_from(SESSIONS))
    def get_state(self, sid: str) -> None:
        state, _ = self.call(self.rs.get_state, sid)
        session = self.sessions[sid]
        lives = session.epochs[min(session.live_from, session.served_from) :]
        if all(e.incs == 0 for e in lives):
            assert state.get("count", 0) == 0, f"session {sid}: the state of a deleted or expired life: {state}"
        bound = max(e.incs for e in lives)
        assert state.get("count", 0) <= bound, f"session {sid}: an update applied twice ({state}, at most {bound})"

    @rule()
    def flush(self) -> None:
        self.call(self.rs.flush)
        self.settle()

    @rule()
    def time_passes(self) -> None:
        self.clock.advance(RESET_S)

    # -- faults -----------------------------------------------------------------------

    # (the faults of the nemesis are the rules of NemesisRules)

    @precondition(lambda self: self.nemesis.mode == "ok")
    @rule(
        sid=st.sampled_from(SESSIONS),
        op=st.sampled_from(["append", "update", "load", "get_state", "delete"]),
        n=st.integers(1, 3),
        fault=st.sampled_from(["lose_replies", "freeze", "kill"]),
    )
    def fault_during(self, sid: str, op: str, n: int, fault: str) -> None:
        """A fault that starts at the operation's n-th round trip: the reply of an update's
        compare-and-set lost after its read answered, say."""
        self.nemesis.before(n, getattr(self.nemesis, fault))
        getattr(self, op)(sid)
        self.nemesis.cancel_hooks()

    @precondition(lambda self: self.nemesis.mode == "ok" and self.rs.buffered == 0)
    @rule(
        sid=st.sampled_from(SESSIONS),
        op=st.sampled_from(["append", "update", "load", "get_state", "previous_deploy_updates"]),
        n=st.integers(1, 2),
    )
    def expire_anchor_during(self, sid: str, op: str, n: int) -> None:
        """The session's meta hash expires (or is evicted) just before the operation's n-th
        round trip, its other keys a moment later: the session is gone as a whole, and the
        operation's own write may or may not land in its next life."""
        meta = self.checker.keys(sid)[0]
        self.nemesis.before(n, lambda: self.admin.delete(meta))
        session = self.sessions[sid]
        before = (len(session.now.turns), session.now.incs)
        getattr(self, op)(sid)
        if self.nemesis.cancel_hooks():
            return  # the operation ended before its n-th round trip: nothing expired
        STATS[self.name()]["expired"] += 1
        old = session.now
        session.expired()
        session.now.turns, session.now.maybe = old.turns[before[0] :], set(old.turns[before[0] :])
        session.now.incs = session.now.maybe_incs = old.incs - before[1]
        self.settle()

    @precondition(lambda self: not self.asynchronous and self.rs.buffered > 0)
    @rule()
    def fork_a_worker(self) -> None:
        """A worker forked while this one holds buffered writes (a durable buffer among
        them) must replay none of them: they are this process's to replay."""
        snapshot = {sid: self.stored(sid) for sid in SESSIONS}
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read)
                self.nemesis.late, self.nemesis.lost, self.nemesis.mode = [], 0, "ok"
                self.clock.advance(RESET_S)
                ok = self.rs.buffered == 0 and self.rs.flush() == 0 and self.rs.durable_detached
                os.write(write, b"ok" if ok else b"no")
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        answer = os.read(read, 16)
        os.close(read)
        _, status = os.waitpid(pid, 0)
        STATS[self.name()]["forks"] += 1
        assert status == 0 and answer == b"ok", "the forked worker replayed its parent's buffer"
        assert {sid: self.stored(sid) for sid in SESSIONS} == snapshot, "the forked worker wrote"

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def every_key_has_a_ttl(self) -> None:
        """Each key of each session, their PTTLs in one round trip (`fault_rules.pttls`); the
        teardown scans the whole namespace too."""
        with self.nemesis.spared():
            groups = [self.checker.keys(sid) for sid in SESSIONS]
            for keys, ttls in zip(groups, pttls(self.admin, groups), strict=True):
                without = [k for k, t in zip(keys, ttls, strict=True) if t == -1]
                assert not without, f"keys without a TTL: {without}"

    @invariant()
    def drained_means_exact(self) -> None:
        if self.dirty and self.rs.buffered == 0 and self.nemesis.mode == "ok":
            self.dirty = False
            self.settle()
            for sid in SESSIONS:
                self.check_exact(sid)

    @invariant()
    def file_descriptors_stay_bounded(self) -> None:
        assert len(os.listdir("/proc/self/fd")) <= self.fds + 64, "file descriptors leak"


def _run_schedule(name: str, examples: int, **attrs: object) -> dict[str, int]:
    """Run FaultSchedule, as a subclass `name` with `attrs`, for `examples` examples; its stats."""
    url = str(attrs["url"])
    clients = {"admin": connect(url, socket_timeout=10), "base": connect(url), "earlier": connect(url)}
    machine = type(name, (FaultSchedule,), {**attrs, **clients})
    STATS.pop(machine.name(), None)
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=STEPS,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                deadline=None,
            ),
        )
    finally:
        for client in clients.values():
            client.close()
    stats = STATS[machine.name()]
    print(f"\n{machine.name()}: {stats}")
    return stats


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_promises_hold_under_a_fault_schedule(any_url: str, asynchronous: bool, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["any_url"]
    examples = EXAMPLES_ASYNC if asynchronous else EXAMPLES
    stats = _run_schedule(f"FaultSchedule_{backend}_{'async' if asynchronous else 'sync'}", examples,
                          url=any_url, backend=backend, asynchronous=asynchronous)  # fmt: skip
    assert stats["examples"] >= examples, "every example ran"
    assert stats["faulted"] > 0, "the faults were on"
    if examples >= 50:  # with a few examples (`make check`) a rule may not come up
        assert stats["expired"] > 0, "an anchor expired mid-operation"
        assert asynchronous or stats["forks"] > 0, "a worker was forked"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_promises_hold_under_a_fault_schedule_with_compression(
    any_url: str, asynchronous: bool, request: pytest.FixtureRequest
) -> None:
    """The same promises with every turn compressed (zstd), next to the previous deploy's plain
    store: nothing lost or doubled, byte counts exact, compressed turns read back as written."""
    pytest.importorskip("zstandard")
    backend = request.node.callspec.params["any_url"]
    stats = _run_schedule(
        f"FaultSchedule_{backend}_{'async' if asynchronous else 'sync'}_zstd",
        EXAMPLES_COMPRESSED,
        url=any_url,
        backend=f"{backend}-zstd",
        asynchronous=asynchronous,
        compressed=True,
    )
    assert stats["examples"] >= EXAMPLES_COMPRESSED
    if EXAMPLES_COMPRESSED >= 10:  # with a few examples (`make check`) a fault may not come up
        assert stats["faulted"] > 0, "the faults were on"
