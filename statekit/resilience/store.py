"""ResilientStore: a state-store failure degrades the service instead of failing it.

Every call to Redis has a deadline enforced by the socket (no retries hidden behind it); a
circuit breaker (pybreaker) stops calling a store that keeps failing and probes it again
after `reset_timeout_s`; reads fall back to the last context this process saw, then to a
default; writes follow `write_policy`: "buffer" keeps them in order in a bounded queue and
replays them on recovery (idempotently, by turn id), "drop" counts and drops them, "raise"
raises `StoreUnavailable`. Whatever happens, `mode` says "normal" or "degraded", and each
context says where it came from.

pybreaker's own `call()` holds its lock for the whole guarded call, which would serialise
every thread of a process behind one slow Redis call. So the Redis call runs outside the
breaker, and its outcome is then reported to the breaker through `call()`, which does the
counting, the state transitions and the listener notifications. Only one half-open probe
goes out at a time; other calls fail fast meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import pybreaker

from statekit.backends import with_timeouts
from statekit.errors import AccessDenied, InvalidInput, StatekitError, StoreUnavailable
from statekit.resilience.buffer import DurableBuffer, _DurableError, _Pending
from statekit.store.blocking import SessionStore, drive
from statekit.store.core import Context, Steps, StoreListener, _new_turn_id

log = logging.getLogger(__name__)

#: The fields a fallback's mapping may hold (session_id, degraded and source are then set by the store).
_CONTEXT_FIELDS = frozenset(f.name for f in dataclasses.fields(Context))

__all__ = ["ResilientStore", "ResilienceStats", "WritePolicy", "Clock", "SystemClock"]

WritePolicy = Literal["buffer", "drop", "raise"]


class Clock(Protocol):
    """Where the resilient store reads the time and waits: the system's monotonic clock, or
    `statekit.testing.FakeClock` in tests that move time by hand instead of sleeping."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """`time.monotonic` and `time.sleep`."""

    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


@dataclass
class ResilienceStats:
    """Counters of what the resilient store did instead of failing."""

    store_calls: int = 0
    store_failures: int = 0
    fast_fails: int = 0
    reads_from_store: int = 0
    reads_from_cache: int = 0
    reads_from_default: int = 0
    writes_buffered: int = 0
    writes_replayed: int = 0
    writes_dropped: int = 0
    buffer_overflow: int = 0
    degraded_episodes: int = 0
    replays_rejected: int = 0
    durable_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


_LIVE_STORES: weakref.WeakSet[ResilientStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child owns nothing of its parent's write buffer: the parent replays it. (Two
    workers replaying one buffer store turns twice, and a delete replayed by the second can
    erase what the first stored after it.)"""
    for store in list(_LIVE_STORES):
        store._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Unavailable(Exception):
    """Internal: the store could not be used for this call (failure or open breaker)."""


class _BreakerBridge(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: ResilientStore) -> None:
        self.owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            self.owner._opened_at = self.owner.clock.now()
        old = old_state.name if old_state is not None else None
        self.owner._emit("breaker", "", {"from": old, "to": new_state.name})
        if new_state.name == pybreaker.STATE_OPEN:  # calls now fail fast: the service is degraded
            self.owner._set_degraded(True, "circuit breaker open")


class ResilientStore:
    """Wraps a SessionStore so that store failures degrade instead of raise.

    `timeout_ms` is each Redis call's deadline (socket timeout, no retries); `fail_max`
    consecutive store failures open the breaker; after `reset_timeout_s` one probe call
    is let through. `fallback(session_id)` supplies a default context (a Context, a dict of
    its fields, or None) when no cached one exists. `buffer_max_turns` bounds the write
    buffer; `cache_max_sessions` the in-process cache of last-known contexts. `clock` is
    where the breaker reads the time (the system's monotonic clock unless a test gives
    `statekit.testing.FakeClock`). `durable_buffer` (a file path, one per process) keeps
    buffered appends and deletes on disk (`DurableBuffer`): a process killed during an
    outage replays them, in order and once each, when it starts again with the same path.

    Every write is checked and encoded as the plain store would before it is buffered, so a
    degraded call refuses what a healthy one refuses. Every update carries an id that the
    compare-and-set script records, so an update whose reply was lost after it landed is not
    applied again when it is replayed. A buffered write that cannot be applied at replay
    (over the cap by then, or its function raises) is reported (`replay_rejected` event,
    `stats.replays_rejected`) and dropped. A delete, buffered or not, removes the session from
    every fallback at once. A process forked from the one that made this store starts with
    an empty buffer and without the durable file (`durable_detached` event): the parent
    replays what it buffered. `close()` (or `with`) releases the durable file and the
    store's own connections.
    """

    #: Whether update functions may be coroutine functions (the asyncio store awaits them).
    _awaits = False

    def __init__(
        self,
        store: SessionStore,
        timeout_ms: float = 100,
        fail_max: int = 5,
        reset_timeout_s: float = 30,
        fallback: Callable[[str], Context | Mapping[str, Any] | None] | None = None,
        write_policy: WritePolicy = "buffer",
        buffer_max_turns: int = 1000,
        cache_max_sessions: int = 10_000,
        listeners: Iterable[StoreListener] = (),
        clock: Clock | None = None,
        durable_buffer: str | Path | None = None,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms!r}")
        if not isinstance(fail_max, int) or fail_max < 1:
            raise ValueError(f"fail_max must be a whole number >= 1, got {fail_max!r}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be positive, got {reset_timeout_s!r}")
        if write_policy not in ("buffer", "drop", "raise"):
            raise ValueError(f"write_policy must be 'buffer', 'drop' or 'raise', got {write_policy!r}")
        if buffer_max_turns < 0 or cache_max_sessions < 0:
            raise ValueError("buffer_max_turns and cache_max_sessions must be >= 0")
        if fallback is not None and not callable(fallback):
            raise ValueError("fallback must be a callable session_id -> Context | dict | None")
        self._check_store(store)
        self.timeout_ms = timeout_ms
        self.store = store.with_client(with_timeouts(store.client, timeout_ms / 1000))
        self._io = self._make_io()
        self.fallback = fallback
        self.write_policy = write_policy
        self.buffer_max_turns = buffer_max_turns
        self.cache_max_sessions = cache_max_sessions
        self.listeners: list[StoreListener] = list(listeners)
        self.stats = ResilienceStats()
        self.clock: Clock = clock or SystemClock()
        self._opened_at: float | None = None  # on self.clock, when the breaker last opened
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            # only the store being unreachable counts; a caller's error (StateTooLarge...) does not
            exclude=[lambda exc: not isinstance(exc, StoreUnavailable)],
            listeners=[_BreakerBridge(self)],
            state_storage=self._storage,
            name="statekit",
        )
        self._probe = threading.Lock()
        self._flushing = threading.Lock()
        self._lock = threading.RLock()
        self._buffer: deque[_Pending] = deque()
        # with a durable buffer, what an earlier process left buffered comes first, in order
        self.durable = DurableBuffer(durable_buffer) if durable_buffer is not None else None
        if self.durable is not None:
            try:
                self._buffer.extend(self.durable.load())
            except BaseException:
                self.durable.close()  # a file that cannot be read is left as it is, and unlocked
                raise
        self._unforgotten: list[int] = []  # rows replayed that the durable file refused to forget
        self._enqueuing = threading.Lock()  # keeps the buffer's order and the file's one; readers never wait on it
        # last context read per session, and the turns appended through this store since
        self._cache: OrderedDict[str, tuple[Context, list[bytes]]] = OrderedDict()
        self._states: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._degraded = False
        # A read must not put a session back in a fallback while a delete of it is on its way
        # (in flight or buffered), nor after one that began or landed since the read began.
        self._delete_gen = 0
        self._deleting: Counter[str] = Counter(p.session_id for p in self._buffer if p.kind == "delete")
        self._forked_from: int | None = None
        _LIVE_STORES.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the buffer is the parent's to replay; locks held at fork time
        would stay held here."""
        self._buffer.clear()
        self._deleting.clear()
        self._unforgotten = []
        self._enqueuing = threading.Lock()
        self._lock = threading.RLock()
        self._probe = threading.Lock()
        self._flushing = threading.Lock()
        self._forked_from = os.getppid()

    @property
    def durable_detached(self) -> bool:
        """True when this store's durable buffer belongs to the process it was forked from:
        writes buffered here are kept in memory only."""
        return self.durable is not None and self.durable.detached

    def _note_fork(self) -> None:
        if self._forked_from is not None:
            parent, self._forked_from = self._forked_from, None
            if self.durable is not None:
                log.warning(
                    "ResilientStore in forked process %d: the durable buffer %s belongs to process %d; "
                    "writes buffered here are kept in memory only. Make the store after the fork "
                    "(gunicorn post_fork, Celery worker_process_init), with a file per worker.",
                    os.getpid(),
                    self.durable.path,
                    parent,
                )
                self._emit("durable_detached", "", {"parent_pid": parent, "path": str(self.durable.path)})

    def close(self) -> None:
        """Release the durable buffer's file and lock (what it holds stays on disk for the next
        start) and close the connections of this store's own client. Writes buffered in
        memory only are lost: `drain()` first for a graceful shutdown."""
        self._release()
        self.store.client.close()

    def _release(self) -> None:
        if self._unforgotten:
            self._retry_forget()
        memory_only = sum(1 for p in self._buffer if p.seq is None)
        if memory_only:
            log.warning("ResilientStore closed with %d writes buffered in memory only: they are lost", memory_only)
        if self.durable is not None:
            self.durable.close()

    def __enter__(self) -> ResilientStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_store(self, store: Any) -> None:
        if not isinstance(store, SessionStore):
            raise InvalidInput(
                f"ResilientStore wraps a SessionStore, got {type(store).__name__}"
                " (for an AsyncSessionStore use statekit.aio.AsyncResilientStore)"
            )

    def _make_io(self) -> Any:
        return _StoreIO(self)

    # -- mode and events ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """'normal', or 'degraded' from a store failure until a store call succeeds with
        the write buffer empty."""
        return "degraded" if self._degraded else "normal"

    @property
    def breaker_state(self) -> str:
        return self.breaker.current_state

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _emit(self, kind: str, session_id: str, info: Mapping[str, Any]) -> None:
        for listener in self.listeners:
            listener.on_event(kind, session_id, info)

    def _set_degraded(self, degraded: bool, reason: str = "") -> None:
        with self._lock:
            if degraded == self._degraded:
                return
            self._degraded = degraded
            if degraded:
                self.stats.degraded_episodes += 1
        self._emit("degraded" if degraded else "recovered", "", {"reason": reason})

    # -- the guarded call -----------------------------------------------------------------

    def _gate(self) -> bool:
        """May a call go to the store now? Returns True when it is the half-open probe.

        The reset timeout is timed on `self.clock`; when it has run out, the breaker is moved
        to half-open here, so pybreaker's own wall-clock check never disagrees with it.
        """
        if self._storage.state == pybreaker.STATE_CLOSED:
            return False
        if self._storage.state == pybreaker.STATE_OPEN and self.clock.now() < self._next_probe_at():
            raise _Unavailable("the circuit breaker is open")
        if not self._probe.acquire(blocking=False):
            raise _Unavailable("another call is probing the store")
        if self._storage.state == pybreaker.STATE_OPEN:
            self.breaker.half_open()
        return True

    def _next_probe_at(self) -> float:
        opened = self._opened_at if self._opened_at is not None else self.clock.now()
        return opened + self.breaker.reset_timeout

    def _call(self, op: str, name: str, *args: Any) -> Steps[Any]:
        """Run the store's method `name` under the breaker; raise _Unavailable instead of failing.

        The call itself is a step, `("store", name, args)`: the blocking store's wire calls
        it, the asyncio one awaits it; everything around it is shared."""
        self._note_fork()
        try:
            probing = self._gate()
        except _Unavailable:
            self.stats.fast_fails += 1
            self._set_degraded(True, "circuit breaker open")
            raise
        try:
            self.stats.store_calls += 1
            try:
                result = yield ("store", name, args)
            except StoreUnavailable as exc:
                self.stats.store_failures += 1
                self._set_degraded(True, f"{op}: {exc}")
                self._report(exc)
                raise _Unavailable(str(exc)) from exc
            except StatekitError as exc:  # a caller's error: the store answered
                self._report(exc)
                raise
            self._report(None)
            return result
        finally:
            if probing:
                self._probe.release()

    def _report(self, exc: BaseException | None) -> None:
        if exc is None and self._storage.state == pybreaker.STATE_CLOSED and self._storage.counter == 0:
            return  # a success that changes nothing in the breaker: skip its lock on the hot path

        def outcome() -> None:
            if exc is not None:
                raise exc

        # the failure is counted; the caller sees the original outcome, not the breaker's error
        with contextlib.suppress(pybreaker.CircuitBreakerError, StatekitError):
            self.breaker.call(outcome)

    def _after_success(self) -> None:
        if self._unforgotten:
            self._retry_forget()
        # a call that began before the breaker opened may answer after: still degraded then
        if self._degraded and not self._buffer and self._storage.state == pybreaker.STATE_CLOSED:
            self._set_degraded(False, "store answered")

    # -- the write buffer -----------------------------------------------------------------

    def _enqueue(self, item: _Pending) -> bool:
        self._note_fork()
        failure = None
        # The file is written outside self._lock, which fallback reads take: a slow disk delays
        # other writes being buffered, never a read.
        with self._enqueuing:
            if len(self._buffer) >= self.buffer_max_turns:
                self.stats.buffer_overflow += 1
                self._emit("overflow", item.session_id, {"kind": item.kind, "buffered": len(self._buffer)})
                return False
            if self.durable is not None:
                try:
                    item.seq = self.durable.add(item)  # on disk before the caller hears "buffered"
                except _DurableError as exc:  # a full disk, a damaged file: keep it in memory
                    failure = str(exc)
                    self.stats.durable_failures += 1
            with self._lock:
                self._buffer.append(item)
                self.stats.writes_buffered += 1
        if failure is not None:
            log.error("durable buffer refused a write, kept in memory only: %s", failure)
            self._emit("durable_failed", item.session_id, {"kind": item.kind, "error": failure})
        info = {"kind": item.kind, "buffered": len(self._buffer)}
        if self.durable is not None:
            info["durable"] = item.seq is not None
        self._emit("buffered", item.session_id, info)
        return True

    def flush(self) -> int:
        """Replay buffered writes in order; return how many were replayed.

        Stops at the first store failure, leaving the rest buffered in order. Appends are
        replayed with their turn ids and updates with their update ids, so a write whose
        first attempt did land (a timeout after the server applied it) is applied once. A
        write that cannot be applied (over the cap by now, or its function raises) is
        reported and dropped; an `AccessDenied` stops the flush and is raised, the write kept.
        One flush runs at a time: a call that finds another flush under way replays nothing.
        """
        return drive(self._flush_steps(), self._io)

    def _flush_steps(self) -> Steps[int]:
        if not self._flushing.acquire(blocking=False):
            return 0
        if self._unforgotten:
            self._retry_forget()
        replayed = 0
        try:
            while True:
                with self._lock:
                    if not self._buffer:
                        break
                    item = self._buffer[0]
                try:
                    if item.kind == "append" and item.record is not None:
                        yield from self._call("replay", "_append_encoded", item.session_id, item.turn_id, item.record)
                    elif item.kind == "append":
                        yield from self._call("replay", "append_turn", item.session_id, item.turn, item.turn_id)
                    elif item.kind == "state":
                        yield from self._call("replay", "update_state", item.session_id, item.fn, item.update_id)
                    elif item.kind == "delete":
                        yield from self._call("replay", "delete", item.session_id)
                    else:
                        raise InvalidInput(f"unknown kind of buffered write {item.kind!r}")
                except _Unavailable:
                    return replayed
                except AccessDenied:
                    raise  # the deployment refuses this user: no fallback hides it, the write stays
                except Exception as exc:  # noqa: BLE001 - over the cap by now, or the update's function raises
                    # it can never be applied: report it and drop it, so it cannot block what follows
                    why = f"{type(exc).__name__}: {exc}"
                    log.warning("buffered %s of session %r dropped at replay: %s", item.kind, item.session_id, why)
                    self.stats.replays_rejected += 1
                    self._emit("replay_rejected", item.session_id, {"kind": item.kind, "error": why})
                with self._lock:
                    popped = bool(self._buffer) and self._buffer[0] is item
                    if popped:
                        self._buffer.popleft()
                if popped and self.durable is not None and item.seq is not None:
                    self._forget(item.seq)  # the file, outside the lock that fallback reads take
                if item.kind == "delete":
                    self._delete_done(item.session_id)
                replayed += 1
                self.stats.writes_replayed += 1
        finally:
            self._flushing.release()
        if replayed:
            self._emit("replayed", "", {"writes": replayed})
        self._after_success()
        return replayed

    def _forget(self, seq: int) -> None:
        """Remove a replayed write's row from the durable file. A file that refuses (a full
        disk) is asked again after the next store call that succeeds, and at close: a row
        left there would be replayed again at the next start, and a delete replayed late
        erases what was written since."""
        self._unforgotten.append(seq)
        self._retry_forget()

    def _retry_forget(self) -> None:
        while self._unforgotten and self.durable is not None:
            try:
                self.durable.remove(self._unforgotten[0])
            except _DurableError as exc:
                self.stats.durable_failures += 1
                log.error("durable buffer could not forget a replayed write (asked again later): %s", exc)
                self._emit("durable_failed", "", {"kind": "remove", "error": str(exc)})
                return
            self._unforgotten.pop(0)

    def _delete_done(self, session_id: str) -> None:
        """A delete landed, was dropped or failed: reads may fill the fallbacks again."""
        with self._lock:
            self._delete_gen += 1
            self._deleting[session_id] -= 1
            if self._deleting[session_id] <= 0:
                del self._deleting[session_id]

    def drain(self, timeout_s: float) -> int:
        """Replay the write buffer, waiting for the store to come back, for at most `timeout_s`;
        return how many writes are still buffered (0: all stored).

        Between attempts it waits for the breaker's next probe (or a tenth of the reset
        timeout while the breaker is closed), on `self.clock`. For a graceful shutdown, and
        for code that must wait until an outage is over rather than sleep a guessed time.
        """
        return drive(self._drain_steps(timeout_s), self._io)

    def _drain_steps(self, timeout_s: float) -> Steps[int]:
        deadline = self.clock.now() + timeout_s
        while True:
            yield from self._flush_steps()
            if not self._buffer:
                return 0
            now = self.clock.now()
            if now >= deadline:
                return len(self._buffer)
            if self._storage.state == pybreaker.STATE_OPEN:
                wake = self._next_probe_at()
            else:
                wake = now + self.breaker.reset_timeout / 10
            yield ("sleep", max(0.001, min(wake, deadline) - now))

    def _flush_first(self) -> Steps[bool]:
        """Before a call, replay what is buffered; True when the buffer is now empty."""
        if not self._buffer:
            return True
        yield from self._flush_steps()
        return not self._buffer

    # -- reads ----------------------------------------------------------------------------

    def _remember(self, ctx: Context, deletes: int) -> None:
        if self.cache_max_sessions == 0:
            return
        with self._lock:
            if not self._may_cache(ctx.session_id, deletes):
                return
            self._cache[ctx.session_id] = (ctx, [])
            self._cache.move_to_end(ctx.session_id)
            while len(self._cache) > self.cache_max_sessions:
                self._cache.popitem(last=False)

    def _may_cache(self, session_id: str, deletes: int) -> bool:
        """May a read that began at `deletes` fill a fallback? Not if a delete of the session
        is on its way, nor if one began or landed since the read began (it may have read
        what the delete removes)."""
        return self._delete_gen == deletes and session_id not in self._deleting

    def _pending_turns(self, session_id: str) -> list[dict[str, Any]]:
        """The turns buffered for the session since its last buffered delete."""
        turns: list[Mapping[str, Any]] = []
        with self._lock:
            for p in self._buffer:
                if p.session_id == session_id and p.kind == "delete":
                    turns = []
                elif p.session_id == session_id and p.kind == "append" and p.turn is not None:
                    turns.append(p.turn)
        return [dict(t) for t in turns]

    def _fallback_context(self, session_id: str) -> Context:
        self.store.keys(session_id)  # a bad session id is the caller's error, degraded or not
        with self._lock:
            entry = self._cache.get(session_id)
        pending = self._pending_turns(session_id)
        if entry is not None:
            cached, since = entry
            self.stats.reads_from_cache += 1
            stored = [self.store.record_turn(r) for r in since]
            turns = (cached.turns + stored + pending)[-self.store.policy.window_turns :]
            ctx = replace(cached, turns=turns, degraded=True, source="cache")
        else:
            self.stats.reads_from_default += 1
            ctx = self._default_context(session_id)
            if pending:
                ctx = replace(ctx, turns=(ctx.turns + pending)[-self.store.policy.window_turns :])
        self._emit("fallback", session_id, {"source": ctx.source})
        return ctx

    def _default_context(self, session_id: str) -> Context:
        """The fallback's context for a session this process has not seen.

        A fallback that raises, or returns anything but a Context, a mapping of Context
        fields or None, must not turn a store outage into a failed request: the error is
        logged with what is wrong, a `fallback_failed` event is sent, and an empty context
        is served instead.
        """
        try:
            default = self.fallback(session_id) if self.fallback is not None else None
            if default is None or isinstance(default, Context):
                base = default or Context(session_id)
                return replace(base, session_id=session_id, degraded=True, source="default")
            if not isinstance(default, Mapping):
                raise InvalidInput(
                    f"the fallback returned a {type(default).__name__}; return a Context, a dict or None"
                )
            unknown = sorted(set(default) - _CONTEXT_FIELDS)
            if unknown:
                raise InvalidInput(
                    f"the fallback returned unknown Context fields {unknown}; the fields are {sorted(_CONTEXT_FIELDS)}"
                )
            return Context(**{**default, "session_id": session_id, "degraded": True, "source": "default"})
        except Exception as exc:  # noqa: BLE001 - a broken fallback must not fail a degraded read
            why = f"{type(exc).__name__}: {exc}"
            log.error("ResilientStore fallback failed for session %r, serving an empty context: %s", session_id, why)
            self._emit("fallback_failed", session_id, {"error": why})
            return Context(session_id, degraded=True, source="default")

    def load_context(self, session_id: str) -> Context:
        """The session's context; never raises on a store failure.

        From the store when it answers (`source='store'`), else the last context this
        process saw plus any buffered turns (`'cache'`), else the fallback's default
        (`'default'`). `degraded` is True for the last two.
        """
        return drive(self._load_steps(session_id), self._io)

    def _load_steps(self, session_id: str) -> Steps[Context]:
        deletes = self._delete_gen
        try:
            if not (yield from self._flush_first()):
                raise _Unavailable("buffered writes are still waiting")
            ctx = yield from self._call("load_context", "load_context", session_id)
        except _Unavailable:
            return self._fallback_context(session_id)
        self.stats.reads_from_store += 1
        self._remember(ctx, deletes)
        self._after_success()
        return ctx

    def get_state(self, session_id: str) -> tuple[dict[str, Any], int]:
        """Structured state and version; the last seen (or ({}, 0)) when the store is unavailable."""
        return drive(self._get_state_steps(session_id), self._io)

    def _get_state_steps(self, session_id: str) -> Steps[tuple[dict[str, Any], int]]:
        deletes = self._delete_gen
        try:
            if not (yield from self._flush_first()):
                raise _Unavailable("buffered writes are still waiting")
            result = yield from self._call("get_state", "get_state", session_id)
        except _Unavailable:
            self.store.keys(session_id)
            with self._lock:
                return self._states.get(session_id, ({}, 0))
        with self._lock:
            if self._may_cache(session_id, deletes):
                self._states[session_id] = result
            while len(self._states) > self.cache_max_sessions:
                self._states.popitem(last=False)
        self._after_success()
        return result

    # -- writes ---------------------------------------------------------------------------

    def _unavailable_write(self, item: _Pending, reason: str) -> bool:
        """Raise, drop or buffer a write the store could not take; True when it was buffered."""
        self.store.keys(item.session_id)  # a bad session id is the caller's error, degraded or not
        if self.write_policy == "raise":
            raise StoreUnavailable(f"{item.kind} of session {item.session_id!r} not stored: {reason}")
        if self.write_policy == "drop":
            self.stats.writes_dropped += 1
            self._emit("dropped", item.session_id, {"kind": item.kind})
            return False
        return self._enqueue(item)

    def append_turn(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None = None) -> int | None:
        """Append a turn; the stored bytes, or None when the store is unavailable and the
        turn was buffered or dropped (by `write_policy`). The turn id is fixed here, so a
        replay can never store it twice."""
        return drive(self._append_steps(session_id, turn, turn_id), self._io)

    def _append_steps(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None) -> Steps[int | None]:
        if self.store.dictionaries_due():
            # the namespace's newest zstd dictionary, looked up as the store's own appends do (one
            # GET every codec.refresh_s), so the turn is encoded and checked against the cap as a
            # healthy store would write it; unreachable, the turn is encoded with what is known
            with contextlib.suppress(_Unavailable):
                yield from self._call("append_turn", "refresh_dictionaries")
        # checked and encoded now, as the store would: a degraded append refuses what a healthy one does
        turn_id, record = self.store.prepare_turn(session_id, turn, turn_id)
        return (yield from self._append_record_steps(session_id, turn_id, record))

    def _append_record_steps(self, session_id: str, turn_id: str, record: bytes) -> Steps[int | None]:
        try:
            if not (yield from self._flush_first()):
                raise _Unavailable("earlier writes are still buffered; this one keeps its place after them")
            result = yield from self._call("append_turn", "_append_encoded", session_id, turn_id, record)
        except _Unavailable as exc:
            item = _Pending("append", session_id, turn=self.store.record_turn(record), turn_id=turn_id, record=record)
            self._unavailable_write(item, str(exc))
            return None
        entry = self._cache.get(session_id)
        if entry is not None:  # keep the cached context current, so a later fallback is not stale
            since = entry[1]
            since.append(record)
            if len(since) > self.store.policy.window_turns:
                del since[0]
        self._after_success()
        return result

    def update_state(self, session_id: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any] | None:
        """Compare-and-set update; None when the store is unavailable and `fn` was buffered
        (it then runs on replay, against the state of that moment) or dropped."""
        return drive(self._update_state_steps(session_id, fn), self._io)

    def _update_state_steps(self, session_id: str, fn: Callable[[dict[str, Any]], Any]) -> Steps[dict[str, Any] | None]:
        self.store.keys(session_id)
        if not callable(fn):
            raise InvalidInput(f"update_state takes a function of the state, got {type(fn).__name__}")
        # a function, or an object whose __call__ is a coroutine function
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        if is_async and not self._awaits:
            raise InvalidInput(
                "update_state's function is a coroutine function: async update functions need "
                "statekit.aio.AsyncResilientStore"
            )
        update_id = _new_turn_id()  # recorded by the script that applies it: a replay is applied once
        return self._update_io(session_id, fn, update_id)

    def _update_io(self, session_id: str, fn: Callable[[dict[str, Any]], Any], update_id: str) -> Steps[Any]:
        try:
            if not (yield from self._flush_first()):
                raise _Unavailable("earlier writes are still buffered")
            result = yield from self._call("update_state", "update_state", session_id, fn, update_id)
        except _Unavailable as exc:
            self._unavailable_write(_Pending("state", session_id, fn=fn, update_id=update_id), str(exc))
            return None
        self._after_success()
        return result

    def delete(self, session_id: str) -> bool | None:
        """Delete the session; None when the store is unavailable and the delete was buffered or dropped."""
        return drive(self._delete_steps(session_id), self._io)

    def _delete_steps(self, session_id: str) -> Steps[bool | None]:
        self.store.keys(session_id)  # before touching the caches
        with self._lock:  # out of every fallback at once, whether the delete lands now or is buffered
            self._delete_gen += 1
            self._deleting[session_id] += 1
            self._cache.pop(session_id, None)
            self._states.pop(session_id, None)
        return self._delete_io(session_id)

    def _delete_io(self, session_id: str) -> Steps[bool | None]:
        buffered = False
        try:
            try:
                if not (yield from self._flush_first()):
                    raise _Unavailable("earlier writes are still buffered")
                result = yield from self._call("delete", "delete", session_id)
            except _Unavailable as exc:
                buffered = self._unavailable_write(_Pending("delete", session_id), str(exc))
                return None
        finally:
            if not buffered:  # a buffered delete is on its way until it is replayed
                self._delete_done(session_id)
        self._after_success()
        return result


class _StoreIO:
    """Carries out the resilient store's steps with blocking calls."""

    def __init__(self, owner: ResilientStore) -> None:
        self.owner = owner

    def store(self, name: str, args: tuple[Any, ...]) -> Any:
        return getattr(self.owner.store, name)(*args)

    def sleep(self, seconds: float) -> None:
        self.owner.clock.sleep(seconds)


# -- decide: settings from a profile ------------------------------------------------------


# -- run: a live outage, timed ------------------------------------------------------------
