"""`StatekitSaver`: a LangGraph checkpointer on any Redis 7, with the store's lessons built in.

LangGraph persists an agent's state through a checkpointer. This one needs no Redis modules
(no RedisJSON, no RediSearch) and runs on a single server, on fakeredis and on Redis
Cluster. What it adds to the contract:

- **Every key of a thread has a TTL**, refreshed on every write by the same script that
  writes (sliding expiry), one deadline for both keys: a thread is two keys under one hash
  tag (`<ns>:{<thread>}:cp`, a hash of checkpoints, channel values, writes and reference
  counts, and `:cx`, its ordered index), so no write can leave a key without one. The hash
  is the thread's anchor: an index whose hash expired (or was evicted) is a thread that is
  gone as a whole (reads answer None; the next write starts afresh).
- **History is bounded when asked**: with `keep_last=K`, the script that writes a
  checkpoint also removes the namespace's checkpoints older than the K newest, with their
  writes and any channel value no remaining checkpoint references; a root checkpoint
  removed takes the subgraph checkpoints that ran under it (their metadata's
  `parents[""]`). Each namespace pruned keeps a watermark (the newest id pruned: ids are
  time-ordered), so writes LangGraph saves later for a pruned checkpoint are not stored,
  and asking for a pruned checkpoint by id raises `CheckpointPruned`.
- **Bytes are capped**: a write that would take a thread past `max_bytes` raises
  `StateTooLarge` and writes nothing.
- **One round trip** per `put`, `put_writes`, `get_tuple` and `delete_thread`; `list` reads
  a page of checkpoints (with their values and writes) per round trip.
- Values go through LangGraph's own serializer (`self.serde`), so any graph state
  round-trips; channel values are stored once per version and shared by the checkpoints
  that reference them.

Both the blocking methods (`put`, `get_tuple`, `list`, ...) and the asyncio ones (`aput`,
`aget_tuple`, `alist`, ...) are implemented; each operation is written once, as steps that
statekit's blocking and asyncio wires carry out. `delete_for_runs`, `list(None)` and
`prune` on every thread walk the namespace with SCAN (on each primary of a cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from statekit._optional import require

require("langgraph.checkpoint.base", "langgraph", "statekit.langgraph")

import ormsgpack  # noqa: E402 - a dependency of langgraph-checkpoint
from langgraph.checkpoint.base import (  # noqa: E402
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)

from statekit import codec as _codec  # noqa: E402
from statekit.backends import backend_kind, connect, connect_async, is_async  # noqa: E402
from statekit.codec import PLAIN, Codec  # noqa: E402
from statekit.errors import (  # noqa: E402
    CheckpointPruned,
    CorruptStateError,
    InvalidInput,
    StateTooLarge,
    StoreUnavailable,
    classify_reply,
)
from statekit.keys import thread_id_of, thread_keys, thread_pattern, validate_namespace  # noqa: E402
from statekit.scripts import CHECKPOINT_SCRIPTS, CORRUPT_PREFIX  # noqa: E402
from statekit.store.blocking import _Wire, drive  # noqa: E402
from statekit.store.core import _CONNECTION_ERRORS, _SCRIPT_SUFFIX, Dictionaries  # noqa: E402

__all__ = ["CheckpointPruned", "StatekitSaver", "ThreadPolicy"]

Steps = Generator[tuple[Any, ...], Any, Any]
_S = CHECKPOINT_SCRIPTS


@dataclass(frozen=True)
class ThreadPolicy:
    """How long a thread lives and how much of it is kept.

    `ttl_seconds`: every key of a thread expires this long after its last write (sliding).
    `max_bytes`: the most payload a thread may hold (checkpoints, channel values, writes);
    a write past it raises `StateTooLarge` and writes nothing. `keep_last`: keep the K
    newest checkpoints of each checkpoint namespace (None keeps all; LangGraph needs at
    least 1 to resume, and time travel needs as many steps as it goes back).
    """

    ttl_seconds: int = 7 * 24 * 3600
    max_bytes: int = 16 * 1024 * 1024
    keep_last: int | None = None

    def __post_init__(self) -> None:
        for name in ("ttl_seconds", "max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be a whole number >= 1, got {value!r}")
        if self.keep_last is not None and (
            not isinstance(self.keep_last, int) or isinstance(self.keep_last, bool) or self.keep_last < 1
        ):
            raise InvalidInput(f"keep_last must be None or a whole number >= 1, got {self.keep_last!r}")

    @property
    def ttl_ms(self) -> int:
        return self.ttl_seconds * 1000


def _token(value: Any, what: str) -> str:
    """A namespace, id, channel or version as the key layout stores it: a string without NUL."""
    text = str(value)
    if "\0" in text:
        raise InvalidInput(f"{what} {text!r} holds a NUL character, which the checkpoint layout reserves")
    return text


def _root_of(conf: dict[str, Any], ns: str, metadata: Any = None) -> str:
    """The root checkpoint a subgraph checkpoint runs under ('' in the root namespace): its
    metadata's `parents[""]`, else the config's `checkpoint_map[""]` (LangGraph passes both)."""
    if not ns:
        return ""
    root = ((metadata or {}).get("parents") or {}).get("") or (conf.get("checkpoint_map") or {}).get("")
    return _token(root, "root checkpoint id") if root else ""


def _too_large(thread: str, size: int, cap: int) -> StateTooLarge:
    """StateTooLarge, in the saver's words (the class says it in the session store's)."""
    error = StateTooLarge(thread, size, cap)
    error.args = (
        f"thread {thread!r} would hold {size} bytes of checkpoints, channel values and writes, over the "
        f"saver's cap of {cap} bytes (max_bytes); nothing was written. Bound its history with keep_last "
        "(StatekitSaver.from_url(url, keep_last=K) or ThreadPolicy(keep_last=K)), raise max_bytes, or prune "
        f"the thread (saver.prune([{thread!r}])).",
    )
    return error


def _close_sockets(client: Any) -> None:
    """Close the sockets of an asyncio client whose event loop has ended. redis.asyncio
    closes a connection through the loop it was made in, which a closed loop refuses, so
    the transports are torn down here without it."""
    conns: dict[int, Any] = {}
    pool = getattr(client, "connection_pool", None)
    for attr in ("_available_connections", "_in_use_connections"):
        for conn in list(getattr(pool, attr, None) or ()):
            conns[id(conn)] = conn
    manager = getattr(client, "nodes_manager", None)  # a cluster: each node's connections
    for nodes in (getattr(manager, "nodes_cache", None) or {}, getattr(manager, "startup_nodes", None) or {}):
        for node in list(nodes.values()):
            for conn in list(getattr(node, "_connections", None) or ()):
                conns[id(conn)] = conn
    for conn in conns.values():
        writer = getattr(conn, "_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is None:
            continue
        inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None) or transport  # TLS
        sock = getattr(inner, "_sock", None)
        with contextlib.suppress(Exception):
            transport.close()  # marks it closing; the closed loop refuses to finish the job
        with contextlib.suppress(Exception):
            inner._call_connection_lost(None)  # what the loop would have run: closes and drops the socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        conn._reader = conn._writer = None
    if manager is not None and getattr(client, "_initialize", True) is False:
        client._initialize = True  # what the cluster client's aclose() marks: closed (no warning when collected)


def _frame(tokens: Sequence[str]) -> bytes:
    return "".join(f"{t}\0" for t in tokens).encode()


def _unframe(raw: bytes) -> list[str]:
    return raw.decode().split("\0")[:-1] if raw else []


class _Iterate:
    """Drivers for steps that also hand results out as they come (`("emit", item)`), for `list`."""

    @staticmethod
    def sync(steps: Steps, wire: Any) -> Iterator[Any]:
        try:
            step = steps.send(None)
            while True:
                if step[0] == "emit":
                    yield step[1]
                    step = steps.send(None)
                    continue
                try:
                    reply = getattr(wire, step[0])(*step[1:])
                except BaseException as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(reply)
        except StopIteration:
            return

    @staticmethod
    async def asynchronous(steps: Steps, wire: Any) -> AsyncIterator[Any]:
        try:
            step = steps.send(None)
            while True:
                if step[0] == "emit":
                    yield step[1]
                    step = steps.send(None)
                    continue
                try:
                    reply = await getattr(wire, step[0])(*step[1:])
                except BaseException as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(reply)
        except StopIteration:
            return


class StatekitSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer on Redis, with TTL on every key, bounded history and a byte cap.

    Build it with `StatekitSaver.from_url(url, namespace=..., policy=..., keep_last=...)`,
    or from clients: `client` (blocking, for `put`/`get_tuple`/...) and/or `aclient`
    (asyncio, for `aput`/`aget_tuple`/...). A saver made from a URL makes each client when
    first needed (an asyncio client per event loop) and closes them in `close()` /
    `await aclose()`. With `codec=statekit.codec.Codec()` checkpoints, metadata, channel values
    and writes are stored zstd-compressed (with the namespace's newest dictionary); every saver
    reads compressed and uncompressed records alike.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        aclient: Any = None,
        namespace: str = "lg",
        policy: ThreadPolicy | None = None,
        keep_last: int | None = None,
        serde: Any = None,
        page_size: int = 50,
        url: str | None = None,
        socket_timeout: float = 1.0,
        codec: Codec | None = None,
    ) -> None:
        super().__init__(serde=serde)
        validate_namespace(namespace)
        if client is None and aclient is None and url is None:
            raise InvalidInput("StatekitSaver needs a client, an aclient or a url (StatekitSaver.from_url(url))")
        if client is not None and is_async(client):
            raise InvalidInput("client is an asyncio client: pass it as aclient=")
        if aclient is not None and not is_async(aclient):
            raise InvalidInput("aclient is a blocking client: pass it as client=")
        for given in (client, aclient):
            encoder = given.get_encoder() if given is not None and hasattr(given, "get_encoder") else None
            if encoder is not None and getattr(encoder, "decode_responses", False):
                raise InvalidInput("StatekitSaver needs clients with decode_responses=False: values are bytes")
        policy = policy or ThreadPolicy()
        if keep_last is not None:
            policy = ThreadPolicy(policy.ttl_seconds, policy.max_bytes, keep_last)
        if not isinstance(page_size, int) or page_size < 1:
            raise InvalidInput(f"page_size must be a whole number >= 1, got {page_size!r}")
        self.namespace = namespace
        self.policy = policy
        self.page_size = page_size
        self.codec = PLAIN if codec is None else codec
        self._dicts = Dictionaries(namespace, self.codec)
        self.url = url
        self._socket_timeout = socket_timeout  # of the clients made from `url`
        self._client = client
        self._wire = _Wire(client) if client is not None else None
        self._aclient = aclient
        self._awire: Any = None
        self._loop: Any = None
        self._owned: list[Any] = []  # the blocking client this saver made, and closes
        self._aowned: list[tuple[Any, Any]] = []  # (event loop, asyncio client) this saver made
        if aclient is not None:
            from statekit.store.aio import _AsyncWire

            self._awire = _AsyncWire(aclient)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "lg",
        policy: ThreadPolicy | None = None,
        keep_last: int | None = None,
        serde: Any = None,
        socket_timeout: float = 1.0,
        codec: Codec | None = None,
    ) -> StatekitSaver:
        """A saver for `url` (every form `statekit.connect` takes). The URL is checked now;
        the clients are made when first used. A private `fakeredis://` becomes one embedded
        server shared by this saver's blocking and asyncio clients."""
        if url.strip() in ("fakeredis://", "fakeredis:///"):
            url = f"fakeredis://statekit-saver-{uuid.uuid4().hex}"
        connect(url, socket_timeout=socket_timeout).close()  # validates the URL (lazy: no connection yet)
        return cls(
            namespace=namespace,
            policy=policy,
            keep_last=keep_last,
            serde=serde,
            url=url,
            socket_timeout=socket_timeout,
            codec=codec,
        )

    # -- clients --------------------------------------------------------------------------

    def _sync_wire(self) -> _Wire:
        if self._wire is None:
            if self.url is None:
                raise InvalidInput("this saver has only an asyncio client: use the a* methods, or pass client=")
            self._client = connect(self.url, socket_timeout=self._socket_timeout)
            self._owned.append(self._client)
            self._wire = _Wire(self._client)
        return self._wire

    def _async_wire(self) -> Any:
        from statekit.store.aio import _AsyncWire

        loop = asyncio.get_running_loop()
        if self.url is None:
            if self._awire is None:
                raise InvalidInput("this saver has only a blocking client: use put/get_tuple/..., or pass aclient=")
            return self._awire
        if self._awire is None or self._loop is not loop:  # an asyncio client serves one event loop
            self._release_ended_loops()
            client = next((c for owner, c in self._aowned if owner is loop), None)
            if client is None:
                client = connect_async(self.url, socket_timeout=self._socket_timeout)
                self._aowned.append((loop, client))
            self._aclient, self._awire, self._loop = client, _AsyncWire(client), loop
        return self._awire

    def _release_ended_loops(self) -> None:
        """Release the asyncio clients made in event loops that are closed (each
        `asyncio.run` closes its own): nothing can use them again, and their loop cannot
        close them, so their sockets are closed here."""
        for loop, client in [pair for pair in self._aowned if pair[0].is_closed()]:
            _close_sockets(client)
            self._aowned.remove((loop, client))
            if client is self._aclient:
                self._aclient = self._awire = self._loop = None

    def close(self) -> None:
        """Close the blocking client this saver made, and release the asyncio ones of event
        loops that have ended (those of running loops need `await aclose()`)."""
        for client in list(self._owned):
            client.close()
            self._owned.remove(client)
        self._wire = None if self.url is not None else self._wire
        self._release_ended_loops()

    async def aclose(self) -> None:
        """Close every client this saver made: the blocking one, and the asyncio one of each
        event loop it was used from (closed in its own loop when that still runs)."""
        current = asyncio.get_running_loop()
        for loop, client in list(self._aowned):
            with contextlib.suppress(RuntimeError, redis.exceptions.RedisError, OSError):
                if loop is current:
                    await client.aclose()
                elif loop.is_running():  # another thread's loop: closed there
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.aclose(), loop))
            if loop is not current:
                _close_sockets(client)  # a loop that has ended cannot close it
            self._aowned.remove((loop, client))
        for client in list(self._owned):
            client.close()
            self._owned.remove(client)
        if self.url is not None:
            self._wire = self._awire = self._aclient = self._loop = None

    def setup(self) -> None:
        """For code written for LangGraph's PostgresSaver or SqliteSaver, whose `setup()`
        creates their tables: this saver has nothing to create (a thread's keys are made by
        its first write), so `setup()` only checks that the server answers (a PING), raising
        StoreUnavailable or AccessDenied when it does not. Calling it is optional."""
        with self._translated("*"):
            self._sync_wire().client.ping()

    async def asetup(self) -> None:
        """`setup`, awaited."""
        with self._translated("*"):
            await self._async_wire().client.ping()

    def __enter__(self) -> StatekitSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> StatekitSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def keys(self, thread_id: Any) -> list[str]:
        """The two keys of a thread (checkpoint hash, index)."""
        return thread_keys(self.namespace, str(thread_id))

    # -- running steps ----------------------------------------------------------------------

    def _translate(self, thread: str, exc: BaseException) -> BaseException:
        """The error a caller sees for `exc`: an error reply classified first (AccessDenied for
        NOPERM and a wrong password, which redis-py raises as a ConnectionError; StoreUnavailable
        for a transient one; StoreFull for OOM), then StoreUnavailable for a connection failure,
        CorruptStateError for data the scripts did not write; else `exc`."""
        if isinstance(exc, (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError)):
            classified = classify_reply(exc, f"checkpoint store call for thread {thread!r}")
            if classified is not None:
                return classified
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreUnavailable(f"checkpoint store for thread {thread!r} unavailable: {exc}")
        if isinstance(exc, redis.exceptions.ResponseError):
            text = _SCRIPT_SUFFIX.sub("", str(exc))
            if text.startswith(CORRUPT_PREFIX) or text.startswith("WRONGTYPE") or "user_script" in text:
                detail = text[len(CORRUPT_PREFIX) :] if text.startswith(CORRUPT_PREFIX) else text
                return CorruptStateError(f"thread {thread!r}: {detail}; the thread was left as is")
        if isinstance(exc, redis.exceptions.RedisClusterException):
            return StoreUnavailable(f"checkpoint store for thread {thread!r}: the cluster could not route it ({exc})")
        return exc

    @contextlib.contextmanager
    def _translated(self, thread: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            error = self._translate(thread, exc)
            if error is exc:
                raise
            raise error from exc

    def _run(self, thread: str, steps: Steps) -> Any:
        try:
            return drive(steps, self._sync_wire())
        except BaseException as exc:
            error = self._translate(thread, exc)
            if error is exc:
                raise
            raise error from exc

    async def _arun(self, thread: str, steps: Steps) -> Any:
        from statekit.store.aio import adrive

        try:
            return await adrive(steps, self._async_wire())
        except BaseException as exc:
            error = self._translate(thread, exc)
            if error is exc:
                raise
            raise error from exc

    # -- put ------------------------------------------------------------------------------

    def _put_steps(
        self, config: Any, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> Steps:
        if self._dicts.stale():  # look up the namespace's newest dictionary first (one GET)
            return self._refreshed(self._put_now, config, checkpoint, metadata, new_versions)
        return self._put_now(config, checkpoint, metadata, new_versions)

    def _refreshed(self, make: Any, *args: Any) -> Steps:
        yield from self._dicts.refresh()
        return (yield from make(*args))

    def _put_now(
        self, config: Any, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> Steps:
        conf = config["configurable"]
        thread = str(conf["thread_id"])
        keys = self.keys(thread)
        ns = _token(conf.get("checkpoint_ns", ""), "checkpoint namespace")
        cid = _token(checkpoint["id"], "checkpoint id")
        parent = conf.get("checkpoint_id")
        saved = dict(checkpoint)
        values = saved.pop("channel_values", {}) or {}
        meta = get_checkpoint_metadata(config, metadata)
        record = self._pack([*self.serde.dumps_typed(saved), *self.serde.dumps_typed(meta), parent])
        versions = {
            _token(ch, "channel"): _token(v, "channel version") for ch, v in checkpoint["channel_versions"].items()
        }
        root = _root_of(conf, ns, meta)
        run_id = meta.get("run_id")
        refs = _frame([_token(run_id, "run id") if run_id else "", *(x for pair in versions.items() for x in pair)])
        blobs: list[Any] = []
        for channel, version in new_versions.items():
            channel, version = str(channel), str(version)
            if versions.get(channel) != version:
                continue  # a value no checkpoint references would only wait for the TTL
            typed = self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
            blobs += [f"{channel}\0{version}", self._pack(list(typed))]
        size = len(record) + len(refs) + sum(len(b) for b in blobs[1::2])
        cap = self.policy.max_bytes
        if size > cap:  # over the cap on its own: nothing sent
            raise _too_large(thread, size, cap)
        keep = self.policy.keep_last or 0
        args = [self.policy.ttl_ms, cap, keep, ns, cid, record, refs, root, len(blobs) // 2, *blobs]
        return self._put_io(thread, keys, ns, cid, args)

    def _put_io(self, thread: str, keys: list[str], ns: str, cid: str, args: list[Any]) -> Steps:
        reply = yield ("evalsha", _S["checkpoint_put"], keys, args)
        if reply[0] == -1:
            raise _too_large(thread, reply[1], reply[2])
        return {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": cid}}

    def put(
        self, config: Any, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> Any:
        """Store a checkpoint in one round trip (pruning beyond `keep_last` in the same script);
        the config that points at it. `StateTooLarge` (nothing written) past `max_bytes`. A
        subgraph checkpoint whose root checkpoint was pruned is not stored."""
        steps = self._put_steps(config, checkpoint, metadata, new_versions)
        return self._run(str(config["configurable"]["thread_id"]), steps)

    async def aput(
        self, config: Any, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> Any:
        """`put`, awaited."""
        steps = self._put_steps(config, checkpoint, metadata, new_versions)
        return await self._arun(str(config["configurable"]["thread_id"]), steps)

    # -- put_writes -------------------------------------------------------------------------

    def _writes_steps(self, config: Any, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> Steps:
        if self._dicts.stale():
            return self._refreshed(self._writes_now, config, writes, task_id, task_path)
        return self._writes_now(config, writes, task_id, task_path)

    def _writes_now(self, config: Any, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> Steps:
        conf = config["configurable"]
        thread = str(conf["thread_id"])
        keys = self.keys(thread)
        ns = _token(conf.get("checkpoint_ns", ""), "checkpoint namespace")
        cid = _token(conf["checkpoint_id"], "checkpoint id")
        task = _token(task_id, "task id")
        # LangGraph's PostgresSaver and SqliteSaver: a batch of special writes only (ERROR,
        # INTERRUPT, RESUME, SCHEDULED) replaces stored ones; any other batch keeps them
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        groups: list[Any] = []
        stored: dict[int, int] = {}  # what the batch stores per idx (a special one may repeat)
        for idx, (channel, value) in enumerate(writes):
            widx = WRITES_IDX_MAP.get(channel, idx)
            record = self._pack([task, channel, *self.serde.dumps_typed(value), task_path, widx])
            groups += [task, str(widx), record]
            if upsert or widx not in stored:
                stored[widx] = len(record)
        size = sum(stored.values())
        if size > self.policy.max_bytes:
            raise _too_large(thread, size, self.policy.max_bytes)
        root = _root_of(conf, ns)
        args = [self.policy.ttl_ms, self.policy.max_bytes, ns, cid, root, "1" if upsert else "0", len(groups) // 3]
        return self._writes_io(thread, keys, [*args, *groups], bool(groups))

    def _writes_io(self, thread: str, keys: list[str], args: list[Any], any_writes: bool) -> Steps:
        if not any_writes:
            return None
        reply = yield ("evalsha", _S["checkpoint_writes"], keys, args)
        if reply[0] == -1:
            raise _too_large(thread, reply[1], reply[2])
        return None

    def put_writes(self, config: Any, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        """Store a task's pending writes in one round trip. As LangGraph's PostgresSaver and
        SqliteSaver: a batch whose writes are all special (an interrupt, a resume...) replaces
        the task's stored ones; any other batch stores only writes not stored yet. Writes of
        a checkpoint that was pruned are not stored."""
        self._run(str(config["configurable"]["thread_id"]), self._writes_steps(config, writes, task_id, task_path))

    async def aput_writes(
        self, config: Any, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        """`put_writes`, awaited."""
        steps = self._writes_steps(config, writes, task_id, task_path)
        await self._arun(str(config["configurable"]["thread_id"]), steps)

    # -- reads ----------------------------------------------------------------------------

    def _pack(self, value: Any) -> bytes:
        """A record as stored: msgpack, or a bare zstd frame of it when that pays (msgpack
        never starts with zstd's magic, so either reads back)."""
        packed = ormsgpack.packb(value)
        return self.codec.frame(packed, self._dicts.dict_id) or packed

    def _unpack(self, raw: bytes, thread: str) -> Any:
        if _codec.is_frame(raw):
            raw = _codec.decompress(raw, f"thread {thread!r}")
        return ormsgpack.unpackb(raw)

    def _tuple(self, thread: str, entry: list[Any]) -> CheckpointTuple:
        """A CheckpointTuple from a script's {member, record, refs, blobs, writes}."""
        member, record, refs, blobs, writes = entry
        _, ns, cid = member.decode().split("\0")
        try:
            ctype, cbytes, mtype, mbytes, parent = self._unpack(record, thread)
        except (ValueError, TypeError) as exc:  # ormsgpack's decode error is a ValueError
            raise CorruptStateError(f"thread {thread!r}: checkpoint {cid} cannot be read ({exc})") from None
        checkpoint = self.serde.loads_typed((ctype, cbytes))
        tokens = _unframe(refs)
        values: dict[str, Any] = {}
        for channel, blob in zip(tokens[1::2], blobs, strict=False):
            if blob is None:
                continue
            vtype, vbytes = self._unpack(blob, thread)
            if vtype != "empty":
                values[channel] = self.serde.loads_typed((vtype, vbytes))
        unpacked = sorted(
            (self._unpack(w, thread) for w in writes if w is not None),
            key=lambda w: writes_sort_key(w[4], w[0], w[5]),
        )
        config = {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": cid}}
        return CheckpointTuple(
            config=config,
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self.serde.loads_typed((mtype, mbytes)),
            parent_config=({"configurable": {**config["configurable"], "checkpoint_id": parent}} if parent else None),
            pending_writes=[(w[0], w[1], self.serde.loads_typed((w[2], w[3]))) for w in unpacked],
        )

    def _get_steps(self, config: Any) -> Steps:
        conf = config["configurable"]
        thread = str(conf["thread_id"])
        keys = self.keys(thread)
        ns = _token(conf.get("checkpoint_ns", ""), "checkpoint namespace")
        cid = _token(get_checkpoint_id(config) or "", "checkpoint id")
        return self._get_io(thread, keys, ns, cid, _root_of(conf, ns))

    def _get_io(self, thread: str, keys: list[str], ns: str, cid: str, root: str = "") -> Steps:
        entry = yield ("evalsha", _S["checkpoint_get"], keys, [ns, cid, root])
        if entry and len(entry) == 2 and entry[0] == b"pruned":
            raise CheckpointPruned(thread, ns, cid, entry[1].decode())
        return None if not entry else (yield from self._dicts.decoding(self._tuple, thread, entry))

    def get_tuple(self, config: Any) -> CheckpointTuple | None:
        """The checkpoint `config` names (or the thread's newest in its namespace), with its
        channel values and pending writes, in one round trip; None when there is none.
        `CheckpointPruned` for one asked for by id that `keep_last` or `prune` removed."""
        return self._run(str(config["configurable"]["thread_id"]), self._get_steps(config))

    async def aget_tuple(self, config: Any) -> CheckpointTuple | None:
        """`get_tuple`, awaited."""
        return await self._arun(str(config["configurable"]["thread_id"]), self._get_steps(config))

    def _list_steps(self, config: Any, filter: dict[str, Any] | None, before: Any, limit: int | None) -> Steps:
        if limit is not None and limit <= 0:
            return
        conf = (config or {}).get("configurable", {})
        ns = conf.get("checkpoint_ns")
        ns = None if ns is None else _token(ns, "checkpoint namespace")
        only = get_checkpoint_id(config) if config else None
        before_id = _token(get_checkpoint_id(before) or "", "checkpoint id") if before else ""
        if config and "thread_id" in conf:
            threads = [str(conf["thread_id"])]
            self.keys(threads[0])
        else:
            found = yield ("scan", thread_pattern(self.namespace))
            threads = [t for t in (thread_id_of(k, self.namespace) for k in found) if t is not None]
        remaining = limit
        for thread in threads:
            keys = self.keys(thread)
            high, low = ("(c\1", "[c\0") if ns is None else (f"(c\0{ns}\1", f"[c\0{ns}\0")
            while True:
                reply = yield ("evalsha", _S["checkpoint_list"], keys, [high, low, self.page_size, before_id])
                last, scanned, entries = reply[0], reply[1], reply[2:]
                for entry in entries:
                    tup = yield from self._dicts.decoding(self._tuple, thread, entry)
                    if only and tup.config["configurable"]["checkpoint_id"] != only:
                        continue
                    if filter and not all(tup.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    yield ("emit", tup)
                    if remaining is not None:
                        remaining -= 1
                        if remaining <= 0:
                            return
                if scanned < self.page_size:
                    break
                high = b"(" + last

    def list(
        self,
        config: Any,
        *,
        filter: dict[str, Any] | None = None,
        before: Any = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of the config's thread (and namespace, when it names
        one), or of every thread for `config=None`; matching `filter` (metadata equality),
        older than `before`, at most `limit`. A page of `page_size` per round trip."""
        with self._translated(_thread_of(config)):
            yield from _Iterate.sync(self._list_steps(config, filter, before, limit), self._sync_wire())

    async def alist(
        self,
        config: Any,
        *,
        filter: dict[str, Any] | None = None,
        before: Any = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """`list`, as an async iterator."""
        with self._translated(_thread_of(config)):
            async for tup in _Iterate.asynchronous(self._list_steps(config, filter, before, limit), self._async_wire()):
                yield tup

    # -- removal and copies ---------------------------------------------------------------

    def _delete_thread_steps(self, thread_id: Any) -> Steps:
        yield ("delete", self.keys(str(thread_id)))

    def delete_thread(self, thread_id: str) -> None:
        """Remove every key of the thread, in one round trip."""
        self._run(str(thread_id), self._delete_thread_steps(thread_id))

    async def adelete_thread(self, thread_id: str) -> None:
        """`delete_thread`, awaited."""
        await self._arun(str(thread_id), self._delete_thread_steps(thread_id))

    def _threads(self) -> Steps:
        found = yield ("scan", thread_pattern(self.namespace))
        return [t for t in (thread_id_of(k, self.namespace) for k in found) if t is not None]

    def _delete_runs_steps(self, run_ids: Sequence[str]) -> Steps:
        runs = [_token(r, "run id") for r in run_ids]
        if not runs:
            return 0
        removed = 0
        for thread in (yield from self._threads()):
            removed += yield ("evalsha", _S["checkpoint_delete_runs"], self.keys(thread), runs)
        return removed

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints (with their writes, and values no longer referenced) of
        these runs, in every thread of the namespace: one SCAN, then a script per thread."""
        self._run("*", self._delete_runs_steps(run_ids))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """`delete_for_runs`, awaited."""
        await self._arun("*", self._delete_runs_steps(run_ids))

    def _prune_steps(self, thread_ids: Sequence[str], strategy: str) -> Steps:
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInput(f"prune strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        removed = 0
        for thread in [str(t) for t in thread_ids]:
            removed += yield ("evalsha", _S["checkpoint_prune"], self.keys(thread), [strategy])
        return removed

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Keep only each namespace's newest checkpoint of these threads (`keep_latest`), or
        remove the threads (`delete`); one script per thread. The root namespace goes first:
        a root checkpoint dropped takes the subgraph checkpoints that ran under it, so a
        subgraph namespace survives only with the root checkpoint it belongs to. Not for
        graphs that use LangGraph's DeltaChannel, whose values live in the dropped ancestors'
        writes."""
        self._run("*", self._prune_steps(thread_ids, strategy))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`prune`, awaited."""
        await self._arun("*", self._prune_steps(thread_ids, strategy))

    def _copy_steps(self, source_thread_id: str, target_thread_id: str) -> Steps:
        source, target = self.keys(str(source_thread_id)), self.keys(str(target_thread_id))
        fields, members = yield ("evalsha", _S["checkpoint_read_all"], source, [])
        pairs = [
            x
            for f, v in zip(fields[::2], fields[1::2], strict=True)
            if f != b"bytes" and not f.startswith(b"r\0")
            for x in (f, v)
        ]
        if not pairs:
            return None
        args = [self.policy.ttl_ms, self.policy.max_bytes, len(pairs) // 2, *pairs, *members]
        reply = yield ("evalsha", _S["checkpoint_copy"], target, args)
        if reply[0] == -1:
            raise _too_large(str(target_thread_id), reply[1], reply[2])
        return None

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of one thread into another (merged with
        what the target holds): one read and one write, each atomic. On a cluster the two
        threads may live on different nodes, so the pair is not one transaction."""
        self._run(str(source_thread_id), self._copy_steps(source_thread_id, target_thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """`copy_thread`, awaited."""
        await self._arun(str(source_thread_id), self._copy_steps(source_thread_id, target_thread_id))

    def get_next_version(self, current: str | int | None, channel: None = None) -> str:
        """Channel versions as LangGraph's own savers write them: a zero-padded counter and
        a random fraction, so they sort as strings."""
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- what a thread holds ----------------------------------------------------------------

    def keys_without_ttl(self) -> list[str]:
        """Every key of this saver's namespace that has no TTL (on each primary of a cluster).
        Empty unless something other than this saver wrote there."""
        with self._translated("*"):
            wire = self._sync_wire()
            found = drive(_scan_steps(f"{thread_pattern(self.namespace)[:-3]}:*"), wire)
            client = wire.client
            dictionaries = f"{self.namespace}:dict:".encode()  # no TTL by design (statekit.store.dictionaries)
            return [k.decode() for k in found if not k.startswith(dictionaries) and client.pttl(k) == -1]

    def footprint(self, thread_id: str) -> dict[str, Any]:
        """What a thread holds now: checkpoints, pending writes, channel values, the payload
        bytes the cap counts, the shortest TTL of its keys, and (on a real server) the memory
        Redis reports for its keys (`MEMORY USAGE key SAMPLES 0`: every field counted, not
        five extrapolated); fakeredis has no such command, so there `memory_bytes` is None.
        A user without `memory|usage` gets AccessDenied naming the rule."""
        with self._translated(str(thread_id)):
            return self._footprint(thread_id)

    def _footprint(self, thread_id: str) -> dict[str, Any]:
        wire = self._sync_wire()
        client = wire.client
        h, z = self.keys(thread_id)
        kinds: dict[bytes, int] = {}
        for name in client.hkeys(h):
            kinds[name[:2]] = kinds.get(name[:2], 0) + 1
        ttls = [t for t in (client.pttl(h), client.pttl(z)) if t != -2]
        memory = None
        if backend_kind(client) != "fakeredis":
            memory = sum(client.memory_usage(k, samples=0) or 0 for k in (h, z))
        return {
            "thread_id": str(thread_id),
            "checkpoints": kinds.get(b"c\0", 0),
            "writes": kinds.get(b"w\0", 0),
            "values": kinds.get(b"b\0", 0),
            "payload_bytes": int(client.hget(h, "bytes") or 0),
            "memory_bytes": memory,
            "ttl_s": min(ttls) / 1000 if ttls else None,
            "keys": sum(client.exists(k) for k in (h, z)),
        }


def _thread_of(config: Any) -> str:
    conf = (config or {}).get("configurable", {})
    return str(conf["thread_id"]) if "thread_id" in conf else "*"


def _scan_steps(pattern: str) -> Steps:
    found = yield ("scan", pattern)
    return found


# -- a small deterministic graph, for workshops and tests -------------------------------------
