"""Assumed against measured: a workload profile held against the namespace it describes.

`calibrate(client, namespace, profile, ...)` measures the namespace (read-only, through
`statekit.observe.calibrate.measure`), optionally a replica's lag and a scrape of
`StateMetrics`, and `compare`s: one row per assumption of the profile (assumed, measured
with its 99% interval, relative drift, flagged beyond `tolerance`), a calibrated profile
(the assumptions the measurement disproves, replaced), and the decisions of the review
that flip between the profile as written and as measured (nodes of memory, the verdict,
the window, a consistency level, whether bounded staleness holds at the measured lag, a
write policy). `--fail-on drift` in the CLI exits 1 on any flip.

A row is flagged, and its number replaced in the calibrated profile, when the drift is
beyond the tolerance *and* the interval excludes the assumed value: a drift the sample
cannot tell from noise does not move a decision. Rates measured over a window shorter than
a day describe that window, not the day: they are compared, and flagged, but the profile's
daily traffic is replaced only by a day-long window. The peak is a floor: more sessions
running at once than profiled raises it; fewer says only that this is not the peak.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statekit.decide.assess import assess
from statekit.decide.consistency import select as select_consistency
from statekit.decide.lifecycle import recommend
from statekit.decide.profile import WorkloadProfile
from statekit.decide.resilience import recommend as recommend_resilience
from statekit.decide.sizing import plan_capacity
from statekit.errors import InvalidInput
from statekit.keys import validate_namespace
from statekit.lifecycle import LifecyclePolicy
from statekit.observe.calibrate import Estimate, Measurement, json_ready, measure, read_prometheus, replica_lag_now

__all__ = [
    "Row",
    "Flip",
    "Calibration",
    "calibrate",
    "compare",
    "decisions",
    "finished_after_s",
    "DEFAULT_TOLERANCE",
    "DAY_S",
]

#: Relative drift beyond which a row is flagged (25%: a profile is an estimate made before
#: launch; what moves a decision is usually a factor, not a few per cent).
DEFAULT_TOLERANCE = 0.25
DAY_S = 86_400
#: A share of context reads served from a fallback (degraded) that is worth a flag.
DEGRADED_SHARE_FLAG = 0.01
#: Conflicts per compare-and-set attempt worth a flag: one write in 20 retried.
CONFLICT_RATIO_FLAG = 0.05
#: Share of the cap a session's p99 may reach before the cap is flagged as tight.
CAP_TIGHT = 0.9


def finished_after_s(profile: WorkloadProfile, policy: LifecyclePolicy) -> float:
    """How long a session must have been idle to count as finished: half the grace the TTL
    gives after a session's typical length (a pause longer than that ends a session by the
    profile's own reckoning), at least a minute."""
    grace = policy.ttl_seconds - profile.traffic.session_minutes * 60
    return max(60.0, grace / 2)


@dataclass
class Row:
    """One assumption, assumed against measured."""

    assumption: str  # the profile field (or the check) it is about
    label: str
    assumed: float | None
    measured: Estimate | None
    unit: str = ""
    drift: float | None = None  # (measured - assumed) / assumed
    flagged: bool = False
    applied: bool = False  # replaced in the calibrated profile
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row for a table or JSON: a non-finite number (an unbounded end, a figure not
        measured) is None."""
        m = self.measured
        return json_ready(
            {
                "assumption": self.assumption,
                "label": self.label,
                "unit": self.unit,
                "assumed": self.assumed,
                "measured": None if m is None else m.value,
                "low": None if m is None else m.low,
                "high": None if m is None else m.high,
                "n": None if m is None else m.n,
                "drift": self.drift,
                "flagged": self.flagged,
                "applied": self.applied,
                "note": self.note,
            }
        )  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Flip:
    """A decision of the review that differs between the profile as written and as measured."""

    decision: str
    before: Any
    after: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.decision}: {self.before} -> {self.after} ({self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "text": str(self),
        }


@dataclass
class Calibration:
    """The outcome of `calibrate`: rows, the calibrated profile and the decisions that flip."""

    assumed: WorkloadProfile
    calibrated: WorkloadProfile
    measurement: Measurement
    rows: list[Row]
    flipped: list[Flip]
    changes: list[Flip] = field(default_factory=list)  # numbers that moved without flipping a decision
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    replica_lag: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def table(self) -> list[dict[str, Any]]:
        """One dict per row (a DataFrame's records)."""
        return [r.as_dict() for r in self.rows]

    def profile(self) -> WorkloadProfile:
        """The calibrated profile: the assumptions the measurement disproved, replaced."""
        return self.calibrated

    def flips(self) -> list[Flip]:
        """The decisions that flip between the profile as written and as measured."""
        return list(self.flipped)

    def profile_yaml(self) -> str:
        """The calibrated profile as YAML, with a header naming what was replaced."""
        import yaml

        data = self.calibrated.model_dump(mode="json")

        def value(path: str) -> Any:
            section, _, name = path.partition(".")
            return data.get(section, {}).get(name)

        applied = [
            f"{r.assumption}: {r.assumed:g} -> {value(r.assumption)} (measured {r.measured.value:,.4g})"
            for r in self.rows
            if r.applied and r.assumed is not None and r.measured is not None
        ]
        header = "# calibrated by `statekit calibrate` against namespace " + repr(self.measurement.namespace) + "\n"
        header += "".join(f"#   {line}\n" for line in applied) or "#   nothing replaced: no drift beyond tolerance\n"
        return header + yaml.safe_dump(self.calibrated.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def as_dict(self) -> dict[str, Any]:
        """Everything, for JSON: non-finite numbers are None (`json.dumps(allow_nan=False)` holds)."""
        return json_ready(
            {
                "namespace": self.measurement.namespace,
                "tolerance": self.tolerance,
                "rows": self.table(),
                "flips": [f.as_dict() for f in self.flipped],
                "changes": [f.as_dict() for f in self.changes],
                "decisions": {"as_profiled": self.before, "as_measured": self.after},
                "calibrated_profile": self.calibrated.model_dump(mode="json"),
                "measurement": self.measurement.as_dict(),
                "replica_lag": self.replica_lag,
                "metrics": self.metrics,
            }
        )  # type: ignore[no-any-return]


def decisions(profile: WorkloadProfile, lag_s: float | None = None) -> dict[str, Any]:
    """The review's decisions that a calibration can flip, for `profile`: the verdict, nodes
    of memory, the policy's window, TTL and cap, each state class's consistency level and (with
    a measured replica lag `lag_s`, its worst) whether bounded staleness holds, and the
    resilience settings with each class's write policy."""
    rec = recommend(profile)
    capacity = plan_capacity(profile, rec.policy)
    resilience = recommend_resilience(profile, policy=rec.policy)
    classes = select_consistency(profile.state_classes, trials=2_000)
    out: dict[str, Any] = {
        "verdict": assess(profile).verdict,
        "memory.nodes": capacity["nodes"],
        "memory.total_gb": round(capacity["total_bytes"] / 1e9, 2),
        "lifecycle.window_turns": rec.policy.window_turns,
        "lifecycle.ttl_seconds": rec.policy.ttl_seconds,
        "lifecycle.max_bytes": rec.policy.max_bytes,
        "resilience.timeout_ms": resilience["timeout_ms"],
        "resilience.fail_max": resilience["fail_max"],
        "resilience.buffer_max_turns": resilience["buffer_max_turns"],
    }
    for name, policy in sorted(resilience["write_policy_by_state_class"].items()):
        out[f"resilience.write_policy.{name}"] = policy if isinstance(policy, str) else policy.get("policy", policy)
    for choice in classes:
        out[f"consistency.{choice.state_class}"] = choice.level
        if choice.level == "bounded staleness":
            holds = lag_s is None or lag_s <= (choice.staleness_bound_s or 0)
            out[f"consistency.{choice.state_class}.bound_holds"] = holds
    return out


#: Decisions whose change is a flip (a different choice); the others are numbers that move.
_DISCRETE = ("verdict", "memory.nodes", "lifecycle.window_turns", "consistency.", "resilience.write_policy.")


def _is_discrete(name: str) -> bool:
    return any(name == d or (d.endswith(".") and name.startswith(d)) for d in _DISCRETE)


def _flip_reason(name: str, before: Any, after: Any, rows: list[Row], lag_s: float | None) -> str:
    moved = ", ".join(
        f"{r.label} {r.assumed:g} -> {r.measured.value:,.4g}" for r in rows if r.applied and r.measured and r.assumed
    )
    if name.endswith(".bound_holds") and lag_s is not None:
        return f"bounded staleness no longer holds at the measured lag ({lag_s:.3g} s)"
    return f"as measured: {moved}" if moved else "as measured"


def _drift(assumed: float | None, measured: Estimate | None) -> float | None:
    if assumed in (None, 0) or measured is None:
        return None
    return (measured.value - assumed) / assumed


def _row(
    assumption: str,
    label: str,
    assumed: float | None,
    measured: Estimate | None,
    tolerance: float,
    unit: str = "",
    note: str = "",
) -> Row:
    drift = _drift(assumed, measured)
    beyond = drift is not None and abs(drift) > tolerance
    significant = measured is not None and assumed is not None and not measured.covers(assumed)
    return Row(assumption, label, assumed, measured, unit, drift, bool(beyond and significant), note=note)


def compare(
    profile: WorkloadProfile,
    measurement: Measurement,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    replica_lag: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Calibration:
    """Hold `profile` against `measurement` (and the replica lag and metrics when given):
    the rows, the calibrated profile, and the decisions that flip. Pure: no I/O."""
    if not tolerance > 0:
        raise ValueError(f"tolerance is a relative drift > 0, got {tolerance!r}")
    rec = recommend(profile)
    policy = rec.policy
    capacity = plan_capacity(profile, policy)
    t, tr = profile.turns, profile.traffic
    est = measurement.estimates
    rows: list[Row] = []
    turns = _row(
        "turns.per_session",
        "turns per session",
        t.per_session,
        est.get("turns_per_session"),
        tolerance,
        note="appends per finished session (v - fv - sv of its meta hash)",
    )
    bytes_row = _row(
        "turns.bytes_per_turn",
        "bytes per turn",
        t.bytes_per_turn,
        est.get("bytes_per_turn"),
        tolerance,
        "B",
        "encoded turn as stored (JSON envelope included), from the logs' byte counts",
    )
    minutes = _row(
        "traffic.session_minutes",
        "session length",
        tr.session_minutes,
        est.get("session_minutes"),
        tolerance,
        "min",
        "first write to last write of finished sessions",
    )
    ratio_row = _row(
        "turns.compression_ratio",
        "compression ratio",
        t.compression_ratio,
        est.get("compression_ratio"),
        tolerance,
        "x",
        "raw over stored bytes of each sampled session's newest record (1: stored uncompressed)",
    )
    rows += [turns, bytes_row, minutes, ratio_row]
    rate = est.get("new_sessions_per_s")
    daily = (
        None
        if rate is None
        else Estimate(rate.value * DAY_S, rate.low * DAY_S, rate.high * DAY_S, rate.n, rate.method, rate.exact)
    )
    window_note = (
        f"over a {measurement.window_s:,.0f} s window"
        + (
            ""
            if measurement.window_s >= DAY_S
            else ": the rate of this window, not the day's; a day-long window replaces it"
        )
        if rate is not None
        else "not measured: give a sampling window (--window SECONDS)"
    )
    arrivals = _row(
        "traffic.new_sessions_per_day",
        "new sessions per day",
        tr.new_sessions_per_day,
        daily,
        tolerance,
        note=window_note,
    )
    rows.append(arrivals)
    appends = est.get("appends_per_s")
    rows.append(
        _row(
            "appends_per_s",
            "appends per second",
            tr.new_sessions_per_day / DAY_S * t.per_session,
            appends,
            tolerance,
            "/s",
            "assumed: daily arrivals x turns per session",
        )
    )
    running = est.get("sessions_in_progress")
    peak = _row(
        "traffic.peak_concurrent_sessions",
        "sessions running at once",
        tr.peak_concurrent_sessions,
        running,
        tolerance,
        note="sessions written within the last "
        f"{finished_after_s(profile, policy):,.0f} s; the profile's peak is a floor: only more raises it",
    )
    peak.flagged = bool(running and running.low > tr.peak_concurrent_sessions * (1 + tolerance))
    rows.append(peak)
    rows.append(
        _row(
            "sessions_held",
            "sessions held",
            capacity["active_sessions"],
            est.get("sessions_held"),
            tolerance,
            note="assumed: Little's law over the profile's traffic, at the peak or over the day",
        )
    )
    p99 = measurement.bytes_percentiles.get("p99")
    top = measurement.bytes_percentiles.get("max")
    cap = _row(
        "lifecycle.max_bytes",
        "session bytes p99 against the cap",
        policy.max_bytes,
        p99,
        tolerance,
        "B",
        "the cap rejects an append beyond it: a p99 near the cap means rejected turns",
    )
    cap.drift = None if p99 is None else p99.value / policy.max_bytes - 1
    cap.flagged = bool(p99 and p99.value > CAP_TIGHT * policy.max_bytes)
    rows.append(cap)
    if top is not None:
        rows.append(
            Row(
                "lifecycle.max_bytes",
                "largest session",
                policy.max_bytes,
                top,
                "B",
                top.value / policy.max_bytes - 1,
                top.value > policy.max_bytes,
                note="a session over the cap was written under another policy",
            )
        )
    summary = est.get("summary_bytes_p95")
    if policy.summary_max_bytes:
        rows.append(
            Row(
                "lifecycle.summary_max_bytes",
                "summary bytes p95 against its budget",
                policy.summary_max_bytes,
                summary,
                "B",
                _drift(policy.summary_max_bytes, summary),
                bool(summary and summary.value > policy.summary_max_bytes),
                note="measured over summarised sessions" if summary else "no session has a summary yet",
            )
        )
    ttl = measurement.ttl
    if ttl:
        longest = Estimate(
            ttl["longest_remaining_s"],
            ttl["longest_remaining_s"],
            ttl["longest_remaining_s"],
            measurement.sampled,
            "longest remaining TTL seen",
        )
        rows.append(
            Row(
                "lifecycle.ttl_seconds",
                "remaining TTL against the policy",
                policy.ttl_seconds,
                longest,
                "s",
                _drift(policy.ttl_seconds, longest),
                bool(ttl["over_policy"] or ttl["without_ttl"]),
                note=f"{ttl['over_policy']:.0f} sampled sessions hold more TTL than the policy gives, "
                f"{ttl['without_ttl']:.0f} none at all",
            )
        )
    lag_s = None
    if replica_lag is not None:
        lag_s = replica_lag["worst_s"]
        bounded = [
            c
            for c in profile.state_classes
            if c.purpose in ("personalization", "recommendation", "cache") and c.staleness_tolerance_s > 0
        ]
        bound = min((c.staleness_tolerance_s for c in bounded), default=None)
        lag = Estimate(lag_s, lag_s, lag_s, replica_lag["samples"], "worst of INFO replication samples")
        rows.append(
            Row(
                "replica_lag",
                "replica lag (worst) against the tightest staleness bound",
                bound,
                lag,
                "s",
                None,
                bool(bound is not None and lag_s > bound),
                note="assumed by the review: exponential, mean 1 ms",
            )
        )
    if metrics is not None:
        budget = profile.latency_budget_ms
        worst = max((v.get("p99_ms", 0.0) for v in metrics.get("latency_ms", {}).values()), default=None)
        if worst is not None:
            e = Estimate(worst, worst, worst, 0, "histogram bucket edge (an upper bound)")
            rows.append(
                Row(
                    "latency_budget_ms",
                    "p99 latency of the slowest operation",
                    budget,
                    e,
                    "ms",
                    _drift(budget, e),
                    worst > budget,
                    note="" if math.isfinite(worst) else "beyond the histogram's largest finite bucket: unbounded",
                )
            )
        for key, label, limit in (
            ("degraded_share", "share of reads degraded", DEGRADED_SHARE_FLAG),
            ("conflict_ratio", "conflicts per CAS attempt", CONFLICT_RATIO_FLAG),
        ):
            value = metrics.get(key)
            if value is not None:
                e = Estimate(value, value, value, 0, "StateMetrics")
                note = f"flagged above {limit:g}" + ("" if math.isfinite(value) else "; the exposition says NaN")
                rows.append(Row(key, label, limit, e, "", None, value > limit, note=note))
    # the calibrated profile: what the measurement disproved, replaced
    data = profile.model_dump(mode="json")
    if turns.flagged:
        turns.applied = True
        data["turns"]["per_session"] = max(1, round(turns.measured.value))  # type: ignore[union-attr]
        window = data["state"].get("context_window_turns")
        if window is not None and window > data["turns"]["per_session"]:
            data["state"]["context_window_turns"] = data["turns"]["per_session"]
    if bytes_row.flagged:
        bytes_row.applied = True
        new = max(1, round(bytes_row.measured.value))  # type: ignore[union-attr]
        if t.tokens_per_turn:  # bytes per token is the language's: tokens follow bytes
            data["turns"]["tokens_per_turn"] = max(1, round(t.tokens_per_turn * new / t.bytes_per_turn))
        data["turns"]["bytes_per_turn"] = new
    if ratio_row.flagged:
        ratio_row.applied = True
        data["turns"]["compression_ratio"] = min(20.0, max(1.0, round(ratio_row.measured.value, 2)))  # type: ignore[union-attr]
    if minutes.flagged:
        minutes.applied = True
        # rounded to a tenth of a minute, and never to 0 (a profile's sessions last some time)
        data["traffic"]["session_minutes"] = max(0.1, round(minutes.measured.value, 1))  # type: ignore[union-attr]
    if arrivals.flagged and measurement.window_s >= DAY_S:
        arrivals.applied = True
        data["traffic"]["new_sessions_per_day"] = max(1, round(arrivals.measured.value))  # type: ignore[union-attr]
    if peak.flagged:
        peak.applied = True
        data["traffic"]["peak_concurrent_sessions"] = max(1, math.ceil(running.value))  # type: ignore[union-attr]
    calibrated = WorkloadProfile.from_dict(data, source="calibrated profile")
    before, after = decisions(profile), decisions(calibrated, lag_s)
    flipped, changes = [], []
    for name in after:
        if name in before and before[name] != after[name]:
            flip = Flip(name, before[name], after[name], _flip_reason(name, before[name], after[name], rows, lag_s))
            (flipped if _is_discrete(name) else changes).append(flip)
    return Calibration(
        profile, calibrated, measurement, rows, flipped, changes, before, after, replica_lag, metrics, tolerance
    )


def measure_replica_lag_readonly(
    primary: Any, replica: Any, samples: int = 20, wait: Callable[[float], None] = time.sleep, every_s: float = 0.05
) -> dict[str, Any]:
    """The replica's lag, read-only: `samples` reads of INFO replication on both, `every_s`
    apart; a sample's lag is 0 when the replica has applied every byte the primary had sent
    when asked, else the seconds since the replica last heard from its primary (at least 1 s:
    INFO counts whole seconds). Raises `NeedsRealRedis` on fakeredis."""
    lags = []
    for i in range(samples):
        now = replica_lag_now(primary, replica)
        behind = now["offset_behind_bytes"] > 0
        lags.append(max(1.0, now["last_io_seconds_ago"]) if behind else 0.0)
        if i + 1 < samples:
            wait(every_s)
    return {"samples": samples, "worst_s": max(lags), "behind_share": sum(1 for x in lags if x) / samples}


#: How long a metrics URL has to answer, in all (connecting, headers and the whole body).
METRICS_DEADLINE_S = 10.0
#: Largest exposition read from a URL (a scrape of StateMetrics is a few kB).
MAX_METRICS_BYTES = 64 * 2**20


def _fetch(url: str, deadline_s: float) -> bytes:
    """The body at `url`, or InvalidInput when it does not come whole within `deadline_s`
    (a socket timeout bounds each read only: a server sending a byte at a time would keep
    a plain read going forever). The fetch runs in a daemon thread the caller stops waiting
    for at the deadline."""
    import threading
    import urllib.request

    done: dict[str, Any] = {}

    def fetch() -> None:
        try:
            with urllib.request.urlopen(url, timeout=deadline_s) as response:  # noqa: S310 - an operator's URL
                done["body"] = response.read(MAX_METRICS_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, which reports it
            done["error"] = exc

    thread = threading.Thread(target=fetch, name="statekit-metrics-fetch", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        raise InvalidInput(f"metrics URL {url} did not answer within {deadline_s:g} s")
    if "error" in done:
        raise InvalidInput(f"metrics URL {url}: {done['error']}")
    if len(done["body"]) > MAX_METRICS_BYTES:
        raise InvalidInput(f"metrics URL {url} sent more than {MAX_METRICS_BYTES:,} bytes: not a StateMetrics scrape")
    return done["body"]  # type: ignore[no-any-return]


def load_metrics(source: str, deadline_s: float = METRICS_DEADLINE_S) -> dict[str, Any]:
    """Read a Prometheus exposition of `StateMetrics` from a file or an http(s) URL (which
    has `deadline_s` in all to answer). Any failure (a missing file, a URL that does not
    answer, text that is not UTF-8 or not an exposition) raises a `StatekitError` naming
    `source`."""
    if source.startswith(("http://", "https://")):
        raw = _fetch(source, deadline_s)
        where = f"metrics URL {source}"
    else:
        where = f"metrics file {source}"
        try:
            with open(source, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise InvalidInput(f"{where}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where} is not UTF-8 text (byte {exc.start}): not a Prometheus exposition") from None
    return read_prometheus(text, source=where)


def calibrate(
    client: Any,
    namespace: str,
    profile: WorkloadProfile,
    *,
    sample: int | None = None,
    window_s: float = 0.0,
    tolerance: float = DEFAULT_TOLERANCE,
    replica: Any = None,
    metrics: str | dict[str, Any] | None = None,
    seed: int = 0,
    wait: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    progress: Callable[[int], None] | None = None,
    on_node: Callable[[str], None] | None = None,
) -> Calibration:
    """Measure `namespace` on `client` (read-only; a sample of at most `sample` sessions, a
    sampling window of `window_s` seconds for the rates), with `replica` (a client of a
    replica of `client`) its replica lag, and with `metrics` (a path or URL of a Prometheus
    exposition of StateMetrics, or its parsed dict) the latency, conflict and degraded
    figures; then `compare` with `profile`. The namespace and the metrics are checked
    first: a bad one fails before any sampling window is waited out."""
    validate_namespace(namespace)
    figures = load_metrics(metrics) if isinstance(metrics, str) else metrics
    policy = recommend(profile).policy
    m = measure(
        client,
        namespace,
        ttl_seconds=policy.ttl_seconds,
        finished_after_s=finished_after_s(profile, policy),
        sample=sample,
        window_s=window_s,
        wait=wait,
        clock=clock,
        seed=seed,
        progress=progress,
        on_node=on_node,
    )
    lag = None if replica is None else measure_replica_lag_readonly(client, replica)
    return compare(profile, m, tolerance=tolerance, replica_lag=lag, metrics=figures)
