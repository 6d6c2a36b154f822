"""State health you can see: metrics, expiry events, an audit trail, compliance, a health scan.

- `StateMetrics` listens to a SessionStore and a ResilientStore (never called from their
  code by hand): latency per operation in an HdrHistogram (microseconds to a minute, 2
  significant digits), session sizes, conflicts, reads per tier (store, cache, default),
  lifecycle events; `summary()` as a DataFrame, `prometheus()` as exposition text from a
  prometheus-client registry whose histogram buckets start at 50 us.
- `ExpiryWatcher`: expiry events from Redis keyspace notifications (real servers only).
- `AuditLog`: who read or wrote which session, in a Redis Stream capped by length and age.
- `health_scan`: a read-only scan of a live Redis: sizes, biggest sessions, keys without
  TTL, retention and residency findings.

Recording goes to HdrHistogram once per operation; the Prometheus histogram is computed
from it when scraped, so an operation pays for one record, not two.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import re
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from hdrh.histogram import HdrHistogram

from ._optional import require
from .errors import AccessDenied
from .keys import key_pattern, session_id_of, session_keys
from .store import StoreListener

__all__ = [
    "StateMetrics",
    "LATENCY_BUCKETS_S",
    "SIZE_BUCKETS_BYTES",
    "ExpiryWatcher",
    "AuditLog",
    "actor",
    "health_scan",
    "HealthReport",
    "recommend",
    "demo_workload",
    "prometheus_rules",
    "grafana_dashboard",
    "EXPORTED_METRICS",
]

#: Prometheus buckets for store latency: from 50 us (prometheus-client's defaults start at
#: 5 ms, coarser than a whole Redis round trip on a LAN) to 10 s.
LATENCY_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
SIZE_BUCKETS_BYTES = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)

_LATENCY_MAX_US = 60_000_000
_SIZE_MAX = 1 << 34

EVENT_KINDS = (
    "created",
    "appended",
    "duplicate",
    "evicted",
    "summarised",
    "fold_failed",
    "rejected",
    "conflict",
    "state_updated",
    "migrated",
    "deleted",
    "expired",
    "degraded",
    "recovered",
    "fallback",
    "fallback_failed",
    "buffered",
    "replayed",
    "replay_rejected",
    "dropped",
    "overflow",
    "breaker",
)


class StateMetrics(StoreListener):
    """Metrics of session state, fed by listener hooks.

    Attach it with `SessionStore(..., metrics=m)` and `ResilientStore(..., listeners=[m])`.
    `timeline_max` bounds the in-memory list of recent lifecycle events.
    """

    #: Raw samples wait in a list and are folded into the HdrHistograms in batches: one
    #: record_value per distinct value instead of one per operation (about 1 us each).
    FOLD_EVERY = 2048

    def __init__(self, timeline_max: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._latency_hist: dict[str, HdrHistogram] = {}
        self._latency_raw: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = defaultdict(float)
        self._errors: dict[str, int] = defaultdict(int)
        self._sizes_hist = HdrHistogram(1, _SIZE_MAX, 2)
        self._sizes_raw: list[int] = []
        self._size_sum = 0
        self.events: dict[str, int] = defaultdict(int)
        self.reads: dict[str, int] = defaultdict(int)
        self.timeline: deque[tuple[float, str, str]] = deque(maxlen=timeline_max)
        self._registry: Any = None

    # -- listener hooks --------------------------------------------------------------------

    def on_operation(self, op: str, session_id: str, seconds: float, error: BaseException | None) -> None:
        raw = self._latency_raw.get(op)
        if raw is None:
            with self._lock:
                raw = self._latency_raw.setdefault(op, [])
                self._latency_hist.setdefault(op, HdrHistogram(1, _LATENCY_MAX_US, 2))
        raw.append(int(seconds * 1e6) or 1)
        if len(raw) >= self.FOLD_EVERY:
            self._fold()
        self._latency_sum[op] += seconds
        if error is not None:
            self._errors[op] += 1
        elif op == "load_context":
            self.reads["store"] += 1

    def on_event(self, kind: str, session_id: str, info: Mapping[str, Any]) -> None:
        self.events[kind] += 1
        if kind == "appended":
            total = int(info.get("total", 0))
            if total > 0:
                self._sizes_raw.append(total)
                self._size_sum += total
                if len(self._sizes_raw) >= self.FOLD_EVERY:
                    self._fold()
        elif kind == "fallback":
            self.reads[str(info.get("source", "default"))] += 1
        elif kind == "evicted":
            self.events["evicted_turns"] += int(info.get("turns", 0))
        if kind not in ("appended", "state_updated", "duplicate"):  # the frequent ones stay counts only
            self.timeline.append((time.time(), kind, session_id))

    # -- reading the numbers ------------------------------------------------------------------

    def _fold(self) -> None:
        """Move buffered samples into the histograms (each distinct value recorded once)."""
        with self._lock:
            batches = [(self._latency_hist[op], raw, _LATENCY_MAX_US) for op, raw in self._latency_raw.items() if raw]
            batches = [(h, list(raw), cap) for h, raw, cap in batches]
            for op in self._latency_raw:
                self._latency_raw[op] = []
            if self._sizes_raw:
                batches.append((self._sizes_hist, self._sizes_raw, _SIZE_MAX))
                self._sizes_raw = []
            for hist, raw, cap in batches:
                for value, count in Counter(min(v, cap) for v in raw).items():
                    hist.record_value(value, count)

    @property
    def _latency(self) -> dict[str, HdrHistogram]:
        self._fold()
        return self._latency_hist

    @property
    def _sizes(self) -> HdrHistogram:
        self._fold()
        return self._sizes_hist

    def percentile_us(self, op: str, q: float) -> float:
        """The q-th percentile latency of `op` in microseconds (2 significant digits)."""
        hist = self._latency.get(op)
        return float(hist.get_value_at_percentile(q)) if hist and hist.get_total_count() else float("nan")

    @property
    def conflict_rate(self) -> float:
        """Version conflicts per compare-and-set attempt."""
        attempts = self.events["state_updated"] + self.events["conflict"]
        return self.events["conflict"] / attempts if attempts else 0.0

    def hit_rates(self) -> dict[str, float]:
        """Share of context reads served by each tier: store, cache (last known), default."""
        total = sum(self.reads.values())
        return {tier: self.reads.get(tier, 0) / total if total else 0.0 for tier in ("store", "cache", "default")}

    def summary(self) -> Any:
        """Per operation: calls, errors, p50/p95/p99/max latency in microseconds (a DataFrame);
        `percentile_us` gives the same numbers without pandas."""
        pd = require("pandas", what="StateMetrics.summary()")

        rows = []
        for op, hist in sorted(self._latency.items()):
            n = hist.get_total_count()
            rows.append(
                {
                    "operation": op,
                    "calls": n,
                    "errors": self._errors.get(op, 0),
                    "p50_us": hist.get_value_at_percentile(50),
                    "p95_us": hist.get_value_at_percentile(95),
                    "p99_us": hist.get_value_at_percentile(99),
                    "max_us": hist.get_max_value(),
                }
            )
        return pd.DataFrame(rows).set_index("operation") if rows else pd.DataFrame()

    def size_summary(self) -> dict[str, float]:
        """Session sizes seen on append (bytes): count and percentiles."""
        h = self._sizes
        n = h.get_total_count()
        return {
            "sessions_sampled": n,
            **{f"p{q}": float(h.get_value_at_percentile(q)) if n else 0.0 for q in (50, 95, 99)},
            "max": float(h.get_max_value()) if n else 0.0,
        }

    def operations(self) -> list[str]:
        """The operations seen so far."""
        return sorted(self._latency)

    def size_histogram(self) -> list[tuple[float, int]]:
        """(bytes, count) pairs of the session sizes recorded on append, for plotting."""
        return [(it.value_iterated_to, it.count_at_value_iterated_to) for it in self._sizes.get_recorded_iterator()]

    def latency_histogram(self, op: str) -> list[tuple[float, int]]:
        """(microseconds, count) pairs of the recorded latencies of `op`, for plotting."""
        hist = self._latency.get(op)
        if not hist:
            return []
        return [(it.value_iterated_to, it.count_at_value_iterated_to) for it in hist.get_recorded_iterator()]

    # -- Prometheus -----------------------------------------------------------------------------

    @property
    def registry(self) -> Any:
        """A prometheus-client CollectorRegistry with these metrics, e.g. for
        `prometheus_client.start_http_server(9108, registry=metrics.registry)`."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            self._registry.register(_Collector(self))
        return self._registry

    def prometheus(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def _cumulative(self, hist: HdrHistogram, bounds: tuple[float, ...], scale: float) -> list[tuple[str, int]]:
        counts = [(it.value_iterated_to, it.count_at_value_iterated_to) for it in hist.get_recorded_iterator()]
        out, i, running = [], 0, 0
        for bound in bounds:
            limit = bound * scale
            while i < len(counts) and hist.get_lowest_equivalent_value(counts[i][0]) <= limit:
                running += counts[i][1]
                i += 1
            out.append((_bound_label(bound), running))
        out.append(("+Inf", hist.get_total_count()))
        return out


def _bound_label(bound: float) -> str:
    return repr(float(bound))


class _Collector:
    """Builds the Prometheus families from StateMetrics when scraped."""

    def __init__(self, metrics: StateMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.m
        m._fold()
        latency = HistogramMetricFamily(
            "statekit_operation_duration_seconds", "Latency of session-store operations.", labels=["operation"]
        )
        errors = CounterMetricFamily("statekit_operation_errors", "Operations that failed.", labels=["operation"])
        for op, hist in sorted(m._latency.items()):
            latency.add_metric([op], m._cumulative(hist, LATENCY_BUCKETS_S, 1e6), m._latency_sum[op])
            errors.add_metric([op], m._errors.get(op, 0))
        yield latency
        yield errors
        sizes = HistogramMetricFamily("statekit_session_bytes", "Session sizes after each append.")
        sizes.add_metric([], m._cumulative(m._sizes, SIZE_BUCKETS_BYTES, 1), float(m._size_sum))
        yield sizes
        events = CounterMetricFamily("statekit_lifecycle_events", "Lifecycle events by kind.", labels=["kind"])
        for kind in sorted(set(EVENT_KINDS) | set(m.events)):
            events.add_metric([kind], m.events.get(kind, 0))
        yield events
        reads = CounterMetricFamily(
            "statekit_context_reads", "Context reads by the tier that served them.", labels=["tier"]
        )
        for tier in ("store", "cache", "default"):
            reads.add_metric([tier], m.reads.get(tier, 0))
        yield reads
        rate = GaugeMetricFamily("statekit_conflict_ratio", "Version conflicts per compare-and-set attempt.")
        rate.add_metric([], m.conflict_rate)
        yield rate


# -- expiry events ---------------------------------------------------------------------------


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
        from .backends import backend_kind
        from .errors import NeedsRealRedis

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
        from .walk import Walker

        live = sum(len(batch.keys) for batch in Walker(self.client, key_pattern(self.namespace, "meta"), 1000))
        created, deleted, expired = metrics.events["created"], metrics.events["deleted"], len(self.expired)
        return {
            "created": created,
            "deleted": deleted,
            "expired": expired,
            "live": live,
            "unaccounted": created - deleted - expired - live,
        }


# -- audit trail -----------------------------------------------------------------------------

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


# -- the health scan -------------------------------------------------------------------------


def _percentile(ordered: list[int], q: float) -> float:
    """The q-th percentile of sorted values, interpolated linearly between the two nearest
    (numpy's default method), without numpy: the runtime install does not carry it."""
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


@dataclass
class HealthReport:
    """What a read-only scan of a live Redis found."""

    namespace: str
    sessions: int = 0
    keys_without_ttl: list[str] = field(default_factory=list)
    size_percentiles: dict[str, float] = field(default_factory=dict)
    biggest: list[tuple[str, int]] = field(default_factory=list)
    sampled_memory_bytes: dict[str, float] = field(default_factory=dict)
    retention_violations: list[str] = field(default_factory=list)
    residency_violations: list[tuple[str, str]] = field(default_factory=list)
    audit_retention_violation: bool = False
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)
    #: What the scan could not do (not problems of the data): no MEMORY USAGE on fakeredis.
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def health_scan(
    client: Any,
    namespace: str,
    *,
    retention_days: float | None = None,
    allowed_regions: list[str] | None = None,
    audit_stream: str | None = None,
    sample_every: int = 100,
    top: int = 10,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
    on_node: Callable[[str], None] | None = None,
) -> HealthReport:
    """Scan a live Redis, read-only: sessions, sizes, keys without TTL, compliance.

    SCAN over every key of the namespace in pipelined batches (TYPE-free: PTTL for each
    key; HMGET of size, creation time and region for each session's meta), MEMORY USAGE on
    one session in `sample_every` (a real server only; skipped on fakeredis, which lacks
    it), sizes from the store's own byte counts. Retention: sessions created more than
    `retention_days` ago, and audit entries older than that. Residency: sessions tagged with
    a region outside `allowed_regions`. Nothing is written.
    """
    from .backends import backend_kind

    if sample_every < 1:
        raise ValueError(f"sample_every must be >= 1, got {sample_every!r}")
    report = HealthReport(namespace)
    start = time.perf_counter()
    sizes: list[int] = []
    biggest: list[tuple[int, str]] = []
    memory: list[int] = []
    real = backend_kind(client) != "fakeredis"
    now_ms = time.time() * 1000
    cutoff_ms = now_ms - retention_days * 86_400_000 if retention_days else None
    from .walk import Walker

    walker = Walker(client, key_pattern(namespace), batch, on_node=on_node)
    for node_batch in walker:  # every primary of a cluster, in turn
        keys = node_batch.keys
        metas = [(k, sid) for k in keys if (sid := session_id_of(k, namespace, "meta")) is not None]
        replies = walker.execute(
            node_batch.node, [("PTTL", k) for k in keys] + [("HMGET", k, "b", "c", "rg") for k, _ in metas]
        )
        for k, ttl in zip(keys, replies[: len(keys)], strict=True):
            if ttl == -1:
                report.keys_without_ttl.append(k)
        sample = []
        for (_, sid), fields in zip(metas, replies[len(keys) :], strict=True):
            if isinstance(fields, Exception):  # the key holds another type: counted, not read
                fields = (None, None, None)
            b, c, rg = fields
            report.sessions += 1
            size = int(b or 0)
            sizes.append(size)
            biggest.append((size, sid))
            if cutoff_ms is not None and c is not None and int(c) < cutoff_ms:
                report.retention_violations.append(sid)
            if allowed_regions is not None and rg is not None:
                region = rg.decode() if isinstance(rg, bytes) else rg
                if region not in allowed_regions:
                    report.residency_violations.append((sid, region))
            if real and (report.sessions - 1) % sample_every == 0:
                sample.append(sid)
        if sample:
            commands = [
                ("MEMORY", "USAGE", key, "SAMPLES", 0) for sid in sample for key in session_keys(namespace, sid)
            ]
            usages = walker.execute(node_batch.node, commands)
            for i in range(len(sample)):
                memory.append(sum(u for u in usages[4 * i : 4 * i + 4] if isinstance(u, int)))
        if len(biggest) > 4 * top:
            biggest = sorted(biggest, reverse=True)[:top]
        if progress is not None:
            progress(len(keys))
    if sizes:
        ordered = sorted(sizes)
        report.size_percentiles = {f"p{q}": _percentile(ordered, q) for q in (50, 95, 99)} | {"max": float(ordered[-1])}
    report.biggest = [(sid, size) for size, sid in sorted(biggest, reverse=True)[:top]]
    if memory:
        report.sampled_memory_bytes = {
            "sessions_sampled": len(memory),
            "mean": sum(memory) / len(memory),
            "p99": _percentile(sorted(memory), 99),
        }
    if audit_stream and cutoff_ms is not None:
        first = client.xrange(audit_stream, count=1)
        if first:
            entry_id = first[0][0].decode() if isinstance(first[0][0], bytes) else first[0][0]
            report.audit_retention_violation = int(entry_id.split("-")[0]) < cutoff_ms
    report.seconds = time.perf_counter() - start
    if report.keys_without_ttl:
        report.findings.append(f"{len(report.keys_without_ttl)} keys have no TTL: they will never expire")
    if report.retention_violations:
        report.findings.append(
            f"{len(report.retention_violations)} sessions are older than the {retention_days:g}-day retention period"
        )
    if report.residency_violations:
        report.findings.append(
            f"{len(report.residency_violations)} sessions are tagged with a region outside {allowed_regions}"
        )
    if report.audit_retention_violation:
        report.findings.append(f"the audit stream holds entries older than {retention_days:g} days")
    if not real:
        report.notes.append("memory was not sampled: fakeredis has no MEMORY USAGE (sizes are the store's counts)")
    return report


# -- decide: dashboards and alerts for a profile ----------------------------------------------


def recommend(profile: Any, max_bytes: int, timeout_ms: float) -> dict[str, Any]:
    """The dashboards and alerts a profile needs, with thresholds from its latency budget and size cap."""
    budget = profile.latency_budget_ms
    retention = profile.compliance.retention_days
    alerts = [
        {
            "alert": "state latency over budget",
            "expr": "histogram_quantile(0.99, sum by (le, operation) "
            f"(rate(statekit_operation_duration_seconds_bucket[5m]))) > {budget / 2 / 1000:g}",
            "for": "5m",
            "why": f"p99 of one store call above half the {budget:g} ms state budget: a request makes two",
        },
        {
            "alert": "store degraded",
            "expr": 'increase(statekit_lifecycle_events_total{kind="degraded"}[5m]) > 0',
            "for": "0m",
            "why": "the resilient store is serving from cache or defaults",
        },
        {
            "alert": "reads served from fallbacks",
            "expr": 'sum(rate(statekit_context_reads_total{tier!="store"}[5m])) '
            "/ sum(rate(statekit_context_reads_total[5m])) > 0.05",
            "for": "5m",
            "why": "more than 5% of contexts are not the real thing",
        },
        {
            "alert": "sessions near the cap",
            "expr": f"histogram_quantile(0.99, rate(statekit_session_bytes_bucket[15m])) > {int(0.8 * max_bytes)}",
            "for": "15m",
            "why": f"p99 session size above 80% of the {max_bytes:,}-byte cap: rejections are next",
        },
        {
            "alert": "updates rejected by the cap",
            "expr": 'increase(statekit_lifecycle_events_total{kind="rejected"}[15m]) > 0',
            "for": "0m",
            "why": "a caller is writing turns or state larger than the policy allows",
        },
        {
            "alert": "conflict storm",
            "expr": "statekit_conflict_ratio > 0.1",
            "for": "5m",
            "why": "one compare-and-set attempt in ten loses: writers are fighting over sessions (route them sticky)",
        },
        {
            "alert": "write buffer overflowing",
            "expr": 'increase(statekit_lifecycle_events_total{kind="overflow"}[5m]) > 0',
            "for": "0m",
            "why": "turns are being lost during an outage: the buffer is smaller than the outage",
        },
        {
            "alert": "keys without TTL",
            "expr": "statekit health --json: keys_without_ttl > 0",
            "source": "statekit health --fail-on findings",
            "for": "daily",
            "why": "a key that never expires breaks the memory model and the retention promise",
        },
        {
            "alert": "retention or residency violation",
            "expr": "statekit health --json: findings",
            "source": "statekit health --fail-on findings",
            "for": "daily",
            "why": f"sessions kept beyond {retention} days, or outside {profile.compliance.allowed_regions}",
        },
    ]
    latency = "histogram_quantile({q}, sum by (le, operation) (rate(statekit_operation_duration_seconds_bucket[5m])))"
    sizes = "histogram_quantile({q}, sum by (le) (rate(statekit_session_bytes_bucket[15m])))"
    dashboards = [
        {
            "panel": "store latency p50/p95/p99 by operation",
            "metric": "statekit_operation_duration_seconds",
            "note": f"reference lines at the {timeout_ms:g} ms timeout and the {budget:g} ms budget",
            "exprs": [latency.format(q=q) for q in (0.5, 0.95, 0.99)],
            "unit": "s",
            "thresholds": [timeout_ms / 1000, budget / 1000],
        },
        {
            "panel": "session size distribution",
            "metric": "statekit_session_bytes",
            "note": f"reference line at the {max_bytes:,}-byte cap",
            "exprs": [sizes.format(q=q) for q in (0.5, 0.99)],
            "unit": "bytes",
            "thresholds": [max_bytes],
        },
        {
            "panel": "context reads by tier",
            "metric": "statekit_context_reads_total",
            "note": "store, cache, default",
            "exprs": ["sum by (tier) (rate(statekit_context_reads_total[5m]))"],
            "unit": "reqps",
            "thresholds": [],
        },
        {
            "panel": "lifecycle events",
            "metric": "statekit_lifecycle_events_total",
            "note": "created, evicted, summarised, rejected, expired, migrated, degraded, recovered",
            "exprs": ["sum by (kind) (increase(statekit_lifecycle_events_total[5m]))"],
            "unit": "short",
            "thresholds": [],
        },
        {
            "panel": "conflict ratio",
            "metric": "statekit_conflict_ratio",
            "note": "retry storms show here first",
            "exprs": ["statekit_conflict_ratio"],
            "unit": "percentunit",
            "thresholds": [0.1],
        },
        {
            "panel": "Redis memory against maxmemory",
            "metric": "redis_memory_used_bytes (redis_exporter)",
            "note": "compared with statekit's capacity plan",
            "exprs": ["redis_memory_used_bytes", "redis_memory_max_bytes"],
            "unit": "bytes",
            "thresholds": [],
        },
    ]
    return {"alerts": alerts, "dashboards": dashboards}


def _rule_name(alert: str) -> str:
    return "Statekit" + "".join(word.capitalize() for word in re.findall(r"[A-Za-z0-9]+", alert))


def prometheus_rules(recommendation: dict[str, Any], service: str) -> dict[str, Any]:
    """The review's Prometheus alerts as a rules file (a dict to dump as YAML), for
    `rule_files:` in prometheus.yml; alerts that are scheduled `statekit health` checks are
    left to that command."""
    rules = [
        {
            "alert": _rule_name(a["alert"]),
            "expr": a["expr"],
            "for": a["for"],
            "labels": {"severity": "page" if a["for"] == "0m" else "ticket", "service": service},
            "annotations": {"summary": f"{service}: {a['alert']}", "description": a["why"]},
        }
        for a in recommendation["alerts"]
        if "source" not in a
    ]
    return {"groups": [{"name": f"statekit-{service}", "rules": rules}]}


def grafana_dashboard(recommendation: dict[str, Any], service: str) -> dict[str, Any]:
    """The review's dashboard as Grafana dashboard JSON (import it, or provision it), one
    time-series panel per recommended panel, with the review's thresholds as red lines."""
    panels = []
    for i, d in enumerate(recommendation["dashboards"]):
        steps = [{"color": "green", "value": None}] + [{"color": "red", "value": t} for t in d["thresholds"]]
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": d["panel"],
                "description": d["note"],
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {
                    "defaults": {
                        "unit": d["unit"],
                        "thresholds": {"mode": "absolute", "steps": steps},
                        "custom": {"thresholdsStyle": {"mode": "line" if d["thresholds"] else "off"}},
                    },
                    "overrides": [],
                },
                "targets": [{"refId": chr(ord("A") + j), "expr": expr} for j, expr in enumerate(d["exprs"])],
            }
        )
    return {
        "title": f"statekit: {service}",
        "uid": f"statekit-{re.sub(r'[^a-z0-9-]', '-', service.lower())}"[:40],
        "tags": ["statekit"],
        "timezone": "browser",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


#: The metric families StateMetrics exports, as Prometheus names them in the text format.
EXPORTED_METRICS = (
    "statekit_operation_duration_seconds_bucket",
    "statekit_operation_duration_seconds_sum",
    "statekit_operation_duration_seconds_count",
    "statekit_operation_errors_total",
    "statekit_session_bytes_bucket",
    "statekit_lifecycle_events_total",
    "statekit_context_reads_total",
    "statekit_conflict_ratio",
)


# -- a workload for the workshop ----------------------------------------------------------------


def demo_workload(
    redis_url: str = "fakeredis://",
    *,
    sessions: int = 40,
    turns: int = 20,
    storm_writers: int = 8,
    storm_updates: int = 30,
) -> StateMetrics:
    """Drive a store so that every panel of the dashboard has something to show.

    Phases, each marked in the metrics' timeline: normal traffic (appends and loads through
    a ResilientStore), a conflict storm (writers updating one session at once), oversized
    writes rejected by the cap, and a short outage (an injected hang on fakeredis, CLIENT
    PAUSE on a real server) that the resilient store rides out.
    """
    from .lifecycle import LifecyclePolicy
    from .resilience import ResilientStore
    from .store import SessionStore
    from .testing import OutageDrill

    metrics = StateMetrics()
    drill = OutageDrill(redis_url)
    client = drill.client()
    policy = LifecyclePolicy(window_turns=8, max_bytes=20_000, summary_max_bytes=1_000, ttl_seconds=600)
    store = SessionStore(client, policy, namespace="demo-obs", metrics=metrics)
    rs = ResilientStore(store, timeout_ms=50, fail_max=3, reset_timeout_s=0.5, listeners=[metrics])

    def mark(phase: str) -> None:
        metrics.timeline.append((time.time(), f"phase: {phase}", ""))

    mark("normal traffic")
    rng = random.Random(0)
    for t in range(turns):
        for s in range(sessions):
            sid = f"s-{s}"
            rs.load_context(sid)
            size = int(rng.lognormvariate(6, 0.7))
            rs.append_turn(sid, {"role": "user" if t % 2 == 0 else "assistant", "content": "x" * size})
    mark("conflict storm")
    contender = SessionStore(
        drill.client(),
        policy,
        namespace="demo-obs",
        metrics=metrics,
        max_update_retries=200,
    )

    def writer() -> None:
        for _ in range(storm_updates):
            contender.update_state("hot", lambda st: {**st, "n": st.get("n", 0) + 1})

    threads = [threading.Thread(target=writer) for _ in range(storm_writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    mark("oversized writes")
    for s in range(5):
        with contextlib.suppress(Exception):
            rs.append_turn(f"s-{s}", {"role": "user", "content": "y" * 30_000})
    mark("outage")
    with drill.outage(1.0):
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # traffic keeps coming through the outage, every 20 ms
            rs.load_context("s-1")
            rs.append_turn("s-1", {"role": "user", "content": "during the outage"})
            time.sleep(0.02)
    rs.drain(timeout_s=10)  # until the breaker's probe finds the store and the buffer is replayed
    mark("recovered")
    for s in range(sessions):
        rs.load_context(f"s-{s}")
    for s in range(sessions):
        store.delete(f"s-{s}")
    store.delete("hot")
    return metrics
