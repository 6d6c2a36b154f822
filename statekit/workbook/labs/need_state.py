"""Lab 0, prove you need state: a support agent on a messaging channel.

The channel's webhook delivers only the newest message of a conversation. The first
version is stateless: the caller resends the whole history with each request. That works
for a few turns; then the request passes the channel's 16 KB limit, and every turn costs
more tokens than the last. `sk.assess` on the service's profile says why it needs
server-side state. The attendee's fix: `handle(client, session_id, message)`, which returns
the messages the model reads, with the conversation kept in Redis. The check sends 50
turns, one message a request, each on a new client (as if every request landed on another
app instance).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from statekit.workbook.labs.result import Result, failed, passed

LAB = "need_state"
TURNS = 50
TURN_BYTES = 700
#: the channel's request limit, and the lab's budget for what the model reads each turn
LIMIT_BYTES = 16_384
FACT = "4471-XK"


def message(n: int) -> dict[str, Any]:
    """Message `n` of the lab's conversation (700 bytes; the order number in the first)."""
    first = f"My order number is {FACT}." if n == 1 else f"Message {n} about the order."
    return {"role": "user" if n % 2 else "assistant", "content": first + " " + "." * (TURN_BYTES - len(first) - 1)}


def request_bytes(messages: list[dict[str, Any]]) -> int:
    return len(json.dumps(messages).encode())


#: the lab's service: data/profiles/support_agent.yaml, shipped in the package (a test keeps them equal)
PROFILE = Path(__file__).with_name("support_agent.yaml")


def break_it(profile_path: str | Path = PROFILE) -> dict[str, Any]:
    """The stateless first version: each request carries the whole history. Bytes and
    tokens per request by turn, the turn whose request the channel first rejects, and what
    `assess` says of the service's profile."""
    from statekit.decide.assess import assess
    from statekit.decide.profile import WorkloadProfile

    history: list[dict[str, Any]] = []
    rows = []
    for n in range(1, TURNS + 1):
        history.append(message(n))
        size = request_bytes(history)
        rows.append({"turn": n, "request_bytes": size, "tokens": size // 4, "rejected": size > LIMIT_BYTES})
    first_rejected = next((r["turn"] for r in rows if r["rejected"]), None)
    assessment = assess(WorkloadProfile.from_yaml(profile_path))
    return {"rows": rows, "first_rejected": first_rejected, "assessment": assessment}


def plot(rows: list[dict[str, Any]], served: list[int] | None = None, ax: Any = None) -> Any:
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 3.2))[1]
    ax.plot([r["turn"] for r in rows], [r["request_bytes"] / 1000 for r in rows], label="stateless: full history")
    if served:
        ax.plot(range(1, len(served) + 1), [b / 1000 for b in served], label="your handler: what the model reads")
    ax.axhline(LIMIT_BYTES / 1000, ls="--", c="grey", label="the channel's limit")
    ax.set_xlabel("turn")
    ax.set_ylabel("KB per request")
    ax.legend()
    return ax


def run_handler(handle: Any, redis_url: str = "fakeredis://") -> dict[str, Any]:
    """Send the lab's 50 messages through `handle`, each request on a new client of the same
    server; return what the model read each turn and the keys the session left in Redis."""
    from statekit.backends import connect

    sid = f"lab0-{os.urandom(4).hex()}"
    server_url = f"fakeredis://lab0-{os.urandom(4).hex()}" if redis_url.startswith("fakeredis") else redis_url
    served: list[int] = []
    last: list[dict[str, Any]] = []
    for n in range(1, TURNS + 1):
        out = handle(connect(server_url), sid, message(n))
        if not isinstance(out, list):
            return {"error": f"handle returned {type(out).__name__} at turn {n}", "turn": n, "out": out}
        last = out
        served.append(request_bytes(out))
    client = connect(server_url)
    keys = list(client.scan_iter(match=f"*{sid}*"))
    if keys:
        client.delete(*keys)
    return {"served": served, "last": last, "keys": len(keys)}


def check(handle: Any, redis_url: str = "fakeredis://") -> Result:
    if not callable(handle):
        return failed(LAB, "handle is not a function: define handle(client, session_id, message)")
    try:
        run = run_handler(handle, redis_url)
    except Exception as exc:
        return failed(LAB, f"handle raised {type(exc).__name__}: {exc}")
    if "error" in run:
        return failed(LAB, f"{run['error']}: return the list of messages the model reads ({run['out']!r})")
    served, last = run["served"], run["last"]
    over = next((i for i, b in enumerate(served, 1) if b > LIMIT_BYTES), None)
    if over is not None:
        return failed(
            LAB,
            f"at turn {over} the model was sent {served[over - 1]:,} bytes, over the {LIMIT_BYTES:,}-byte budget, "
            f"and by turn {TURNS} {served[-1]:,}: the context grows with every turn",
            peak=max(served),
        )
    if not any(FACT in str(m.get("content", "")) for m in last):
        if len(last) <= 1:
            return failed(
                LAB,
                f"at turn {TURNS} the model read {len(last)} message: the channel delivers only the newest one, so "
                "the customer's order number from turn 1 is unknown to it",
            )
        return failed(
            LAB,
            f"at turn {TURNS} the model read {len(last)} messages, and the order number from turn 1 was not among "
            "them: what stands for the turns that left the window?",
        )
    if run["keys"] == 0:
        return failed(
            LAB,
            "the model saw the conversation, but nothing of it is in Redis: it lives in this Python process, so a "
            "restart or a request that lands on another app instance starts the conversation over",
        )
    return passed(
        LAB,
        f"50 turns, one message a request: the model read at most {max(served):,} bytes a turn (the full history "
        f"would be {request_bytes([message(n) for n in range(1, TURNS + 1)]):,}), the order number from turn 1 "
        f"included, and the conversation is in Redis ({run['keys']} keys)",
        peak=max(served),
    )
