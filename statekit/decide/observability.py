"""Decide what to watch for a workload profile: the dashboards and alerts, with thresholds
from its latency budget and byte cap; written as Prometheus rules and a Grafana dashboard."""

from __future__ import annotations

import re
from typing import Any

from statekit.observe.metrics import LATENCY_BUCKETS_S, bucket_label

#: The share of calls (or appends) past a threshold that makes its 99th percentile past it.
TAIL_SHARE = 0.01

#: Session size, as a fraction of the cap, at which "sessions near the cap" pages.
NEAR_CAP = 0.8

#: Latency, as a fraction of the timeout, that a store call's p99 must stay under.
NEAR_TIMEOUT = 0.8

#: The conflict share (conflicts per compare-and-set attempt) of a conflict storm.
CONFLICT_STORM = 0.1


def latency_threshold_s(timeout_ms: float) -> float:
    """The latency bucket bound a store call's p99 is held under: the largest bound of
    `LATENCY_BUCKETS_S` at or below 80 % of the timeout (the smallest bound when the timeout is
    below all of them), so the alert reads a bucket exactly and fires before calls time out."""
    limit = NEAR_TIMEOUT * timeout_ms / 1000
    below = [b for b in LATENCY_BUCKETS_S if b <= limit + 1e-12]
    return below[-1] if below else LATENCY_BUCKETS_S[0]


def _share_above(metric: str, le: float, window: str, by: str = "") -> str:
    """PromQL: the share of a histogram's observations above bucket bound `le`, summed over
    every series (`sum by (le)` as the dashboards do) and grouped `by`."""
    group = f"sum by ({by}) " if by else "sum "
    total = f"{group}(rate({metric}_count[{window}]))"
    under = f'{group}(rate({metric}_bucket{{le="{bucket_label(le)}"}}[{window}]))'
    return f"({total} - {under}) / {total}"


def _conflict_share(window: str) -> str:
    rate = 'sum(rate(statekit_lifecycle_events_total{{kind="{kind}"}}[{w}]))'
    conflicts = rate.format(kind="conflict", w=window)
    updates = rate.format(kind="state_updated", w=window)
    return f"{conflicts} / ({conflicts} + {updates})"


def recommend(profile: Any, max_bytes: int, timeout_ms: float) -> dict[str, Any]:
    """The dashboards and alerts a profile needs, with thresholds from its timeout and size cap.

    Each threshold alert reads a histogram bucket bound exactly, as a share of observations
    above it (`TAIL_SHARE` above the bound means the p99 is past it), instead of
    `histogram_quantile`, whose linear interpolation inside a wide bucket moves the estimate
    far from the real sizes. Latency: p99 of a store call past the bucket bound at or under
    80 % of the timeout (calls fail at the timeout, so the alert comes first). Size: p99 of
    the appends past 80 % of the cap (`statekit_session_cap_fraction`). Conflicts: the
    share of compare-and-set attempts that conflict, as a rate over 5 minutes (a storm that
    ends stops paging within the window).
    """
    budget = profile.latency_budget_ms
    retention = profile.compliance.retention_days
    slow = latency_threshold_s(timeout_ms)
    latency_share = _share_above("statekit_operation_duration_seconds", slow, "5m", by="operation")
    near_cap = _share_above("statekit_session_cap_fraction", NEAR_CAP, "15m")
    conflicts = _conflict_share("5m")
    alerts = [
        {
            "alert": "state latency near the timeout",
            "expr": f"{latency_share} > {TAIL_SHARE:g}",
            "for": "5m",
            "threshold_s": slow,
            "why": (
                f"more than {TAIL_SHARE:.0%} of one operation's store calls slower than {slow * 1000:g} ms (its p99 "
                f"past the bucket at or under {NEAR_TIMEOUT:.0%} of the {timeout_ms:g} ms timeout): calls time out next"
                if slow * 1000 >= 0.4 * timeout_ms
                else f"more than {TAIL_SHARE:.0%} of one operation's store calls slower than {slow * 1000:g} ms, the "
                f"largest latency bucket: far under the {timeout_ms:g} ms timeout, so this pages on slowness long "
                "before calls time out"
            ),
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
            "expr": f"{near_cap} > {TAIL_SHARE:g}",
            "for": "15m",
            "threshold_bytes": int(NEAR_CAP * max_bytes),
            "why": (
                f"more than {TAIL_SHARE:.0%} of appends leave a session above {NEAR_CAP:.0%} of the "
                f"{max_bytes:,}-byte cap ({int(NEAR_CAP * max_bytes):,} bytes): rejections are next"
            ),
        },
        {
            "alert": "updates rejected by the cap",
            "expr": 'increase(statekit_lifecycle_events_total{kind="rejected"}[15m]) > 0',
            "for": "0m",
            "why": "a caller is writing turns or state larger than the policy allows",
        },
        {
            "alert": "conflict storm",
            "expr": f"{conflicts} > {CONFLICT_STORM:g}",
            "for": "5m",
            "why": (
                f"more than one compare-and-set attempt in {1 / CONFLICT_STORM:.0f} conflicts over the last 5 "
                "minutes: writers are fighting over sessions (route them sticky)"
            ),
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
            "panel": f"share of store calls slower than {slow * 1000:g} ms",
            "metric": "statekit_operation_duration_seconds",
            "note": f"what the latency alert reads; it pages above {TAIL_SHARE:.0%}",
            "exprs": [latency_share],
            "unit": "percentunit",
            "thresholds": [TAIL_SHARE],
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
            "panel": f"share of appends above {NEAR_CAP:.0%} of the cap",
            "metric": "statekit_session_cap_fraction",
            "note": f"what the near-the-cap alert reads; it pages above {TAIL_SHARE:.0%}",
            "exprs": [near_cap],
            "unit": "percentunit",
            "thresholds": [TAIL_SHARE],
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
            "panel": "conflicts per compare-and-set attempt (5 min)",
            "metric": "statekit_lifecycle_events_total",
            "note": "retry storms show here first; what the conflict-storm alert reads",
            "exprs": [conflicts],
            "unit": "percentunit",
            "thresholds": [CONFLICT_STORM],
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
    "statekit_session_cap_fraction_bucket",
    "statekit_session_cap_fraction_count",
    "statekit_lifecycle_events_total",
    "statekit_context_reads_total",
    "statekit_conflict_ratio",
)
