"""The audit trail: who read or changed which session, in a Redis Stream (`AuditLog`, `actor`)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

from statekit.store.core import StoreListener

_actor: contextvars.ContextVar[str] = contextvars.ContextVar("statekit_actor", default="unknown")


@contextlib.contextmanager
def actor(name: str) -> Iterator[None]:
    """Attribute the store operations inside the block to `name` in the audit trail."""
    token = _actor.set(name)
    try:
        yield
    finally:
        _actor.reset(token)


class AuditLog(StoreListener):
    """Every read and write of a session, recorded in a Redis Stream capped by length and age.

    Off unless attached (`SessionStore(..., listeners=[audit])`). Cheap when on: entries are
    buffered in memory and written with one pipelined XADD batch every `flush_every` entries
    or `flush_interval_s`, never on the operation's own round trip. Entries older than
    `max_age_s` are trimmed (XADD MINID) and the stream is kept near `maxlen` entries.
    """

    def __init__(
        self,
        client: Any,
        stream: str = "statekit:audit",
        *,
        maxlen: int = 100_000,
        max_age_s: float = 30 * 86_400,
        flush_every: int = 256,
        flush_interval_s: float = 0.5,
    ) -> None:
        self.client, self.stream = client, stream
        self.maxlen, self.max_age_s = maxlen, max_age_s
        self.flush_every, self.flush_interval_s = flush_every, flush_interval_s
        self._pending: list[tuple[str, str, str, int]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def on_operation(self, op: str, session_id: str, seconds: float, error: BaseException | None) -> None:
        entry = (_actor.get(), op, session_id, int(time.time() * 1000))
        with self._lock:
            self._pending.append(entry)
            due = len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_interval_s
        if due:
            self.flush()

    def flush(self) -> int:
        """Write buffered entries now; returns how many."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        if not pending:
            return 0
        min_id = int((time.time() - self.max_age_s) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for who, op, sid, ms in pending:
            pipe.xadd(
                self.stream, {"actor": who, "op": op, "session": sid, "ms": ms}, maxlen=self.maxlen, approximate=True
            )
        # exact, once per batch: an approximate MINID trim keeps old entries that share a node
        # with newer ones, and retention is a promise about every entry
        pipe.xtrim(self.stream, minid=f"{min_id}-0", approximate=False)
        pipe.execute()
        return len(pending)

    def _entries(self) -> Iterator[dict[str, str]]:
        self.flush()
        last = "-"
        while True:
            batch = self.client.xrange(self.stream, min=last, count=1000)
            if last != "-":
                batch = batch[1:]
            if not batch:
                return
            for entry_id, fields in batch:
                yield {
                    "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                    **{
                        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                        for k, v in fields.items()
                    },
                }
            last = batch[-1][0]

    def who_accessed(self, session_id: str) -> list[dict[str, str]]:
        """Every recorded access to `session_id`, oldest first."""
        return [e for e in self._entries() if e["session"] == session_id]

    def touched_by(self, actor_name: str) -> list[dict[str, str]]:
        """Every recorded access by `actor_name`, oldest first."""
        return [e for e in self._entries() if e["actor"] == actor_name]

    def oldest_ms(self) -> int | None:
        first = self.client.xrange(self.stream, count=1)
        if not first:
            return None
        entry_id = first[0][0].decode() if isinstance(first[0][0], bytes) else first[0][0]
        return int(entry_id.split("-")[0])
