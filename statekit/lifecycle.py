"""Lifecycle rules for session state: small immutable values a reader takes in at a glance.

A `LifecyclePolicy` bounds a session four ways: a rolling window of recent turns, a
summary (of at most `summary_max_bytes`) standing for the turns that left the window, a
sliding TTL over every key of the session, and a hard byte cap that rejects an update
before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "LifecyclePolicy",
    "Summarizer",
    "ExtractiveSummarizer",
    "LLMSummarizer",
    "truncate_utf8",
    "recommend",
    "Recommendation",
]


class Summarizer(Protocol):
    """Folds evicted turns into the running summary within a byte budget.

    Any callable with this signature will do. An optional `label` attribute says what the
    result is; `Context.messages()` puts it before the summary, so the model is told what it
    reads. A summarizer that raises loses nothing: the store keeps the evicted turns parked
    in Redis and offers them again on a later append.
    """

    def __call__(self, summary: str, evicted_turns: Sequence[Mapping[str, Any]], budget_bytes: int) -> str: ...


def truncate_utf8(text: str, budget_bytes: int) -> str:
    """`text` cut to at most `budget_bytes` of UTF-8 without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= budget_bytes:
        return text
    return raw[:budget_bytes].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class ExtractiveSummarizer:
    """Excerpts, not a summary: a deterministic fold that needs no model.

    Each evicted turn becomes one line, `role: first sentence` (at most `line_chars`
    characters); lines accumulate oldest first, and when the budget is exceeded the oldest
    lines go first. The same input always gives the same result. It keeps what was said
    first in each turn and forgets the rest (an answer given in a second sentence is gone),
    and its `label` tells the model so. For a real summary, use `LLMSummarizer`.
    """

    line_chars: int = 160
    label: str = "Excerpts of earlier turns (the first sentence of each, oldest dropped first; not a full summary)"

    def __call__(self, summary: str, evicted_turns: Sequence[Mapping[str, Any]], budget_bytes: int) -> str:
        lines = [ln for ln in summary.splitlines() if ln]
        for turn in evicted_turns:
            role = str(turn.get("role", "turn"))
            content = " ".join(str(turn.get("content", "")).split())
            end = min((i for i in (content.find(". "), content.find("? "), content.find("! ")) if i >= 0), default=-1)
            first = content[: end + 1] if end >= 0 else content
            if len(first) > self.line_chars:
                first = first[: self.line_chars - 1] + "…"
            lines.append(f"{role}: {first}")
        while lines and len("\n".join(lines).encode("utf-8")) > budget_bytes:
            lines.pop(0)
        return truncate_utf8("\n".join(lines), budget_bytes)


_LLM_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Fold the new turns into the summary. Keep facts, decisions, names, numbers and open "
    "questions; drop greetings and repetition. Answer with the new summary only, in at most "
    "{budget_bytes} bytes of UTF-8 text."
)


@dataclass(frozen=True)
class LLMSummarizer:
    """A summary written by a language model you call: `complete(prompt) -> str`.

    `complete` is your model call (an OpenAI or Anthropic client, a local model), with its
    own timeout; statekit never calls a model by itself. The prompt holds `instructions`,
    the running summary and the evicted turns; the answer is cut to the byte budget.

    Failures lose nothing: when `complete` raises (a timeout, a rate limit) or answers with
    an empty or non-text reply, the append that triggered the fold still succeeds, the
    store records a `fold_failed` event, and the evicted turns stay parked in Redis to be
    offered again on the next append. If the model stays down, parked turns count against
    the session's byte cap, so appends are eventually refused (`StateTooLarge`) instead of
    growing without bound.
    """

    complete: Callable[[str], str]
    instructions: str = _LLM_INSTRUCTIONS
    label: str = "Summary of the earlier conversation"
    max_turn_chars: int = 4000

    def prompt(self, summary: str, evicted_turns: Sequence[Mapping[str, Any]], budget_bytes: int) -> str:
        """The text sent to the model for one fold."""
        turns = "\n".join(
            f"{turn.get('role', 'turn')}: {str(turn.get('content', ''))[: self.max_turn_chars]}"
            for turn in evicted_turns
        )
        return (
            f"{self.instructions.format(budget_bytes=budget_bytes)}\n\n"
            f"Summary so far:\n{summary or '(empty)'}\n\nNew turns:\n{turns}\n\nNew summary:"
        )

    def __call__(self, summary: str, evicted_turns: Sequence[Mapping[str, Any]], budget_bytes: int) -> str:
        answer = self.complete(self.prompt(summary, evicted_turns, budget_bytes))
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"the model answered {answer!r} instead of a summary; the turns stay parked")
        return truncate_utf8(answer.strip(), budget_bytes)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class LifecyclePolicy:
    """How a session is bounded. Invalid or contradictory values raise `ValueError` at once.

    - `window_turns`: recent turns kept verbatim.
    - `ttl_seconds`: idle time after which every key of the session expires; each write slides it.
    - `max_bytes`: hard cap on a session's stored bytes (turns, summary, structured state);
      an update that would pass it raises `StateTooLarge` and writes nothing.
    - `summary_max_bytes`: budget of the summary that stands for evicted turns.
    - `summarizer`: `(summary, evicted_turns, budget_bytes) -> str`; None drops evicted
      turns inside the append script instead of summarising them.
    - `fold_batch`: evicted turns parked in Redis before they are folded into the summary
      in one extra round trip, so appends average 1 + 1/fold_batch round trips.
    """

    window_turns: int = 10
    ttl_seconds: int = 86_400
    max_bytes: int = 50_000
    summary_max_bytes: int = 4_000
    summarizer: Callable[[str, Sequence[Mapping[str, Any]], int], str] | None = field(
        default_factory=ExtractiveSummarizer
    )
    fold_batch: int = 4

    def __post_init__(self) -> None:
        _positive("window_turns", self.window_turns)
        _positive("ttl_seconds", self.ttl_seconds)
        _positive("max_bytes", self.max_bytes)
        _positive("fold_batch", self.fold_batch)
        if not isinstance(self.summary_max_bytes, int) or self.summary_max_bytes < 0:
            raise ValueError(f"summary_max_bytes must be a whole number >= 0, got {self.summary_max_bytes!r}")
        if self.summarizer is not None and not callable(self.summarizer):
            raise ValueError("summarizer must be callable (summary, evicted_turns, budget_bytes) -> str, or None")
        if self.summarizer is not None and self.summary_max_bytes == 0:
            raise ValueError("a summarizer with summary_max_bytes=0 can keep nothing: raise the budget or drop it")
        if self.summary_max_bytes >= self.max_bytes:
            raise ValueError(
                f"summary_max_bytes ({self.summary_max_bytes}) must be below max_bytes ({self.max_bytes}): "
                "the summary alone would fill the session"
            )

    @property
    def ttl_ms(self) -> int:
        return self.ttl_seconds * 1000

    @property
    def mode(self) -> str:
        """'park' when evicted turns are summarised, 'drop' when there is no summarizer."""
        return "drop" if self.summarizer is None else "park"

    @property
    def max_log_turns(self) -> int:
        """Turns a session's log holds at most in steady state: the window plus a parked batch."""
        return self.window_turns + (0 if self.summarizer is None else self.fold_batch)

    def turn_budget_bytes(self, state_bytes: int = 0) -> int:
        """The largest encoded turn that always fits: the cap less the summary, the state and
        the rest of a full log, shared evenly."""
        free = self.max_bytes - self.summary_max_bytes - state_bytes
        return max(0, math.floor(free / self.max_log_turns))


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
