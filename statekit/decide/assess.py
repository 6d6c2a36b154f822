"""Does this workload need state at all? A rubric and a cost model that decide it.

The verdict is one of four, from least to most machinery:

- ``stateless``: every request carries what it needs; any instance serves any request.
- ``client-side state``: the caller keeps the history and resends it; no store to run.
- ``server-side session state``: the service keeps the session (this is what SessionStore is for).
- ``durable workflow state``: progress must survive restarts for hours or days (checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from statekit.decide.profile import AUTHORITATIVE_PURPOSES, WorkloadProfile

__all__ = [
    "assess",
    "what_if",
    "SERVER_STATE_VERDICTS",
    "Assessment",
    "RubricAnswer",
    "CostModel",
    "cost_model",
    "Verdict",
    "SESSION_ID_BYTES",
]

Verdict = Literal["stateless", "client-side state", "server-side session state", "durable workflow state"]

#: The verdicts under which the service keeps state in Redis (a store to size, protect, observe).
SERVER_STATE_VERDICTS: frozenset[str] = frozenset({"server-side session state", "durable workflow state"})

#: What a request carries instead of its history when the server holds the session: a
#: session id and its header (a UUID in a header line is about 40 bytes; 64 leaves room).
SESSION_ID_BYTES = 64

#: Redis spends more memory than the text it stores (keys, list nodes, allocator rounding).
#: 1.3 is a planning factor for assess(); statekit.decide.sizing models the real overhead.
_MEMORY_FACTOR = 1.3


@dataclass(frozen=True)
class RubricAnswer:
    """One rubric question, its yes/no answer, and the evidence from the profile."""

    question: str
    answer: bool
    evidence: str


@dataclass(frozen=True)
class CostModel:
    """Bytes and tokens per request over one session, with full-context replay against server state.

    Lists are indexed by turn (turn 1 first). Costs are USD per 1,000 sessions.
    """

    turns: list[int]
    replay_request_bytes: list[int]
    server_request_bytes: list[int]
    store_read_bytes: list[int]
    replay_prompt_tokens: list[int]
    server_prompt_tokens: list[int]
    wire_break_even_turn: int | None
    token_break_even_turn: int | None
    session_token_break_even_turn: int | None
    replay_cost_per_1000_sessions: float
    server_cost_per_1000_sessions: float
    server_token_cost_per_1000_sessions: float
    server_memory_cost_per_1000_sessions: float
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def largest_replay_request_bytes(self) -> int:
        return max(self.replay_request_bytes)

    @property
    def saving_per_1000_sessions(self) -> float:
        return self.replay_cost_per_1000_sessions - self.server_cost_per_1000_sessions


@dataclass(frozen=True)
class Assessment:
    """The decision: a verdict, the reasons for it, the rubric behind it and the cost model."""

    service: str
    verdict: Verdict
    reasons: list[str]
    rubric: list[RubricAnswer]
    cost: CostModel

    def headline(self) -> dict[str, Any]:
        """One row for a side-by-side table of profiles."""
        c = self.cost
        return {
            "service": self.service,
            "verdict": self.verdict,
            "largest replay request (bytes)": c.largest_replay_request_bytes,
            "server state pays from turn (tokens)": c.token_break_even_turn,
            "replay $/1k sessions": round(c.replay_cost_per_1000_sessions, 2),
            "server state $/1k sessions": round(c.server_cost_per_1000_sessions, 2),
        }

    def as_text(self) -> str:
        """The assessment as plain text for a terminal: verdict, rubric, reasons, cost headline."""
        c = self.cost
        width = max(len(r.question) for r in self.rubric)
        lines = [f"{self.service}: {self.verdict}", ""]
        lines += [f"  {r.question:<{width}}  {'yes' if r.answer else 'no ':<3}  {r.evidence}" for r in self.rubric]
        lines += ["", "  why:"] + [f"    - {r}" for r in self.reasons]
        lines += [
            "",
            f"  largest request with full replay: {c.largest_replay_request_bytes:,} bytes",
            f"  token cost per 1,000 sessions: replay ${c.replay_cost_per_1000_sessions:,.2f}, "
            f"server state ${c.server_cost_per_1000_sessions:,.2f}",
            f"  server state pays from turn: wire {c.wire_break_even_turn or 'never'}, "
            f"tokens {c.token_break_even_turn or 'never'}",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost"]["largest_replay_request_bytes"] = self.cost.largest_replay_request_bytes
        out["cost"]["saving_per_1000_sessions"] = round(self.cost.saving_per_1000_sessions, 6)
        return out


def cost_model(profile: WorkloadProfile) -> CostModel:
    """Compute bytes and tokens per request for each turn of a typical session, both ways.

    Full-context replay: request k carries turns 1..k and the model reads all of them.
    Server state: request k carries turn k and a session id; the service reads the last W
    turns (W = `state.context_window_turns`, default all) and, once turns fall out of the
    window, a summary of `state.summary_tokens` tokens in their place. Independent units
    need only themselves either way. Memory cost charges the session's stored bytes for as
    long as its keys live (the session and then its TTL, as the recommended lifecycle policy
    sets it) at `costs.redis_price_per_gb_hour`.

    Two break-evens: `token_break_even_turn` is the first request that sends fewer tokens
    with server state; `session_token_break_even_turn` the shortest session whose requests,
    summed, do (a whole session pays only from there).
    """
    from statekit.decide.lifecycle import recommend as recommend_lifecycle

    t = profile.turns
    n, b, tok = t.per_session, t.bytes_per_turn, t.tokens_per_turn
    window = profile.state.context_window_turns or n
    s_tok = profile.state.summary_tokens
    # A summary costs about as many bytes per token as the turns do (4 bytes a token when no model
    # reads the turns, as the lifecycle policy assumes); and no model reads it when none reads them.
    s_bytes = math.ceil(s_tok * (b / tok if tok else 4.0))
    s_tok_read = s_tok if tok else 0
    independent = profile.state.units_independent
    turns = list(range(1, n + 1))

    def request(k: int) -> tuple[int, int, int, int, int]:
        """Request k's replay bytes, server bytes, store read bytes, replay tokens, server tokens."""
        history = 0 if independent else k - 1
        kept = min(history, window)
        summarised = history > window
        return (
            (history + 1) * b,
            b + SESSION_ID_BYTES,
            kept * b + (s_bytes if summarised else 0),
            (history + 1) * tok,
            (kept + 1) * tok + (s_tok_read if summarised else 0),
        )

    replay_bytes, server_bytes, store_bytes, replay_tok, server_tok = (
        list(c) for c in zip(*map(request, turns), strict=True)
    )

    # each break-even is looked for over one horizon, up to 10x the typical session's turns (a
    # request of a session longer than the typical one can be the first to pay)
    horizon = [request(k) for k in range(1, 10 * n + 1)]
    wire_even = next((k for k, r in enumerate(horizon, 1) if r[1] < r[0]), None)
    token_even = next((k for k, r in enumerate(horizon, 1) if r[4] < r[3]), None)
    # the shortest session whose requests, summed, send fewer tokens with server state
    session_even, replay_sum, server_sum = None, 0, 0
    for k, r in enumerate(horizon, 1):
        replay_sum, server_sum = replay_sum + r[3], server_sum + r[4]
        if server_sum < replay_sum:
            session_even = k
            break

    price = profile.costs.token_price_per_million / 1e6
    replay_cost = 1000 * sum(replay_tok) * price
    server_tok_cost = 1000 * sum(server_tok) * price
    held_bytes = (min(n, window) * b + (s_bytes if n > window else 0)) * _MEMORY_FACTOR
    ttl_s = recommend_lifecycle(profile).policy.ttl_seconds
    hours = (profile.traffic.session_minutes * 60 + ttl_s) / 3600
    mem_cost = 1000 * held_bytes / 1e9 * hours * profile.costs.redis_price_per_gb_hour
    return CostModel(
        turns=turns,
        replay_request_bytes=replay_bytes,
        server_request_bytes=server_bytes,
        store_read_bytes=store_bytes,
        replay_prompt_tokens=replay_tok,
        server_prompt_tokens=server_tok,
        wire_break_even_turn=wire_even,
        token_break_even_turn=token_even,
        session_token_break_even_turn=session_even,
        replay_cost_per_1000_sessions=round(replay_cost, 6),
        server_cost_per_1000_sessions=round(server_tok_cost + mem_cost, 6),
        server_token_cost_per_1000_sessions=round(server_tok_cost, 6),
        server_memory_cost_per_1000_sessions=round(mem_cost, 9),
        assumptions={
            "window_turns": window,
            "summary_tokens": s_tok,
            "summary_bytes": s_bytes,
            "session_id_bytes": SESSION_ID_BYTES,
            "memory_factor": _MEMORY_FACTOR,
            "memory_held_hours": hours,
            "token_price_per_million": profile.costs.token_price_per_million,
            "redis_price_per_gb_hour": profile.costs.redis_price_per_gb_hour,
        },
    )


def _rubric(profile: WorkloadProfile, cost: CostModel) -> tuple[RubricAnswer, ...]:
    c, s = profile.client, profile.state
    largest = cost.largest_replay_request_bytes
    fits = largest <= c.max_request_bytes
    can_send = c.can_send_full_context and fits
    if not c.can_send_full_context:
        send_ev = "the caller cannot resend its history (the profile says so)"
    else:
        send_ev = (
            f"the full context at turn {len(cost.turns)} is {largest:,} bytes against a request limit of "
            f"{c.max_request_bytes:,} bytes" + ("" if fits else ": it does not fit")
        )

    reused = s.reused_across_requests and profile.traffic.requests_per_session > 1
    n_req = profile.traffic.requests_per_session
    reuse_ev = f"{n_req} request{'s' if n_req != 1 else ''} per session" + (
        ", and later ones read what earlier ones wrote" if s.reused_across_requests else ", none reads another's"
    )

    authoritative = sorted(sc.name for sc in profile.state_classes if sc.purpose in AUTHORITATIVE_PURPOSES)
    blockers = []
    if not can_send:
        blockers.append("the caller cannot carry the full context")
    if authoritative and not c.trusted:
        blockers.append(f"{', '.join(authoritative)} must be authoritative and the caller is not trusted")
    if s.shared_across_clients:
        blockers.append("several callers share one session")
    if s.long_running_steps:
        blockers.append("progress must survive restarts")
    client_side = not blockers
    client_ev = "nothing stops it" if client_side else "; ".join(blockers)

    indep_ev = "each unit is complete on its own" if s.units_independent else "a unit depends on earlier ones"
    return (
        RubricAnswer("Can the client send the full context?", can_send, send_ev),
        RubricAnswer("Is state reused across requests?", reused, reuse_ev),
        RubricAnswer("Could client-side state do?", client_side, client_ev),
        RubricAnswer("Is each unit of work independent?", s.units_independent, indep_ev),
    )


def what_if(
    profile: WorkloadProfile,
    *,
    can_send_full_context: bool | None = None,
    reused_across_requests: bool | None = None,
    units_independent: bool | None = None,
    long_running_steps: bool | None = None,
    shared_across_clients: bool | None = None,
    turns_per_session: int | None = None,
) -> WorkloadProfile:
    """A copy of `profile` with some rubric answers changed (None keeps the profile's own).

    The changed profile is validated again, so an impossible combination raises ProfileError.
    """
    data = profile.model_dump()
    for section, key, value in (
        ("client", "can_send_full_context", can_send_full_context),
        ("state", "reused_across_requests", reused_across_requests),
        ("state", "units_independent", units_independent),
        ("state", "long_running_steps", long_running_steps),
        ("state", "shared_across_clients", shared_across_clients),
        ("turns", "per_session", turns_per_session),
    ):
        if value is not None:
            data[section][key] = value
    if turns_per_session is not None:
        data["traffic"]["requests_per_session"] = turns_per_session
        window = data["state"]["context_window_turns"]
        if window is not None and window > turns_per_session:
            data["state"]["context_window_turns"] = turns_per_session
    return WorkloadProfile.from_dict(data, source=f"what-if of {profile.service}")


def assess(profile: WorkloadProfile) -> Assessment:
    """Decide whether `profile` needs state, and where it should live, with reasons and costs."""
    cost = cost_model(profile)
    can_send, reused, client_side, independent = _rubric(profile, cost)
    reasons: list[str] = []
    verdict: Verdict
    if independent.answer and not reused.answer:
        verdict = "stateless"
        reasons.append(f"{independent.evidence} and nothing is reused ({reused.evidence}).")
        reasons.append(
            "Any instance can serve any request: a state store would add a failure mode, memory "
            "and latency for no benefit."
        )
    elif profile.state.long_running_steps:
        verdict = "durable workflow state"
        reasons.append(
            f"Progress must survive restarts over a {profile.traffic.session_minutes:,.0f}-minute task "
            f"of {profile.turns.per_session} steps: checkpoint each step, replay from the last one."
        )
        reasons.append(
            "Session-cache semantics (TTL, eviction) are not enough on their own: a lost key is a "
            "lost task, so persistence (AOF) or a durable store behind Redis is required."
        )
    elif client_side.answer:
        verdict = "client-side state"
        reasons.append(f"{can_send.evidence}, and no state needs server authority.")
        reasons.append("The caller keeps the history: no store to run, size, secure or fail over.")
    else:
        verdict = "server-side session state"
        reasons.append(f"{reused.evidence}.")
        reasons.append(f"Client-side state will not do: {client_side.evidence}.")

    if verdict in ("server-side session state", "client-side state"):
        window = cost.assumptions["window_turns"]
        costs = (
            f"over a {profile.turns.per_session}-turn session, full replay costs "
            f"${cost.replay_cost_per_1000_sessions:,.2f} and server state "
            f"${cost.server_cost_per_1000_sessions:,.2f} per 1,000 sessions"
        )
        if cost.token_break_even_turn:
            even = cost.session_token_break_even_turn
            whole = (
                f"a whole session sends fewer from {even} turns"
                + (
                    f" (a typical {profile.turns.per_session}-turn session still sends more)"
                    if even > profile.turns.per_session
                    else ""
                )
                if even
                else "no session of up to 10x the typical length sends fewer in all"
            )
            reasons.append(
                f"Tokens: with a {window}-turn window and a summary, prompts stop growing; from request "
                f"{cost.token_break_even_turn} server state sends fewer tokens than full replay, and "
                f"{whole}; {costs}."
            )
        else:
            wire = (
                f"saves wire bytes from turn {cost.wire_break_even_turn}"
                if cost.wire_break_even_turn
                else "never sends fewer wire bytes"
            )
            if profile.turns.tokens_per_turn == 0:
                why = "no model reads the turns (0 tokens a turn)"
            elif profile.turns.per_session <= window:
                why = f"sessions fit in the {window}-turn window"
            else:
                why = "the summary costs as many tokens as the turns it stands for"
            reasons.append(f"Tokens: {why}, so server state {wire} but saves no tokens; {costs}.")
    return Assessment(
        service=profile.service,
        verdict=verdict,
        reasons=reasons,
        rubric=[can_send, reused, client_side, independent],
        cost=cost,
    )
