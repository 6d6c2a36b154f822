"""Sessions that Redis expired, heard from keyspace notifications (`ExpiryWatcher`)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis

from statekit.errors import AccessDenied
from statekit.keys import key_pattern, session_id_of
from statekit.observe.metrics import StateMetrics


class ExpiryWatcher:
    """Counts sessions expired by Redis, from keyspace notifications.

    Best effort, as Redis documents it: notifications are fire-and-forget (a disconnected
    subscriber misses them) and an expired event is sent when Redis actually removes the key
    (on access or by its active expiry cycle), not at the instant the TTL runs out. The
    watcher enables `notify-keyspace-events Ex` on the server; fakeredis sends no expiry
    events, so it needs a real server.

    On a Redis Cluster notifications are per node: the watcher subscribes on every primary,
    and every `refresh_s` reads the slot map again and subscribes on primaries it does not
    watch yet, so after a failover it follows the promoted replica (events of a node between
    its death and the next refresh are missed, as with any subscriber).
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        metrics: StateMetrics | None = None,
        db: int = 0,
        *,
        refresh_s: float = 1.0,
    ) -> None:
        from statekit.backends import backend_kind
        from statekit.errors import NeedsRealRedis

        if backend_kind(client) == "fakeredis":
            raise NeedsRealRedis("expiry events need a real Redis: fakeredis sends no keyspace notifications")
        self.client, self.namespace, self.metrics, self.db = client, namespace, metrics, db
        self.cluster = backend_kind(client) == "cluster"
        self.refresh_s = refresh_s
        self.expired: list[str] = []
        self._changed = threading.Condition()
        self._watched: dict[str, tuple[Any, Any, Any]] = {}  # node name -> (pubsub, its thread, client)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None

    @property
    def nodes(self) -> list[str]:
        """The nodes whose notifications are being received."""
        with self._lock:
            return sorted(self._watched)

    def _primaries(self) -> dict[str, Any]:
        """Clients of the primaries not watched yet (all of them at start)."""
        if not self.cluster:
            return {} if "server" in self.nodes else {"server": self.client}
        with contextlib.suppress(Exception):  # a cluster mid-failover may not answer: next round
            self.client.nodes_manager.initialize()
        # a client of its own per node: re-reading the slot map may close the cluster client's
        # node connections, and a subscription on one of them would miss events until resubscribed
        import redis

        kwargs = self.client.nodes_manager.connection_kwargs
        own = {k: kwargs[k] for k in ("username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                                      "ssl_cert_reqs", "socket_connect_timeout") if k in kwargs}  # fmt: skip
        watched = self.nodes
        return {
            n.name: redis.Redis(host=n.host, port=n.port, **own)
            for n in self.client.get_primaries()
            if n.name not in watched
        }

    def _handler(self, message: dict[str, Any]) -> None:
        session_id = session_id_of(message["data"], self.namespace, "meta")
        if session_id is not None:
            with self._changed:
                self.expired.append(session_id)
                self._changed.notify_all()
            if self.metrics is not None:
                self.metrics.on_event("expired", session_id, {})

    def _subscribe(self, name: str, node: Any) -> None:
        flags = node.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        flags = flags.decode() if isinstance(flags, bytes) else flags
        node.config_set("notify-keyspace-events", "".join(sorted(set(flags) | {"E", "x"})))
        pubsub = node.pubsub(ignore_subscribe_messages=True)
        channel = f"__keyevent@{self.db}__:expired"
        pubsub.psubscribe(**{channel: self._handler})
        try:  # the reply to PSUBSCRIBE: a refusal is raised here, not lost in the listening thread
            pubsub.get_message(timeout=5)
        except redis.exceptions.NoPermissionError as exc:
            pubsub.close()
            raise AccessDenied(
                f"the expiry watcher may not subscribe to {channel} on {name}: {exc}; add &{channel} to the "
                "user (Redis matches the pattern literally; statekit.acl.setuser prints the full line)"
            ) from exc

        def lost(exc: BaseException, pubsub: Any, thread: Any) -> None:  # the node went away
            thread.stop()
            with self._lock:
                self._watched.pop(name, None)

        thread = pubsub.run_in_thread(sleep_time=0.01, daemon=True, exception_handler=lost)
        with self._lock:
            self._watched[name] = (pubsub, thread, node)  # the node's client lives as long as its pubsub
        with self._changed:
            self._changed.notify_all()

    def wait_for_node(self, name: str, timeout_s: float = 30.0) -> bool:
        """Wait until the watcher receives the notifications of node `name` (host:port); False
        if not within `timeout_s`."""
        with self._changed:
            return self._changed.wait_for(lambda: name in self.nodes, timeout=timeout_s)

    def _follow(self) -> None:
        while not self._stopping.wait(self.refresh_s):
            for name, node in self._primaries().items():
                with contextlib.suppress(Exception):  # not reachable yet: the next round
                    self._subscribe(name, node)

    def start(self) -> ExpiryWatcher:
        for name, node in self._primaries().items():
            self._subscribe(name, node)
        if self.cluster:
            self._follower = threading.Thread(target=self._follow, name="statekit-expiry-follow", daemon=True)
            self._follower.start()
        return self

    def wait_for(self, sessions: int, timeout_s: float = 10.0) -> bool:
        """Wait until `sessions` expiries have been notified; False if not within `timeout_s`."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.expired) >= sessions, timeout=timeout_s)

    def stop(self) -> None:
        self._stopping.set()
        if self._follower is not None:
            self._follower.join(timeout=5)
        with self._lock:
            watched, self._watched = list(self._watched.values()), {}
        for pubsub, thread, _ in watched:
            thread.stop()
            thread.join(timeout=2)
            pubsub.close()

    def __enter__(self) -> ExpiryWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reconcile(self, metrics: StateMetrics) -> dict[str, int]:
        """Sessions the store created, against those deleted, expired (as notified) and still live.

        `unaccounted` is what neither the store's counts nor the notifications explain:
        notifications missed while no watcher ran, or keys not yet removed by Redis.
        """
        from statekit.walk import Walker

        live = sum(len(batch.keys) for batch in Walker(self.client, key_pattern(self.namespace, "meta"), 1000))
        created, deleted, expired = metrics.events["created"], metrics.events["deleted"], len(self.expired)
        return {
            "created": created,
            "deleted": deleted,
            "expired": expired,
            "live": live,
            "unaccounted": created - deleted - expired - live,
        }
