"""Lab 2, bounded state: an agent whose turns carry tool output (40 KB each).

The first version appends every turn to a Redis list, forever, with no TTL: 50 turns make
2 MB per session. The attendee's fix: a `LifecyclePolicy`. The check writes the lab's
conversation through a `SessionStore` with it and holds it to the lab's budget: at most
256 KB per session, every turn accepted, the order number of turn 1 still in the context at
turn 50, and an idle session kept at least an hour (a customer may pause) and gone within a
day.
"""

from __future__ import annotations

from typing import Any

from statekit.errors import StateTooLarge
from statekit.lifecycle import LifecyclePolicy
from statekit.store.blocking import SessionStore
from statekit.workbook.labs.result import Result, _what, cleanup, failed, namespace, passed, with_deadline

LAB = "bounded"
TURNS = 50
TURN_BYTES = 40_000
BUDGET_BYTES = 256_000
MAX_TTL_S = 86_400
#: a customer may step away for half an hour and come back to the same conversation; an
#: idle session must outlive that pause, with some grace
MIN_TTL_S = 3_600
FACT = "4471-XK"


def turn(n: int) -> dict[str, Any]:
    """Turn `n` of the lab's conversation: a first sentence, then 40 KB of tool output."""
    first = f"My order number is {FACT}." if n == 1 else f"Step {n} looked up the order."
    return {"role": "user" if n % 2 else "assistant", "content": first + " " + "x" * (TURN_BYTES - len(first) - 1)}


def break_it(redis_url: str = "fakeredis://", *, sessions: int = 5) -> list[dict[str, Any]]:
    """The first version: RPUSH each turn to a list per session, no TTL, nothing trimmed.
    Bytes per session after each turn (MEMORY USAGE on a real server, the list's bytes on
    fakeredis, which cannot report memory), and the key's TTL."""
    from statekit.backends import backend_kind, connect

    client = connect(redis_url, socket_timeout=10)
    real = backend_kind(client) != "fakeredis"
    ns = namespace(LAB)
    rows = []
    for n in range(1, TURNS + 1):
        for s in range(sessions):
            client.rpush(f"{ns}:history:{s}", str(turn(n)))
        key = f"{ns}:history:0"
        size = client.memory_usage(key, samples=0) if real else sum(len(v) for v in client.lrange(key, 0, -1))
        rows.append({"turn": n, "bytes_per_session": int(size), "ttl_s": client.ttl(key), "measured": real})
    cleanup(client, ns)
    return rows


def run_policy(policy: LifecyclePolicy, redis_url: str = "fakeredis://") -> list[dict[str, Any]]:
    """The lab's conversation through a SessionStore with `policy`: one row per turn (stored
    bytes, or the rejection)."""
    from statekit.backends import connect

    client = connect(redis_url, socket_timeout=10)
    ns = namespace(LAB)
    store = SessionStore(client, policy, namespace=ns)
    rows: list[dict[str, Any]] = []
    try:
        for n in range(1, TURNS + 1):
            try:
                store.append_turn("s-1", turn(n))
                rejected = ""
            except StateTooLarge as exc:
                rejected = str(exc)
            ctx = store.load_context("s-1")
            context_text = ctx.summary + " ".join(t["content"][:200] for t in ctx.turns + ctx.pending)
            rows.append({"turn": n, "bytes": ctx.bytes, "rejected": rejected, "fact_in_context": FACT in context_text})
        ttls = [client.ttl(k) for k in store.keys("s-1") if client.exists(k)]
        for row in rows:
            row["ttl_s"] = max(ttls, default=-2)
    finally:
        cleanup(client, ns)
    return rows


def plot(unbounded: list[dict[str, Any]], bounded: list[dict[str, Any]] | None = None, ax: Any = None) -> Any:
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 3.2))[1]
    ax.plot([r["turn"] for r in unbounded], [r["bytes_per_session"] / 1e6 for r in unbounded], label="first version")
    if bounded:
        ax.plot([r["turn"] for r in bounded], [r["bytes"] / 1e6 for r in bounded], label="your policy")
    ax.axhline(BUDGET_BYTES / 1e6, ls="--", c="grey", label="the lab's budget")
    ax.set_xlabel("turn")
    ax.set_ylabel("MB per session")
    ax.legend()
    return ax


@with_deadline(LAB)
def check(policy: Any, redis_url: str = "fakeredis://") -> Result:
    """Hold `policy` to the lab's budget on the lab's conversation."""
    if not isinstance(policy, LifecyclePolicy):
        return failed(LAB, f"policy is {_what(policy)}: make it a statekit LifecyclePolicy(...)")
    if policy.summarizer is not None:
        broken = _summarizer_fault(policy)
        if broken:
            return failed(LAB, broken)
    rows = run_policy(policy, redis_url)
    peak = max(rows, key=lambda r: r["bytes"])
    if peak["bytes"] > BUDGET_BYTES:
        return failed(
            LAB,
            f"a session held {peak['bytes'] / 1000:,.0f} KB at turn {peak['turn']}: over the lab's budget of "
            f"{BUDGET_BYTES / 1000:,.0f} KB. What does a session keep at most under your policy?",
            peak_bytes=peak["bytes"],
        )
    rejected = [r for r in rows if r["rejected"]]
    if rejected:
        r = rejected[0]
        return failed(
            LAB,
            f"turn {r['turn']} ({TURN_BYTES / 1000:.0f} KB) was rejected: max_bytes={policy.max_bytes:,} cannot hold "
            f"the {policy.max_log_turns} turns your policy keeps (window_turns={policy.window_turns} plus "
            f"{policy.max_log_turns - policy.window_turns} waiting to be summarised) and the summary. "
            "The user sees an error on an ordinary turn.",
            rejected=len(rejected),
        )
    if not rows[-1]["fact_in_context"]:
        how = "evicted turns are dropped (summarizer=None)" if policy.summarizer is None else "the summary lost it"
        return failed(
            LAB,
            f"at turn {TURNS} the order number the customer gave in turn 1 is gone from the context: {how}",
        )
    ttl = rows[-1]["ttl_s"]
    if ttl == -1 or ttl > MAX_TTL_S:
        lives = "never expire" if ttl == -1 else f"live {ttl / 86_400:g} days"
        return failed(
            LAB,
            f"an idle session's keys {lives}: the lab's retention is 1 day, and sessions nobody comes back to hold "
            "memory until then",
        )
    if ttl < MIN_TTL_S:
        lives = "were gone by the end of the conversation" if ttl < 0 else f"live {ttl:g} s once the customer stops"
        return failed(
            LAB,
            f"an idle session's keys {lives}: a customer who pauses for a coffee comes back to an agent that forgot "
            f"them. The lab keeps a paused conversation at least {MIN_TTL_S / 3600:g} h",
        )
    return passed(
        LAB,
        f"50 turns of {TURN_BYTES / 1000:.0f} KB: at most {peak['bytes'] / 1000:,.0f} KB per session (budget "
        f"{BUDGET_BYTES / 1000:,.0f} KB), every turn accepted, the order number still in the context, idle "
        f"sessions gone after {ttl / 3600:g} h",
        peak_bytes=peak["bytes"],
    )


def _summarizer_fault(policy: LifecyclePolicy) -> str:
    """What is wrong with `policy.summarizer`, tried on two of the lab's turns ('' when it works)."""
    try:
        summary = policy.summarizer("", [turn(1), turn(2)], policy.summary_max_bytes)  # type: ignore[misc]
    except Exception as exc:  # the attendee's code: say what it raised
        return (
            f"your summarizer raised {type(exc).__name__}: {exc}. The store calls it as "
            "summarizer(summary, evicted_turns, budget_bytes); until it works, evicted turns pile up unsummarised"
        )
    if not isinstance(summary, str):
        return (
            f"your summarizer returned {type(summary).__name__} {summary!r:.40}, not the summary's text (a str): "
            "until it does, evicted "
            "turns pile up unsummarised"
        )
    return ""
