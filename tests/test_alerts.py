"""The review's alerts, run as Prometheus runs them: `promtool test rules`, with series that a
real `StateMetrics` exposes while a `SessionStore` serves each example profile's workload.

For every example profile:
- the traffic the review sized for (sessions of the profile's length, turns 1.2x the typical
  size, healthy latency) fires nothing;
- each failure an alert names fires within its `for` once the alert's rate window holds the
  failure (at most window + for after it starts): store calls past the timeout, sessions
  past 80% of the cap, a conflict storm (and it stops when the storm ends), reads served from
  fallbacks and a degraded store, writes rejected by the cap, a buffer overflowing.

The series are the exposition of a StateMetrics fed by a real store (sizes, lifecycle events)
and, for latency, by durations given to its `on_operation` hook (the machine's own timing
would make the healthy case depend on its load). Each counter grows linearly over its phase.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tools import promtool

from statekit import LifecyclePolicy, WorkloadProfile, connect
from statekit.decide.lifecycle import recommend as recommend_lifecycle
from statekit.errors import StateTooLarge
from statekit.observe import StateMetrics
from statekit.store import SessionStore
from statekit.workbook.review import build_review, write_monitoring

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "data" / "profiles").glob("*.yaml"))


class _Metrics(StateMetrics):
    """StateMetrics whose latencies are the ones the scenario gives, not the machine's timing."""

    given = False

    def on_operation(self, op: str, session_id: str, seconds: float, error: BaseException | None) -> None:
        if self.given:
            super().on_operation(op, session_id, seconds, error)

    def latency(self, op: str, seconds: float, n: int) -> None:
        self.given = True
        for _ in range(n):
            self.on_operation(op, "s", seconds, None)
        self.given = False


def _store(policy: LifecyclePolicy, metrics: StateMetrics, name: str) -> SessionStore:
    return SessionStore(connect("fakeredis://"), policy, namespace=name, metrics=metrics)


def _turn(i: int, size: int) -> dict[str, str]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": "w" * size}


def _healthy(profile: WorkloadProfile, policy: LifecyclePolicy, timeout_ms: float) -> _Metrics:
    """What the review sized for: sessions of the profile's length, turns 1.2x the typical size
    (within the 3x the cap allows), state updates without conflicts, loads served by the store,
    and calls at a fifth of the timeout with a tail at half of it."""
    m = _Metrics()
    store = _store(policy, m, "healthy")
    for s in range(8):
        sid = f"s{s}"
        for i in range(profile.turns.per_session):
            store.append_turn(sid, _turn(i, int(1.2 * profile.turns.bytes_per_turn)))
            store.load_context(sid)
        store.update_state(sid, lambda st: {**(st or {}), "n": 1})
    for op in ("load_context", "append_turn"):
        m.latency(op, 0.2 * timeout_ms / 1000, 990)
        m.latency(op, 0.5 * timeout_ms / 1000, 10)
    return m


def _failure(kind: str, policy: LifecyclePolicy, timeout_ms: float) -> _Metrics:
    """The metrics of one kind of failure, on its own (the scenario adds them to healthy traffic)."""
    m = _Metrics()
    store = _store(policy, m, kind)
    if kind == "slow":  # 5% of calls past the timeout
        m.latency("load_context", 0.2 * timeout_ms / 1000, 950)
        m.latency("load_context", 1.5 * timeout_ms / 1000, 50)
    elif kind == "near_cap":  # a first turn that fills 82% of the cap
        for s in range(20):
            store.append_turn(f"big{s}", _turn(0, int(0.82 * policy.max_bytes)))
    elif kind == "conflicts":  # one compare-and-set attempt in four conflicts
        for _ in range(100):
            m.on_event("conflict", "s", {})
        for _ in range(300):
            m.on_event("state_updated", "s", {})
    elif kind == "fallbacks":  # a fifth of the contexts from the cache, beside healthy traffic's 1,000
        for _ in range(200):
            m.on_event("degraded", "s", {})
            m.on_event("fallback", "s", {"source": "cache"})
    elif kind == "rejected":
        with pytest.raises(StateTooLarge):
            store.append_turn("huge", _turn(0, policy.max_bytes + 1))
    elif kind == "overflow":
        m.on_event("overflow", "s", {})
    return m


def _samples(metrics: StateMetrics | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]] = {}
    if metrics is None:
        return out
    for family in text_string_to_metric_families(metrics.prometheus()):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = (family.type, s.value)
    return out


#: The traffic a StateMetrics holds is what the service does in this many minutes.
PERIOD_MIN = 10


def _series(phases: list[tuple[int, list[StateMetrics]]]) -> list[dict[str, str]]:
    """promtool input series: each phase lasts `minutes`, during which the counters of its
    metrics grow at their totals per `PERIOD_MIN` minutes, linearly (one sample a minute);
    gauges hold the phase's value."""
    per_phase = [(minutes, [_samples(m) for m in ms]) for minutes, ms in phases]
    keys = sorted({k for _, snaps in per_phase for snap in snaps for k in snap})
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
    for name, labels in keys:
        values, level = [0.0], 0.0
        for minutes, snaps in per_phase:
            found = [snap[(name, labels)] for snap in snaps if (name, labels) in snap]
            gauge = bool(found) and found[0][0] == "gauge"
            total = sum(v for _, v in found)
            for step in range(1, minutes + 1):
                values.append(total if gauge else level + total * step / PERIOD_MIN)
            if not gauge:
                level += total * minutes / PERIOD_MIN
        series[(name, labels)] = values
    # statekit_conflict_ratio is conflicts per attempt since the process started: from the counters
    events = "statekit_lifecycle_events_total"
    conflicts, updates = (series.get((events, (("kind", k),)), []) for k in ("conflict", "state_updated"))
    if ("statekit_conflict_ratio", ()) in series and conflicts and updates:
        series[("statekit_conflict_ratio", ())] = [
            c / (c + u) if c + u else 0.0 for c, u in zip(conflicts, updates, strict=True)
        ]
    out = []
    for (name, labels), values in series.items():
        text = ", ".join(f'{k}="{v}"' for k, v in labels)
        out.append({"series": f"{name}{{{text}}}", "values": " ".join(f"{v:.6g}" for v in values)})
    return out


def _expected(rule: dict[str, Any], operation: str = "load_context") -> dict[str, Any]:
    """The alert promtool should see firing for `rule`: its labels, plus the labels its
    expression keeps (the operation it groups by, or the event kind it counts)."""
    labels = dict(rule["labels"])
    if "by (operation)" in rule["expr"]:
        labels["operation"] = operation
    kept = re.match(r'increase\(statekit_lifecycle_events_total\{kind="(\w+)"\}', rule["expr"])
    if kept:
        labels["kind"] = kept.group(1)
    return {"exp_labels": labels, "exp_annotations": rule["annotations"]}


def _rules_by_alert(path: Path) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]}


def _for_minutes(rule: dict[str, Any]) -> int:
    return int(rule["for"].rstrip("m"))


def _window_minutes(rule: dict[str, Any]) -> int:
    return max((int(w) for w in re.findall(r"\[(\d+)m\]", rule["expr"])), default=0)


#: The failure each alert names, by a word its name holds.
FAILURES = {
    "Latency": "slow",
    "NearTheCap": "near_cap",
    "ConflictStorm": "conflicts",
    "ReadsServedFromFallbacks": "fallbacks",
    "StoreDegraded": "fallbacks",
    "RejectedByTheCap": "rejected",
    "BufferOverflowing": "overflow",
}


def _failure_of(alert: str) -> str:
    (kind,) = [k for word, k in FAILURES.items() if word in alert]
    return kind


@pytest.mark.slow  # promtool over hours of series, each alert's failure in turn
@pytest.mark.parametrize("profile_path", PROFILES, ids=lambda p: p.stem)
def test_alerts_under_promtool(profile_path, tmp_path):
    profile = WorkloadProfile.from_yaml(profile_path)
    review = build_review(profile)
    rules_path, _ = write_monitoring(review, tmp_path, profile_path.stem)
    rules = _rules_by_alert(rules_path)
    policy = recommend_lifecycle(profile).policy
    timeout_ms = review["resilience"]["timeout_ms"]
    healthy = _healthy(profile, policy, timeout_ms)
    assert {_failure_of(a) for a in rules} == set(FAILURES.values()), "every alert has its failure"

    tests = [
        {  # the traffic the review sized for, for an hour and a half: nothing fires at any point
            "interval": "1m",
            "input_series": _series([(90, [healthy])]),
            "alert_rule_test": [
                {"eval_time": f"{t}m", "alertname": name, "exp_alerts": []} for name in rules for t in (20, 45, 89)
            ],
        }
    ]
    for name, rule in rules.items():
        kind = _failure_of(name)
        failure = _failure(kind, policy, timeout_ms)
        wait, window = _for_minutes(rule), _window_minutes(rule)
        # 10 minutes of healthy traffic, then the failure on top of it for 40 minutes
        checks = [
            {"eval_time": "9m", "alertname": name, "exp_alerts": []},
            # fired within its `for` once its rate window holds the failure (+1: the evaluation step)
            {"eval_time": f"{10 + window + wait + 1}m", "alertname": name, "exp_alerts": [_expected(rule)]},
        ]
        phases = [(10, [healthy]), (40, [healthy, failure]), (40, [healthy])]
        if kind in ("slow", "near_cap", "conflicts", "fallbacks"):
            # a failure that ends: the alert stops within its window (15m) and `for` after it
            checks.append({"eval_time": "85m", "alertname": name, "exp_alerts": []})
        tests.append({"interval": "1m", "input_series": _series(phases), "alert_rule_test": checks})

    unit = tmp_path / "alerts.test.yml"
    # libyaml's emitter where PyYAML has it: hours of series are 10 CPU-seconds in the pure-Python one
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    unit.write_text(
        yaml.dump(
            {"rule_files": [rules_path.name], "evaluation_interval": "1m", "tests": tests}, Dumper=dumper, width=10_000
        )
    )
    done = subprocess.run(
        [promtool(), "test", "rules", unit.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    assert "SUCCESS" in done.stdout + done.stderr


def test_agentic_workflow_sized_for_traffic_stays_far_below_the_cap():
    """The case that paged: agentic_workflow's turns at 1.2x their typical size. Its real
    sessions stay under half the cap, and the share of appends past 80% of it is 0."""
    profile = WorkloadProfile.from_yaml(ROOT / "data" / "profiles" / "agentic_workflow.yaml")
    policy = recommend_lifecycle(profile).policy
    m = _healthy(profile, policy, 66)
    sizes = m.size_summary()
    assert sizes["max"] < 0.5 * policy.max_bytes, (sizes, policy.max_bytes)
    above = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(m.prometheus())
        if f.name == "statekit_session_cap_fraction"
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert above["+Inf"] == sizes["sessions_sampled"] and above["0.8"] == above["+Inf"]
