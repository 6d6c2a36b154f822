"""Lab 0, prove you need state: a support agent on a messaging channel.

The channel's webhook delivers only the newest message of a conversation. The first
version is stateless: the caller resends the whole history with each request. That works
for a few turns; then the request passes the channel's 16 KB limit, and every turn costs
more tokens than the last. `sk.assess` on the service's profile says why it needs
server-side state. The attendee's fix: `handle(client, session_id, message)`, which returns
the messages the model reads, with the conversation kept in Redis. The check sends 50
turns, one message a request, each on a new client (as if every request landed on another
app instance); from turn 26 on, a fresh copy of the handler's process state answers, so the
conversation must come back from Redis. At turn 50 the model must read the order number from
turn 1 and the last 5 messages.
"""

from __future__ import annotations

import copy
import json
import os
import types
from pathlib import Path
from typing import Any

from statekit.workbook.labs.result import Result, failed, passed, with_deadline

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


#: the turn from which the requests land on another app instance (a fresh copy of the handler's process state)
SWITCH = 26
#: the newest messages the model must read each turn, with the order number from turn 1
RECENT = 5


def fresh_instance(handle: Any) -> Any:
    """`handle` as another app instance runs it: the same code, with the module-level state it
    reads (dicts, lists, objects) copied as it is now, before the conversation, so that
    nothing the first instance keeps in its process reaches it."""
    if not isinstance(handle, types.FunctionType):
        try:
            return copy.deepcopy(handle)
        except Exception:  # an object that cannot be copied: run it as it is
            return handle
    old = handle.__globals__
    new: dict[str, Any] = dict(old)
    clones: dict[int, Any] = {}

    def names(code: types.CodeType) -> set[str]:
        out = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                out |= names(const)
        return out

    def clone(fn: types.FunctionType) -> types.FunctionType:
        if id(fn) in clones:
            return clones[id(fn)]
        closure = None
        if fn.__closure__:
            closure = tuple(types.CellType(_copied(c.cell_contents)) for c in fn.__closure__)
        twin = types.FunctionType(fn.__code__, new, fn.__name__, fn.__defaults__, closure)
        twin.__kwdefaults__ = copy.deepcopy(fn.__kwdefaults__)
        clones[id(fn)] = twin
        for name in names(fn.__code__):
            if name in old and name in new and new[name] is old[name]:
                new[name] = _copied(old[name])
        return twin

    def _copied(value: Any) -> Any:
        if isinstance(value, types.FunctionType) and value.__globals__ is old:
            return clone(value)
        if isinstance(value, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)):
            return value
        try:
            return copy.deepcopy(value)
        except Exception:  # a client, a lock: shared as it is
            return value

    return clone(handle)


def run_handler(handle: Any, redis_url: str = "fakeredis://") -> dict[str, Any]:
    """Send the lab's 50 messages through `handle`, each request on a new client of the same
    server: up to turn `SWITCH` on this instance, from then on on another one (`fresh_instance`).
    What the model read each turn, and its last context."""
    from statekit.backends import connect

    sid = f"lab0-{os.urandom(4).hex()}"
    private = redis_url.startswith("fakeredis")
    server_url = f"fakeredis://lab0-{os.urandom(4).hex()}" if private else redis_url
    other = fresh_instance(handle)
    served: list[int] = []
    last: list[dict[str, Any]] = []
    try:
        for n in range(1, TURNS + 1):
            out = (handle if n < SWITCH else other)(connect(server_url), sid, message(n))
            if not isinstance(out, list) or not all(isinstance(m, dict) for m in out):
                what = type(out).__name__
                if isinstance(out, list):
                    what = f"a list of {type(next(m for m in out if not isinstance(m, dict))).__name__}"
                return {"error": f"handle returned {what} at turn {n}", "turn": n, "out": out}
            last = out
            served.append(request_bytes(out))
            if n == SWITCH - 1:
                before = out
            if n == SWITCH:
                switched = out
        client = connect(server_url)
        written = client.dbsize() if private else len(list(client.scan_iter(match=f"*{sid}*")))
    finally:  # whatever happened, the session leaves nothing behind
        client = connect(server_url)
        if private:
            client.flushall()
        else:
            keys = list(client.scan_iter(match=f"*{sid}*"))
            if keys:
                client.delete(*keys)
    return {"served": served, "last": last, "before": before, "switched": switched, "written": written}


def _holds(context: list[dict[str, Any]], text: str) -> bool:
    return any(text in str(m.get("content", "")) for m in context)


@with_deadline(LAB)
def check(handle: Any, redis_url: str = "fakeredis://") -> Result:
    if not callable(handle):
        return failed(LAB, "handle is not a function: define handle(client, session_id, message)")
    try:
        run = run_handler(handle, redis_url)
    except Exception as exc:
        return failed(LAB, f"handle raised {type(exc).__name__}: {exc}")
    if "error" in run:
        return failed(
            LAB, f"{run['error']}: return the list of messages the model reads, {{'role': ..., 'content': ...}} dicts"
        )
    served, last = run["served"], run["last"]
    over = next((i for i, b in enumerate(served, 1) if b > LIMIT_BYTES), None)
    if over is not None:
        return failed(
            LAB,
            f"at turn {over} the model was sent {served[over - 1]:,} bytes, over the {LIMIT_BYTES:,}-byte budget, "
            f"and by turn {TURNS} {served[-1]:,}: the context grows with every turn",
            peak=max(served),
        )
    before, switched = run["before"], run["switched"]
    earlier = f"Message {SWITCH - 2} "  # held by the first instance at turn SWITCH - 1: held at SWITCH too?
    if (_holds(before, FACT) and not _holds(switched, FACT)) or (
        _holds(before, earlier) and not _holds(switched, earlier)
    ):
        where = (
            "the conversation is written to Redis but what the model reads is never read back from it"
            if run["written"]
            else "nothing of it is in Redis"
        )
        return failed(
            LAB,
            f"from turn {SWITCH} the requests landed on another app instance, and at turn {SWITCH} the model read "
            f"{len(switched)} message(s) without the conversation so far: {where}. It lives in this Python "
            "process, so a restart or a request that lands on another app instance starts the conversation over",
        )
    if not _holds(last, FACT):
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
    recent = [n for n in range(TURNS - RECENT + 1, TURNS + 1) if not _holds(last, f"Message {n} ")]
    if recent:
        return failed(
            LAB,
            f"at turn {TURNS} the model read {len(last)} messages, without message {recent[0]} "
            f"({len(recent)} of the last {RECENT} missing): it answers without what the customer just said",
        )
    return passed(
        LAB,
        f"50 turns, one message a request: the model read at most {max(served):,} bytes a turn (the full history "
        f"would be {request_bytes([message(n) for n in range(1, TURNS + 1)]):,}), the order number from turn 1 "
        f"and the last {RECENT} messages included, and from turn {SWITCH} another app instance read the "
        "conversation back from Redis",
        peak=max(served),
    )
