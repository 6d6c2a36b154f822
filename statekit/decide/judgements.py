"""The judgement calls behind a review: the choices that no formula forces, each with the
number it gives, the reason for it, and the review fields that rest on it.

The arithmetic of a review is checked by a second implementation (the oracle in the test
suite); these are the inputs that arithmetic cannot check, named so that a reader can
disagree with one and know what moves.
"""

from __future__ import annotations

from typing import Any

__all__ = ["judgement_calls"]


def judgement_calls(
    profile: Any,
    policy: Any,
    capacity: dict[str, Any],
    cost: Any,
    resilience: dict[str, Any],
    read_gap_ms: float,
) -> list[dict[str, Any]]:
    """The review's judgement calls for `profile`: name, what was chosen, its numbers, why,
    and `paths` (the review JSON fields that rest on it; `*` stands for any list index)."""
    from statekit.decide import lifecycle, sizing
    from statekit.decide import resilience as res_mod
    from statekit.decide.assess import _MEMORY_FACTOR

    t = profile.traffic
    session_s = t.session_minutes * 60
    even, even_session = cost.token_break_even_turn, cost.session_token_break_even_turn
    calls = [
        {
            "name": "sessions held at the peak include their TTL tail",
            "choice": f"size for {capacity['active_sessions']:,} sessions ({capacity['sized_for']})",
            "numbers": {
                "over the day (arrivals x (session + TTL))": capacity["daily_held_sessions"],
                "at the peak (peak sessions x (session + TTL) / session)": capacity["peak_held_sessions"],
                "TTL tail factor at the peak": round((session_s + policy.ttl_seconds) / session_s, 2),
            },
            "why": (
                "a session's keys live its length and then its TTL; at the peak's arrival rate, sessions "
                "waiting out their TTL are held beside the active ones. Sizing for the peak assumes it "
                "lasts a session and a TTL (a shorter peak holds fewer), and never more than the sessions "
                "the profile starts in a session and a TTL (a day at least)"
            ),
            "paths": [
                "lifecycle.capacity.active_sessions",
                "lifecycle.capacity.growth_over_days.with_policy.*",
                "lifecycle.capacity.total_bytes",
                "lifecycle.capacity.nodes",
            ],
        },
        {
            "name": "token break-even per request and per session",
            "choice": f"request {even or 'never'}; a whole session from {even_session or 'never'} turns",
            "numbers": {"per request": even, "over a whole session": even_session},
            "why": (
                "per request is when one prompt gets cheaper; over a session is when the whole "
                "conversation does. The verdict rests on the rubric, not on either"
            ),
            "paths": ["assessment.cost.token_break_even_turn", "assessment.cost.session_token_break_even_turn"],
        },
        {
            "name": "read gap",
            "choice": f"{read_gap_ms:,.0f} ms between a write and the next read of a session",
            "numbers": {"session_s": session_s, "requests_per_session": t.requests_per_session},
            "why": (
                "a session's requests are spread evenly over its length: requests - 1 gaps between them, "
                "taken as exponential (Poisson arrivals) for the stale-read probability"
            ),
            "paths": ["consistency.read_gap_ms", "consistency.classes.*.stale_at_gaps.*.gap_ms"],
        },
        {
            "name": "replica lag",
            "choice": "exponential, mean 1 ms, until measured (consistency.measure_replica_lag)",
            "numbers": {"mean_ms": 1.0},
            "why": "a same-zone replica under light load; the stale-read figures move with it",
            "paths": [
                "consistency.classes.*.stale_read_probability",
                "consistency.classes.*.stale_at_gaps.*.p",
                "consistency.classes.*.safe_after_ms",
            ],
        },
        {
            "name": "headroom and allowances of the lifecycle policy",
            "choice": (
                f"turns up to {lifecycle.TURN_HEADROOM}x typical, {lifecycle.STATE_ALLOWANCE_BYTES:,} bytes of "
                f"structured state, {lifecycle.IDLE_GRACE_SECONDS // 60} minutes of idle grace"
            ),
            "numbers": {
                "turn_headroom": lifecycle.TURN_HEADROOM,
                "state_allowance_bytes": lifecycle.STATE_ALLOWANCE_BYTES,
                "idle_grace_s": lifecycle.IDLE_GRACE_SECONDS,
                "fold_batch": policy.fold_batch,
            },
            "why": "the cap must not reject a normal long turn; a user who pauses keeps the conversation",
            "paths": ["lifecycle.policy.*"],
        },
        {
            "name": "durable workflows",
            "choice": (
                (
                    f"TTL of three task lengths ({policy.ttl_seconds / 3600:,.1f} h)"
                    if policy.ttl_seconds < profile.compliance.retention_days * 86_400
                    else f"TTL capped at the {profile.compliance.retention_days}-day retention "
                    f"({policy.ttl_seconds / 3600:,.1f} h, under three task lengths: a task paused longer is lost)"
                )
                + ", workers off a queue (no sticky routing), buffered steps on local disk"
                if profile.state.long_running_steps
                else "does not apply: progress need not survive restarts"
            ),
            "numbers": {"ttl_s": policy.ttl_seconds, "durable_buffer": resilience["durable_buffer"]},
            "why": (
                "a paused task must outlive a pause as long as itself twice over; a queue hands a step to "
                "any worker, so reads go to the primary; an in-memory buffer dies with its process"
            ),
            "paths": ["lifecycle.policy.ttl_seconds", "resilience.durable_buffer"],
        },
        {
            "name": "breaker and buffer targets",
            "choice": (
                f"open after {res_mod.TRIP_WITHIN_S:g} s of failures (bounded {res_mod.FAIL_MAX_BOUNDS[0]}.."
                f"{res_mod.FAIL_MAX_BOUNDS[1]}), ride out a {resilience['outage_to_survive_s']:g} s outage x 1.5, "
                f"probe every {resilience['reset_timeout_s']} s"
            ),
            "numbers": {
                "trip_within_s": res_mod.TRIP_WITHIN_S,
                "fail_max_bounds": list(res_mod.FAIL_MAX_BOUNDS),
                "outage_to_survive_s": resilience["outage_to_survive_s"],
                "reset_timeout_s": resilience["reset_timeout_s"],
            },
            "why": "one slow call must not trip the breaker, and a dead store must not cost many timeouts",
            "paths": [
                "resilience.fail_max",
                "resilience.breaker_opens_after_s",
                "resilience.buffer_max_turns",
                "resilience.buffer_fleet_turns",
                "resilience.outage_to_survive_s",
                "resilience.reset_timeout_s",
            ],
        },
        {
            "name": "memory model",
            "choice": "Redis 7.0's data structures and jemalloc size classes (statekit.decide.sizing)",
            "numbers": {
                "node_maxmemory_bytes": capacity["node_maxmemory_bytes"],
                "usable_fraction": capacity["usable_fraction"],
                "baseline_used_memory": sizing.BASELINE_USED_MEMORY,
                "cost_model_memory_factor": _MEMORY_FACTOR,
            },
            "why": (
                "per-session bytes are modelled, not measured: the model is held within a few percent of "
                "INFO memory on a real redis-server by the test suite; a node is filled to 75% of a 13 GiB "
                "maxmemory, leaving room for fragmentation, replication buffers and a fork's copy-on-write"
            ),
            "paths": [
                "lifecycle.capacity.per_session_bytes",
                "lifecycle.capacity.per_session_breakdown.*",
                "lifecycle.capacity.stored_bytes_per_session",
                "lifecycle.capacity.unbounded_per_session_bytes",
                "lifecycle.capacity.unbounded_week_bytes",
                "lifecycle.capacity.total_bytes",
                "lifecycle.capacity.growth_over_days.*",
                "lifecycle.capacity.growth_over_turns.*",
                "lifecycle.capacity.cluster.*",
                "lifecycle.capacity.node_maxmemory_bytes",
                "lifecycle.capacity.usable_fraction",
                "assessment.cost.assumptions.memory_factor",
            ],
        },
        {
            "name": "alert thresholds",
            "choice": "page when more than 1% of calls or appends pass 80% of the timeout or of the cap",
            "numbers": {"tail_share": 0.01, "near_timeout": 0.8, "near_cap": 0.8, "conflict_storm": 0.1},
            "why": "p99 past 80% of a limit leaves time to act before calls time out or writes are rejected",
            "paths": ["observability.alerts.*", "observability.dashboards.*"],
        },
    ]
    return calls
