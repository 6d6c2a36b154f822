"""The session store's logic, written once: `StoreCore` holds the key layout, the policy and the
listeners, and every operation as a generator of steps that a driver carries out (blocking
in `statekit.store.blocking`, awaited in `statekit.store.aio`). No I/O happens here.

Keys of one session share a hash tag, `{ns}:{<session>}:<part>`, so each Lua script and
multi-key command stays on one Redis Cluster slot:

- `meta`    hash: `v` session version, `b` stored bytes, `sv` state version, `fv` fold
            version, `c` created (ms), `rg` region (when tagged), `ops` the ids of the
            latest updates, and one `#<turn id>` field per turn not yet folded (the
            idempotency set, so a replayed append is stored once). It is the session's
            anchor: a session without it has expired as a whole.
- `log`     list of turn records, oldest first: the last `window_turns` form the window;
            any before them are parked, waiting to be folded into the summary.
- `summary` string: the running summary of folded turns (absent while empty).
- `state`   string: structured session state (absent until `update_state`).

Every write gives each of the session's keys one deadline (sliding expiry) and checks the
byte cap inside its script, so an oversized update is rejected before anything is written.
Structured state read through a `Migrations` registry is upgraded on read and written back
lazily, keeping its TTL.
"""

from __future__ import annotations

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

from statekit import codec
from statekit.backends import connection_hint
from statekit.codec import PLAIN, Codec, MissingDictionary
from statekit.errors import (
    ConflictError,
    CorruptStateError,
    InvalidInput,
    StateTooLarge,
    StoreUnavailable,
    classify_reply,
)
from statekit.keys import dictionary_key, newest_dictionary_key, session_keys, valid_id, validate_namespace
from statekit.lifecycle import LifecyclePolicy, truncate_utf8
from statekit.scripts import CORRUPT_PREFIX, SCRIPTS

if TYPE_CHECKING:
    from statekit.migrate import Migrations

__all__ = ["StoreCore", "Dictionaries", "Context", "StoreListener", "Step", "Steps", "session_keys", "validate_turn_id"]

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
_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


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


class Dictionaries:
    """Which zstd dictionary a namespace's writes use, and fetching the ones its records name.

    Writes use the namespace's newest dictionary, looked up on the first write and then every
    `codec.refresh_s` seconds (one GET). A record naming a dictionary this process lacks costs
    one GET the first time (the dictionary is then registered for the process's lifetime);
    when Redis lacks it too, the read raises `MissingDictionary` naming it, and nothing changes.
    """

    def __init__(self, namespace: str, codec_: Codec) -> None:
        self.namespace = namespace
        self.codec = codec_
        self.dict_id = 0  # the dictionary writes use (0: none)
        self.checked = float("-inf")  # when the newest dictionary was last looked up

    def stale(self) -> bool:
        """Should the next write look up the namespace's newest dictionary first?"""
        return self.codec.dictionaries and time.monotonic() - self.checked > self.codec.refresh_s

    def refresh(self) -> Steps[None]:
        """Look up the namespace's newest dictionary (one GET; one more the first time this
        process meets it): writes use it from now on."""
        pointer = newest_dictionary_key(self.namespace)
        newest = yield ("get", pointer)
        dict_id = _int(newest, pointer, "value") if newest else 0
        if dict_id and not codec.registered(dict_id):
            try:
                yield from self.fetch(dict_id, pointer)
            except CorruptStateError as exc:  # the pointer names a missing dictionary: write without one
                log.warning("namespace %r: %s; writing without a dictionary", self.namespace, exc)
                dict_id = 0
        self.dict_id = dict_id
        self.checked = time.monotonic()

    def fetch(self, dict_id: int, key: str) -> Steps[None]:
        """Fetch dictionary `dict_id` from Redis and register it in this process;
        `MissingDictionary` naming it (and `key`) when Redis does not have it."""
        where = dictionary_key(self.namespace, dict_id)
        data = yield ("get", where)
        if not data:
            raise MissingDictionary(dict_id, key, asked_redis=True)
        try:
            found = codec.register(data)
        except CorruptStateError as exc:
            raise CorruptStateError(f"{where}: {exc}; a record of {key} needs it, and was left as is") from None
        if found != dict_id:
            raise CorruptStateError(f"{where} holds dictionary {found}, not {dict_id}; {key} was left as is")

    def decoding(self, fn: Callable[..., T], *args: Any) -> Steps[T]:
        """`fn(*args)`, after fetching each dictionary it names that this process lacks."""
        seen: set[int] = set()
        while True:
            try:
                return fn(*args)
            except MissingDictionary as missing:
                if missing.dict_id in seen:
                    raise
                seen.add(missing.dict_id)
                yield from self.fetch(missing.dict_id, missing.key)


class CallerRaised(Exception):
    """Internal: the caller's own code (an update function) raised `error`. Carried through
    the store as it is, never translated: an OSError of the caller's is not a connection
    failure, and a ResilientStore must not take it for an outage."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


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
        codec: Codec | None = None,
    ) -> None:
        validate_namespace(namespace)
        self.codec = PLAIN if codec is None else codec
        self._dicts = Dictionaries(namespace, self.codec)
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
            codec=self.codec,
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
                head = record[cut + 1 : cut + 2]
                if head == codec.FORMAT_ORJSON:
                    turns.append(orjson.loads(record[cut + 2 :]))
                elif head == codec.FORMAT_ZSTD:  # MissingDictionary goes up: the store fetches it
                    turns.append(orjson.loads(codec.decompress(record[cut + 2 :], key)))
                else:
                    raise ValueError
                ids.append(record[:cut].decode())
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
        return turn_id, turn_id.encode() + SEP + self.codec.encode(dict(turn), "the turn", self._dicts.dict_id)

    def _check_record(self, session_id: str, record: bytes) -> None:
        cap = self.policy.max_bytes
        if len(record) > cap:  # over the cap whatever the session holds: no round trip
            self._event("rejected", session_id, size=len(record), cap=cap)
            raise StateTooLarge(session_id, len(record), cap)

    @staticmethod
    def record_turn(record: bytes) -> dict[str, Any]:
        """The turn a record made by `prepare_turn` holds, as a load would return it."""
        return codec.decode(record[record.index(SEP) + 1 :], "a turn record")

    def _append_steps(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None) -> Steps[int]:
        """Check the input now (a bad id or turn raises before any step), then the steps."""
        turn_id, record = self._encode_turn(session_id, turn, turn_id)
        if self._dicts.stale():
            return self._refresh_then_append(session_id, turn, turn_id)
        return self._append_record_steps(session_id, turn_id, record)

    def _refresh_then_append(self, session_id: str, turn: Mapping[str, Any], turn_id: str) -> Steps[int]:
        yield from self._dicts.refresh()
        _, record = self._encode_turn(session_id, turn, turn_id)
        return (yield from self._append_record_steps(session_id, turn_id, record))

    def _append_prepared_steps(self, session_id: str, turn_id: str, record: bytes) -> Steps[int]:
        """The steps of an append of a record `prepare_turn` made (ResilientStore's appends and
        replays): the namespace's newest dictionary is looked up when due, as `append_turn` does,
        and a record compressed with another dictionary than the one writes use now is written
        again with it (a buffered record may wait longer than a dictionary lives)."""
        if self._dicts.stale():
            yield from self._dicts.refresh()
        try:  # a record from a durable buffer may name a dictionary this process has not met: fetched
            record = yield from self._dicts.decoding(self._current, record)
        except CorruptStateError as exc:
            log.warning("session %r: turn %r written as prepared (%s)", session_id, turn_id, exc)
        return (yield from self._append_record_steps(session_id, turn_id, record))

    def _current(self, record: bytes) -> bytes:
        """`record` as this store writes now: compressed with its current dictionary."""
        cut = record.index(SEP)
        if record[cut + 1 : cut + 2] != codec.FORMAT_ZSTD or not self.codec.compress:
            return record
        frame = record[cut + 2 :]
        if codec.dictionary_id(frame) == self._dicts.dict_id:
            return record
        return record[: cut + 1] + self.codec.pack(codec.decompress(frame, "a prepared turn"), self._dicts.dict_id)

    def refresh_dictionaries_steps(self) -> Steps[int]:
        """Look up the namespace's newest dictionary now; its id (0: none)."""
        yield from self._dicts.refresh()
        return self._dicts.dict_id

    def dictionaries_due(self) -> bool:
        """Is the namespace's newest dictionary due to be looked up before the next write?"""
        return self._dicts.stale()

    def _stored(self, encoded: bytes) -> bytes:
        """A raw envelope (as `Migrations.dump` writes it) compressed by this store's codec."""
        if encoded[:1] == codec.FORMAT_ORJSON and self.codec.compress:
            return self.codec.pack(encoded[1:], self._dicts.dict_id)
        return encoded

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
        self._event("appended", session_id, bytes=len(record), total=reply[1], cap=self.policy.max_bytes)
        if len(reply) > 5:
            return (yield from self._fold_parked(session_id, keys, reply))
        if reply[4]:
            self._event("evicted", session_id, turns=reply[4], summarised=False)
        return reply[1]

    def _fold_parked(self, session_id: str, keys: list[str], reply: list[Any]) -> Steps[int]:
        _status, size, _v, _created, n_parked, fold_version, summary_raw, *parked = reply
        try:
            pairs = yield from self._dicts.decoding(lambda: [self._split(r, keys[1]) for r in parked])
            summary = yield from self._dicts.decoding(codec.read_text, summary_raw, keys[2])
        except CorruptStateError as exc:
            # The append landed: a parked turn (or the summary) that cannot be read, such as one
            # naming a dictionary Redis no longer holds, must not fail it. The turns stay parked;
            # a load names the problem.
            log.warning("session %r: %d parked turns cannot be folded: %s", session_id, len(parked), exc)
            self._event("fold_failed", session_id, turns=len(parked), error=str(exc))
            return size
        budget = self.policy.summary_max_bytes
        try:
            written = self.policy.summarizer(summary, [t for _, t in pairs], budget)
            if inspect.isawaitable(written):  # an async summarizer (a model call): AsyncSessionStore awaits it
                written = yield ("await_", written)
            new_summary = truncate_utf8(written, budget)
            stored_summary = self.codec.text(new_summary, self._dicts.dict_id)
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
            [fold_version, len(parked), pairs[0][0], stored_summary, self.policy.ttl_ms],
        )
        if result[0] == 1:
            self._event("evicted", session_id, turns=len(parked), summarised=True)
            self._event("summarised", session_id, turns=len(parked), summary_bytes=len(stored_summary))
            return result[1]
        return size  # another process folded these turns first

    def _load_steps(self, session_id: str) -> Steps[Context]:
        keys = self.keys(session_id)
        return self._load_io(session_id, keys)

    def _load_io(self, session_id: str, keys: list[str]) -> Steps[Context]:
        (version, size), records, summary = yield ("read_context", keys)
        if version is None:  # no meta hash: the session is gone (or expiring) as a whole
            return Context(session_id=session_id, summary_label=self.summary_label)
        ids, turns = yield from self._dicts.decoding(self._decode_records, records, keys[1])
        text = (yield from self._dicts.decoding(codec.read_text, summary, keys[2])) if summary else ""
        cut = max(0, len(turns) - self.policy.window_turns)
        return Context(
            session_id=session_id,
            summary=text,
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
            try:
                new = fn(current)
            except Exception as exc:  # noqa: BLE001 - the caller's, handed back as it is
                raise CallerRaised(exc) from None
            if inspect.isawaitable(new):
                try:
                    new = yield ("await_", new)
                except InvalidInput:
                    raise  # the blocking store refuses an awaitable
                except Exception as exc:  # noqa: BLE001 - the caller's coroutine raised
                    raise CallerRaised(exc) from None
            if not isinstance(new, dict):
                raise InvalidInput(f"update_state's function must return a dict, got {type(new).__name__}")
            if self._dicts.stale():
                yield from self._dicts.refresh()
            if self.migrations is not None:
                encoded = self._stored(self.migrations.dump(new))
            else:
                encoded = self.codec.encode(new, "the session state", self._dicts.dict_id)
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
            return (yield from self._dicts.decoding(codec.decode, blob, keys[3]))
        loaded = yield from self._dicts.decoding(self.migrations.load, blob, keys[3])
        if loaded.migrated and write_back:
            written = yield (
                "evalsha",
                self._keepttl_cas,
                [keys[0], keys[3]],
                [version, self._stored(self.migrations.dump(loaded.data))],
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
