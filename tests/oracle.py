"""A second, plain implementation of the review's formulas, written from their stated rules
(docstrings and reasons), not from the package's code: what `build_review` should say for a
profile, as a flat mapping from a review JSON path to the expected number.

It shares no code with statekit's decisions. Its constants are the review's judgement calls
(the headroom of the cap, the breaker's target window, ...), restated here as numbers; the
memory model's outputs (bytes per session) are taken from the review as inputs, since that
model is checked against INFO memory of a real server by tests/test_sizing.py instead.
"""

from __future__ import annotations

import math
from typing import Any

# -- the judgement calls, restated ------------------------------------------------------------
FOLD_BATCH = 4
IDLE_GRACE_S = 1800
TURN_HEADROOM = 3
RECORD_OVERHEAD = 64
STATE_ALLOWANCE = 4096
SESSION_ID_BYTES = 64
MEMORY_FACTOR = 1.3
OUTAGE_S = 30
TRIP_WITHIN_S = 0.5
USABLE = 0.75
NODE_MAXMEMORY = 13 * 1024**3
LAG_MEAN_MS = 1.0
# latency buckets: 1, 1.5, 2, 3, 5, 7 per decade from 50 us to 10 s
LATENCY_BOUNDS = sorted(
    {m * 10.0**e for e in range(-5, 1) for m in (1, 1.5, 2, 3, 5, 7) if 5e-5 - 1e-12 <= m * 10.0**e <= 7 + 1e-9}
    | {10.0}
)


class Approx:
    """An expected number with a tolerance: for Monte Carlo estimates the package samples."""

    def __init__(self, value: float, rel: float = 0.0, abs_: float = 0.0) -> None:
        self.value, self.rel, self.abs = value, rel, abs_

    def matches(self, got: float) -> bool:
        return abs(got - self.value) <= max(self.abs, self.rel * abs(self.value))

    def __repr__(self) -> str:
        return f"{self.value!r} (rel {self.rel:g}, abs {self.abs:g})"


def _up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _ceil(x: float) -> int:
    return math.ceil(round(x, 9))


def policy(p: dict[str, Any]) -> dict[str, Any]:
    """The lifecycle policy: window, summary budget, TTL, cap."""
    turns, state = p["turns"], p["state"]
    window = state["context_window_turns"] or turns["per_session"]
    per_token = turns["bytes_per_turn"] / turns["tokens_per_turn"] if turns["tokens_per_turn"] else 4.0
    summary = _up(state["summary_tokens"] * per_token, 256) if state["summary_tokens"] else 0
    session_s = p["traffic"]["session_minutes"] * 60
    if state["long_running_steps"]:
        ttl = _up(max(3 * session_s, session_s + IDLE_GRACE_S), 300)
    else:
        ttl = _up(session_s + IDLE_GRACE_S, 300)
    ttl = min(ttl, p["compliance"]["retention_days"] * 86_400)
    in_log = window + (FOLD_BATCH if summary else 0)
    cap = _up(in_log * (TURN_HEADROOM * turns["bytes_per_turn"] + RECORD_OVERHEAD) + summary + STATE_ALLOWANCE, 1024)
    return {
        "window_turns": window,
        "ttl_seconds": ttl,
        "max_bytes": cap,
        "summary_max_bytes": summary,
        "fold_batch": FOLD_BATCH,
    }


def _folds(p: dict[str, Any], pol: dict[str, Any]) -> bool:
    return pol["summary_max_bytes"] > 0 and p["turns"]["per_session"] > pol["window_turns"]


def cost(p: dict[str, Any], pol: dict[str, Any]) -> dict[str, Any]:
    """Bytes and tokens per request, both ways; break-evens; costs of 1,000 sessions."""
    n, b, tok = p["turns"]["per_session"], p["turns"]["bytes_per_turn"], p["turns"]["tokens_per_turn"]
    window = p["state"]["context_window_turns"] or n
    s_tok = p["state"]["summary_tokens"]
    s_bytes = math.ceil(s_tok * (b / tok if tok else 4.0))  # 4 bytes a token when no model reads turns
    s_read = s_tok if tok else 0  # and then no model reads the summary either
    independent = p["state"]["units_independent"]

    def one(k: int) -> tuple[int, int, int, int, int]:
        before = 0 if independent else k - 1
        kept = min(before, window)
        extra = before > window
        return (
            (before + 1) * b,
            b + SESSION_ID_BYTES,
            kept * b + (s_bytes if extra else 0),
            (before + 1) * tok,
            (kept + 1) * tok + (s_read if extra else 0),
        )

    rows = [one(k) for k in range(1, n + 1)]
    horizon = [one(k) for k in range(1, 10 * n + 1)]  # break-evens: up to 10x the typical session
    out: dict[str, Any] = {}
    for i, name in enumerate(
        (
            "replay_request_bytes",
            "server_request_bytes",
            "store_read_bytes",
            "replay_prompt_tokens",
            "server_prompt_tokens",
        )
    ):
        for k, row in enumerate(rows):
            out[f"assessment.cost.{name}.{k}"] = row[i]
    for k in range(n):
        out[f"assessment.cost.turns.{k}"] = k + 1
    wire = next((k + 1 for k, r in enumerate(horizon) if r[1] < r[0]), None)
    token = next((k + 1 for k, r in enumerate(horizon) if r[4] < r[3]), None)
    session = None
    replay_sum = server_sum = 0
    for k in range(1, 10 * n + 1):
        r = one(k)
        replay_sum += r[3]
        server_sum += r[4]
        if server_sum < replay_sum:
            session = k
            break
    price = p["costs"]["token_price_per_million"] / 1e6
    replay_cost = 1000 * sum(r[3] for r in rows) * price
    server_tokens = 1000 * sum(r[4] for r in rows) * price
    held = (min(n, window) * b + (s_bytes if n > window else 0)) * MEMORY_FACTOR
    hours = (p["traffic"]["session_minutes"] * 60 + pol["ttl_seconds"]) / 3600
    memory = 1000 * held / 1e9 * hours * p["costs"]["redis_price_per_gb_hour"]
    server_cost = server_tokens + memory
    out.update({
        "assessment.cost.wire_break_even_turn": wire,
        "assessment.cost.token_break_even_turn": token,
        "assessment.cost.session_token_break_even_turn": session,
        "assessment.cost.largest_replay_request_bytes": max(r[0] for r in rows),
        "assessment.cost.replay_cost_per_1000_sessions": Approx(replay_cost, 1e-9, 1e-6),
        "assessment.cost.server_cost_per_1000_sessions": Approx(server_cost, 1e-9, 1e-6),
        "assessment.cost.server_token_cost_per_1000_sessions": Approx(server_tokens, 1e-9, 1e-6),
        "assessment.cost.server_memory_cost_per_1000_sessions": Approx(memory, 1e-9, 1e-9),
        "assessment.cost.saving_per_1000_sessions": Approx(replay_cost - server_cost, 1e-9, 2e-6),
        "assessment.cost.assumptions.window_turns": window,
        "assessment.cost.assumptions.summary_tokens": s_tok,
        "assessment.cost.assumptions.summary_bytes": s_bytes,
        "assessment.cost.assumptions.session_id_bytes": SESSION_ID_BYTES,
        "assessment.cost.assumptions.memory_held_hours": Approx(hours, 1e-12),
        "assessment.cost.assumptions.token_price_per_million": p["costs"]["token_price_per_million"],
        "assessment.cost.assumptions.redis_price_per_gb_hour": p["costs"]["redis_price_per_gb_hour"],
    })  # fmt: skip
    return out


def resilience(p: dict[str, Any], pol: dict[str, Any]) -> dict[str, Any]:
    """Timeout over the round trips a request can make; breaker and buffer per process."""
    folds = _folds(p, pol)
    worst = 3 if folds else 2
    mean = 2 + (1 / FOLD_BATCH if folds else 0)
    budget = p["latency_budget_ms"]
    timeout = max(1, math.floor(budget / worst))
    t = p["traffic"]
    instances = t.get("app_instances", 1)
    # the busier of the peak and the day's average
    requests = max(
        t["peak_concurrent_sessions"] * t["requests_per_session"] / (t["session_minutes"] * 60),
        t["new_sessions_per_day"] * t["requests_per_session"] / 86_400,
    )
    per_process = requests * mean / instances
    fail_max = min(20, max(3, _ceil(per_process * TRIP_WITHIN_S)))
    buffer = max(1, _ceil(requests / instances * OUTAGE_S * 1.5))
    return {
        "resilience.timeout_ms": timeout,
        "resilience.worst_wait_ms": worst * timeout,
        "resilience.round_trips_per_request.worst": worst,
        "resilience.round_trips_per_request.mean": mean,
        "resilience.fail_max": fail_max,
        "resilience.breaker_opens_after_s": Approx(fail_max / per_process, 1e-9),
        "resilience.reset_timeout_s": 10,
        "resilience.buffer_max_turns": buffer,
        "resilience.buffer_fleet_turns": buffer * instances,
        "resilience.app_instances": instances,
        "resilience.peak_requests_per_second": round(requests, 2),
        "resilience.peak_store_calls_per_second": round(requests * mean, 2),
        "resilience.peak_store_calls_per_second_per_process": round(per_process, 2),
        "resilience.outage_to_survive_s": OUTAGE_S,
    }


def capacity(p: dict[str, Any], pol: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
    """Sessions held (over the day and at the peak), nodes from the modelled totals."""
    t = p["traffic"]
    session_s = t["session_minutes"] * 60
    held_s = session_s + pol["ttl_seconds"]
    daily = math.ceil(t["new_sessions_per_day"] / 86_400 * held_s)
    # at the peak's arrival rate, held to the sessions started within a session and a TTL (a day at least)
    peak = min(
        math.ceil(t["peak_concurrent_sessions"] * held_s / session_s),
        math.ceil(t["new_sessions_per_day"] * max(1.0, held_s / 86_400)),
    )
    cap = review["lifecycle"]["capacity"]  # the memory model's bytes: checked against INFO memory elsewhere
    n = p["turns"]["per_session"]
    out = {
        "lifecycle.capacity.daily_held_sessions": daily,
        "lifecycle.capacity.peak_held_sessions": peak,
        "lifecycle.capacity.active_sessions": max(daily, peak),
        "lifecycle.capacity.little_law.arrivals_per_second": Approx(t["new_sessions_per_day"] / 86_400, 1e-12),
        "lifecycle.capacity.little_law.seconds_held": Approx(held_s, 1e-12),
        "lifecycle.capacity.little_law.peak_arrivals_per_second": Approx(
            t["peak_concurrent_sessions"] / session_s, 1e-12
        ),
        "lifecycle.capacity.nodes": max(1, math.ceil(cap["total_bytes"] / (NODE_MAXMEMORY * USABLE))),
        "lifecycle.capacity.nodes_without_policy_after_a_week": max(
            1, math.ceil(cap["unbounded_week_bytes"] / (NODE_MAXMEMORY * USABLE))
        ),
        "lifecycle.capacity.node_maxmemory_bytes": NODE_MAXMEMORY,
        "lifecycle.capacity.usable_fraction": USABLE,
        # the profile's own: raw over stored bytes (1, uncompressed, unless it says otherwise)
        "lifecycle.capacity.compression_ratio": float(p["turns"].get("compression_ratio", 1.0)),
    }
    if math.ceil(t["new_sessions_per_day"] * 14) >= daily:  # the day's sessions have ramped up by day 14
        # one steady state: the growth chart levels where the capacity plan does
        out["lifecycle.capacity.growth_over_days.with_policy.13"] = cap["total_bytes"]
    for d in range(14):
        out[f"lifecycle.capacity.growth_over_days.days.{d}"] = d + 1
    for k in range(max(4 * n, 50)):
        out[f"lifecycle.capacity.growth_over_turns.turns.{k}"] = k + 1
    return out


def consistency(p: dict[str, Any]) -> dict[str, Any]:
    """Read gap, and per class: staleness bound, stale-read probabilities (replica lag
    exponential with mean 1 ms, gaps exponential with the read gap's mean)."""
    t = p["traffic"]
    gap = t["session_minutes"] * 60_000 / max(1, t["requests_per_session"] - 1)
    out: dict[str, Any] = {"consistency.read_gap_ms": Approx(gap, 1e-12)}
    for i, sc in enumerate(p["state_classes"]):
        purpose, tol = sc["purpose"], float(sc["staleness_tolerance_s"])
        strong = purpose in ("financial", "approval", "quota")
        tolerant = purpose in ("personalization", "recommendation", "cache")
        # replicas serve only what tolerates staleness: caches, personalization, recommendations, analytics
        replica = (tolerant or purpose == "analytics") and tol > 0
        key = f"consistency.classes.{i}"
        if strong or ((tolerant or purpose == "analytics") and tol == 0):
            out[f"{key}.staleness_bound_s"] = 0.0
        elif tolerant:
            out[f"{key}.staleness_bound_s"] = tol
        out[f"{key}.stale_read_probability"] = Approx(LAG_MEAN_MS / (LAG_MEAN_MS + gap), 0.03) if replica else 0.0
        for q in (1, 50):
            at = -gap * math.log1p(-q / 100)
            out[f"{key}.stale_at_gaps.p{q}.gap_ms"] = Approx(at, 1e-9)
            out[f"{key}.stale_at_gaps.p{q}.p"] = Approx(math.exp(-at / LAG_MEAN_MS), 0.08, 0.005) if replica else 0.0
        if replica:
            out[f"{key}.safe_after_ms"] = Approx(-LAG_MEAN_MS * math.log(0.001), 0.08)
    return out


def observability(p: dict[str, Any], pol: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
    """The thresholds: latency at the bucket at or under 80% of the timeout, 80% of the cap."""
    limit = 0.8 * timeout_ms / 1000
    under = [b for b in LATENCY_BOUNDS if b <= limit + 1e-12]
    slow = under[-1] if under else LATENCY_BOUNDS[0]
    out = {
        "observability.alerts.0.threshold_s": Approx(slow, 1e-9),
        "observability.alerts.3.threshold_bytes": int(0.8 * pol["max_bytes"]),
    }
    thresholds = [
        [timeout_ms / 1000, p["latency_budget_ms"] / 1000],
        [0.01],
        [pol["max_bytes"]],
        [0.01],
        [],
        [],
        [0.1],
        [],
    ]
    for i, values in enumerate(thresholds):
        for j, v in enumerate(values):
            out[f"observability.dashboards.{i}.thresholds.{j}"] = Approx(v, 1e-12)
    return out


def expected(p: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
    """Every number the oracle checks, by review JSON path."""
    pol = policy(p)
    out = {f"lifecycle.policy.{k}": v for k, v in pol.items()}
    res = resilience(p, pol)
    out.update(cost(p, pol))
    out.update(res)
    out.update(capacity(p, pol, review))
    out.update(consistency(p))
    out.update(observability(p, pol, res["resilience.timeout_ms"]))
    return out
