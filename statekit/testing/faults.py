"""Faults on demand: `FaultInjector` (an embedded server that fails or hangs), `Nemesis` (faults
where every redis-py client meets the network), `FakeClock`, `OutageDrill`, and round-trip
counting (`count_round_trips`, `before_round_trip`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class FaultInjector:
    """An embedded (fakeredis) server whose clients fail, hang or slow down on demand.

    - `fail()`: connections are refused, as with a dead server.
    - `hang()`: each call waits out the client's socket timeout, then raises TimeoutError;
      with `deliver_late=True` the command is applied when `heal()` is called, as a frozen
      server applies what was in its socket buffer once it is thawed (the case where a
      retried write lands twice unless it is idempotent).
    - `slow(ms)`: each call takes `ms` longer; past the socket timeout the command is
      applied and the client still gets TimeoutError.
    - `hold()`: each call waits until `heal()`, however long; `wait_held(n)` returns once
      n calls are waiting at the same time (to prove that calls overlap, with no clock).
    - `heal()`: back to normal. `outage()` is a context manager around `fail()`/`heal()`.

    `attempts` counts the commands clients tried to send while a fault was on: one per
    call when nothing retries behind the caller's back.
    """

    def __init__(self) -> None:
        import fakeredis

        self.server = fakeredis.FakeServer()
        self.mode = "ok"
        self.delay_s = 0.0
        self.deliver_late = False
        self.attempts = 0
        self._late: list[bytes] = []
        self._lock = threading.Lock()
        self._healed = threading.Event()
        self._healed.set()
        self._held = 0
        self._held_changed = threading.Condition()

    def client(self, socket_timeout: float = 1.0) -> Any:
        """A client of this server whose calls obey the injected faults."""
        import fakeredis
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        pool = redis.ConnectionPool(
            connection_class=_FaultyConnection,
            server=self.server,
            injector=self,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return fakeredis.FakeRedis(connection_pool=pool)

    def fail(self) -> None:
        self.mode = "fail"
        self.server.connected = False

    def hang(self, deliver_late: bool = False) -> None:
        self.heal()
        self._healed.clear()
        self.mode = "hang"
        self.deliver_late = deliver_late

    def slow(self, ms: float) -> None:
        self.heal()
        self.mode = "slow"
        self.delay_s = ms / 1000

    def hold(self) -> None:
        self.heal()
        self._healed.clear()
        self.mode = "hold"

    def wait_held(self, calls: int, timeout_s: float = 10.0) -> bool:
        """Wait until `calls` calls are held at once; False if that did not happen in time."""
        with self._held_changed:
            return self._held_changed.wait_for(lambda: self._held >= calls, timeout=timeout_s)

    def _held_call(self) -> None:
        with self._held_changed:
            self._held += 1
            self._held_changed.notify_all()
        try:
            self._healed.wait()
        finally:
            with self._held_changed:
                self._held -= 1

    def wait_received(self, direction: str, nbytes: int, timeout_s: float = 10.0) -> bool:
        """Wait until the proxy has read `nbytes` in `direction` in all (a request is in flight)."""
        with self._flowing:
            return self._flowing.wait_for(lambda: self.received[direction] >= nbytes, timeout=timeout_s)

    def heal(self) -> None:
        self.mode = "ok"
        self.server.connected = True
        self._healed.set()
        with self._lock:
            late, self._late = self._late, []
        if late:
            conn = _FaultyConnection(server=self.server, injector=None)
            for packed in late:
                conn.send_packed_command(packed)
                # a late command's error reply goes nowhere, as on a real server
                with contextlib.suppress(Exception):
                    conn.read_response()
            conn.disconnect()

    @contextlib.contextmanager
    def outage(self) -> Iterator[FaultInjector]:
        self.fail()
        try:
            yield self
        finally:
            self.heal()


class FakeClock:
    """A clock for `ResilientStore(clock=...)` that moves only when told: `advance(seconds)`
    (and `sleep`, which advances instead of waiting). Tests of breaker timing then take no
    time and cannot flake on a loaded machine."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now += seconds

    sleep = advance

    async def asleep(self, seconds: float) -> None:
        """What `AsyncResilientStore` awaits instead of sleeping: advance, then let other tasks run."""
        self.advance(seconds)
        await asyncio.sleep(0)


class OutageDrill:
    """Clients of one Redis that can be put through an outage, embedded or real.

    On fakeredis (`fakeredis://`) the clients share a FaultInjector's server and the outage
    is an injected hang: calls do not answer until it ends. On a real server the outage is
    `CLIENT PAUSE ALL` from an admin connection, which Redis lifts by itself when it runs
    out. `outage(seconds)` is a context manager around the body that runs during it.
    """

    def __init__(self, redis_url: str = "fakeredis://") -> None:
        from statekit.backends import backend_kind, connect

        self.url = redis_url
        self.real = not redis_url.startswith("fakeredis")
        self._injector = None if self.real else FaultInjector()
        if self.real:
            self._admin = connect(redis_url, socket_timeout=5)
            if backend_kind(self._admin) == "cluster":
                raise ValueError("an outage drill pauses one server: give it a single redis:// URL")

    def client(self, **kwargs: Any) -> Any:
        """A statekit client (explicit timeouts, no retries) of the drill's server."""
        from statekit.backends import connect

        return connect(self.url, **kwargs) if self.real else self._injector.client(**kwargs)  # type: ignore[union-attr]

    def plain_client(self) -> Any:
        """A redis-py client with redis-py's own defaults: no socket timeout, and on a real
        server the constructor's retry policy (Redis.from_url builds connections without it)."""
        if not self.real:
            return self._injector.client(socket_timeout=None)  # type: ignore[union-attr, arg-type]

        import redis

        from statekit.backends import resolve_url

        parts = urlsplit(resolve_url(self.url))
        return redis.Redis(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            db=int(parts.path.strip("/") or 0),
            username=parts.username,
            password=parts.password,
        )

    @contextlib.contextmanager
    def outage(self, seconds: float) -> Iterator[None]:
        """An outage of `seconds` around the body: injected on fakeredis, CLIENT PAUSE on a
        real server (lifted by Redis when it runs out; the body is waited out either way)."""
        end = time.monotonic() + seconds
        if self.real:
            self._admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        else:
            self._injector.hang()  # type: ignore[union-attr]
        try:
            yield
        finally:
            time.sleep(max(0.0, end - time.monotonic()))
            if not self.real:
                self._injector.heal()  # type: ignore[union-attr]


def _faulty_connection_class() -> type:
    from fakeredis._clients._sync import FakeRedisConnection
    from redis.exceptions import TimeoutError as RedisTimeout

    class FaultyConnection(FakeRedisConnection):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, injector: FaultInjector | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.injector = injector
            self._handshake = False

        def on_connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
            self._handshake = True  # HELLO, CLIENT SETINFO...: the connection's own setup, not a call
            try:
                return super().on_connect_check_health(*args, **kwargs)
            finally:
                self._handshake = False

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            inj = None if self._handshake else self.injector
            if inj is not None and inj.mode != "ok":
                with inj._lock:
                    inj.attempts += 1
            if inj is not None and inj.mode == "hold":
                inj._held_call()
                return super().send_packed_command(command, check_health)
            if inj is not None and inj.mode == "hang":
                if self.socket_timeout is None:  # no deadline: wait for the server, like a real client
                    inj._healed.wait()
                    return super().send_packed_command(command, check_health)
                time.sleep(self.socket_timeout)
                if inj.deliver_late:
                    with inj._lock:
                        inj._late.append(command)
                self.disconnect()
                raise RedisTimeout("Timeout reading from socket (injected hang)")
            if inj is not None and inj.mode == "slow":
                limit = self.socket_timeout or float("inf")
                time.sleep(min(inj.delay_s, limit))
                if inj.delay_s > limit:
                    super().send_packed_command(command, check_health)  # applied, but the reply is late
                    self.disconnect()
                    raise RedisTimeout("Timeout reading from socket (injected slowness)")
            super().send_packed_command(command, check_health)

    return FaultyConnection


class _LazyFaulty:
    """Resolves the fakeredis-based class on first use, so importing statekit.testing
    does not import fakeredis internals."""

    cls: type | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _LazyFaulty.cls is None:
            _LazyFaulty.cls = _faulty_connection_class()
        return _LazyFaulty.cls(*args, **kwargs)


_FaultyConnection = _LazyFaulty()


@dataclass
class RoundTrips:
    """How many times the client wrote to a server: one write per command or per pipeline."""

    count: int = 0


@contextlib.contextmanager
def _on_send(hook: Any) -> Iterator[None]:
    """Call `hook()` before every command or pipeline any redis-py (or fakeredis) client sends
    inside the block, blocking or asyncio. Commands that the hook itself sends do not call
    it again."""
    import redis.asyncio.connection
    import redis.connection

    original = redis.connection.AbstractConnection.send_packed_command
    original_async = redis.asyncio.connection.AbstractConnection.send_packed_command
    lock = threading.Lock()
    inside = threading.local()

    def call_hook() -> None:
        if not getattr(inside, "active", False):
            inside.active = True
            try:
                with lock:
                    hook()
            finally:
                inside.active = False

    def patched(self: Any, command: Any, check_health: bool = True) -> Any:
        call_hook()
        return original(self, command, check_health)

    async def patched_async(self: Any, command: Any, check_health: bool = True) -> Any:
        call_hook()
        return await original_async(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = patched  # type: ignore[method-assign]
    redis.asyncio.connection.AbstractConnection.send_packed_command = patched_async  # type: ignore[method-assign]
    try:
        yield
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        redis.asyncio.connection.AbstractConnection.send_packed_command = original_async  # type: ignore[method-assign]


@contextlib.contextmanager
def count_round_trips() -> Iterator[RoundTrips]:
    """Count round trips made by any redis-py (or fakeredis) client inside the block.

    redis-py sends a command, or a whole pipeline, with one `send_packed_command` and
    then reads the reply, so each call of it is one round trip. Counting requests this way
    is exact and does not depend on timing.
    """
    counter = RoundTrips()

    def count() -> None:
        counter.count += 1

    with _on_send(count):
        yield counter


@contextlib.contextmanager
def before_round_trip(n: int, action: Any) -> Iterator[RoundTrips]:
    """Run `action()` once, just before the `n`-th round trip (1-based) inside the block.

    A deterministic interleaving: another client's write lands exactly between two of the
    code's round trips, with no thread and no timing. Run it for every n from 1 to one past
    the code's round trips to try each place a concurrent write can land. What `action`
    sends is not counted. The yielded counter says how many round trips the block made.
    """
    if n < 1:
        raise ValueError(f"n counts round trips from 1, got {n!r}")
    counter = RoundTrips()

    def hook() -> None:
        counter.count += 1
        if counter.count == n:
            action()

    with _on_send(hook):
        yield counter


def _commands(packed: Any) -> list[list[bytes]]:
    """The commands in a packed RESP request (one or several arrays of bulk strings)."""
    if isinstance(packed, str):
        data = packed.encode()
    elif isinstance(packed, bytes | bytearray | memoryview):
        data = bytes(packed)
    else:
        data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in packed)
    out, i = [], 0
    while i < len(data):
        end = data.index(b"\r\n", i)
        count, i, args = int(data[i + 1 : end]), end + 2, []
        for _ in range(count):
            end = data.index(b"\r\n", i)
            size = int(data[i + 1 : end])
            args.append(data[end + 2 : end + 2 + size])
            i = end + 2 + size + 2
        out.append(args)
    return out


#: Commands a late delivery replays: the writes statekit sends (reads landing late change nothing).
_LATE_WRITES = frozenset({b"EVALSHA", b"EVAL", b"DEL", b"UNLINK", b"SCRIPT"})


class Nemesis:
    """Faults that production brings, injected where every redis-py client meets the
    network, on any backend (fakeredis, a real server, a cluster; blocking and asyncio), in
    the manner of Jepsen's nemesis. Active inside `with nemesis:`.

    - `lose_replies(n)`: the next `n` round trips reach the server and are applied, and
      their replies are lost: the caller gets TimeoutError, as after a deadline.
    - `freeze()` / `thaw()`: round trips time out without reaching the server; `thaw()`
      delivers the writes among them late, in order, as a frozen server applies what sat in
      its sockets when it thaws.
    - `kill()` / `restart()`: round trips are refused (ConnectionError) until `restart()`;
      the data stays, as on a server that fsyncs every write (appendfsync always).
    - `before(n, action)`: run `action()` just before the `n`-th round trip from now (an
      anchor key expiring between two commands of an operation, say). A fault that `action`
      turns on applies to that round trip already: `before(2, nemesis.lose_replies)` loses
      the reply of the second round trip of what runs next (the compare-and-set of an update,
      after its read).

    `admin` is a client of the same server (or cluster) that the faults never touch: the
    late deliveries and whatever `action` sends go through it, and so does anything inside
    `with nemesis.spared():`. Written by hand: fault-injection proxies (toxiproxy) need a
    server process and cannot reach the embedded fakeredis; this works on every backend.
    """

    def __init__(self, admin: Any) -> None:
        self.admin = admin
        self.mode = "ok"
        self.lost = 0  # replies still to lose
        self.late: list[list[bytes]] = []
        self.round_trips = 0
        self.faulted = 0  # round trips a fault touched
        self._hooks: list[tuple[int, Any]] = []
        # per thread and per asyncio task: an asyncio task's handshake must not spare another's call
        self._depth: contextvars.ContextVar[int] = contextvars.ContextVar("nemesis_depth", default=0)
        self._saved: list[tuple[Any, str, Any]] = []

    # -- faults -----------------------------------------------------------------------

    def lose_replies(self, n: int = 1) -> None:
        self.lost += n

    def freeze(self) -> None:
        self.mode = "frozen"

    def thaw(self) -> list[list[bytes]]:
        """End a freeze; deliver the frozen writes, in order. Returns what was delivered."""
        self.mode = "ok"
        late, self.late = self.late, []
        with self.spared():
            for args in late:
                with contextlib.suppress(Exception):  # a late write's error reply goes nowhere
                    self.admin.execute_command(*args)
        return late

    def kill(self) -> None:
        self.mode = "down"

    def restart(self) -> None:
        self.mode = "ok"

    def heal(self) -> None:
        """Every fault off: thaw (delivering what was frozen), restart, lose no more replies."""
        self.lost = 0
        self.thaw()
        self._hooks.clear()

    def before(self, n: int, action: Any) -> None:
        if n < 1:
            raise ValueError(f"n counts round trips from 1, got {n!r}")
        self._hooks.append((self.round_trips + n, action))

    def cancel_hooks(self) -> int:
        """Drop the `before` actions that have not run; returns how many there were."""
        n, self._hooks = len(self._hooks), []
        return n

    @contextlib.contextmanager
    def spared(self) -> Iterator[None]:
        """Commands sent inside are not faulted, counted or hooked (the test's own reads)."""
        token = self._depth.set(self._depth.get() + 1)
        try:
            yield
        finally:
            self._depth.reset(token)

    # -- the interception ---------------------------------------------------------------

    def _decide(self) -> str:
        """What happens to this round trip, after the actions due before it have run:
        'pass', 'lose', 'frozen' or 'down'."""
        self.round_trips += 1
        due = [a for at, a in self._hooks if at == self.round_trips]
        self._hooks = [(at, a) for at, a in self._hooks if at != self.round_trips]
        with self.spared():
            for action in due:
                action()
        if self.mode == "frozen":
            return "frozen"
        if self.mode == "down":
            return "down"
        if self.lost:
            self.lost -= 1
            return "lose"
        return "pass"

    def _fault(self, verdict: str, command: Any) -> BaseException:
        import redis

        self.faulted += 1
        if verdict == "frozen":
            self.late.extend(c for c in _commands(command) if c and c[0].upper() in _LATE_WRITES)
            return redis.exceptions.TimeoutError("Timeout reading from socket (nemesis: the server is frozen)")
        return redis.exceptions.ConnectionError("Connection refused (nemesis: the server is down)")

    def __enter__(self) -> Nemesis:
        import redis.asyncio.connection
        import redis.connection

        nemesis = self
        sync_send = redis.connection.AbstractConnection.send_packed_command
        async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

        def send(conn: Any, command: Any, check_health: bool = True) -> Any:
            if nemesis._depth.get():
                return sync_send(conn, command, check_health)
            verdict = nemesis._decide()
            with nemesis.spared():  # the connection's own handshake, and its replies
                if verdict in ("frozen", "down"):
                    conn.disconnect()
                    raise nemesis._fault(verdict, command)
                sync_send(conn, command, check_health)
                if verdict == "lose":
                    nemesis.faulted += 1
                    for _ in _commands(command):  # applied: read each reply, then lose it
                        with contextlib.suppress(redis.exceptions.ResponseError):
                            conn.read_response()
                    conn.disconnect()
                    raise redis.exceptions.TimeoutError("Timeout reading from socket (nemesis: the reply was lost)")

        async def asend(conn: Any, command: Any, check_health: bool = True) -> Any:
            if nemesis._depth.get():
                return await async_send(conn, command, check_health)
            verdict = nemesis._decide()
            with nemesis.spared():  # this task's handshake and replies only
                if verdict in ("frozen", "down"):
                    await conn.disconnect(nowait=True)
                    raise nemesis._fault(verdict, command)
                await async_send(conn, command, check_health)
                if verdict == "lose":
                    nemesis.faulted += 1
                    for _ in _commands(command):
                        with contextlib.suppress(redis.exceptions.ResponseError):
                            await conn.read_response()
                    await conn.disconnect(nowait=True)
                    raise redis.exceptions.TimeoutError("Timeout reading from socket (nemesis: the reply was lost)")

        self._saved = [
            (redis.connection.AbstractConnection, "send_packed_command", sync_send),
            (redis.asyncio.connection.AbstractConnection, "send_packed_command", async_send),
        ]
        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        redis.asyncio.connection.AbstractConnection.send_packed_command = asend  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, original in self._saved:
            setattr(cls, name, original)
        self._saved = []
