"""Decide a `ResilientStore`'s settings for a workload profile: timeout, breaker, buffer and
write policy per kind of state, each with its number and reason."""

from __future__ import annotations

from typing import Any

#: Store calls a request makes: one load and one append, plus a fold every fourth append.
STORE_CALLS_PER_REQUEST = 2.25

#: How long the breaker should tolerate consecutive failures at peak before it opens.
TRIP_WITHIN_S = 0.5

#: The outage the write buffer is sized to ride out.
OUTAGE_TO_SURVIVE_S = 30


def recommend(profile: Any, outage_s: float = OUTAGE_TO_SURVIVE_S) -> dict[str, Any]:
    """ResilientStore settings for a WorkloadProfile, each with its number and reason.

    Timeout: half the state latency budget, since a request makes two store calls that can
    each hit it. Breaker: open after about half a second of consecutive failures at peak
    (never fewer than 3, never more than 20), probe every 10 s. Buffer: the peak write rate
    times the outage to ride out, plus half again. Write policy per kind of state:
    authoritative state (quota, approval, financial) fails closed ("raise") instead of
    being buffered, because acting on an unconfirmed approval or balance is worse than
    refusing; everything else is buffered.
    """
    import math

    from statekit.decide.profile import AUTHORITATIVE_PURPOSES

    t = profile.traffic
    budget = profile.latency_budget_ms
    timeout_ms = max(1, math.floor(budget / 2))
    requests_per_s = t.peak_concurrent_sessions * t.requests_per_session / (t.session_minutes * 60)
    calls_per_s = requests_per_s * STORE_CALLS_PER_REQUEST
    fail_max = int(min(20, max(3, math.ceil(calls_per_s * TRIP_WITHIN_S))))
    writes_per_s = requests_per_s  # one append per request
    buffer = math.ceil(writes_per_s * outage_s * 1.5)
    policies = {c.name: ("raise" if c.purpose in AUTHORITATIVE_PURPOSES else "buffer") for c in profile.state_classes}
    worst_wait_ms = 2 * timeout_ms
    return {
        "timeout_ms": timeout_ms,
        "fail_max": fail_max,
        "reset_timeout_s": 10,
        "buffer_max_turns": buffer,
        "write_policy_by_state_class": policies,
        "peak_requests_per_second": round(requests_per_s, 2),
        "peak_store_calls_per_second": round(calls_per_s, 2),
        "outage_to_survive_s": outage_s,
        "reasons": {
            "timeout_ms": (
                f"half the {budget:g} ms state budget: a request makes two store calls (load, append), "
                f"so a hung store costs it at most {worst_wait_ms} ms before the breaker opens, then nothing"
            ),
            "fail_max": (
                f"at peak the fleet makes {calls_per_s:,.1f} store calls a second; {fail_max} consecutive "
                f"failures is about {TRIP_WITHIN_S:g} s of them (bounded to 3..20), so one slow call does not "
                "trip it and a real outage trips it fast"
            ),
            "reset_timeout_s": "probe a failed store every 10 s with one call; the rest fail fast meanwhile",
            "buffer_max_turns": (
                f"{writes_per_s:,.1f} appends a second at peak x {outage_s:g} s of outage x 1.5 = {buffer:,} "
                "turns for the fleet; divide by the number of app instances for each process's buffer"
            ),
            "write_policy_by_state_class": (
                "authoritative state fails closed (raise): an approval, quota or balance must not be "
                "acted on unconfirmed; conversation and caches are buffered and replayed in order"
            ),
        },
        "degraded_experience": [
            "replies keep coming: the model gets the last context this instance saw, plus turns "
            "written since, or a default context for a session it has never seen",
            'a reply built on a default context should say so ("I may have lost the start of our '
            "conversation\"): Context.source is 'default'",
            "actions on authoritative state are refused with a retry-later message",
            "no 500s: ResilientStore never raises StoreUnavailable except for write_policy='raise'",
        ],
    }
