"""`StateMetrics`: session state's health as numbers, fed by a store's listener hooks.

It listens to a SessionStore and a ResilientStore (never called from their code by hand):
latency per operation in an HdrHistogram (microseconds to a minute, 2 significant digits),
session sizes, conflicts, reads per tier (store, cache, default), lifecycle events;
`summary()` as a DataFrame, `prometheus()` as exposition text from a prometheus-client
registry whose histogram buckets start at 50 us. Recording goes to HdrHistogram once per
operation; the Prometheus histogram is computed from it when scraped, so an operation pays
for one record, not two.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from statekit._optional import require
from statekit.store.core import StoreListener

__all__ = [
    "StateMetrics",
    "LATENCY_BUCKETS_S",
    "SIZE_BUCKETS_BYTES",
    "CAP_FRACTION_BUCKETS",
    "EVENT_KINDS",
    "bucket_label",
    "percentile",
]

#: Prometheus buckets for store latency: from 50 us (prometheus-client's defaults start at
#: 5 ms, coarser than a whole Redis round trip on a LAN) to 10 s, six to a decade (1, 1.5, 2,
#: 3, 5, 7), so an alert's threshold sits on a bucket bound near the timeout it guards and is
#: read without `histogram_quantile`'s interpolation inside a wide bucket.
LATENCY_BUCKETS_S = tuple(
    float(f"{m}e{e}") for e in range(-5, 1) for m in (1, 1.5, 2, 3, 5, 7) if 5e-5 <= float(f"{m}e{e}") <= 7
) + (10.0,)
#: Prometheus buckets for session sizes: powers of two from 256 bytes to 8 MiB.
SIZE_BUCKETS_BYTES = tuple(1 << k for k in range(8, 24))
#: Prometheus buckets for a session's size as a fraction of its policy's byte cap, observed on
#: each append: what "sessions near the cap" alerts on, whatever the cap is.
CAP_FRACTION_BUCKETS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

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
        # appends per cap-fraction bucket (the last: above the cap), and their sum
        self._cap_counts = [0] * (len(CAP_FRACTION_BUCKETS) + 1)
        self._cap_sum = 0.0
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
                cap = int(info.get("cap") or 0)
                if cap > 0:
                    fraction = total / cap
                    self._cap_counts[bisect.bisect_left(CAP_FRACTION_BUCKETS, fraction)] += 1
                    self._cap_sum += fraction
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
        return _recorded(self._sizes)

    def latency_histogram(self, op: str) -> list[tuple[float, int]]:
        """(microseconds, count) pairs of the recorded latencies of `op`, for plotting."""
        hist = self._latency.get(op)
        if not hist:
            return []
        return _recorded(hist)

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
        """Prometheus' cumulative buckets: the count of each bound, every value whose bucket
        starts at or below it (bounds ascending)."""
        counts = hist.counts[: hist.counts_len]
        out, i, running = [], 0, 0
        for bound in bounds:
            # HdrHistogram's buckets start on whole values: the last one starting at or below
            # `limit` is the bucket that holds floor(limit)
            limit = math.floor(bound * scale)
            last = min(hist.get_counts_array_index(limit), len(counts) - 1) if limit >= 0 else -1
            while i <= last:
                running += counts[i]
                i += 1
            out.append((bucket_label(bound), running))
        out.append(("+Inf", hist.get_total_count()))
        return out


def _recorded(hist: HdrHistogram) -> list[tuple[int, int]]:
    """(highest equivalent value, count) of each bucket that holds a value, lowest first: what
    hdrh's recorded iterator yields, read from the counts array. (The iterator steps through
    every bucket in Python objects: 30 ms a histogram, on each scrape and each plot.)"""
    counts = hist.counts[: hist.counts_len]
    value = hist.get_value_from_index
    return [(hist.get_highest_equivalent_value(value(i)), c) for i, c in enumerate(counts) if c]


def bucket_label(bound: float) -> str:
    """The `le` label of a histogram bucket bound as StateMetrics exposes it (and as
    Prometheus 3 normalises it): Python's shortest float repr, "0.0015", "1.0", "5e-05"."""
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
        near = HistogramMetricFamily(
            "statekit_session_cap_fraction", "Session size after each append, as a fraction of the policy's cap."
        )
        running, buckets = 0, []
        for bound, count in zip(CAP_FRACTION_BUCKETS, m._cap_counts, strict=False):
            running += count
            buckets.append((bucket_label(bound), running))
        buckets.append(("+Inf", sum(m._cap_counts)))
        near.add_metric([], buckets, m._cap_sum)
        yield near
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


# -- audit trail -----------------------------------------------------------------------------


# -- the health scan -------------------------------------------------------------------------


def percentile(ordered: list[int], q: float) -> float:
    """The q-th percentile of sorted values, interpolated linearly between the two nearest
    (numpy's default method), without numpy: the runtime install does not carry it."""
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


# -- decide: dashboards and alerts for a profile ----------------------------------------------


# -- a workload for the workshop ----------------------------------------------------------------
