"""Lesson 5: state health you can see.

- `StateMetrics` (`metrics`): latency, sizes, conflicts, reads per tier and lifecycle
  events, fed by a store's listener hooks; Prometheus exposition.
- `ExpiryWatcher` (`expiry`): sessions Redis expired, from keyspace notifications (real
  servers only).
- `AuditLog` and `actor` (`audit`): who read or wrote which session, in a Redis Stream.
- `health_scan` (`health`): a read-only scan of a live namespace.

What to watch for a profile (alerts, dashboards) is a decision: `statekit.decide.observability`.
"""

from statekit.observe.audit import AuditLog, actor
from statekit.observe.expiry import ExpiryWatcher
from statekit.observe.health import HealthReport, health_scan
from statekit.observe.metrics import (
    CAP_FRACTION_BUCKETS,
    EVENT_KINDS,
    LATENCY_BUCKETS_S,
    SIZE_BUCKETS_BYTES,
    StateMetrics,
    bucket_label,
    percentile,
)

__all__ = [
    "StateMetrics",
    "LATENCY_BUCKETS_S",
    "SIZE_BUCKETS_BYTES",
    "CAP_FRACTION_BUCKETS",
    "bucket_label",
    "EVENT_KINDS",
    "percentile",
    "ExpiryWatcher",
    "AuditLog",
    "actor",
    "HealthReport",
    "health_scan",
]
