"""Helpers for testing code that uses statekit, yours and ours.

`RedisServer` runs a real redis-server on a free loopback port and can pause (SIGSTOP),
resume, kill and restart it, always by its own process id. With pytest installed, the
fixtures `redis_server` (one per test session) and `fresh_redis_server` (one per test)
are available after `pytest_plugins = ["statekit.testing"]` in a conftest.py, and
`start_redis_server(args)` starts a server with extra arguments under the same rule.

pytest-redis starts servers too, but its fixtures are tied to its own configuration
options and give no pause/kill/restart on the process, which the resilience tests need;
this helper is small and does only that.

When redis-server is not installed the fixtures skip, unless the environment variable
STATEKIT_REQUIRE_REDIS=1 is set (CI sets it): then they fail, so a CI run can never pass
with the real-Redis tests silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "FakeClock",
    "FaultInjector",
    "OutageDrill",
    "RedisServer",
    "RedisReplicaPair",
    "RedisSentinelGroup",
    "TlsFiles",
    "TlsRedisServer",
    "TcpProxy",
    "NETWORK_DRILLS",
    "network_drill",
    "network_drills",
    "RedisClusterServers",
    "lost_writes_drill",
    "store_failover_drill",
    "failover_drills",
    "Nemesis",
    "RoundTrips",
    "count_round_trips",
    "before_round_trip",
    "find_redis_server",
    "require_real_redis",
    "REQUIRE_ENV",
]

REQUIRE_ENV = "STATEKIT_REQUIRE_REDIS"


def find_redis_server() -> str | None:
    """Path of the redis-server binary (env STATEKIT_REDIS_SERVER, else PATH), or None."""
    explicit = os.environ.get("STATEKIT_REDIS_SERVER")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("redis-server")


def require_real_redis() -> bool:
    """True when a missing redis-server must fail the run instead of skipping."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, one whose bus port (+10000) is free too.

    Cluster ports must stay at or below 55535 (the bus port is +10000), so they are drawn
    at random from 20000..22767, below the kernel's ephemeral range (32768 and up) for both
    the port and its bus port, instead of asking the kernel for one.
    """
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 22768)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free loopback port pair for a cluster node")


class _PortTaken(Exception):
    pass


class RedisServer:
    """A redis-server process on 127.0.0.1, started and stopped by its own pid.

    Persistence is off (no RDB, no AOF) unless `args` turn it on; its working directory
    is a fresh temporary directory removed on `stop()`.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        executable: str | None = None,
        cluster_port: bool = False,
    ):
        exe = executable or find_redis_server()
        if not exe:
            raise FileNotFoundError("redis-server not found: install it (Debian: apt-get install redis-server)")
        self.executable = exe
        self.extra_args = list(args)
        self._auto_port = port is None
        self._cluster_port = cluster_port
        self.port = port or _free_port(cluster_port)
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="statekit-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING; raise with its log if it does not.

        A port chosen here that another process takes before redis-server binds it is
        replaced by a fresh one, up to five times.
        """
        for attempt in range(5):
            try:
                return self._start_once(timeout_s)
            except _PortTaken:
                if not self._auto_port or attempt == 4:
                    raise RuntimeError(f"port {self.port} is in use") from None
                self.port = _free_port(self._cluster_port)
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> RedisServer:
        log = Path(self._dir) / "redis.log"
        cmd = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--logfile", str(log),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                if "Address already in use" in tail:
                    raise _PortTaken()
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}{tail}")
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout_s} s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                # A server with requirepass answers "-NOAUTH ...": it is up all the same.
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def client(self, **kwargs: Any) -> Any:
        """A statekit client for this server (explicit timeouts, no retries)."""
        from .backends import connect

        return connect(self.url, **kwargs)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing is answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused process (SIGCONT)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Kill the process (SIGKILL): connections are refused until `restart()`."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> RedisServer:
        """Start again on the same port, empty (persistence is off)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Stop the process by its pid (SIGTERM, then SIGKILL) and remove its directory."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TlsFiles:
    """A throwaway certificate authority, a server certificate for 127.0.0.1 and localhost,
    and a client certificate, made with the `openssl` command in a temporary directory; and a
    second, unrelated CA, for tests of a certificate nobody here trusts. EC P-256 keys, valid
    for two days."""

    def __init__(self) -> None:
        if not shutil.which("openssl"):
            raise FileNotFoundError("openssl not found: install it (Debian: apt-get install openssl)")
        self.dir = Path(tempfile.mkdtemp(prefix="statekit-tls-"))
        self.ca_cert, self.ca_key = self._ca("ca")
        self.other_ca_cert, other_key = self._ca("other-ca")
        self.server_cert, self.server_key = self._signed("server", "localhost", self.ca_cert, self.ca_key)
        self.client_cert, self.client_key = self._signed("client", "statekit-client", self.ca_cert, self.ca_key)
        self.stranger_cert, self.stranger_key = self._signed("stranger", "localhost", self.other_ca_cert, other_key)

    def _run(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def _ca(self, name: str) -> tuple[Path, Path]:
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
                  "-subj", f"/CN=statekit {name}")  # fmt: skip
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def _signed(self, name: str, cn: str, ca_cert: Path, ca_key: Path) -> tuple[Path, Path]:
        (self.dir / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")  # fmt: skip
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca_cert), "-CAkey", str(ca_key),
                  "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class TlsRedisServer(RedisServer):
    """A redis-server that speaks only TLS (`--port 0 --tls-port N`), with `tls`'s server
    certificate. `client_certs` is Redis's `tls-auth-clients`: "no", "optional" or "yes"
    (a client must then present a certificate signed by the CA). `url` carries the CA file."""

    def __init__(
        self,
        tls: TlsFiles,
        args: Sequence[str] = (),
        *,
        client_certs: str = "no",
        certificate: tuple[Path, Path] | None = None,
        cluster_port: bool = False,
    ) -> None:
        super().__init__(args, cluster_port=cluster_port)
        self.tls = tls
        self.client_certs = client_certs
        self.certificate = certificate or (tls.server_cert, tls.server_key)  # (cert, key) the server presents
        self._user_args = list(args)

    def _start_once(self, timeout_s: float) -> RedisServer:
        t = self.tls
        self.extra_args = [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.certificate[0]), "--tls-key-file", str(self.certificate[1]),
            "--tls-ca-cert-file", str(t.ca_cert), "--tls-auth-clients", self.client_certs,
            *self._user_args,
        ]  # fmt: skip
        return super()._start_once(timeout_s)

    def _answers_ping(self) -> bool:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # is it up? (whether clients trust it is the tests' business)
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca_cert}"

    def client_url(self) -> str:
        """`url` with the client certificate and key, for a server that asks for one."""
        return f"{self.url}&ssl_certfile={self.tls.client_cert}&ssl_keyfile={self.tls.client_key}"


class RedisClusterServers:
    """A Redis Cluster of `primaries` redis-server processes on loopback, and `replicas`
    replicas of each primary.

    Slots are split evenly with CLUSTER ADDSLOTSRANGE and the nodes joined with CLUSTER
    MEET; `start()` returns once every node reports cluster_state:ok and every replica's
    link to its primary is up. `node_timeout_ms` is how long a primary may be unreachable
    before its replica is promoted (plus about a second of election). With `tls`, every node
    speaks only TLS, to clients, on the cluster bus and for replication (`tls-cluster`,
    `tls-replication`), and `url` is a `rediss+cluster://` URL carrying the CA file.
    """

    def __init__(
        self,
        primaries: int = 3,
        args: Sequence[str] = (),
        *,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
        tls: TlsFiles | None = None,
    ):
        base = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms), *args]
        self.tls = tls

        def node() -> RedisServer:
            if tls is None:
                return RedisServer(base, cluster_port=True)
            return TlsRedisServer(tls, [*base, "--tls-cluster", "yes", "--tls-replication", "yes"], cluster_port=True)

        self.nodes = [node() for _ in range(primaries)]
        self.replicas = [node() for _ in range(primaries * replicas)]
        self.replica_of: dict[int, RedisServer] = {}  # replica port -> its primary at start

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        if self.tls is None:
            return "redis+cluster://" + hosts
        return f"rediss+cluster://{hosts}?ssl_ca_certs={self.tls.ca_cert}"

    def _node_client(self, server: RedisServer, socket_timeout: float = 5) -> Any:
        """A plain redis-py client of one node (over TLS when the cluster uses it)."""
        import redis

        tls = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca_cert)}
        return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=socket_timeout, **tls)

    def start(self, timeout_s: float = 120.0) -> RedisClusterServers:
        import redis

        for node in [*self.nodes, *self.replicas]:
            node.start()
        clients = [self._node_client(n) for n in self.nodes]
        count = len(self.nodes)
        for i, client in enumerate(clients):
            first, last = i * 16384 // count, (i + 1) * 16384 // count - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        # every node meets every other: gossip then has nothing to spread, and the cluster
        # agrees in about 2 s instead of waiting on rounds of gossip
        everyone = [*self.nodes, *self.replicas]
        all_clients = [*clients, *(self._node_client(r) for r in self.replicas)]
        for i, client in enumerate(all_clients):
            for node in everyone[i + 1 :]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)

        def meet_again(lagging: list[int]) -> None:
            # a handshake not answered within the node timeout (a loaded machine) is
            # dropped, and gossip does not always bring the node back: a node that still
            # misses some meets every node again (meeting a known node is harmless)
            for i in lagging:
                for node in everyone:
                    if node is not everyone[i]:
                        all_clients[i].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)

        deadline = time.monotonic() + timeout_s
        try:
            self._wait(all_clients, deadline, lambda t: f"cluster_known_nodes:{len(everyone)}" in t, meet_again)
            ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
            for n, replica in enumerate(self.replicas):
                primary = n % count
                client = all_clients[count + n]
                while True:  # the replica must know the primary's id before it can follow it
                    try:
                        client.execute_command("CLUSTER", "REPLICATE", ids[primary])
                        break
                    except redis.exceptions.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                self.replica_of[replica.port] = self.nodes[primary]
            self._wait(all_clients, deadline, lambda t: "cluster_state:ok" in t)
            for client in all_clients[count:]:
                while (link := client.info("replication")).get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"a replica did not connect to its primary: {link}")
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            for c in all_clients:
                c.close()
        return self

    def _wait(self, clients: list[Any], deadline: float, ok: Any, nudge: Any = None) -> None:
        """Poll CLUSTER INFO on every node until `ok` holds for each; every 3 s, call
        `nudge` with the indexes of the nodes for which it does not yet."""
        text: list[str] = []
        next_nudge = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all(ok(t) for t in text):
                return
            if nudge is not None and time.monotonic() > next_nudge:
                nudge([i for i, t in enumerate(text) if not ok(t)])
                next_nudge = time.monotonic() + 3.0
            time.sleep(0.05)
        lagging = [line for t in text if not ok(t) for line in t.splitlines() if line.startswith(("cluster_state",
                   "cluster_known_nodes", "cluster_slots_ok"))]  # fmt: skip
        raise RuntimeError(f"the cluster did not reach the state it was waiting for: {sorted(set(lagging))}")

    def replica_for(self, primary: RedisServer) -> RedisServer:
        """A replica of `primary` (as set up at start)."""
        return next(r for r in self.replicas if self.replica_of[r.port] is primary)

    def _client(self, server: RedisServer) -> Any:

        return self._node_client(server, socket_timeout=10)

    def owner(self, slot: int) -> RedisServer:
        """The node that serves `slot` now."""
        alive = next(n for n in [*self.nodes, *self.replicas] if n.proc is not None and n.proc.poll() is None)
        client = self._client(alive)
        try:
            for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return next(n for n in [*self.nodes, *self.replicas] if n.port == int(primary[1]))
        finally:
            client.close()
        raise ValueError(f"slot {slot} is not served")

    def move_slot(self, slot: int, target: RedisServer, stop_after_keys: int | None = None) -> int:
        """Move `slot` to `target` the way `redis-cli --cluster reshard` does: IMPORTING on the
        target, MIGRATING on the source, MIGRATE its keys (TTLs kept), then SETSLOT NODE on
        every primary. With `stop_after_keys`, stop once that many keys have moved and leave
        the slot half-way (clients get ASK for the moved keys); `move_slot` again finishes it.
        Returns the keys moved."""
        source = self.owner(slot)
        if source is target:
            return 0
        src, dst = self._client(source), self._client(target)
        try:
            src_id = src.execute_command("CLUSTER", "MYID")
            dst_id = dst.execute_command("CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            moved = 0
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 50)
                if not keys:
                    break
                if stop_after_keys is not None and moved >= stop_after_keys:
                    return moved
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 10000, "KEYS", *keys)
                moved += len(keys)
            for node in self.nodes:
                client = self._client(node)
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                finally:
                    client.close()
            return moved
        finally:
            src.close()
            dst.close()

    def stop(self) -> None:
        for node in [*self.nodes, *self.replicas]:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


class RedisReplicaPair:
    """A primary and a replica on loopback, with diskless sync and no delay, so the link is
    up in well under a second. `start()` returns once the replica reports the link up.

    With `link_delay_ms`, the replica reaches its primary through a `TcpProxy` that holds
    the replication stream back that long: a replica that lags on purpose.
    """

    def __init__(self, args: Sequence[str] = (), link_delay_ms: float = 0.0):
        fast = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *args]
        self.primary = RedisServer(fast)
        self.replica: RedisServer | None = None
        self.link: TcpProxy | None = None
        self.link_delay_ms = link_delay_ms
        self._fast = fast

    @property
    def primary_url(self) -> str:
        return self.primary.url

    @property
    def replica_url(self) -> str:
        assert self.replica is not None
        return self.replica.url

    def start(self, timeout_s: float = 20.0) -> RedisReplicaPair:
        import redis

        self.primary.start()
        upstream = self.primary.port
        if self.link_delay_ms:
            self.link = TcpProxy(self.primary.port, self.link_delay_ms).start()
            upstream = self.link.port
        self.replica = RedisServer([*self._fast, "--replicaof", "127.0.0.1", str(upstream)]).start()
        client = redis.Redis(host="127.0.0.1", port=self.replica.port, socket_timeout=5)
        deadline = time.monotonic() + timeout_s
        primary = redis.Redis(host="127.0.0.1", port=self.primary.port, socket_timeout=5)
        try:
            while time.monotonic() < deadline:
                if client.info("replication").get("master_link_status") == "up":
                    break
                time.sleep(0.02)
            # "up" is reported before the first sync is fully applied: wait for a write to arrive
            primary.set("statekit:replica-ready", "1")
            while time.monotonic() < deadline:
                if client.get("statekit:replica-ready") == b"1":
                    primary.delete("statekit:replica-ready")
                    return self
                time.sleep(0.01)
        finally:
            client.close()
            primary.close()
        self.stop()
        raise RuntimeError(f"the replica did not connect to its primary within {timeout_s} s")

    def stop(self) -> None:
        if self.replica is not None:
            self.replica.stop()
        if self.link is not None:
            self.link.close()
        self.primary.stop()

    def __enter__(self) -> RedisReplicaPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def lost_writes_drill(
    cluster: RedisClusterServers, *, wait_replicas: int, writes: int = 300, lagging: int = 30, wait_timeout_ms: int = 50
) -> dict[str, Any]:
    """Kill a primary whose replica is behind, and count the acknowledged writes the
    promoted replica does not have.

    Writes go to one key of one shard on one connection, each followed, with
    `wait_replicas` > 0, by `WAIT wait_replicas wait_timeout_ms` on that connection (a write
    counts as acknowledged only if WAIT confirms it reached that many replicas). The replica
    is cut off for the last `lagging` writes (SIGSTOP, and its replication link closed: a
    partitioned replica); then the primary is killed (SIGKILL),
    the replica thawed, and the cluster promotes it. Returns the figures: writes sent,
    acknowledged, lost, and seconds from the kill to the promotion. `cluster` needs a
    replica per primary and is left with one primary fewer. Runs on real processes only.
    """
    import redis

    tag = f"drill-{os.urandom(4).hex()}"
    key = f"{tag}:{{{tag}}}:log"
    probe = redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port, socket_timeout=5)
    slot = int(probe.execute_command("CLUSTER", "KEYSLOT", key))
    probe.close()
    primary = cluster.owner(slot)
    replica = cluster.replica_for(primary)
    conn = redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=10)
    acknowledged: list[int] = []

    def write(i: int) -> None:
        pipe = conn.pipeline(transaction=False)
        pipe.rpush(key, i)
        if wait_replicas:
            pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms)
        replies = pipe.execute()
        if not wait_replicas or replies[1] >= wait_replicas:
            acknowledged.append(i)

    for i in range(writes - lagging):
        write(i)
    replica.pause()
    # and cut its link: a frozen replica would still find the stream in its socket buffer on
    # waking, so the primary's writes from here on stay on the primary (a partitioned replica)
    admin = redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=5)
    admin.client_kill_filter(_type="replica")
    admin.close()
    try:
        for i in range(writes - lagging, writes):
            write(i)
        conn.close()
        killed = time.monotonic()
        primary.kill()
    finally:
        replica.resume()
    promoted = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=5)
    try:
        while promoted.info("replication").get("role") != "master":
            if time.monotonic() - killed > 60:
                raise RuntimeError("the replica was not promoted within 60 s")
            time.sleep(0.02)
        failover_s = time.monotonic() - killed
        present = {int(v) for v in promoted.lrange(key, 0, -1)}
    finally:
        promoted.close()
    lost = [i for i in acknowledged if i not in present]
    return {
        "wait_replicas": wait_replicas,
        "writes_sent": writes,
        "acknowledged": len(acknowledged),
        "lost": len(lost),
        "failover_s": round(failover_s, 2),
    }


def store_failover_drill(
    cluster: RedisClusterServers, *, turns_before: int = 50, turns_during: int = 20
) -> dict[str, Any]:
    """Kill the primary of a session's shard under a `ResilientStore` and let the cluster fail
    over: the store degrades (reads from its cache, appends buffered in order), then recovers
    on its own once the replica is promoted. Returns the figures: turns acknowledged before
    the kill and found afterwards, turns buffered and replayed, seconds from the kill to the
    promotion and to the store being normal with its buffer empty."""
    from . import LifecyclePolicy, ResilientStore, SessionStore
    from .backends import connect

    store = SessionStore(connect(cluster.url), LifecyclePolicy(window_turns=1000, max_bytes=1 << 20))
    resilient = ResilientStore(store, timeout_ms=200, fail_max=2, reset_timeout_s=0.5)
    session = f"drill-{os.urandom(4).hex()}"
    for i in range(turns_before):
        resilient.append_turn(session, {"n": i}, turn_id=f"t{i}")
    slot = store.client.keyslot(store.keys(session)[0])
    primary = cluster.owner(slot)
    replica = cluster.replica_for(primary)
    killed = time.monotonic()
    primary.kill()
    for i in range(turns_before, turns_before + turns_during):
        resilient.append_turn(session, {"n": i}, turn_id=f"t{i}")
    degraded = resilient.mode == "degraded"
    buffered = resilient.buffered
    left = resilient.drain(timeout_s=60)
    recovered_s = time.monotonic() - killed
    ctx = resilient.load_context(session)
    promoted = cluster.owner(slot) is replica
    stored = set(ctx.turn_ids)
    return {
        "turns_before_kill": turns_before,
        "lost_before_kill": sum(f"t{i}" not in stored for i in range(turns_before)),
        "degraded_during_outage": degraded,
        "buffered": buffered,
        "replayed": resilient.stats.writes_replayed,
        "lost_from_buffer": sum(f"t{i}" not in stored for i in range(turns_before, turns_before + turns_during)),
        "still_buffered": left,
        "replica_promoted": promoted,
        "recovered_s": round(recovered_s, 2),
        "mode_after": resilient.mode,
    }


def failover_drills(writes: int = 300, lagging: int = 30) -> dict[str, Any]:
    """The failover drills a design review reports, each on a cluster of its own (three
    primaries with a replica each, started on loopback and stopped by their pids): lost
    acknowledged writes without WAIT and with WAIT 1, and a ResilientStore through a
    failover. Needs redis-server on this machine."""
    import datetime as dt

    import redis

    figures: dict[str, Any] = {"measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    for wait_replicas in (0, 1):
        with RedisClusterServers(3, replicas=1, node_timeout_ms=1000) as cluster:
            probe = redis.Redis(host="127.0.0.1", port=cluster.nodes[0].port, socket_timeout=5)
            version = probe.info("server")["redis_version"]
            probe.close()
            figures[f"wait_{wait_replicas}"] = lost_writes_drill(
                cluster, wait_replicas=wait_replicas, writes=writes, lagging=lagging
            )
    with RedisClusterServers(3, replicas=1, node_timeout_ms=1000) as cluster:
        figures["store"] = store_failover_drill(cluster)
    figures["setup"] = f"Redis {version} Cluster, 3 primaries with a replica each, cluster-node-timeout 1000 ms"
    return figures


#: The impairments `network_drills` puts on the link, by name.
NETWORK_DRILLS = ("latency", "half_open", "flapping")


def network_drill(
    profile: Any,
    drill: str,
    *,
    redis_url: str,
    latency_ms: float = 200,
    jitter_ms: float = 20,
    before_s: float = 1.0,
    impaired_s: float = 2.0,
    interval_ms: float = 20,
    flap_ms: float = 300,
    reset_timeout_s: float | None = None,
    sessions: int = 10,
) -> dict[str, Any]:
    """Run an application's requests (load the context, append a turn) through a
    `ResilientStore` set up as `resilience.recommend(profile)` says, over a `TcpProxy` in
    front of the redis-server at `redis_url` (`redis://`, same user and database), while the
    link is impaired by `drill`:

    - `latency`: `latency_ms` more per round trip (half each way), jitter `jitter_ms`;
    - `half_open`: replies from the server are lost, the connection stays up (requests land);
    - `flapping`: the link goes down and comes back every `flap_ms`; connections open when
      it comes back are reset.

    Phases: `before_s` healthy, `impaired_s` impaired, then healed until the store is normal
    with its buffer empty. Returns per phase and call the p50/p99/max latency (ms), what
    the application saw (contexts from the store, the cache or the default; exceptions
    raised to it), the breaker's transitions (`opened`: closed to open, the flaps), and the
    turns it was told were stored against those found afterwards (lost, duplicated), read
    by a client that does not go through the proxy.
    """
    import numpy as np

    from . import LifecyclePolicy, ResilientStore, SessionStore
    from .backends import connect
    from .resilience import recommend
    from .store import StoreListener

    if drill not in NETWORK_DRILLS:
        raise ValueError(f"drill is one of {NETWORK_DRILLS}, got {drill!r}")
    settings = recommend(profile)
    reset_s = settings["reset_timeout_s"] if reset_timeout_s is None else reset_timeout_s
    events: list[tuple[float, str, str]] = []

    class Transitions(StoreListener):
        def on_event(self, kind: str, session_id: str, info: Any) -> None:
            if kind == "breaker":
                events.append((time.monotonic(), str(info["from"]), str(info["to"])))

    namespace = f"net-{drill}-{os.urandom(3).hex()}"
    policy = LifecyclePolicy(window_turns=1000, max_bytes=1 << 20, summarizer=None, summary_max_bytes=0)
    parts = _drill_url(redis_url)
    with TcpProxy(parts.port or 6379, upstream_host=parts.hostname or "127.0.0.1").start() as proxy:
        auth = parts.netloc.rpartition("@")[0]
        client = connect(urlunsplit(parts._replace(netloc=(auth + "@" if auth else "") + f"127.0.0.1:{proxy.port}")))
        resilient = ResilientStore(
            SessionStore(client, policy, namespace=namespace),
            timeout_ms=settings["timeout_ms"],
            fail_max=settings["fail_max"],
            reset_timeout_s=reset_s,
            buffer_max_turns=100_000,
            listeners=[Transitions()],
        )
        calls: list[dict[str, Any]] = []
        acked: list[str] = []
        raised: list[str] = []
        n = 0

        def request(phase: str) -> None:
            nonlocal n
            sid, tid = f"s{n % sessions}", f"t{n}"
            n += 1
            for op in ("load_context", "append_turn"):
                t0 = time.perf_counter()
                try:
                    if op == "load_context":
                        out = resilient.load_context(sid).source
                    else:
                        stored = resilient.append_turn(sid, {"n": n}, turn_id=tid)  # None: buffered
                        out = "buffered" if stored is None else "store"
                        acked.append(tid)
                except Exception as exc:  # noqa: BLE001 - what reaches the application is the finding
                    raised.append(f"{op}: {type(exc).__name__}: {exc}")
                    out = "raised"
                calls.append({"phase": phase, "op": op, "ms": (time.perf_counter() - t0) * 1000, "saw": out})

        def run(phase: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                request(phase)
                time.sleep(interval_ms / 1000)  # the application's pace between requests

        run("before", before_s)
        impaired_at = time.monotonic()
        flapper: threading.Thread | None = None
        stop_flapping = threading.Event()
        if drill == "latency":
            proxy.delay_ms, proxy.jitter_ms = latency_ms / 2, jitter_ms / 2
        elif drill == "half_open":
            proxy.drop("down")
        else:

            def flap() -> None:
                while not stop_flapping.wait(flap_ms / 1000):
                    proxy.stall()
                    if stop_flapping.wait(flap_ms / 1000):
                        break
                    proxy.cut()
                    proxy.resume()

            flapper = threading.Thread(target=flap, daemon=True)
            flapper.start()
        run("impaired", impaired_s)
        stop_flapping.set()
        if flapper is not None:
            flapper.join()
        proxy.delay_ms = proxy.jitter_ms = 0
        proxy.heal()
        healed_at = time.monotonic()
        # after: requests go on until the store is normal with its buffer empty (waits on that
        # state, bounded by two probe intervals and ten seconds)
        deadline = healed_at + 2 * reset_s + 10
        while time.monotonic() < deadline and (resilient.mode != "normal" or resilient.buffered):
            request("after")
            time.sleep(interval_ms / 1000)
        left = resilient.drain(timeout_s=max(1.0, deadline - time.monotonic()))
        recovered_s = time.monotonic() - healed_at
        mode_after = resilient.mode
        client.close()

    direct = connect(redis_url)
    try:
        reader = SessionStore(direct, policy, namespace=namespace)
        stored = [tid for i in range(sessions) for tid in reader.load_context(f"s{i}").turn_ids]
    finally:
        direct.close()

    def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ms = np.array([r["ms"] for r in rows]) if rows else np.array([0.0])
        saw = dict(Counter(r["saw"] for r in rows))
        return {
            "calls": len(rows),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2),
            "saw": saw,
        }

    phases = {
        phase: {
            op: figures([r for r in calls if r["phase"] == phase and r["op"] == op])
            for op in ("load_context", "append_turn")
        }
        for phase in ("before", "impaired", "after")
    }
    opened = sum(1 for _, old, new in events if old == "closed" and new == "open")
    return {
        "drill": drill,
        "impairment": {
            "latency": f"+{latency_ms:g} ms per round trip, jitter +/-{jitter_ms:g} ms",
            "half_open": "replies from the server lost, connections left open",
            "flapping": f"link down and up every {flap_ms:g} ms, connections reset when it returns",
        }[drill],
        "profile": profile.name,
        "settings": {
            "timeout_ms": settings["timeout_ms"],
            "fail_max": settings["fail_max"],
            "reset_timeout_s": reset_s,
        },
        "phases": phases,
        "breaker": {
            "opened": opened,
            "closed_again": sum(1 for _, old, new in events if old != "closed" and new == "closed"),
            "transitions": [{"at_s": round(t - impaired_at, 3), "from": old, "to": new} for t, old, new in events],
        },
        "raised_to_application": raised,
        "turns": {
            "acknowledged": len(acked),
            "stored": len(set(stored)),
            "lost": len(set(acked) - set(stored)),
            "duplicated": len(stored) - len(set(stored)),
            "still_buffered": left,
        },
        "connections": proxy.connections,
        "recovered_s": round(recovered_s, 2),
        "mode_after": mode_after,
    }


def _drill_url(redis_url: str) -> Any:
    """The parts of a `redis://` URL the network drills can put a proxy in front of;
    `InvalidInput` for any other."""
    from .backends import resolve_url
    from .errors import InvalidInput

    url = resolve_url(redis_url)
    parts = urlsplit(url)
    if parts.scheme == "fakeredis":
        raise InvalidInput(
            "the network drills need a real redis-server: the proxy impairs a TCP connection, and an "
            "embedded fakeredis has none (give no URL to start a server on loopback)"
        )
    if parts.scheme != "redis" or not parts.hostname or "," in parts.netloc:
        raise InvalidInput(
            f"the network drills put a proxy in front of one server, redis://[user:password@]host:port[/db]; "
            f"got {redis_url!r} (TLS, cluster and Sentinel URLs are not proxied)"
        )
    return parts


def network_drills(
    profile: Any, redis_url: str | None = None, drills: Sequence[str] = NETWORK_DRILLS, **options: Any
) -> dict[str, Any]:
    """Every network drill in `drills` for `profile` (see `network_drill`), on the
    redis-server at `redis_url`, or on one started here on loopback and stopped by its pid.

    The drills need a TCP connection to impair: an embedded fakeredis (`fakeredis://`), a
    TLS, cluster or Sentinel URL is refused with `InvalidInput` before anything starts.
    """
    import datetime as dt

    unknown = sorted(set(drills) - set(NETWORK_DRILLS))
    if unknown:
        raise ValueError(f"unknown drills {unknown}; the drills are {list(NETWORK_DRILLS)}")
    server: RedisServer | None = None
    if redis_url is None:
        server = RedisServer().start()
        redis_url = server.url
    else:
        _drill_url(redis_url)
    try:
        results = {name: network_drill(profile, name, redis_url=redis_url, **options) for name in drills}
    finally:
        if server is not None:
            server.stop()
    return {"measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "drills": results}


class RedisSentinelGroup:
    """A primary, a replica and `sentinels` Redis Sentinel processes watching them as
    `service`, all on loopback ports, each stopped by its own pid. `url` is the
    `redis+sentinel://` URL of the group; `kill_primary()` kills whichever server is the
    primary now, and `wait_for_failover(old)` waits until a Sentinel names a new one.

    Sentinel runs from Debian's `redis-sentinel` when it is installed, else as
    `redis-server <conf> --sentinel` (the same program in another mode).
    """

    def __init__(
        self, sentinels: int = 1, service: str = "statekit", down_after_ms: int = 1000, failover_timeout_ms: int = 5000
    ):
        self.pair = RedisReplicaPair()
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.count = sentinels
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._dir = tempfile.mkdtemp(prefix="statekit-sentinel-")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def _servers(self) -> list[RedisServer]:
        return [s for s in (self.pair.primary, self.pair.replica) if s is not None]

    def start(self, timeout_s: float = 30.0) -> RedisSentinelGroup:
        import redis

        self.pair.start()
        exe = shutil.which("redis-sentinel")
        for n in range(self.count):
            port = _free_port()
            conf = Path(self._dir) / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self._dir}\n"
                f"logfile {self._dir}/sentinel-{n}.log\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.pair.primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            cmd = [exe, str(conf)] if exe else [self.pair.primary.executable, str(conf), "--sentinel"]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
        deadline = time.monotonic() + timeout_s
        for port in self.ports:  # each Sentinel answers and has found the replica
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
            try:
                while True:
                    try:
                        if client.sentinel_slaves(self.service):
                            break
                    except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
                        pass
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"Sentinel on port {port} did not find the replica within {timeout_s} s")
                    time.sleep(0.05)
            finally:
                client.close()
        return self

    def primary_port(self) -> int:
        """The primary's port, as the first Sentinel reports it."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.ports[0], socket_timeout=1)
        try:
            return int(client.sentinel_get_master_addr_by_name(self.service)[1])
        finally:
            client.close()

    def kill_primary(self) -> int:
        """Kill the server that is the primary now; return its port."""
        port = self.primary_port()
        next(s for s in self._servers() if s.port == port).kill()
        return port

    def wait_for_failover(self, old_port: int, timeout_s: float = 60.0) -> int:
        """Wait until a Sentinel names a primary other than `old_port`; return its port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                port = self.primary_port()
            except Exception:  # noqa: BLE001 - a Sentinel busy electing may not answer
                port = old_port
            if port != old_port:
                return port
            time.sleep(0.05)
        raise RuntimeError(f"no failover within {timeout_s} s")

    def pause_sentinels(self, which: Sequence[int] | None = None) -> None:
        """Freeze Sentinels (SIGSTOP, each by its own pid): all of them, or those at the indexes
        in `which` (the order of `ports` and of the URL). The kernel still accepts connections
        on their ports; nothing is answered until `resume_sentinels()`."""
        for n in range(self.count) if which is None else which:
            if self.procs[n].poll() is None:
                os.kill(self.procs[n].pid, signal.SIGSTOP)

    def resume_sentinels(self) -> None:
        """Thaw every frozen Sentinel (SIGCONT)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def sentinels_frozen(self, which: Sequence[int] | None = None) -> Iterator[None]:
        """`pause_sentinels(which)` for the block, thawed on the way out whatever happens."""
        self.pause_sentinels(which)
        try:
            yield
        finally:
            self.resume_sentinels()

    def kill_sentinels(self) -> None:
        """Kill every Sentinel (SIGKILL, by pid): nothing listens on their ports any more."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        self.resume_sentinels()  # a frozen process would hold SIGTERM until thawed
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()
        self.pair.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
        from .backends import backend_kind, connect

        self.url = redis_url
        self.real = not redis_url.startswith("fakeredis")
        self._injector = None if self.real else FaultInjector()
        if self.real:
            self._admin = connect(redis_url, socket_timeout=5)
            if backend_kind(self._admin) == "cluster":
                raise ValueError("an outage drill pauses one server: give it a single redis:// URL")

    def client(self, **kwargs: Any) -> Any:
        """A statekit client (explicit timeouts, no retries) of the drill's server."""
        from .backends import connect

        return connect(self.url, **kwargs) if self.real else self._injector.client(**kwargs)  # type: ignore[union-attr]

    def plain_client(self) -> Any:
        """A redis-py client with redis-py's own defaults: no socket timeout, and on a real
        server the constructor's retry policy (Redis.from_url builds connections without it)."""
        if not self.real:
            return self._injector.client(socket_timeout=None)  # type: ignore[union-attr, arg-type]
        from urllib.parse import urlsplit

        import redis

        from .backends import resolve_url

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
      anchor key expiring between two commands of an operation, say).

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

    def _decide(self) -> tuple[str, list[Any]]:
        """What happens to this round trip: 'pass', 'lose', 'frozen' or 'down'; and the
        hooks to run first."""
        self.round_trips += 1
        due = [a for at, a in self._hooks if at == self.round_trips]
        self._hooks = [(at, a) for at, a in self._hooks if at != self.round_trips]
        if self.mode == "frozen":
            return "frozen", due
        if self.mode == "down":
            return "down", due
        if self.lost:
            self.lost -= 1
            return "lose", due
        return "pass", due

    def _run_hooks(self, due: list[Any]) -> None:
        with self.spared():
            for action in due:
                action()

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
            verdict, due = nemesis._decide()
            nemesis._run_hooks(due)
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
            verdict, due = nemesis._decide()
            nemesis._run_hooks(due)
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


try:
    import pytest
except ImportError:  # pragma: no cover - the fixtures need pytest; RedisServer does not
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    def start_redis_server(args: Sequence[str] = ()) -> RedisServer:
        """A started RedisServer with `args`, under the fixtures' rule: skipped when
        redis-server is missing, failed instead when STATEKIT_REQUIRE_REDIS=1."""
        return _start_or_skip(args)

    def _start_or_skip(args: Sequence[str] = ()) -> RedisServer:
        if not find_redis_server():
            message = "redis-server is not installed"
            if require_real_redis():
                pytest.fail(f"{message}, and {REQUIRE_ENV}=1 forbids skipping real-Redis tests", pytrace=False)
            pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to make this a failure)")
        return RedisServer(args).start()

    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        """One real redis-server for the whole test session (flush between tests yourself)."""
        server = _start_or_skip()
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def redis_cluster() -> Iterator[RedisClusterServers]:
        """A three-primary Redis Cluster on loopback ports for the whole test session."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        cluster = RedisClusterServers(3).start()
        yield cluster
        cluster.stop()

    @pytest.fixture
    def fresh_redis_cluster() -> Iterator[RedisClusterServers]:
        """A three-primary cluster of its own for one test, free to reshard."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        cluster = RedisClusterServers(3).start()
        yield cluster
        cluster.stop()

    @pytest.fixture(scope="session")
    def redis_replica_pair() -> Iterator[RedisReplicaPair]:
        """A primary and a replica on loopback ports for the whole test session."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        pair = RedisReplicaPair().start()
        yield pair
        pair.stop()

    @pytest.fixture(scope="session")
    def lagging_redis_replica_pair() -> Iterator[RedisReplicaPair]:
        """A primary and a replica whose replication link is held back 50 ms each way."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        pair = RedisReplicaPair(link_delay_ms=50).start()
        yield pair
        pair.stop()

    @pytest.fixture
    def fresh_redis_replica_pair() -> Iterator[RedisReplicaPair]:
        """A primary and a replica of their own for one test, free to break."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        pair = RedisReplicaPair().start()
        yield pair
        pair.stop()

    @pytest.fixture
    def redis_sentinel_group() -> Iterator[RedisSentinelGroup]:
        """A primary, a replica and one Sentinel of their own for one test, free to fail over."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        group = RedisSentinelGroup().start()
        yield group
        group.stop()

    @pytest.fixture
    def fresh_redis_server() -> Iterator[RedisServer]:
        """A real redis-server of its own for one test, free to pause, kill and restart."""
        server = _start_or_skip()
        yield server
        server.stop()
