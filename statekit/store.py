"""SessionStore: bounded session state on Redis, one round trip per operation.

Keys of one session share a hash tag, `{ns}:{<session>}:<part>`, so each Lua script and
multi-key command stays on one Redis Cluster slot:

- `meta`    hash: `v` session version, `b` stored bytes, `sv` state version, `fv` fold
            version, `c` created (ms), `rg` region (when tagged), and one `#<turn id>`
            field per turn not yet folded (the idempotency set, so a replayed append is
            stored once).
- `log`     list of turn records, oldest first: the last `window_turns` form the window;
            any before them are parked, waiting to be folded into the summary.
- `summary` string: the running summary of folded turns (absent while empty).
- `state`   string: structured session state (absent until `update_state`).

Every write refreshes the TTL of each of the session's keys that exists (sliding expiry)
and checks the byte cap inside its script, so an oversized update is rejected before
anything is written. Structured state read through a `Migrations` registry is upgraded
on read and written back lazily, keeping its TTL.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import redis

from . import codec
from .backends import backend_kind, connection_hint, is_async
from .errors import (
    ConflictError,
    CorruptStateError,
    InvalidInput,
    StateTooLarge,
    StoreUnavailable,
    classify_reply,
)
from .keys import session_keys, valid_id, validate_namespace
from .lifecycle import LifecyclePolicy, truncate_utf8
from .scripts import (
    CORRUPT_PREFIX,
    EXEC,
    MULTI,
    SCRIPTS,
    Script,
)

if TYPE_CHECKING:
    from .migrate import Migrations

__all__ = ["SessionStore", "StoreCore", "Context", "StoreListener", "session_keys", "drive"]

T = TypeVar("T")
#: One step of an operation: the name of a wire method and its arguments.
Step = tuple[Any, ...]
#: An operation written once for every wire: it yields steps and receives their results.
Steps = Generator[Step, Any, T]

log = logging.getLogger(__name__)

SEP = b"\x1f"  # between a record's turn id and its encoded turn; ids may not contain it
# fullmatch, not match: `$` would also match before a trailing newline
_TURN_ID = re.compile(r"[^\x00-\x20\x7f\ud800-\udfff]+")
MAX_TURN_ID_BYTES = 128

_SCRIPT_SUFFIX = re.compile(r" script: [0-9a-f]+, on @user_script:\S+$")
_REDIRECTS = (redis.exceptions.MovedError, redis.exceptions.AskError)
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _pack_py(*args: bytes) -> bytes:
    """One command in RESP from arguments already encoded to bytes."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


try:  # hiredis packs in C, about twice as fast; the extra `statekit[hiredis]` installs it
    from hiredis import pack_command as _hiredis_pack

    def _pack_bytes(*args: bytes) -> bytes:
        return _hiredis_pack(args)

except ImportError:  # pragma: no cover - exercised where hiredis is absent
    _hiredis_pack = None
    _pack_bytes = _pack_py


def _packer(encoder: Any, pack_bytes: Callable[..., bytes] | None = None) -> Callable[..., bytes]:
    """A packer that encodes arguments exactly as redis-py's `encoder` does, then packs them.

    The command name is UTF-8 and split on spaces (as redis-py does). With a strict UTF-8
    encoder and hiredis installed, the whole command goes to hiredis's C packer, which
    writes bytes, str, int and float as redis-py's Encoder does; anything it refuses
    (bool, None, bytearray) takes the careful path. The careful path encodes each argument
    with redis-py's own `Encoder.encode` (so floats are written as redis-py writes them,
    and bool and None raise redis-py's `DataError`), then packs the bytes.
    """
    encode = encoder.encode
    utf8 = encoder.encoding.replace("-", "").lower() == "utf8" and encoder.encoding_errors == "strict"
    fast = _hiredis_pack if (utf8 and pack_bytes is None) else None
    pack_bytes = pack_bytes or _pack_bytes

    def careful(command: str | bytes, *args: Any) -> bytes:
        out = command.encode().split() if isinstance(command, str) else [command]
        for arg in args:
            value = encode(arg)
            out.append(value if type(value) is bytes else bytes(value))
        return pack_bytes(*out)

    if fast is None:
        return careful

    def pack(command: str | bytes, *args: Any) -> bytes:
        if type(command) is str and " " not in command:
            try:
                return fast((command, *args))
            except TypeError:
                pass
        return careful(command, *args)

    return pack


class _TurnIds:
    """Fresh 20-character turn ids: a random 48-bit prefix and a counter (cheaper than uuid4).

    The prefix is drawn again when the counter wraps, so ids never repeat within a process,
    and in every child process right after a fork: a forked worker (gunicorn --preload,
    Celery prefork, multiprocessing) would otherwise continue its parent's sequence, and two
    workers appending to one session would store one turn and drop the other as a replay.
    Two processes share a prefix with probability 2**-48.
    """

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        self._lock = threading.Lock()  # new in a child: a lock held at fork time stays held there
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        n = next(self._counter)
        if n >= 1 << 32:
            with self._lock:
                self._renew()
                n = next(self._counter)
        return f"{self._prefix}{n:08x}"


_new_turn_id = _TurnIds()
os.register_at_fork(after_in_child=_new_turn_id._renew)


def _int(value: bytes | None, key: str, field_name: str) -> int:
    """A numeric meta field read back in Python; CorruptStateError naming it when it is not a number."""
    try:
        return int(value or 0)
    except ValueError:
        raise CorruptStateError(
            f"{key} field {field_name} is not a number ({value!r}); the session was left as is"
        ) from None


def validate_turn_id(turn_id: str) -> str:
    """Return `turn_id`, or raise `InvalidInput` unless it is 1 to 128 UTF-8 bytes of printable
    characters without spaces."""
    if not valid_id(turn_id, _TURN_ID, MAX_TURN_ID_BYTES):
        raise InvalidInput(
            f"bad turn id {turn_id!r}: 1 to {MAX_TURN_ID_BYTES} bytes of printable characters, no spaces"
        )
    return turn_id


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


def _context_reads(pack: Callable[..., bytes], keys: list[str]) -> bytes:
    """load_context's reads as one packed MULTI/EXEC transaction (five replies)."""
    return b"".join(
        (MULTI, pack("HMGET", keys[0], "v", "b"), pack("LRANGE", keys[1], 0, -1), pack("GET", keys[2]), EXEC)
    )


def _check_context(reply: Any, keys: list[str]) -> list[Any]:
    if reply is None:
        raise redis.exceptions.ResponseError("EXEC aborted")
    for part, key in zip(reply, keys, strict=False):
        if isinstance(part, Exception):
            raise CorruptStateError(f"{key}: {part}; the session was left as is")
    return reply


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


@dataclass(frozen=True, slots=True)
class Context:
    """What a request needs from its session: summary, recent turns, and bookkeeping.

    `turns` is the window (oldest first); `pending` holds turns that left the window and
    are not yet in the summary. `degraded` and `source` say where the context came from
    (`store` here; a resilient wrapper may answer from `cache` or `default`).
    `summary_label` says what the summary is, in the words of the summarizer that wrote it
    (its `label` attribute), so a model is not told that excerpts are a summary.
    """

    session_id: str
    summary: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    turn_ids: list[str] = field(default_factory=list)
    version: int = 0
    bytes: int = 0
    degraded: bool = False
    source: str = "store"
    summary_label: str = "Summary of the earlier conversation"

    @property
    def exists(self) -> bool:
        return self.version > 0

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages for a model: the summary (under its label) as a system message, then
        pending and recent turns."""
        head = [{"role": "system", "content": f"{self.summary_label}:\n{self.summary}"}]
        return (head if self.summary else []) + self.pending + self.turns


class StoreListener:
    """Observer of a SessionStore; override what you need. Calls happen after each operation.

    `on_operation(op, session_id, seconds, error)` for every public operation;
    `on_event(kind, session_id, info)` for lifecycle events: created, appended, duplicate,
    evicted, summarised, fold_failed, rejected, conflict, state_updated, migrated, deleted.
    """

    def on_operation(self, op: str, session_id: str, seconds: float, error: BaseException | None) -> None:
        """Called once per public operation."""

    def on_operation_detail(
        self, op: str, session_id: str, seconds: float, error: BaseException | None, detail: Mapping[str, int]
    ) -> None:
        """Called once per public operation, with `detail`: `round_trips` made and request
        `bytes` sent. The default calls `on_operation`; override this one to see the detail."""
        self.on_operation(op, session_id, seconds, error)

    def on_event(self, kind: str, session_id: str, info: Mapping[str, Any]) -> None:
        """Called for each lifecycle event."""


class StoreCore:
    """What the blocking `SessionStore` and `statekit.aio.AsyncSessionStore` share: the key
    layout, the policy, the listeners, and every operation written once as a generator of
    steps, which each store's wire carries out (blocking or awaited). No I/O happens here.
    """

    def __init__(
        self,
        client: Any,
        policy: LifecyclePolicy | None = None,
        namespace: str = "sk",
        metrics: StoreListener | None = None,
        listeners: Iterable[StoreListener] = (),
        max_update_retries: int = 16,
        migrations: Migrations | None = None,
    ) -> None:
        validate_namespace(namespace)
        self.client = client
        self.policy = policy or LifecyclePolicy()
        self.namespace = namespace
        self.max_update_retries = max_update_retries
        self.migrations = migrations
        self.listeners: list[StoreListener] = [*listeners, *([metrics] if metrics is not None else [])]
        encoder = client.get_encoder() if hasattr(client, "get_encoder") else None
        if encoder is not None and getattr(encoder, "decode_responses", False):
            raise InvalidInput(
                f"{type(self).__name__} needs a client with decode_responses=False: turns are stored as bytes"
            )
        self._wire = self._make_wire(client)
        self._append = SCRIPTS["append"]
        self._fold = SCRIPTS["fold"]
        self._load = SCRIPTS["load"]
        self._get_state = SCRIPTS["get_state"]
        self._cas_state = SCRIPTS["cas_state"]
        self._keepttl_cas = SCRIPTS["keepttl_cas"]
        self._tag_region = SCRIPTS["tag_region"]
        self.summary_label = getattr(self.policy.summarizer, "label", Context.summary_label)

    def _make_wire(self, client: Any) -> Any:
        raise NotImplementedError

    def with_client(self, client: Any) -> Any:
        """The same store (policy, namespace, listeners) over another client."""
        return type(self)(
            client,
            self.policy,
            self.namespace,
            listeners=self.listeners,
            max_update_retries=self.max_update_retries,
            migrations=self.migrations,
        )

    # -- plumbing -------------------------------------------------------------------------

    def keys(self, session_id: str) -> list[str]:
        """The keys of `session_id` (meta, log, summary, state)."""
        return session_keys(self.namespace, session_id)

    def _event(self, kind: str, session_id: str, **info: Any) -> None:
        for listener in self.listeners:
            listener.on_event(kind, session_id, info)

    def _translate(self, op: str, session_id: str, exc: BaseException) -> BaseException | None:
        """The error a caller sees for `exc`: StoreUnavailable for a connection failure, a
        timeout or a transient error reply (READONLY, CLUSTERDOWN, TRYAGAIN, MASTERDOWN,
        LOADING, BUSY), StoreFull for OOM, AccessDenied for NOPERM; None when an error reply
        needs `_corrupt_steps` to name it; else `exc`."""
        if isinstance(exc, (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError)):
            classified = classify_reply(exc, f"{op} of session {session_id!r}")
            if classified is not None or isinstance(exc, redis.exceptions.AuthenticationError):
                return classified or StoreUnavailable(f"{op} of session {session_id!r} failed: {exc}")
        if isinstance(exc, _CONNECTION_ERRORS):
            hint = connection_hint(exc)
            return StoreUnavailable(f"{op} of session {session_id!r} failed: {exc}" + (f" ({hint})" if hint else ""))
        if isinstance(exc, redis.exceptions.ResponseError):
            return classify_reply(exc, f"{op} of session {session_id!r}")
        if isinstance(exc, redis.exceptions.RedisClusterException):
            return StoreUnavailable(f"{op} of session {session_id!r} failed: the cluster could not route it ({exc})")
        return exc

    def _notify(self, op: str, session_id: str, elapsed: float, error: BaseException | None) -> None:
        detail = self._wire.counted()
        for listener in self.listeners:
            hook = getattr(listener, "on_operation_detail", None)
            if hook is not None:
                hook(op, session_id, elapsed, error, detail)
            else:
                listener.on_operation(op, session_id, elapsed, error)

    def _corrupt_steps(self, session_id: str, exc: redis.exceptions.ResponseError) -> Steps[BaseException]:
        """A CorruptStateError naming the key, for error replies that mean the session's data
        is not what the store wrote: a key of the wrong type, a meta field that is not a
        number, a record a script cannot parse. `exc` itself for any other error reply."""
        text = _SCRIPT_SUFFIX.sub("", str(exc))
        keys = self.keys(session_id)
        if text.startswith(CORRUPT_PREFIX):
            detail = text[len(CORRUPT_PREFIX) :]
        elif text.startswith("WRONGTYPE"):
            detail = yield from self._wrong_type(keys)
        elif "user_script" in text or text.startswith("Error running script"):
            detail = f"a record of session {session_id!r} cannot be parsed ({text})"
        else:
            return exc
        return CorruptStateError(f"{detail}; the session was left as is (delete it to start afresh)")

    def _wrong_type(self, keys: list[str]) -> Steps[str]:
        """Which key holds the wrong type: one TYPE per key, on this error path only."""
        expected = dict(zip(keys, (b"hash", b"list", b"string", b"string"), strict=True))
        try:
            found = dict(zip(keys, (yield ("types", keys)), strict=True))
        except redis.exceptions.RedisError:
            return f"one of {keys} holds the wrong type of value"
        wrong = [
            f"{key} is a {kind.decode()} where a {expected[key].decode()} belongs"
            for key, kind in found.items()
            if kind not in (b"none", expected[key])
        ]
        return "; ".join(wrong) or f"one of {keys} held the wrong type of value"

    @staticmethod
    def _decode_records(records: list[bytes], key: str) -> tuple[list[str], list[dict[str, Any]]]:
        """Turn ids and turns of log records; the slow path names what is wrong."""
        ids, turns = [], []
        try:
            for record in records:
                cut = record.index(SEP)
                if record[cut + 1 : cut + 2] != codec.FORMAT_ORJSON:
                    raise ValueError
                ids.append(record[:cut].decode())
                turns.append(orjson.loads(record[cut + 2 :]))
        except (ValueError, orjson.JSONDecodeError):
            pairs = [StoreCore._split(r, key) for r in records]  # raises CorruptStateError with the detail
            return [i for i, _ in pairs], [t for _, t in pairs]
        return ids, turns

    @staticmethod
    def _split(record: bytes, key: str) -> tuple[str, dict[str, Any]]:
        tid, sep, body = record.partition(SEP)
        if not sep:
            raise CorruptStateError(f"{key}: a turn record without its turn id; the session was left as is")
        return tid.decode("utf-8", errors="replace"), codec.decode(body, key)

    # -- the operations, as steps ---------------------------------------------------------

    def prepare_turn(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None) -> tuple[str, bytes]:
        """Check and encode a turn as `append_turn` stores it: its turn id (a fresh one when
        None) and its record. Raises what `append_turn` raises before any round trip:
        `InvalidInput` for a bad session id, turn id or a turn that cannot be serialised,
        `StateTooLarge` for a record over the cap on its own. `ResilientStore` checks a turn
        here before it buffers it, so a degraded append refuses exactly what a healthy one does."""
        turn_id, record = self._encode_turn(session_id, turn, turn_id)
        self._check_record(session_id, record)
        return turn_id, record

    def _encode_turn(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None) -> tuple[str, bytes]:
        self.keys(session_id)
        if not isinstance(turn, Mapping):
            raise InvalidInput(
                f"a turn is a mapping such as {{'role': ..., 'content': ...}}, got {type(turn).__name__}"
            )
        turn_id = _new_turn_id() if turn_id is None else validate_turn_id(turn_id)
        return turn_id, turn_id.encode() + SEP + codec.encode(dict(turn), what="the turn")

    def _check_record(self, session_id: str, record: bytes) -> None:
        cap = self.policy.max_bytes
        if len(record) > cap:  # over the cap whatever the session holds: no round trip
            self._event("rejected", session_id, size=len(record), cap=cap)
            raise StateTooLarge(session_id, len(record), cap)

    @staticmethod
    def record_turn(record: bytes) -> dict[str, Any]:
        """The turn a record made by `prepare_turn` holds, as a load would return it."""
        return orjson.loads(record[record.index(SEP) + 2 :])

    def _append_steps(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None) -> Steps[int]:
        """Check the input now (a bad id or turn raises before any step), then the steps."""
        turn_id, record = self._encode_turn(session_id, turn, turn_id)
        return self._append_record_steps(session_id, turn_id, record)

    def _append_record_steps(self, session_id: str, turn_id: str, record: bytes) -> Steps[int]:
        p = self.policy
        args = [record, turn_id, p.window_turns, p.max_bytes, p.ttl_ms, p.fold_batch, int(time.time() * 1000), p.mode]
        return self._append_io(session_id, self.keys(session_id), turn_id, record, args)

    def _append_io(self, session_id: str, keys: list[str], turn_id: str, record: bytes, args: list[Any]) -> Steps[int]:
        self._check_record(session_id, record)  # in the steps: the operation's listeners see the refusal
        reply = yield ("evalsha", self._append, keys, args)
        status = reply[0]
        if status == -1:
            self._event("rejected", session_id, size=reply[1], cap=reply[2])
            raise StateTooLarge(session_id, reply[1], reply[2])
        if status == 0:
            self._event("duplicate", session_id, turn_id=turn_id)
            return reply[1]
        if reply[3]:
            self._event("created", session_id)
        self._event("appended", session_id, bytes=len(record), total=reply[1])
        if len(reply) > 5:
            return (yield from self._fold_parked(session_id, keys, reply))
        if reply[4]:
            self._event("evicted", session_id, turns=reply[4], summarised=False)
        return reply[1]

    def _fold_parked(self, session_id: str, keys: list[str], reply: list[Any]) -> Steps[int]:
        _status, size, _v, _created, n_parked, fold_version, summary_raw, *parked = reply
        pairs = [self._split(r, keys[1]) for r in parked]
        summary = summary_raw.decode("utf-8", errors="replace")
        budget = self.policy.summary_max_bytes
        try:
            written = self.policy.summarizer(summary, [t for _, t in pairs], budget)
            if inspect.isawaitable(written):  # an async summarizer (a model call): AsyncSessionStore awaits it
                written = yield ("await_", written)
            new_summary = truncate_utf8(written, budget)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing summarizer must not fail an append that landed
            # The turns stay parked in Redis; the next append that finds them hands them over again.
            log.warning("summarizer failed for session %r, %d turns stay parked: %r", session_id, len(pairs), exc)
            self._event("fold_failed", session_id, turns=len(pairs), error=repr(exc))
            return size
        result = yield (
            "evalsha",
            self._fold,
            keys,
            [fold_version, len(parked), pairs[0][0], new_summary.encode(), self.policy.ttl_ms],
        )
        if result[0] == 1:
            self._event("evicted", session_id, turns=len(parked), summarised=True)
            self._event("summarised", session_id, turns=len(parked), summary_bytes=len(new_summary.encode()))
            return result[1]
        return size  # another process folded these turns first

    def _load_steps(self, session_id: str) -> Steps[Context]:
        keys = self.keys(session_id)
        return self._load_io(session_id, keys)

    def _load_io(self, session_id: str, keys: list[str]) -> Steps[Context]:
        (version, size), records, summary = yield ("read_context", keys)
        if version is None:  # no meta hash: the session is gone (or expiring) as a whole
            return Context(session_id=session_id, summary_label=self.summary_label)
        ids, turns = self._decode_records(records, keys[1])
        cut = max(0, len(turns) - self.policy.window_turns)
        return Context(
            session_id=session_id,
            summary=summary.decode("utf-8", errors="replace") if summary else "",
            turns=turns[cut:],
            pending=turns[:cut],
            turn_ids=ids,
            version=_int(version, keys[0], "v"),
            bytes=_int(size, keys[0], "b"),
            summary_label=self.summary_label,
        )

    def _get_state_steps(self, session_id: str) -> Steps[tuple[dict[str, Any], int]]:
        keys = self.keys(session_id)
        return self._get_state_io(session_id, keys)

    def _get_state_io(self, session_id: str, keys: list[str]) -> Steps[tuple[dict[str, Any], int]]:
        version, blob = yield ("evalsha", self._get_state, [keys[0], keys[3]], [])
        return (yield from self._decode_state(session_id, keys, blob, int(version))), int(version)

    def _update_state_steps(
        self, session_id: str, fn: Callable[[dict[str, Any]], Any], update_id: str | None = None
    ) -> Steps[dict[str, Any]]:
        keys = self.keys(session_id)
        if not callable(fn):
            raise InvalidInput(f"update_state takes a function of the state, got {type(fn).__name__}")
        if update_id is not None:
            validate_turn_id(update_id)
        return self._update_state_io(session_id, keys, fn, update_id)

    def _update_state_io(
        self, session_id: str, keys: list[str], fn: Callable[[dict[str, Any]], Any], update_id: str | None = None
    ) -> Steps[dict[str, Any]]:
        op = [update_id] if update_id is not None else []
        for attempt in range(self.max_update_retries + 1):
            version, blob, *seen = yield ("evalsha", self._get_state, [keys[0], keys[3]], op)
            current = yield from self._decode_state(session_id, keys, blob, int(version), write_back=False)
            if seen and seen[0]:  # applied already: its reply was lost, and this is a replay
                self._event("duplicate_update", session_id, update_id=update_id)
                return current
            new = fn(current)
            if inspect.isawaitable(new):
                new = yield ("await_", new)
            if not isinstance(new, dict):
                raise InvalidInput(f"update_state's function must return a dict, got {type(new).__name__}")
            if self.migrations is not None:
                encoded = self.migrations.dump(new)
            else:
                encoded = codec.encode(new, what="the session state")
            if len(encoded) > self.policy.max_bytes:  # over the cap on its own: not sent
                self._event("rejected", session_id, size=len(encoded), cap=self.policy.max_bytes)
                raise StateTooLarge(session_id, len(encoded), self.policy.max_bytes)
            reply = yield (
                "evalsha",
                self._cas_state,
                keys,
                [int(version), encoded, self.policy.max_bytes, self.policy.ttl_ms, int(time.time() * 1000), *op],
            )
            if reply[0] == 2:  # it landed meanwhile (a late copy of a lost attempt): read what it made
                continue
            if reply[0] == 1:
                self._event("state_updated", session_id, version=reply[1], attempts=attempt + 1)
                return new
            if reply[0] == -1:
                self._event("rejected", session_id, size=reply[1], cap=reply[2])
                raise StateTooLarge(session_id, reply[1], reply[2])
            self._event("conflict", session_id, attempt=attempt + 1)
            yield ("sleep", random.uniform(0, 0.0005 * (attempt + 1)))
        raise ConflictError(
            f"session {session_id!r}: state changed under every one of {self.max_update_retries + 1} attempts; "
            "too many concurrent writers to one session (route a session's requests to one instance)"
        )

    def _decode_state(
        self, session_id: str, keys: list[str], blob: bytes | None, version: int, write_back: bool = True
    ) -> Steps[dict[str, Any]]:
        """Decode stored state; with migrations, upgrade it and (lazily) write it back.

        The write-back keeps the key's remaining TTL and happens only if nobody wrote the
        state since it was read; a blob from newer code raises UnknownVersionError and is
        left untouched.
        """
        if not blob:
            return {}
        if self.migrations is None:
            return codec.decode(blob, keys[3])
        loaded = self.migrations.load(blob, keys[3])
        if loaded.migrated and write_back:
            written = yield (
                "evalsha",
                self._keepttl_cas,
                [keys[0], keys[3]],
                [version, self.migrations.dump(loaded.data)],
            )
            self._event(
                "migrated",
                session_id,
                from_version=loaded.from_version,
                to_version=loaded.version,
                written=bool(written),
            )
        return loaded.data

    def _tag_region_steps(self, session_id: str, region: str) -> Steps[bool]:
        keys = self.keys(session_id)
        if not isinstance(region, str) or not region:
            raise InvalidInput(f"bad region {region!r}: a non-empty string")
        return self._tag_region_io(keys, region)

    def _tag_region_io(self, keys: list[str], region: str) -> Steps[bool]:
        return bool((yield ("evalsha", self._tag_region, keys[:1], [region])))

    def _delete_steps(self, session_id: str) -> Steps[bool]:
        keys = self.keys(session_id)
        return self._delete_io(session_id, keys)

    def _delete_io(self, session_id: str, keys: list[str]) -> Steps[bool]:
        existed = bool((yield ("delete", keys)))
        if existed:
            self._event("deleted", session_id)
        return existed


class SessionStore(StoreCore):
    """Bounded session state in Redis, by `policy`, under `namespace`.

    Appends and loads are one round trip each (one Lua script); folding evicted turns into
    the summary adds one round trip every `policy.fold_batch` evictions. Connection errors
    and timeouts surface as `StoreUnavailable`; wrap the store in `ResilientStore` to
    degrade instead. For asyncio services, `statekit.aio.AsyncSessionStore` has the same
    methods, awaitable.
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
        return self._run("append_turn", session_id, self._append_record_steps(session_id, turn_id, record))

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
