"""The blocking driver of the session store: `SessionStore` carries out `StoreCore`'s steps
with blocking calls on a redis-py client (`_Wire`), one round trip per operation."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

import redis

from statekit.backends import backend_kind, is_async
from statekit.errors import (
    InvalidInput,
)
from statekit.scripts import SCRIPTS, Script
from statekit.store.core import _CONNECTION_ERRORS, CallerRaised, Context, Step, Steps, StoreCore, T
from statekit.store.wire import _check_context, _context_reads, _packer

_REDIRECTS = (redis.exceptions.MovedError, redis.exceptions.AskError)


class _Wire:
    """Send packed commands on a pooled connection and read their replies: one round trip.

    Written by hand because redis-py's per-command path (retry wrapper, response callbacks)
    and its Pipeline cost 10 to 20 us of Python per call on a 2-core machine, more than the
    store's whole overhead budget over a bare command. What stays redis-py's: its pooled
    connections (socket and connect timeouts, TLS, AUTH, the health check on checkout),
    its argument encoding (the client's own `Encoder`), its RESP parser (which raises error
    replies as exceptions) and, on Redis Cluster, its slot map. What it does not keep: the
    connection's retry policy (a store command is sent once; statekit's writes are
    idempotent by turn id and version, so the caller or ResilientStore decides whether to
    try again) and the hooks that instrument `execute_command`. A NOSCRIPT reply loads the
    script and tries once more; a MOVED or ASK reply hands the call to redis-py's own
    routing (`routed`).

    The store's operations are written once, as generators of steps (`("evalsha", script,
    keys, args)`, `("read_context", keys)`, ...); this wire carries them out with blocking
    calls, and `statekit.aio`'s wire carries the same steps out with awaits.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cluster = backend_kind(client) == "cluster"
        self.pack = _packer(client.get_encoder())
        # round trips and request bytes of the operation running in this thread, for listeners
        self.sent = threading.local()

    def reset(self) -> None:
        self.sent.round_trips = self.sent.bytes = 0

    def counted(self) -> dict[str, int]:
        return {"round_trips": self.sent.round_trips, "bytes": self.sent.bytes}

    def count(self, round_trips: int, request_bytes: int = 0) -> None:
        """Add round trips made outside `send` (redis-py's own routing, plain commands)."""
        sent = self.sent
        sent.round_trips = getattr(sent, "round_trips", 0) + round_trips
        sent.bytes = getattr(sent, "bytes", 0) + request_bytes

    def _pool(self, key: str) -> Any:
        if not self.cluster:
            return self.client.connection_pool
        node = self.client.get_node_from_key(key)
        return self.client.get_redis_connection(node).connection_pool

    def send(self, key: str, packed: bytes, replies: int) -> Any:
        """Send `packed` and read `replies` replies; return the last, or raise the first error.

        Every reply is read even after an error reply (a MOVED for a queued command, say),
        so the connection goes back to the pool in step; any other failure drops it.
        """
        self.count(1, len(packed))
        pool = self._pool(key)
        try:
            conn = pool.get_connection()  # connects (and checks health) on checkout
        except _CONNECTION_ERRORS:
            if self.cluster:
                self._refresh()  # the node may be gone, and its replica promoted: ask the cluster
            raise
        first_error: redis.exceptions.ResponseError | None = None
        reply = None
        try:
            conn.send_packed_command([packed])
            for _ in range(replies):
                try:
                    reply = conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    first_error = first_error or exc
        except BaseException as exc:
            conn.disconnect()  # replies may still be in flight: never hand this connection back as is
            if self.cluster and isinstance(exc, _CONNECTION_ERRORS):
                self._refresh()  # the node may be gone, and its replica promoted: ask the cluster
            raise
        finally:
            pool.release(conn)
        if first_error is not None:
            raise first_error
        return reply

    def _refresh(self) -> None:
        """Read the slot map again after a node failed, as redis-py's own routing does (a
        failover moves a shard to the promoted replica); a cluster that cannot answer now is
        asked again after the next failure."""
        with contextlib.suppress(redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError):
            self.client.nodes_manager.initialize()

    def load_script(self, script: Script) -> None:
        """SCRIPT LOAD on the server, or on each primary of a cluster through that node's own
        client (redis-py's cluster routing of a keyless SCRIPT LOAD fails right after a
        MOVED reply, so it is not asked to route one)."""
        if self.cluster:
            for node in self.client.get_primaries():
                self.count(1)
                self.client.get_redis_connection(node).script_load(script.script)
        else:
            self.count(1)
            self.client.script_load(script.script)

    def routed(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run `script` through redis-py's own routing, which follows MOVED and ASK."""
        self.count(1)
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.load_script(script)
            return self.client.evalsha(script.sha, len(keys), *keys, *args)

    def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        packed = self.pack("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self.send(keys[0], packed, 1)
        except redis.exceptions.NoScriptError:
            self.load_script(script)
            return self.send(keys[0], packed, 1)
        except _REDIRECTS:
            if self.cluster:
                return self.routed(script, keys, args)
            raise

    def read_context(self, keys: list[str]) -> list[Any]:
        """HMGET meta, LRANGE log, GET summary, atomically, in one round trip.

        A MULTI/EXEC transaction rather than a script: a script would copy the window of
        turns into Lua and back, which costs more than the read itself. On a cluster whose
        slot just moved, the Lua script (which redis-py redirects) answers instead.
        """
        try:
            reply = self.send(keys[0], _context_reads(self.pack, keys), 5)
        except _REDIRECTS:
            if not self.cluster:
                raise
            reply = self.routed(SCRIPTS["load"], keys[:3], [])
        return _check_context(reply, keys)

    def types(self, keys: list[str]) -> list[bytes]:
        self.count(len(keys))
        return [self.client.type(key) for key in keys]

    def get(self, key: str) -> bytes | None:
        self.count(1)
        return self.client.get(key)

    def delete(self, keys: list[str]) -> int:
        self.count(1)
        return int(self.client.delete(*keys))

    def scan(self, pattern: str) -> list[bytes]:
        """Every key matching `pattern`, on the server or on each primary of a cluster."""
        options: dict[str, Any] = {"match": pattern, "count": 1000}
        if self.cluster:
            options["target_nodes"] = self.client.PRIMARIES
        return sorted(set(self.client.scan_iter(**options)))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def await_(self, awaitable: Any) -> Any:
        if hasattr(awaitable, "close"):
            awaitable.close()  # never awaited: close it, so Python does not warn about it later
        raise InvalidInput(
            "a callback returned an awaitable: async summarizers and update functions need "
            "statekit.aio.AsyncSessionStore"
        )


def drive(steps: Generator[Step, Any, T], wire: Any) -> T:
    """Carry out an operation's steps on a blocking wire; return what the operation returns.

    A step that fails is thrown back into the operation, which may handle it."""
    try:
        step = steps.send(None)
        while True:
            try:
                reply = getattr(wire, step[0])(*step[1:])
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(reply)
    except StopIteration as stop:
        return stop.value


class SessionStore(StoreCore):
    """Bounded session state in Redis, by `policy`, under `namespace`.

    Appends and loads are one round trip each (an append one Lua script, a load one MULTI/EXEC
    transaction); folding evicted turns into the summary adds one round trip every
    `policy.fold_batch` evictions. Connection errors
    and timeouts surface as `StoreUnavailable`; wrap the store in `ResilientStore` to
    degrade instead. For asyncio services, `statekit.aio.AsyncSessionStore` has the same
    methods, awaitable. `codec=statekit.codec.Codec()` stores turns, the summary and the state
    zstd-compressed (the byte cap counts stored bytes); every store reads both.
    """

    def _make_wire(self, client: Any) -> _Wire:
        if is_async(client):
            raise InvalidInput(
                "SessionStore needs a blocking client; for an asyncio client (redis.asyncio, "
                "FakeAsyncRedis) use statekit.aio.AsyncSessionStore"
            )
        return _Wire(client)

    def _run(self, op: str, session_id: str, steps: Steps[T]) -> T:
        listening = bool(self.listeners)
        if listening:
            start = time.perf_counter()
            self._wire.reset()
        error: BaseException | None = None
        try:
            return drive(steps, self._wire)
        except CallerRaised as raised:
            error = raised.error
            raise error from None
        except BaseException as exc:
            error = self._translate(op, session_id, exc)
            if error is None:
                error = drive(self._corrupt_steps(session_id, exc), self._wire)
            if error is exc:
                raise
            raise error from exc
        finally:
            if listening:
                self._notify(op, session_id, time.perf_counter() - start, error)

    # -- conversation ---------------------------------------------------------------------

    def append_turn(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None = None) -> int:
        """Append `turn` to the session in one round trip; return the session's stored bytes.

        The same `turn_id` twice is stored once (a replay after a timeout is harmless);
        without one, a fresh id is made. Raises `StateTooLarge` (nothing written) when the
        turn would take the session past `policy.max_bytes` (a turn larger than the cap on
        its own is refused before anything is sent), `InvalidInput` for bad ids or a turn
        that cannot be serialised, `CorruptStateError` when the session's keys hold data the
        store did not write.
        """
        return self._run("append_turn", session_id, self._append_steps(session_id, turn, turn_id))

    def load_context(self, session_id: str) -> Context:
        """The session's summary, window, pending turns, version and size, in one round trip.

        A missing (or expired) session is an empty context, not an error. A corrupt record
        raises `CorruptStateError` naming the key; nothing is modified.
        """
        return self._run("load_context", session_id, self._load_steps(session_id))

    # -- structured state -----------------------------------------------------------------

    def get_state(self, session_id: str) -> tuple[dict[str, Any], int]:
        """The session's structured state and its version (an empty dict and 0 when unset)."""
        return self._run("get_state", session_id, self._get_state_steps(session_id))

    def update_state(
        self, session_id: str, fn: Callable[[dict[str, Any]], dict[str, Any]], update_id: str | None = None
    ) -> dict[str, Any]:
        """Apply `fn` to the structured state with optimistic concurrency; return the new state.

        Reads the state and its version, computes `fn(state)`, and writes only if nobody
        wrote in between (compare-and-set in one script); otherwise re-reads and retries, up
        to `max_update_retries` times with jittered backoff, then raises `ConflictError`.
        `fn` may run more than once, so it must not have side effects.

        `update_id` makes the update idempotent, as a turn id makes an append: the script that
        writes records it, so the same id sent again (a retry after a lost reply) is not
        applied again, and the state as it stands is returned. A session remembers its last
        32 update ids. `ResilientStore` gives every update one.
        """
        return self._run("update_state", session_id, self._update_state_steps(session_id, fn, update_id))

    def _append_encoded(self, session_id: str, turn_id: str, record: bytes) -> int:
        """`append_turn` for a turn that `prepare_turn` checked and encoded (ResilientStore's replay)."""
        return self._run("append_turn", session_id, self._append_prepared_steps(session_id, turn_id, record))

    def refresh_dictionaries(self) -> int:
        """Look up the namespace's newest zstd dictionary now (one GET; writes otherwise do it
        every `codec.refresh_s` seconds); its id, 0 for none."""
        return self._run("refresh_dictionaries", "", self.refresh_dictionaries_steps())

    def tag_region(self, session_id: str, region: str) -> bool:
        """Record where a session's data lives (its residency), for `statekit health`.

        One script that tags only an existing session, keeping its TTL; returns False (and
        creates nothing) for a session that does not exist or has expired: tag it after its
        first write.
        """
        return self._run("tag_region", session_id, self._tag_region_steps(session_id, region))

    def delete(self, session_id: str) -> bool:
        """Remove every key of the session; True when it existed."""
        return self._run("delete", session_id, self._delete_steps(session_id))
