"""Real redis-server processes on loopback ports, started and stopped by their own pids: a
server, a TLS server, a cluster, a replica pair, a Sentinel group."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from statekit.testing.proxy import TcpProxy

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


#: What redis-server logs (at the default log level) once it listens on its ports.
_READY = b"Ready to accept connections"


class _PortTaken(Exception):
    pass


class _NotJoined(Exception):
    """The nodes of a cluster did not all come to know each other in time."""


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
        try:
            for attempt in range(5):
                try:
                    return self._start_once(timeout_s)
                except _PortTaken:
                    if not self._auto_port or attempt == 4:
                        raise RuntimeError(f"port {self.port} is in use") from None
                    self.port = _free_port(self._cluster_port)
        except BaseException:
            self.stop()  # a start that failed or was interrupted leaves no process and no directory
            raise
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
        os.makedirs(self._dir, exist_ok=True)  # a start after a failed one (which removed it)
        log.unlink(missing_ok=True)  # a restart's ready line must be its own, not the last run's
        # Where the log may not hold the ready line (a log level above notice, a log file or an
        # included config of the caller's), the PONG alone says the server is up, as it did before.
        args = [a.lower() for a in self.extra_args]
        levels = [v for a, v in itertools.pairwise(args) if a == "--loglevel"]
        self._quiet = any(a in ("--include", "--logfile", "--syslog-enabled") for a in args) or bool(
            levels and levels[-1] not in ("debug", "verbose", "notice")
        )
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                if "Address already in use" in tail:
                    raise _PortTaken()
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}{tail}")
            # The port answers, and our own log says our process bound it: a port another
            # process took after it was chosen answers too, while ours is about to fail on it
            # (one node of a cluster would then be another cluster's node).
            if self._answers_ping() and (self._quiet or _READY in (log.read_bytes() if log.exists() else b"")):
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
        from statekit.backends import connect

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
        """Start again on the same port, empty (persistence is off). Clients hold its URL, so a
        port another process took meanwhile is a RuntimeError, never a move to another port."""
        self.kill()
        auto, self._auto_port = self._auto_port, False
        try:
            return self.start()
        finally:
            self._auto_port = auto

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

        self._node = node
        self._shape = (primaries, replicas)
        self.nodes = [node() for _ in range(primaries)]
        self.replicas = [node() for _ in range(primaries * replicas)]
        self.replica_of: dict[int, RedisServer] = {}  # replica port -> its primary at start
        self._clients: dict[int, Any] = {}  # node port -> its client (see _client)

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

    #: how long the nodes may take to all know each other before the cluster is formed again
    JOIN_S = 30.0

    def start(self, timeout_s: float = 120.0) -> RedisClusterServers:
        """Start the nodes, join them and wait for the cluster (see the class). A cluster whose
        nodes do not all know each other within JOIN_S is stopped and formed again on fresh
        ports (three times at most). A safety net: the one cause found (a node's port taken by
        another test's server, whose PONG was taken for the node's) is closed in RedisServer."""
        deadline = time.monotonic() + timeout_s
        for attempt in range(3):
            try:
                return self._form(deadline, final=attempt == 2)
            except _NotJoined:
                primaries, replicas = self._shape
                self.nodes = [self._node() for _ in range(primaries)]
                self.replicas = [self._node() for _ in range(primaries * replicas)]
        raise AssertionError("unreachable")

    def _form(self, deadline: float, final: bool) -> RedisClusterServers:
        import redis

        everyone = [*self.nodes, *self.replicas]
        all_clients: list[Any] = []
        try:
            for node in everyone:
                node.start()
            all_clients = [self._node_client(n) for n in everyone]
            count = len(self.nodes)
            for i, client in enumerate(all_clients[:count]):
                first, end = i * 16384 // count, (i + 1) * 16384 // count - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, end)
            # every node meets every other: gossip then has nothing to spread, and the cluster
            # agrees in about 2 s instead of waiting on rounds of gossip
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

            join_by = deadline if final else min(deadline, time.monotonic() + self.JOIN_S)
            try:
                self._wait(all_clients, join_by, lambda t: f"cluster_known_nodes:{len(everyone)}" in t, meet_again)
            except RuntimeError as exc:
                if final:
                    raise RuntimeError(f"{exc}; {self._views(all_clients, everyone)}") from None
                raise _NotJoined() from None
            ids = [c.execute_command("CLUSTER", "MYID") for c in all_clients[:count]]
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
            self.stop()  # every node started, the one that failed to start included
            raise
        finally:
            for c in all_clients:
                c.close()
        return self

    @staticmethod
    def _views(clients: list[Any], everyone: list[RedisServer]) -> str:
        """Which node misses which: the ports each node does not list in CLUSTER NODES."""
        missing = []
        for client, node in zip(clients, everyone, strict=True):
            try:
                listed = client.execute_command("CLUSTER", "NODES")
            except Exception as exc:  # noqa: BLE001 - a diagnostic: say what it met, do not mask the error
                missing.append(f"{node.port}: CLUSTER NODES failed ({exc})")
                continue
            text = listed.decode() if isinstance(listed, bytes) else str(listed)
            absent = [n.port for n in everyone if f":{n.port}@" not in text]
            if absent:
                missing.append(f"{node.port} does not know {absent}")
        return "; ".join(missing) or "every node lists every other now"

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
        """The client of one node that slot lookups and moves use, one per node for the
        cluster's life (closed at `stop`): a new redis-py client spends about 2 ms reading its
        package's metadata before its first command, and a reshard of 400 slots made 2,400."""
        client = self._clients.get(server.port)
        if client is None:
            client = self._clients[server.port] = self._node_client(server, socket_timeout=10)
        return client

    def wait_for_failover(self, killed: RedisServer, timeout_s: float = 60.0) -> RedisServer:
        """Wait until every live node's CLUSTER SLOTS names `killed`'s replica, and no longer
        `killed`, as the primary of its slots; return the replica. A node that has not yet
        heard of the promotion still hands the dead primary to a client that asks it for the
        slot map (a cluster client made then fails to connect)."""
        replica = self.replica_for(killed)
        live = [n for n in [*self.nodes, *self.replicas] if n is not killed and n.proc is not None
                and n.proc.poll() is None]  # fmt: skip
        deadline = time.monotonic() + timeout_s
        views: dict[int, set[int]] = {}
        while time.monotonic() < deadline:
            views = {n.port: {int(s[2][1]) for s in self._client(n).execute_command("CLUSTER", "SLOTS")} for n in live}
            if all(replica.port in v and killed.port not in v for v in views.values()):
                return replica
            time.sleep(0.05)
        raise RuntimeError(f"the nodes did not all name {replica.port} in place of {killed.port}: {views}")

    def flushall(self) -> None:
        """FLUSHALL on every primary, through the nodes' own clients (what a cluster client's
        `flushall(target_nodes="primaries")` does, without making one: a cluster client reads
        and parses COMMAND and CLUSTER SLOTS when made, about 50 ms)."""
        for node in [*self.nodes, *self.replicas]:
            if node.proc is None or node.proc.poll() is not None:
                continue
            client = self._client(node)
            if client.execute_command("ROLE")[0] in (b"master", "master"):
                client.flushall()

    def owner(self, slot: int) -> RedisServer:
        """The node that serves `slot` now."""
        alive = next(n for n in [*self.nodes, *self.replicas] if n.proc is not None and n.proc.poll() is None)
        for first, last, primary, *_ in self._client(alive).execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return next(n for n in [*self.nodes, *self.replicas] if n.port == int(primary[1]))
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
            self._client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def stop(self) -> None:
        while self._clients:
            self._clients.popitem()[1].close()
        for node in [*self.nodes, *self.replicas]:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()  # a start that failed or was interrupted leaves nothing running
            raise

    def _start(self, timeout_s: float) -> RedisReplicaPair:
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
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()  # a start that failed or was interrupted leaves nothing running
            raise

    def _start(self, timeout_s: float) -> RedisSentinelGroup:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.pair.start()
        exe = shutil.which("redis-sentinel")

        def launch(n: int) -> tuple[int, subprocess.Popen[bytes]]:
            port = _free_port()
            conf = Path(self._dir) / f"sentinel-{n}.conf"
            log = Path(self._dir) / f"sentinel-{n}.log"
            log.unlink(missing_ok=True)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self._dir}\n"
                f"logfile {log}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.pair.primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            cmd = [exe, str(conf)] if exe else [self.pair.primary.executable, str(conf), "--sentinel"]
            return port, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        for n in range(self.count):
            port, proc = launch(n)
            self.procs.append(proc)
            self.ports.append(port)
        deadline = time.monotonic() + timeout_s
        primary = self.pair.primary.port
        for n in range(self.count):  # each Sentinel answers, watches our primary and has found the replica
            retries = 5
            while True:
                if self.procs[n].poll() is not None:
                    log = Path(self._dir) / f"sentinel-{n}.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    if "Address already in use" in tail and retries:
                        # another process took the port after it was chosen: a fresh one
                        retries -= 1
                        self.ports[n], self.procs[n] = launch(n)
                        continue
                    raise RuntimeError(f"Sentinel {n} exited with {self.procs[n].returncode}: {tail}")
                # no retries: a port that accepts and never answers costs one timeout per look
                client = redis.Redis(
                    host="127.0.0.1",
                    port=self.ports[n],
                    socket_timeout=1,
                    decode_responses=True,
                    retry=Retry(NoBackoff(), 0),
                )
                try:
                    # the port could answer for another group's Sentinel (same service name):
                    # ours is the one that names our primary's port
                    if int(client.sentinel_get_master_addr_by_name(self.service)[1]) == primary and (
                        client.sentinel_slaves(self.service)
                    ):
                        break
                except (redis.exceptions.RedisError, TypeError):
                    pass  # not up yet, not ours, or not a Sentinel: look again (ours may exit, above)
                finally:
                    client.close()
                if time.monotonic() > deadline:
                    port = self.ports[n]
                    raise RuntimeError(f"Sentinel on port {port} did not find the replica within {timeout_s} s")
                time.sleep(0.05)
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
