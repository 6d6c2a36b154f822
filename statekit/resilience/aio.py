"""`AsyncResilientStore`: the resilient store for asyncio, over an `AsyncSessionStore`; every
line of the breaker, fallbacks and buffer is `ResilientStore`'s own (its steps), awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from statekit.errors import InvalidInput
from statekit.resilience.store import ResilientStore
from statekit.store.aio import AsyncSessionStore, adrive
from statekit.store.core import Context


class _AsyncStoreIO:
    """Carries out the resilient store's steps with awaits."""

    def __init__(self, owner: AsyncResilientStore) -> None:
        self.owner = owner

    async def store(self, name: str, args: tuple[Any, ...]) -> Any:
        return await getattr(self.owner.store, name)(*args)

    async def sleep(self, seconds: float) -> None:
        asleep = getattr(self.owner.clock, "asleep", None)
        if asleep is not None:
            await asleep(seconds)
        else:
            await asyncio.sleep(seconds)


class AsyncResilientStore(ResilientStore):
    """`ResilientStore` for asyncio, over an `AsyncSessionStore`: the same deadlines (the
    socket timeout of an asyncio client of its own), circuit breaker, fallbacks, write
    buffer, events and stats, with awaitable methods. A hung Redis costs a coroutine at most
    the deadline; the event loop is never blocked; `await flush()` and `await drain(s)`
    replay the buffer. The breaker and buffer are shared by every coroutine of the process
    that uses this object."""

    _awaits = True

    def _check_store(self, store: Any) -> None:
        if not isinstance(store, AsyncSessionStore):
            raise InvalidInput(f"AsyncResilientStore wraps an AsyncSessionStore, got {type(store).__name__}")

    def _make_io(self) -> Any:
        return _AsyncStoreIO(self)

    async def load_context(self, session_id: str) -> Context:  # type: ignore[override]
        """The session's context; never raises on a store failure (store, cache or default)."""
        return await adrive(self._load_steps(session_id), self._io)

    async def get_state(self, session_id: str) -> tuple[dict[str, Any], int]:  # type: ignore[override]
        """Structured state and version; the last seen (or ({}, 0)) when the store is unavailable."""
        return await adrive(self._get_state_steps(session_id), self._io)

    async def append_turn(  # type: ignore[override]
        self, session_id: str, turn: Mapping[str, Any], turn_id: str | None = None
    ) -> int | None:
        """Append a turn; the stored bytes, or None when it was buffered or dropped."""
        return await adrive(self._append_steps(session_id, turn, turn_id), self._io)

    async def update_state(  # type: ignore[override]
        self, session_id: str, fn: Callable[[dict[str, Any]], Any]
    ) -> dict[str, Any] | None:
        """Compare-and-set update; None when the store is unavailable and `fn` was buffered or dropped."""
        return await adrive(self._update_state_steps(session_id, fn), self._io)

    async def delete(self, session_id: str) -> bool | None:  # type: ignore[override]
        """Delete the session; None when it was buffered or dropped."""
        return await adrive(self._delete_steps(session_id), self._io)

    async def flush(self) -> int:  # type: ignore[override]
        """Replay buffered writes in order; how many were replayed."""
        return await adrive(self._flush_steps(), self._io)

    async def drain(self, timeout_s: float) -> int:  # type: ignore[override]
        """Replay the buffer, waiting for the store for at most `timeout_s`; how many writes remain."""
        return await adrive(self._drain_steps(timeout_s), self._io)

    def close(self) -> None:  # type: ignore[override]
        raise InvalidInput("AsyncResilientStore closes with `await store.aclose()`")

    async def aclose(self) -> None:
        """Release the durable buffer's file and lock (what it holds stays on disk for the next
        start) and close the connections of the resilient store's own client."""
        self._release()
        await self.store.aclose()

    async def __aenter__(self) -> AsyncResilientStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
