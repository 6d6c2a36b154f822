"""The resilient store's write buffer on disk: `DurableBuffer`, a local SQLite file per process,
so writes buffered during an outage survive the process being killed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from statekit.errors import CorruptStateError, InvalidInput
from statekit.store.blocking import SessionStore


@dataclass
class _Pending:
    kind: Literal["append", "state", "delete"]
    session_id: str
    turn: Mapping[str, Any] | None = None  # an append's turn, as a load returns it
    turn_id: str | None = None
    fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    seq: int | None = None  # its row in a DurableBuffer
    record: bytes | None = None  # an append's record, checked and encoded as the store writes it
    update_id: str | None = None  # an update's identity: its replay is not applied twice


class _DurableError(Exception):
    """Internal: the durable buffer's file refused a write (a full disk, a damaged file)."""


#: Every DurableBuffer and ResilientStore of this process, for the fork handler below.
_LIVE_BUFFERS: weakref.WeakSet[DurableBuffer] = weakref.WeakSet()

#: SQLite connections a forked child inherited: kept referenced and never closed there, since
#: closing one in the child could checkpoint the parent's write-ahead log under it.
_INHERITED: list[Any] = []
#: The lock files of the durable buffers this process holds open.
_OPEN: set[str] = set()


class DurableBuffer:
    """The write buffer of one process, kept in a local SQLite file, so that buffered turns
    survive the process being killed during an outage and are replayed on the next start.

    SQLite in WAL mode with `synchronous=FULL`: a buffered turn is on disk (fsync'd) before
    `append_turn` returns None to its caller. Appends and deletes are kept, each append as the
    record the store writes (checked and encoded before it was buffered); an `update_state`
    function is code, not data, so it stays in memory only (a `buffered` event says
    `durable: False`). One process per file: a second one opening it gets `InvalidInput`
    (the file is locked), so two processes never replay each other's turns; a child forked
    from the process that holds it is detached from it (see `ResilientStore`). A file that is
    not a SQLite database is a `CorruptStateError` naming it, and is left as it is. Written by
    hand: no well-kept library offers a crash-safe, ordered, idempotent replay queue for Redis
    writes; SQLite does the durable part.
    """

    def __init__(self, path: str | Path) -> None:
        import fcntl

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        # A POSIX record lock (lockf), not flock: a forked child does not inherit it, so a
        # parent's close() releases it whatever its children do. It does not keep one process
        # from locking twice, so this process's open buffers are kept in _OPEN as well.
        lock_path = self.path.with_suffix(self.path.suffix + ".lock")
        key = str(lock_path.resolve())
        self._lockfile = open(lock_path, "a")  # noqa: SIM115 - held open
        try:
            if key in _OPEN:
                raise OSError("open in this process")
            fcntl.lockf(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise InvalidInput(
                f"durable buffer {self.path} is in use by another process: give each process its own"
            ) from None
        _OPEN.add(key)
        self._key = key
        try:
            # a short busy timeout: the file is this process's alone (the lock says so), and a
            # write that waits on it holds up the writes buffered behind it
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=0.1)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                "session_id TEXT NOT NULL, turn BLOB, turn_id TEXT)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(pending)")}
            if "record" not in columns:  # files written before turns were kept as encoded records
                self._db.execute("ALTER TABLE pending ADD COLUMN record BLOB")
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self._db.close()
            self._lockfile.close()
            _OPEN.discard(key)
            raise CorruptStateError(
                f"durable buffer {self.path} cannot be used ({exc}); it was left as it is: move it aside "
                "(or recover it with sqlite3's .recover) to start with an empty buffer"
            ) from None
        self._lock = threading.Lock()
        self._closed = False
        _LIVE_BUFFERS.add(self)

    @property
    def detached(self) -> bool:
        """True in a process forked from the one that opened the file: it must not write to it."""
        return os.getpid() != self._pid

    def _detach(self) -> None:
        """In a forked child: let go of the parent's file without touching it (the lock is
        the parent's alone: a child does not inherit a POSIX record lock)."""
        _INHERITED.append(self._db)
        self._lock = threading.Lock()  # one held at fork time stays held in the child
        _OPEN.discard(self._key)

    def add(self, item: _Pending) -> int | None:
        """Keep `item` on disk; its row number, or None for what cannot be kept (a function,
        or anything in a forked child). Raises `_DurableError` when the file refuses it."""
        if item.kind == "state" or self.detached or self._closed:
            return None
        # a compressed record may name a dictionary that a restarted process has not met yet (and
        # cannot fetch before replaying): its turn is kept beside it, as JSON, to read it back by
        compressed = item.record is not None and item.record[item.record.index(b"\x1f") + 1 :][:1] != b"\x01"
        turn = orjson.dumps(dict(item.turn)) if item.turn is not None and (item.record is None or compressed) else None
        try:
            with self._lock:
                cursor = self._db.execute(
                    "INSERT INTO pending (kind, session_id, turn, turn_id, record) VALUES (?, ?, ?, ?, ?)",
                    (item.kind, item.session_id, turn, item.turn_id, item.record),
                )
                return int(cursor.lastrowid or 0)
        except sqlite3.Error as exc:
            raise _DurableError(f"{self.path}: {exc}") from exc

    def remove(self, seq: int) -> None:
        """Forget a replayed row. Raises `_DurableError` when the file refuses it."""
        if self.detached or self._closed:
            return
        try:
            with self._lock:
                self._db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
        except sqlite3.Error as exc:
            raise _DurableError(f"{self.path}: {exc}") from exc

    def load(self) -> list[_Pending]:
        """What an earlier process of this file left buffered, oldest first."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, kind, session_id, turn, turn_id, record FROM pending ORDER BY seq"
                ).fetchall()
        except sqlite3.Error as exc:
            raise CorruptStateError(
                f"durable buffer {self.path} cannot be read ({exc}); it was left as it is: move it aside "
                "(or recover it with sqlite3's .recover) to start with an empty buffer"
            ) from None
        return [self._row(*row) for row in rows]

    def _row(
        self, seq: int, kind: str, sid: str, turn: bytes | None, tid: str | None, record: bytes | None
    ) -> _Pending:
        """A row as a buffered write; a row that is not one a DurableBuffer wrote is a
        CorruptStateError naming the file and the row (nothing is replayed, nothing removed)."""
        try:
            if kind not in ("append", "delete") or not isinstance(sid, str):
                raise ValueError(f"kind {kind!r}")
            if kind == "append":
                if not isinstance(tid, str):
                    raise ValueError("an append without its turn id")
                if turn is not None:
                    body = orjson.loads(turn)
                elif record is not None:
                    body = SessionStore.record_turn(bytes(record))
                else:
                    raise ValueError("an append without its turn")
                if not isinstance(body, dict):
                    raise ValueError("a turn that is not a mapping")
                return _Pending(kind, sid, turn=body, turn_id=tid, seq=seq, record=record)
            return _Pending(kind, sid, seq=seq)
        except (ValueError, TypeError) as exc:  # orjson's decode error is a ValueError
            raise CorruptStateError(
                f"durable buffer {self.path}: row {seq} is not a buffered write ({exc}); nothing was replayed and "
                "the file was left as it is: move it aside (or delete that row) to start"
            ) from None

    def close(self) -> None:
        """Close the file and release its lock (what it holds stays for the next start)."""
        if self._closed:
            return
        self._closed = True
        _LIVE_BUFFERS.discard(self)
        if self.detached:  # the parent's: its lock and connection stay the parent's (closed at the fork)
            return
        with self._lock:
            self._db.close()
        self._lockfile.close()  # releases the lock
        _OPEN.discard(self._key)


def _detach_in_child() -> None:
    """A forked child lets go of its parent's durable buffers (the parent replays them)."""
    for buffer in list(_LIVE_BUFFERS):
        buffer._detach()


os.register_at_fork(after_in_child=_detach_in_child)
