"""`TcpProxy`: a TCP proxy on loopback that slows, stalls, half-opens or cuts a link on demand."""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import threading
import time
from typing import Any


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port` that impairs the link on demand.

    Written here because the usual tool, the kernel's netem, is not available on every
    machine (it is missing here), and a proxy in user space needs no privileges. Each
    connection has a reader and a writer thread per direction; a chunk read at time t is
    written at t + delay (+ a uniform draw in [-jitter, +jitter], never reordering chunks).
    Every impairment may be changed while connections are open:

    - `delay_ms`, `jitter_ms`: added each way (a round trip pays twice);
    - `stall()` / `resume()`: nothing passes either way, connections stay open (a frozen link);
    - `drop("down")` / `drop("up")`: bytes from the server (or to it) are discarded while the
      connection stays open: a half-open connection, where a request lands and its reply never
      comes back;
    - `cut()`: every open connection is reset, new ones are accepted (a link that flaps);
    - `heal()`: no stall, no drop (delay and jitter stay as set).
    """

    DIRECTIONS = ("up", "down")  # up: client to server; down: server to client

    def __init__(
        self, upstream_port: int, delay_ms: float = 0.0, upstream_host: str = "127.0.0.1", jitter_ms: float = 0.0
    ):
        self.upstream = (upstream_host, upstream_port)
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.dropping: set[str] = set()
        self.connections = 0  # accepted so far
        self.cuts = 0
        self.received = {"up": 0, "down": 0}  # bytes read from each side, dropped or not
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._flowing = threading.Condition()
        self._stalled = False
        self._rng = random.Random()

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() the proxy first"
        return self._listener.getsockname()[1]

    def start(self) -> TcpProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._spawn(self._accept)
        return self

    # -- impairments ----------------------------------------------------------------------

    def stall(self) -> None:
        with self._flowing:
            self._stalled = True

    def resume(self) -> None:
        with self._flowing:
            self._stalled = False
            self._flowing.notify_all()

    def drop(self, direction: str) -> None:
        if direction not in self.DIRECTIONS:
            raise ValueError(f"direction is one of {self.DIRECTIONS}, got {direction!r}")
        self.dropping.add(direction)

    def wait_received(self, direction: str, nbytes: int, timeout_s: float = 10.0) -> bool:
        """Wait until the proxy has read `nbytes` in `direction` in all (a request is in flight)."""
        with self._flowing:
            return self._flowing.wait_for(lambda: self.received[direction] >= nbytes, timeout=timeout_s)

    def heal(self) -> None:
        self.dropping.clear()
        self.resume()

    def cut(self) -> int:
        """Reset every open connection; return how many were open."""
        with self._flowing:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.cuts += 1
        return len(pairs)

    # -- forwarding -----------------------------------------------------------------------

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.connections += 1
            self._sockets += [client, upstream]
            with self._flowing:
                self._pairs.append((client, upstream))
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                self._spawn(self._read, src, chunks, direction)
                self._spawn(self._write, dst, chunks)

    def _read(self, src: socket.socket, chunks: queue.Queue[tuple[float, bytes] | None], direction: str) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                chunks.put(None)
                return
            with self._flowing:
                self.received[direction] += len(data)
                self._flowing.notify_all()
            if direction in self.dropping:
                continue  # lost on the way; the connection stays up
            delay = self.delay_ms + (self._rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0)
            chunks.put((time.monotonic() + max(0.0, delay) / 1000, data))

    def _write(self, dst: socket.socket, chunks: queue.Queue[tuple[float, bytes] | None]) -> None:
        while True:
            item = chunks.get()
            if item is None or self._closed.is_set():
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # holding the chunk back is the proxy's whole purpose
            with self._flowing:
                self._flowing.wait_for(lambda: not self._stalled or self._closed.is_set())
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self.resume()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; close() alone does not
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
