"""Decide a `ResilientStore`'s settings for a workload profile: timeout, breaker, buffer and
write policy per kind of state, each with its number and reason."""

from __future__ import annotations

import math
from typing import Any

#: Store calls a request makes without a fold: one load and one append.
BASE_CALLS_PER_REQUEST = 2

#: How long the breaker should tolerate consecutive failures at peak before it opens.
TRIP_WITHIN_S = 0.5

#: The bounds on fail_max: fewer than 3 trips on one slow call; more than 20 lets a dead store
#: cost a slow process many timeouts before it opens.
FAIL_MAX_BOUNDS = (3, 20)

#: The outage the write buffer is sized to ride out.
OUTAGE_TO_SURVIVE_S = 30


def _num(x: float) -> str:
    """A rate as the reasons print it: thousands separated, and three significant digits below 10
    (so 0.0038 is not printed as 0.0)."""
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _ceil(x: float) -> int:
    """Ceiling of a product of rates, without float noise (16.8 / 6 x 45 is 126.00000000000001)."""
    return math.ceil(round(x, 9))


def round_trips(profile: Any, policy: Any = None) -> dict[str, float]:
    """The store round trips of one request: `worst` (a load, an append and, when the policy
    folds turns into a summary, the fold the append runs next) and `mean` (a fold every
    `fold_batch`-th append). A profile folds when it keeps a summary and its sessions
    outgrow the window."""
    if policy is None:
        from statekit.decide.lifecycle import recommend as recommend_lifecycle

        policy = recommend_lifecycle(profile).policy
    folds = policy.summarizer is not None and profile.turns.per_session > policy.window_turns
    return {
        "folds": folds,
        "worst": BASE_CALLS_PER_REQUEST + (1 if folds else 0),
        "mean": BASE_CALLS_PER_REQUEST + (1 / policy.fold_batch if folds else 0),
    }


def recommend(profile: Any, outage_s: float = OUTAGE_TO_SURVIVE_S, policy: Any = None) -> dict[str, Any]:
    """ResilientStore settings for a WorkloadProfile, each with its number and reason.

    Timeout: the state latency budget divided by the round trips a request can make (two: a
    load and an append; three when the append also folds turns into the summary), floored
    to whole milliseconds (at least 1), so a hung store costs a request at most its budget.
    Breaker: it counts failures per process, so from each process's share of the peak
    calls (`traffic.app_instances` processes): open after about half a second of them,
    never fewer than 3 and never more than 20, probe every 10 s; the reason gives the
    window the bounded number really covers. Buffer: each process's peak write rate times
    the outage to ride out, plus half again. Write policy per kind of state: authoritative
    state (quota, approval, financial) fails closed ("raise"), because acting on an
    unconfirmed approval or balance is worse than refusing; everything else is buffered,
    and for durable workflows (progress must survive restarts) in a `DurableBuffer` on
    local disk, since an in-memory buffer dies with the process it should outlive.
    """
    from statekit.decide.profile import AUTHORITATIVE_PURPOSES

    t = profile.traffic
    budget = profile.latency_budget_ms
    trips = round_trips(profile, policy)
    worst_trips = int(trips["worst"])
    timeout_ms = max(1, math.floor(budget / worst_trips))
    worst_wait_ms = worst_trips * timeout_ms
    instances = t.app_instances
    # the busier of the peak (its concurrent sessions over a session's length) and the day's
    # average (a profile whose peak is below its own average would otherwise size for nothing)
    at_peak = t.peak_concurrent_sessions * t.requests_per_session / (t.session_minutes * 60)
    on_average = t.new_sessions_per_day * t.requests_per_session / 86_400
    requests_per_s = max(at_peak, on_average)
    rate_from = "at peak" if at_peak >= on_average else "on the day's average (busier than the profile's peak)"
    round_trips_mean = trips["mean"]
    calls_per_s = requests_per_s * round_trips_mean
    per_process_calls = calls_per_s / instances
    low, high = FAIL_MAX_BOUNDS
    wanted = _ceil(per_process_calls * TRIP_WITHIN_S)
    fail_max = int(min(high, max(low, wanted)))
    trips_after_s = fail_max / per_process_calls
    writes_per_s = requests_per_s  # one append per request
    per_process_writes = writes_per_s / instances
    buffer = max(1, _ceil(per_process_writes * outage_s * 1.5))
    durable = bool(profile.state.long_running_steps)
    policies = {c.name: ("raise" if c.purpose in AUTHORITATIVE_PURPOSES else "buffer") for c in profile.state_classes}
    folds = "a load, an append and the fold it runs" if trips["folds"] else "a load and an append"
    if worst_wait_ms <= budget:
        wait = f"a hung store costs it at most {worst_trips} x {timeout_ms} = {worst_wait_ms} ms, within the budget"
    else:
        wait = (
            f"a hung store costs it {worst_trips} x {timeout_ms} = {worst_wait_ms} ms, over the {budget:g} ms "
            "budget: the timeout does not go below 1 ms"
        )
    bounded = (
        f"the {TRIP_WITHIN_S:g} s target gives {wanted}, raised to the floor of {low}"
        if wanted < low
        else f"the {TRIP_WITHIN_S:g} s target gives {wanted}, lowered to the ceiling of {high}"
        if wanted > high
        else f"the {TRIP_WITHIN_S:g} s target rounded up to whole failures, within the bounds {low}..{high}"
    )
    if trips_after_s <= 4 * TRIP_WITHIN_S:
        speed = "so one slow call does not trip it and a real outage trips it fast"
    else:
        speed = (
            f"so at this call rate the breaker needs {trips_after_s:.3g} s of failures to open: until then "
            "each call waits its timeout"
        )
    return {
        "timeout_ms": timeout_ms,
        "worst_wait_ms": worst_wait_ms,
        "round_trips_per_request": {"worst": worst_trips, "mean": round_trips_mean},
        "fail_max": fail_max,
        "breaker_opens_after_s": trips_after_s,
        "reset_timeout_s": 10,
        "buffer_max_turns": buffer,
        "buffer_fleet_turns": buffer * instances,
        "durable_buffer": durable,
        "write_policy_by_state_class": policies,
        "app_instances": instances,
        "peak_requests_per_second": round(requests_per_s, 2),
        "peak_store_calls_per_second": round(calls_per_s, 2),
        "peak_store_calls_per_second_per_process": round(per_process_calls, 2),
        "outage_to_survive_s": outage_s,
        "reasons": {
            "timeout_ms": (
                f"the {budget:g} ms state budget over the {worst_trips} store calls a request can make "
                f"({folds}), floored to whole ms: {wait} before the breaker opens, then nothing"
            ),
            "fail_max": (
                f"the breaker counts failures per process: {rate_from} each of the {instances} application "
                f"process(es) makes {_num(per_process_calls)} store calls a second ({_num(calls_per_s)} for the "
                f"fleet, {round_trips_mean:g} per request); {fail_max} consecutive failures is "
                f"{trips_after_s:.3g} s of them ({bounded}), {speed}"
            ),
            "reset_timeout_s": "probe a failed store every 10 s with one call; the rest fail fast meanwhile",
            "buffer_max_turns": (
                f"{_num(per_process_writes)} appends a second per process {rate_from} ({_num(writes_per_s)} for "
                f"the fleet over {instances} process(es)) x {outage_s:g} s of outage x 1.5 = {buffer:,} turns in "
                "each process's buffer" + (" (never fewer than 1)" if buffer == 1 else "")
            ),
            "durable_buffer": (
                "progress must survive restarts: buffered steps are kept on local disk "
                "(ResilientStore(durable_buffer=PATH)) and replayed by the next process, not lost with this one"
                if durable
                else "sessions may lose the turns buffered by a process that crashes during an outage: "
                "an in-memory buffer is enough"
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
