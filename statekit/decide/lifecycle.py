"""Decide a lifecycle policy for a workload profile: window, TTL, byte cap and summary budget,
each number with its reason (`recommend`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from statekit.lifecycle import ExtractiveSummarizer, LifecyclePolicy


@dataclass(frozen=True)
class Recommendation:
    """A lifecycle policy for a profile, with the reason behind each number."""

    policy: LifecyclePolicy
    reasons: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        p = self.policy
        return {
            "window_turns": p.window_turns,
            "ttl_seconds": p.ttl_seconds,
            "max_bytes": p.max_bytes,
            "summary_max_bytes": p.summary_max_bytes,
            "summarizer": None if p.summarizer is None else type(p.summarizer).__name__,
            "fold_batch": p.fold_batch,
            "reasons": dict(self.reasons),
        }


#: Grace after a session's typical length before its keys expire: a user who pauses for
#: coffee keeps the conversation, one who comes back tomorrow starts afresh.
IDLE_GRACE_SECONDS = 1800

#: Structured state (plans, tool results, flags) a session may hold beside its turns.
STATE_ALLOWANCE_BYTES = 4096

#: A turn may be this many times the profile's typical turn before the cap rejects it.
TURN_HEADROOM = 3


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def recommend(profile: Any, fold_batch: int = 4) -> Recommendation:
    """Choose a LifecyclePolicy for a WorkloadProfile, each value with its reason.

    Window: the profile's `context_window_turns` (else all turns of a session). Summary
    budget: `summary_tokens` at the profile's bytes per token (none, and evicted turns
    dropped, when the profile asks for no summary). TTL: the session's length plus 30
    minutes of grace (three session lengths for long-running work), never beyond the
    retention period. Cap: a full log of turns up to 3x the typical size, the summary and a
    4 KB state allowance.
    """
    turns, state = profile.turns, profile.state
    window = state.context_window_turns or turns.per_session
    bytes_per_token = turns.bytes_per_turn / turns.tokens_per_turn if turns.tokens_per_turn else 4.0
    summary_budget = _round_up(state.summary_tokens * bytes_per_token, 256) if state.summary_tokens else 0
    session_s = profile.traffic.session_minutes * 60
    if state.long_running_steps:
        ttl = _round_up(max(3 * session_s, session_s + IDLE_GRACE_SECONDS), 300)
        ttl_reason = f"three task lengths ({3 * session_s / 3600:,.1f} h): a paused task must survive until it resumes"
    else:
        ttl = _round_up(session_s + IDLE_GRACE_SECONDS, 300)
        ttl_reason = (
            f"a {profile.traffic.session_minutes:g}-minute session plus {IDLE_GRACE_SECONDS // 60} minutes of "
            "grace, rounded up to 5 minutes; every write slides it"
        )
    retention_s = profile.compliance.retention_days * 86_400
    if ttl > retention_s:
        ttl = retention_s
        ttl_reason += f"; capped at the {profile.compliance.retention_days}-day retention period"
    if session_s + ttl > retention_s:
        ttl_reason += (
            f". WARNING: every write slides the TTL, so a session's data lives up to its length plus the TTL "
            f"({(session_s + ttl) / 3600:,.1f} h), beyond the {profile.compliance.retention_days}-day retention: "
            "end sessions before the retention period, or shorten them"
        )
    log_turns = window + (fold_batch if summary_budget else 0)
    record_overhead = 64  # turn id, envelope and JSON around the text
    cap = _round_up(
        log_turns * (TURN_HEADROOM * turns.bytes_per_turn + record_overhead) + summary_budget + STATE_ALLOWANCE_BYTES,
        1024,
    )
    policy = LifecyclePolicy(
        window_turns=window,
        ttl_seconds=ttl,
        max_bytes=cap,
        summary_max_bytes=summary_budget,
        summarizer=ExtractiveSummarizer() if summary_budget else None,
        fold_batch=fold_batch,
    )
    reasons = {
        "window_turns": (
            f"the model needs the last {window} turns verbatim"
            if state.context_window_turns
            else f"the profile sets no window, so all {window} turns of a session"
        ),
        "summary_max_bytes": (
            f"{state.summary_tokens} summary tokens at {bytes_per_token:.1f} bytes per token, rounded up to 256 bytes"
            if summary_budget
            else "the profile wants no summary: turns leaving the window are dropped inside the append script"
        ),
        "ttl_seconds": ttl_reason,
        "max_bytes": (
            f"{log_turns} turns in the log at up to {TURN_HEADROOM}x the typical {turns.bytes_per_turn:,} bytes, "
            f"the {summary_budget:,}-byte summary and {STATE_ALLOWANCE_BYTES:,} bytes of structured state, "
            "rounded up to 1 KB; anything larger is rejected before it is written"
        ),
        "fold_batch": (
            f"evicted turns are folded {fold_batch} at a time: {1 + 1 / fold_batch:.2f} round trips per append "
            "on average, never more than 2"
            if summary_budget
            else "unused without a summary"
        ),
    }
    return Recommendation(policy, reasons)
