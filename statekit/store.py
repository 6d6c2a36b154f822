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

import itertools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis

from . import codec
from .backends import backend_kind
from .errors import ConflictError, CorruptStateError, InvalidInput, StateTooLarge, StoreUnavailable
from .lifecycle import LifecyclePolicy, truncate_utf8

if TYPE_CHECKING:
    from .migrate import Migrations

__all__ = ["SessionStore", "Context", "StoreListener", "session_keys"]

log = logging.getLogger(__name__)

SEP = b"\x1f"  # between a record's turn id and its encoded turn; ids may not contain it
_SESSION_ID = re.compile(r"^[^{}\x00-\x1f\x7f]{1,256}$")
_TURN_ID = re.compile(r"^[^\x00-\x20\x7f]{1,128}$")
PARTS = ("meta", "log", "summary", "state")

# Append one turn. KEYS: meta log summary state. ARGV: record, turn id, window, cap,
# ttl ms, fold batch, now ms, mode ('park' | 'drop').
# Returns {status, bytes, version, created, evicted, [fold version, summary, parked...]}:
# status 1 stored, 0 duplicate (stored before), -1 over the cap (nothing written).
APPEND_LUA = """
local meta, log = KEYS[1], KEYS[2]
local rec, idf = ARGV[1], '#' .. ARGV[2]
local window, cap, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local m = redis.call('HMGET', meta, 'b', 'v', idf, 'fv', 'sv')
local bytes, v = tonumber(m[1]) or 0, tonumber(m[2]) or 0
if m[3] then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', log, ttl)
  if m[4] then redis.call('PEXPIRE', KEYS[3], ttl) end
  if m[5] then redis.call('PEXPIRE', KEYS[4], ttl) end
  return {0, bytes, v, 0, 0}
end
local size = bytes + #rec
if size > cap then return {-1, size, cap, 0, 0} end
local n = redis.call('RPUSH', log, rec)
local created = 0
if v == 0 then
  created = 1
  redis.call('HSET', meta, 'v', 1, 'b', size, idf, 1, 'c', ARGV[7])
else
  redis.call('HSET', meta, 'v', v + 1, 'b', size, idf, 1)
end
v = v + 1
local evicted = 0
if n > window then evicted = 1 end
if ARGV[8] == 'drop' and n > window then
  local old = redis.call('LPOP', log, n - window)
  local ids = {}
  for i, r in ipairs(old) do
    size = size - #r
    ids[i] = '#' .. string.sub(r, 1, string.find(r, '\\31', 1, true) - 1)
  end
  redis.call('HDEL', meta, unpack(ids))
  redis.call('HSET', meta, 'b', size)
  evicted = #old
end
-- slide the TTL of every key that can exist: a summary after a fold, state after a CAS
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', log, ttl)
if m[4] then redis.call('PEXPIRE', KEYS[3], ttl) end
if m[5] then redis.call('PEXPIRE', KEYS[4], ttl) end
local parked = n - window
if ARGV[8] == 'park' and parked >= tonumber(ARGV[6]) then
  local out = {1, size, v, created, parked, m[4] or '0', redis.call('GET', KEYS[3]) or ''}
  for i, r in ipairs(redis.call('LRANGE', log, 0, parked - 1)) do out[7 + i] = r end
  return out
end
return {1, size, v, created, evicted}
"""

# Fold parked turns into the summary. KEYS: meta log summary state. ARGV: fold version
# read, turns to fold, first folded turn id, new summary, ttl ms.
# Returns {1, bytes} or {0} when another process folded first (nothing changed).
FOLD_LUA = """
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'fv', 'b', 'v')
if (m[1] or '0') ~= ARGV[1] then return {0} end
local n = tonumber(ARGV[2])
local recs = redis.call('LRANGE', log, 0, n - 1)
local head = ARGV[3] .. '\\31'
if #recs < n or string.sub(recs[1], 1, #head) ~= head then return {0} end
local freed, ids = 0, {}
for i, r in ipairs(recs) do
  freed = freed + #r
  ids[i] = '#' .. string.sub(r, 1, string.find(r, '\\31', 1, true) - 1)
end
redis.call('LTRIM', log, n, -1)
redis.call('HDEL', meta, unpack(ids))
local old = redis.call('STRLEN', KEYS[3])
if #ARGV[4] > 0 then redis.call('SET', KEYS[3], ARGV[4]) else redis.call('DEL', KEYS[3]) end
local size = (tonumber(m[2]) or 0) - freed - old + #ARGV[4]
redis.call('HSET', meta, 'b', size, 'fv', tonumber(m[1] or '0') + 1, 'v', (tonumber(m[3]) or 0) + 1)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[5])) end
return {1, size}
"""

# Read a session's context. KEYS: meta log summary. Returns {{v, b}, log records, summary}.
# Used on Redis Cluster when a slot moves; otherwise load_context sends the same reads as
# one MULTI/EXEC transaction, which skips the Lua round trip of a large LRANGE reply.
LOAD_LUA = """
return {redis.call('HMGET', KEYS[1], 'v', 'b'), redis.call('LRANGE', KEYS[2], 0, -1), redis.call('GET', KEYS[3])}
"""

# Read structured state. KEYS: meta state. Returns {state version, blob or false}.
GET_STATE_LUA = """
return {redis.call('HGET', KEYS[1], 'sv') or '0', redis.call('GET', KEYS[2])}
"""

# Compare-and-set structured state. KEYS: meta log summary state. ARGV: expected state
# version, blob, cap, ttl ms, now ms. Returns {1, new sv, bytes}, {0, current sv} on a
# conflict, {-1, size, cap} over the cap (nothing written).
CAS_STATE_LUA = """
local meta, state = KEYS[1], KEYS[4]
local m = redis.call('HMGET', meta, 'sv', 'b', 'v')
local sv = tonumber(m[1]) or 0
if sv ~= tonumber(ARGV[1]) then return {0, sv} end
local size = (tonumber(m[2]) or 0) - redis.call('STRLEN', state) + #ARGV[2]
if size > tonumber(ARGV[3]) then return {-1, size, tonumber(ARGV[3])} end
redis.call('SET', state, ARGV[2])
if not m[3] then redis.call('HSET', meta, 'c', ARGV[5]) end
redis.call('HSET', meta, 'sv', sv + 1, 'b', size, 'v', (tonumber(m[3]) or 0) + 1)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[4])) end
return {1, sv + 1, size}
"""

_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
# Write migrated state back, keeping the key's TTL, only if nobody wrote it since it was
# read. KEYS: meta state. ARGV: state version read, blob. Returns 1 written, 0 changed since.
KEEPTTL_CAS_LUA = """
local sv = tonumber(redis.call('HGET', KEYS[1], 'sv') or '0')
if sv ~= tonumber(ARGV[1]) then return 0 end
local old = redis.call('STRLEN', KEYS[2])
if old == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
redis.call('HINCRBY', KEYS[1], 'b', #ARGV[2] - old)
return 1
"""

_REDIRECTS = (redis.exceptions.MovedError, redis.exceptions.AskError)
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _pack_py(*args: Any) -> bytes:
    """One command in RESP, as redis-py's packer would write it (str as UTF-8, numbers as text)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


try:  # hiredis packs in C, about twice as fast; the extra `statekit[hiredis]` installs it
    from hiredis import pack_command as _hiredis_pack

    def _pack(*args: Any) -> bytes:
        return _hiredis_pack(args)

except ImportError:  # pragma: no cover - exercised where hiredis is absent
    _pack = _pack_py


class _TurnIds:
    """Fresh 20-character turn ids: a random 48-bit prefix and a counter (cheaper than uuid4).

    The prefix is drawn again when the counter wraps, so ids never repeat within a process,
    and two processes share a prefix with probability 2**-48.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._renew()

    def _renew(self) -> None:
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


class _Wire:
    """Send packed commands on a pooled connection and read their replies: one round trip.

    Written by hand because redis-py's per-command path (retry wrapper, response callbacks)
    and its Pipeline cost 10 to 20 us of Python per call on a 2-core machine, more than the
    store's whole overhead budget over a bare command. Everything else stays redis-py's:
    its connections (timeouts, retries as `connect` set them), its RESP parser (which
    raises error replies as exceptions), and, on Redis Cluster, its slot map. A NOSCRIPT
    reply loads the script and tries once more; a MOVED or ASK reply hands the call to
    redis-py's own routing through `fallback`.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cluster = backend_kind(client) == "cluster"

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
        pool = self._pool(key)
        conn = pool.get_connection()
        first_error: redis.exceptions.ResponseError | None = None
        reply = None
        try:
            conn.send_packed_command([packed])
            for _ in range(replies):
                try:
                    reply = conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    first_error = first_error or exc
        except BaseException:
            conn.disconnect()  # replies may still be in flight: never hand this connection back as is
            raise
        finally:
            pool.release(conn)
        if first_error is not None:
            raise first_error
        return reply

    def load_script(self, script: Any) -> None:
        """SCRIPT LOAD on the server, or on each primary of a cluster through that node's own
        client (redis-py's cluster routing of a keyless SCRIPT LOAD fails right after a
        MOVED reply, so it is not asked to route one)."""
        if self.cluster:
            for node in self.client.get_primaries():
                self.client.get_redis_connection(node).script_load(script.script)
        else:
            self.client.script_load(script.script)

    def routed(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run `script` through redis-py's own routing, which follows MOVED and ASK."""
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.load_script(script)
            return self.client.evalsha(script.sha, len(keys), *keys, *args)

    def evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        packed = _pack("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self.send(keys[0], packed, 1)
        except redis.exceptions.NoScriptError:
            self.load_script(script)
            return self.send(keys[0], packed, 1)
        except _REDIRECTS:
            if self.cluster:
                return self.routed(script, keys, args)
            raise


def validate_session_id(session_id: str) -> str:
    """Refuse ids that are empty, too long, or hold braces or control characters (which
    would break the hash tag or the key layout)."""
    if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
        raise InvalidInput(
            f"bad session id {session_id!r}: 1 to 256 characters, no braces, newlines or other control characters"
        )
    return session_id


def session_keys(namespace: str, session_id: str) -> list[str]:
    """The four keys of a session, in the order the scripts expect."""
    tag = f"{namespace}:{{{validate_session_id(session_id)}}}"
    return [f"{tag}:{part}" for part in PARTS]


@dataclass(frozen=True, slots=True)
class Context:
    """What a request needs from its session: summary, recent turns, and bookkeeping.

    `turns` is the window (oldest first); `pending` holds turns that left the window and
    are not yet in the summary. `degraded` and `source` say where the context came from
    (`store` here; a resilient wrapper may answer from `cache` or `default`).
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

    @property
    def exists(self) -> bool:
        return self.version > 0

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages for a model: the summary as a system message, then pending and recent turns."""
        head = [{"role": "system", "content": f"Summary of the earlier conversation:\n{self.summary}"}]
        return (head if self.summary else []) + self.pending + self.turns


class StoreListener:
    """Observer of a SessionStore; override what you need. Calls happen after each operation.

    `on_operation(op, session_id, seconds, error)` for every public operation;
    `on_event(kind, session_id, info)` for lifecycle events: created, appended, duplicate,
    evicted, summarised, fold_failed, rejected, conflict, state_updated, migrated, deleted.
    """

    def on_operation(self, op: str, session_id: str, seconds: float, error: BaseException | None) -> None:
        """Called once per public operation."""

    def on_event(self, kind: str, session_id: str, info: Mapping[str, Any]) -> None:
        """Called for each lifecycle event."""


class SessionStore:
    """Bounded session state in Redis, by `policy`, under `namespace`.

    Appends and loads are one round trip each (one Lua script); folding evicted turns into
    the summary adds one round trip every `policy.fold_batch` evictions. Connection errors
    and timeouts surface as `StoreUnavailable`; wrap the store in `ResilientStore` to
    degrade instead.
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
        if not namespace or any(c in namespace for c in "{}:\n\r\x00"):
            raise InvalidInput(f"bad namespace {namespace!r}: non-empty, no braces, colons or newlines")
        self.client = client
        self.policy = policy or LifecyclePolicy()
        self.namespace = namespace
        self.max_update_retries = max_update_retries
        self.migrations = migrations
        self.listeners: list[StoreListener] = [*listeners, *([metrics] if metrics is not None else [])]
        encoder = client.get_encoder() if hasattr(client, "get_encoder") else None
        if encoder is not None and getattr(encoder, "decode_responses", False):
            raise InvalidInput("SessionStore needs a client with decode_responses=False: turns are stored as bytes")
        self._wire = _Wire(client)
        self._append = client.register_script(APPEND_LUA)
        self._fold = client.register_script(FOLD_LUA)
        self._load = client.register_script(LOAD_LUA)
        self._get_state = client.register_script(GET_STATE_LUA)
        self._cas_state = client.register_script(CAS_STATE_LUA)
        self._keepttl_cas = client.register_script(KEEPTTL_CAS_LUA)

    def with_client(self, client: Any) -> SessionStore:
        """The same store (policy, namespace, listeners) over another client."""
        return SessionStore(
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

    def _run(self, op: str, session_id: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter() if self.listeners else 0.0
        error: BaseException | None = None
        try:
            return fn()
        except _CONNECTION_ERRORS as exc:
            error = StoreUnavailable(f"{op} of session {session_id!r} failed: {exc}")
            raise error from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            if self.listeners:
                elapsed = time.perf_counter() - start
                for listener in self.listeners:
                    listener.on_operation(op, session_id, elapsed, error)

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
            pairs = [SessionStore._split(r, key) for r in records]  # raises CorruptStateError with the detail
            return [i for i, _ in pairs], [t for _, t in pairs]
        return ids, turns

    @staticmethod
    def _split(record: bytes, key: str) -> tuple[str, dict[str, Any]]:
        tid, sep, body = record.partition(SEP)
        if not sep:
            raise CorruptStateError(f"{key}: a turn record without its turn id; the session was left as is")
        return tid.decode("utf-8", errors="replace"), codec.decode(body, key)

    def _read_context(self, keys: list[str]) -> list[Any]:
        """HMGET meta, LRANGE log, GET summary, atomically, in one round trip.

        A MULTI/EXEC transaction rather than a script: a script would copy the window of
        turns into Lua and back, which costs more than the read itself. On a cluster whose
        slot just moved, the Lua script (which redis-py redirects) answers instead.
        """
        packed = b"".join(
            (
                _MULTI,
                _pack("HMGET", keys[0], "v", "b"),
                _pack("LRANGE", keys[1], 0, -1),
                _pack("GET", keys[2]),
                _EXEC,
            )
        )
        try:
            reply = self._wire.send(keys[0], packed, 5)
        except _REDIRECTS:
            if not self._wire.cluster:
                raise
            reply = self._wire.routed(self._load, keys[:3], [])
        if reply is None:
            raise redis.exceptions.ResponseError("EXEC aborted")
        for part, key in zip(reply, keys, strict=False):
            if isinstance(part, Exception):
                raise CorruptStateError(f"{key}: {part}; the session was left as is")
        return reply

    # -- conversation ---------------------------------------------------------------------

    def append_turn(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None = None) -> int:
        """Append `turn` to the session in one round trip; return the session's stored bytes.

        The same `turn_id` twice is stored once (a replay after a timeout is harmless);
        without one, a fresh id is made. Raises `StateTooLarge` (nothing written) when the
        turn would take the session past `policy.max_bytes`, `InvalidInput` for bad ids or
        a turn that cannot be serialised.
        """
        keys = self.keys(session_id)
        if not isinstance(turn, Mapping):
            raise InvalidInput(
                f"a turn is a mapping such as {{'role': ..., 'content': ...}}, got {type(turn).__name__}"
            )
        if turn_id is None:
            turn_id = _new_turn_id()
        elif not isinstance(turn_id, str) or not _TURN_ID.match(turn_id):
            raise InvalidInput(f"bad turn id {turn_id!r}: 1 to 128 printable characters without spaces")
        record = turn_id.encode() + SEP + codec.encode(dict(turn), what="the turn")
        p = self.policy
        args = [record, turn_id, p.window_turns, p.max_bytes, p.ttl_ms, p.fold_batch, int(time.time() * 1000), p.mode]

        def run() -> int:
            reply = self._wire.evalsha(self._append, keys, args)
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
                return self._fold_parked(session_id, keys, reply)
            if reply[4]:
                self._event("evicted", session_id, turns=reply[4], summarised=False)
            return reply[1]

        return self._run("append_turn", session_id, run)

    def _fold_parked(self, session_id: str, keys: list[str], reply: list[Any]) -> int:
        _status, size, _v, _created, n_parked, fold_version, summary_raw, *parked = reply
        pairs = [self._split(r, keys[1]) for r in parked]
        summary = summary_raw.decode("utf-8", errors="replace")
        budget = self.policy.summary_max_bytes
        try:
            new_summary = truncate_utf8(self.policy.summarizer(summary, [t for _, t in pairs], budget), budget)
        except Exception as exc:  # noqa: BLE001 - a failing summarizer must not fail an append that landed
            # The turns stay parked in Redis; the next append that finds them hands them over again.
            log.warning("summarizer failed for session %r, %d turns stay parked: %r", session_id, len(pairs), exc)
            self._event("fold_failed", session_id, turns=len(pairs), error=repr(exc))
            return size
        result = self._wire.evalsha(
            self._fold, keys, [fold_version, len(parked), pairs[0][0], new_summary.encode(), self.policy.ttl_ms]
        )
        if result[0] == 1:
            self._event("evicted", session_id, turns=len(parked), summarised=True)
            self._event("summarised", session_id, turns=len(parked), summary_bytes=len(new_summary.encode()))
            return result[1]
        return size  # another process folded these turns first

    def load_context(self, session_id: str) -> Context:
        """The session's summary, window, pending turns, version and size, in one round trip.

        A missing (or expired) session is an empty context, not an error. A corrupt record
        raises `CorruptStateError` naming the key; nothing is modified.
        """
        keys = self.keys(session_id)

        def run() -> Context:
            (version, size), records, summary = self._read_context(keys)
            ids, turns = self._decode_records(records, keys[1])
            cut = max(0, len(turns) - self.policy.window_turns)
            return Context(
                session_id=session_id,
                summary=summary.decode("utf-8", errors="replace") if summary else "",
                turns=turns[cut:],
                pending=turns[:cut],
                turn_ids=ids,
                version=int(version or 0),
                bytes=int(size or 0),
            )

        return self._run("load_context", session_id, run)

    # -- structured state -----------------------------------------------------------------

    def get_state(self, session_id: str) -> tuple[dict[str, Any], int]:
        """The session's structured state and its version (an empty dict and 0 when unset)."""
        keys = self.keys(session_id)

        def run() -> tuple[dict[str, Any], int]:
            version, blob = self._wire.evalsha(self._get_state, [keys[0], keys[3]], [])
            return self._decode_state(session_id, keys, blob, int(version)), int(version)

        return self._run("get_state", session_id, run)

    def update_state(self, session_id: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Apply `fn` to the structured state with optimistic concurrency; return the new state.

        Reads the state and its version, computes `fn(state)`, and writes only if nobody
        wrote in between (compare-and-set in one script); otherwise re-reads and retries, up
        to `max_update_retries` times with jittered backoff, then raises `ConflictError`.
        `fn` may run more than once, so it must not have side effects.
        """
        keys = self.keys(session_id)

        def run() -> dict[str, Any]:
            for attempt in range(self.max_update_retries + 1):
                version, blob = self._wire.evalsha(self._get_state, [keys[0], keys[3]], [])
                current = self._decode_state(session_id, keys, blob, int(version), write_back=False)
                new = fn(current)
                if not isinstance(new, dict):
                    raise InvalidInput(f"update_state's function must return a dict, got {type(new).__name__}")
                if self.migrations is not None:
                    encoded = self.migrations.dump(new)
                else:
                    encoded = codec.encode(new, what="the session state")
                reply = self._wire.evalsha(
                    self._cas_state,
                    keys,
                    [int(version), encoded, self.policy.max_bytes, self.policy.ttl_ms, int(time.time() * 1000)],
                )
                if reply[0] == 1:
                    self._event("state_updated", session_id, version=reply[1], attempts=attempt + 1)
                    return new
                if reply[0] == -1:
                    self._event("rejected", session_id, size=reply[1], cap=reply[2])
                    raise StateTooLarge(session_id, reply[1], reply[2])
                self._event("conflict", session_id, attempt=attempt + 1)
                time.sleep(random.uniform(0, 0.0005 * (attempt + 1)))
            raise ConflictError(
                f"session {session_id!r}: state changed under every one of {self.max_update_retries + 1} attempts; "
                "too many concurrent writers to one session (route a session's requests to one instance)"
            )

        return self._run("update_state", session_id, run)

    def _decode_state(
        self, session_id: str, keys: list[str], blob: bytes | None, version: int, write_back: bool = True
    ) -> dict[str, Any]:
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
            written = self._wire.evalsha(
                self._keepttl_cas, [keys[0], keys[3]], [version, self.migrations.dump(loaded.data)]
            )
            self._event(
                "migrated",
                session_id,
                from_version=loaded.from_version,
                to_version=loaded.version,
                written=bool(written),
            )
        return loaded.data

    def tag_region(self, session_id: str, region: str) -> None:
        """Record where a session's data lives (its residency), for `statekit health`.

        A no-op for a session that does not exist yet: tag it after its first write.
        """
        keys = self.keys(session_id)

        def run() -> None:
            if self.client.exists(keys[0]):
                self.client.hset(keys[0], "rg", region)

        self._run("tag_region", session_id, run)

    def delete(self, session_id: str) -> bool:
        """Remove every key of the session; True when it existed."""
        keys = self.keys(session_id)

        def run() -> bool:
            existed = bool(self.client.delete(*keys))
            if existed:
                self._event("deleted", session_id)
            return existed

        return self._run("delete", session_id, run)
