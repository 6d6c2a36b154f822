"""Decide what to watch for a workload profile: the dashboards and alerts, with thresholds
from its latency budget and byte cap; written as Prometheus rules and a Grafana dashboard."""

from __future__ import annotations

import re
from typing import Any


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
