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
        # the oldest lines go while the text (lines joined by newlines) exceeds the budget;
        # counted once, not joined again after each line dropped
        sizes = [len(line.encode("utf-8")) for line in lines]
        size, drop = sum(sizes) + len(lines) - 1, 0
        while drop < len(lines) and size > budget_bytes:
            size -= sizes[drop] + (1 if drop < len(lines) - 1 else 0)
            drop += 1
        return truncate_utf8("\n".join(lines[drop:]), budget_bytes)


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
