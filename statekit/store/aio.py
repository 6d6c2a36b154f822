"""The asyncio driver of the session store: `AsyncSessionStore` carries out `StoreCore`'s steps
with awaits (`_AsyncWire`), the same packed commands as the blocking store, on a
`redis.asyncio` client. On Redis Cluster every call goes through redis-py's own asyncio
cluster routing (`evalsha`, which follows MOVED and ASK), and `load_context` runs the read
script instead of a MULTI/EXEC transaction: still one round trip. Listeners are called in
the event loop: keep them cheap.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

import redis

from statekit.backends import backend_kind, is_async
from statekit.errors import InvalidInput
from statekit.scripts import SCRIPTS, Script
from statekit.store.core import CallerRaised, Context, StoreCore
from statekit.store.wire import _check_context, _context_reads, _packer

__all__ = ["AsyncSessionStore", "adrive"]

T = TypeVar("T")

# Round trips and request bytes of the operation running in this task (a thread-local
# would mix up the coroutines of one event loop).
_sent: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("statekit_sent", default=None)


async def adrive(steps: Generator[tuple[Any, ...], Any, T], wire: Any) -> T:
    """Carry out an operation's steps on an asyncio wire; return what the operation returns.

    A step that fails (or is cancelled) is thrown back into the operation, so its cleanup
    runs as it would in the blocking store."""
    try:
        step = steps.send(None)
        while True:
            try:
                reply = await getattr(wire, step[0])(*step[1:])
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(reply)
    except StopIteration as stop:
        return stop.value


class _AsyncWire:
    """The asyncio twin of `statekit.store._Wire`: the same packed commands, awaited.

    Single server: the packed EVALSHA or MULTI/EXEC goes out on a connection of the
    client's own pool (its timeouts, TLS and AUTH), and redis-py's parser reads the reply.
    A connection whose reply was cut off (a timeout, a cancelled task) is disconnected,
    never handed back with a reply still in flight. Cluster: redis-py's routing.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cluster = backend_kind(client) == "cluster"
        self.pack = _packer(client.get_encoder())

    def reset(self) -> contextvars.Token[list[int] | None]:
        return _sent.set([0, 0])

    def counted(self) -> dict[str, int]:
        sent = _sent.get() or [0, 0]
        return {"round_trips": sent[0], "bytes": sent[1]}

    def count(self, round_trips: int, request_bytes: int = 0) -> None:
        sent = _sent.get()
        if sent is not None:
            sent[0] += round_trips
            sent[1] += request_bytes

    async def send(self, packed: bytes, replies: int) -> Any:
        self.count(1, len(packed))
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        first_error: redis.exceptions.ResponseError | None = None
        reply = None
        try:
            await conn.send_packed_command(packed)
            for _ in range(replies):
                try:
                    reply = await conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    first_error = first_error or exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        if first_error is not None:
            raise first_error
        return reply

    async def load_script(self, script: Script) -> None:
        if self.cluster:
            for node in self.client.get_primaries():
                self.count(1)
                await self.client.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
        else:
            self.count(1)
            await self.client.script_load(script.script)

    async def routed(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        self.count(1)
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.load_script(script)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        if self.cluster:
            return await self.routed(script, keys, args)
        packed = self.pack("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.send(packed, 1)
        except redis.exceptions.NoScriptError:
            await self.load_script(script)
            return await self.send(packed, 1)

    async def read_context(self, keys: list[str]) -> list[Any]:
        if self.cluster:
            reply = await self.routed(SCRIPTS["load"], keys[:3], [])
        else:
            reply = await self.send(_context_reads(self.pack, keys), 5)
        return _check_context(reply, keys)

    async def types(self, keys: list[str]) -> list[bytes]:
        self.count(len(keys))
        return [await self.client.type(key) for key in keys]

    async def get(self, key: str) -> bytes | None:
        self.count(1)
        return await self.client.get(key)

    async def delete(self, keys: list[str]) -> int:
        self.count(1)
        return int(await self.client.delete(*keys))

    async def scan(self, pattern: str) -> list[bytes]:
        options: dict[str, Any] = {"match": pattern, "count": 1000}
        if self.cluster:
            options["target_nodes"] = self.client.PRIMARIES
        return sorted({key async for key in self.client.scan_iter(**options)})

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def await_(self, awaitable: Any) -> Any:
        return await awaitable


class AsyncSessionStore(StoreCore):
    """`SessionStore` for asyncio: the same methods, semantics, errors, listeners and
    `Context`, awaitable. Give it an asyncio client (`connect_async(url)`).

    Appends and loads are one round trip each, as in the blocking store. A hung server
    costs a call at most the client's socket timeout, and the event loop never blocks.
    """

    def _make_wire(self, client: Any) -> _AsyncWire:
        if not is_async(client):
            raise InvalidInput(
                "AsyncSessionStore needs an asyncio client (statekit.aio.connect_async(url)); "
                "for a blocking client use SessionStore"
            )
        return _AsyncWire(client)

    async def _run(self, op: str, session_id: str, steps: Generator[tuple[Any, ...], Any, T]) -> T:
        listening = bool(self.listeners)
        if listening:
            start = time.perf_counter()
            token = self._wire.reset()
        error: BaseException | None = None
        try:
            return await adrive(steps, self._wire)
        except CallerRaised as raised:
            error = raised.error
            raise error from None
        except BaseException as exc:
            error = self._translate(op, session_id, exc)
            if error is None:
                error = await adrive(self._corrupt_steps(session_id, exc), self._wire)
            if error is exc:
                raise
            raise error from exc
        finally:
            if listening:
                self._notify(op, session_id, time.perf_counter() - start, error)
                _sent.reset(token)

    async def append_turn(self, session_id: str, turn: Mapping[str, Any], turn_id: str | None = None) -> int:
        """Append `turn` in one round trip; return the session's stored bytes (as
        `SessionStore.append_turn`: a replayed turn id is stored once, `StateTooLarge` with
        nothing written over the cap)."""
        return await self._run("append_turn", session_id, self._append_steps(session_id, turn, turn_id))

    async def load_context(self, session_id: str) -> Context:
        """The session's summary, window, pending turns, version and size, in one round trip."""
        return await self._run("load_context", session_id, self._load_steps(session_id))

    async def get_state(self, session_id: str) -> tuple[dict[str, Any], int]:
        """The session's structured state and its version (an empty dict and 0 when unset)."""
        return await self._run("get_state", session_id, self._get_state_steps(session_id))

    async def update_state(
        self, session_id: str, fn: Callable[[dict[str, Any]], Any], update_id: str | None = None
    ) -> dict[str, Any]:
        """Compare-and-set update of the structured state, retried on conflict (as
        `SessionStore.update_state`, `update_id` included); `fn` may be a coroutine function."""
        return await self._run("update_state", session_id, self._update_state_steps(session_id, fn, update_id))

    async def _append_encoded(self, session_id: str, turn_id: str, record: bytes) -> int:
        """`append_turn` for a turn that `prepare_turn` checked and encoded (AsyncResilientStore's replay)."""
        return await self._run("append_turn", session_id, self._append_prepared_steps(session_id, turn_id, record))

    async def refresh_dictionaries(self) -> int:
        """Look up the namespace's newest zstd dictionary now (one GET; writes otherwise do it
        every `codec.refresh_s` seconds); its id, 0 for none."""
        return await self._run("refresh_dictionaries", "", self.refresh_dictionaries_steps())

    async def tag_region(self, session_id: str, region: str) -> bool:
        """Record an existing session's region, keeping its TTL; False for a missing session."""
        return await self._run("tag_region", session_id, self._tag_region_steps(session_id, region))

    async def delete(self, session_id: str) -> bool:
        """Remove every key of the session; True when it existed."""
        return await self._run("delete", session_id, self._delete_steps(session_id))

    async def aclose(self) -> None:
        """Close the client's connections (for a FastAPI lifespan's shutdown)."""
        close = getattr(self.client, "aclose", None) or self.client.close
        await close()
