"""Lab 1, degrade, don't crash: a Redis outage in the middle of a conversation.

The first version: a request handler that GETs the session as a JSON blob and SETs it back,
on a redis-py client with its defaults (no socket timeout). The attendee's fix:
`resilient(store) -> store`, which wraps the lab's `SessionStore`. The check drives 50 turns
of one conversation through it, with the store unreachable from turn 11 to turn 40.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from statekit.lifecycle import LifecyclePolicy
from statekit.resilience.store import ResilientStore
from statekit.store.blocking import SessionStore
from statekit.workbook.labs.result import Link, Result, _what, cleanup, failed, namespace, passed, with_deadline

LAB = "degrade"
TURNS = 50
OUTAGE = range(11, 41)  # turns sent while the store is unreachable
#: the lab's latency budget: what one state call may cost a request during the outage
BUDGET_MS = 200
#: what the first requests of an outage may wait in all before the breaker opens
STALL_BUDGET_MS = 2_000
#: what the check measures against them: the budgets plus a margin for a busy machine
CALL_LIMIT_MS = 2.5 * BUDGET_MS
STALL_LIMIT_MS = 1.5 * STALL_BUDGET_MS
#: how long after the store is back the agent may stay degraded
RECOVERY_BUDGET_S = 60


def break_it(
    redis_url: str = "fakeredis://", *, freeze_s: float = 1.5, requests: int = 10, down_requests: int = 3
) -> list[dict[str, Any]]:
    """The first version through an outage: GET and SET of a JSON blob with redis-py's
    defaults. Phases: `requests` normal ones; Redis frozen for `freeze_s` (one request waits
    it out); Redis down for `down_requests` (each raises: an HTTP 500; on a real server
    redis-py's default retries and backoff make each take seconds); `requests` once it is
    back. One row per request."""
    import redis

    link = Link(redis_url)
    if link.injector is not None:
        plain = link.injector.client(socket_timeout=None)  # type: ignore[arg-type]
    else:
        plain = redis.Redis(host="127.0.0.1", port=link.proxy.port)  # type: ignore[union-attr]
    key = f"{namespace(LAB)}:blob"
    rows: list[dict[str, Any]] = []

    def handle(phase: str, n: int, client: Any) -> None:
        start = time.perf_counter()
        status = 200
        try:
            raw = client.get(key)
            blob = json.loads(raw) if raw else {"turns": []}
            blob["turns"].append(f"turn {n}")
            client.set(key, json.dumps(blob))
        except redis.exceptions.RedisError:
            status = 500
        rows.append(
            {"request": n, "phase": phase, "latency_ms": (time.perf_counter() - start) * 1000, "status": status}
        )

    n = 0
    try:
        for _ in range(requests):
            n += 1
            handle("normal", n, plain)
        if link.injector is not None:
            link.injector.hang()
        else:
            link.proxy.stall()  # type: ignore[union-attr]
        thaw = threading.Timer(freeze_s, link.up if link.injector is not None else link.proxy.resume)  # type: ignore[union-attr]
        thaw.start()
        n += 1
        handle("frozen", n, plain)
        thaw.join()
        if link.injector is not None:
            link.injector.fail()
            dead = plain
        else:  # a port nothing listens on: what a client meets while the server restarts
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dead = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(down_requests):
            n += 1
            handle("down", n, dead)
        link.up()
        for _ in range(requests):
            n += 1
            handle("back", n, plain)
        plain.delete(key)
    finally:
        link.close()
    return rows


def plot_break(rows: list[dict[str, Any]], ax: Any = None) -> Any:
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(10, 3.2))[1]
    for status, colour in ((200, "#1a7f37"), (500, "#cf222e")):
        pts = [r for r in rows if r["status"] == status]
        ax.scatter([r["request"] for r in pts], [r["latency_ms"] for r in pts], c=colour, label=f"HTTP {status}")
    ax.set_yscale("log")
    ax.set_xlabel("request")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("GET/SET of a JSON blob, redis-py defaults, through an outage")
    ax.legend()
    return ax


@with_deadline(LAB)
def check(resilient: Any, redis_url: str = "fakeredis://") -> Result:
    """Run the lab's outage through `resilient(store)`: 50 turns, the store unreachable
    from turn 11 to turn 40, each turn a load_context and an append_turn."""
    from statekit.testing.faults import FakeClock

    if not callable(resilient):
        return failed(LAB, "resilient is not a function: define resilient(store) and return the store to use")
    ns = namespace(LAB)
    with Link(redis_url) as link:
        # a window that holds the whole conversation, so the check can see every turn afterwards
        policy = LifecyclePolicy(window_turns=TURNS + 10, max_bytes=200_000)
        base = SessionStore(link.client(socket_timeout=1.0), policy, namespace=ns)
        try:
            store = resilient(base)
        except Exception as exc:  # the attendee's code: say what it raised
            return failed(LAB, f"resilient(store) raised {type(exc).__name__}: {exc}")
        if store is None:
            return failed(LAB, "resilient(store) returned None: return the store the request handler should use")
        if not hasattr(store, "append_turn") or not hasattr(store, "load_context"):
            return failed(
                LAB, f"resilient(store) returned a {type(store).__name__}, which has no load_context/append_turn"
            )
        clock = FakeClock()
        if isinstance(store, ResilientStore):
            static = _settings_hint(store)
            if static:
                return static
            store.clock = clock  # the breaker's reset timeout passes at once, with no waiting
        sid = "s-outage"
        reader = SessionStore(link.client(socket_timeout=5.0), base.policy, namespace=ns)
        stall = 0.0  # what the calls of the outage waited in all, whatever the store
        try:
            for n in range(1, TURNS + 1):
                if n == OUTAGE.start:
                    link.down()
                if n == OUTAGE.stop:
                    link.up()
                if n >= OUTAGE.stop and isinstance(store, ResilientStore):
                    # a breaker's reset timeout passes between two requests once Redis is back: a
                    # probe that failed (on a loaded machine the first call after the link comes
                    # back can miss its 1 s timeout) is tried again at the next turn, as it would be
                    clock.advance(store.breaker.reset_timeout)
                try:
                    started = time.perf_counter()
                    ctx = store.load_context(sid)
                    took = [time.perf_counter() - started]
                    if not isinstance(getattr(ctx, "turns", None), list):
                        return failed(
                            LAB,
                            f"turn {n}: load_context returned {'None' if ctx is None else _what(ctx)}, not a context "
                            "(with its turns)",
                        )
                    if n in OUTAGE and n > OUTAGE.start:
                        held = {t.get("content") for t in ctx.turns if isinstance(t, dict)}
                        earlier = [k for k in range(1, n) if f"turn {k}" in held]
                        if any(f"turn {k}" not in held for k in range(1, OUTAGE.start)):
                            return failed(
                                LAB,
                                f"the agent forgot the customer: the context at turn {n} during the outage held "
                                f"{len(earlier)} of {n - 1} earlier turns. Which context can a resilient store "
                                "give back while Redis is away?",
                                turn=n,
                            )
                    started = time.perf_counter()
                    store.append_turn(sid, {"role": "user", "content": f"turn {n}"}, turn_id=f"t{n}")
                    took.append(time.perf_counter() - started)
                except Exception as exc:
                    where = "during the outage" if n in OUTAGE else ("after the outage" if n >= OUTAGE.stop else "")
                    why = _raise_reason(store)
                    return failed(
                        LAB,
                        f"turn {n} raised {type(exc).__name__} {where}: the request handler answers HTTP 500. {why}",
                        turn=n,
                    )
                if n in OUTAGE:
                    stall += sum(took)
                    if max(took) * 1000 > CALL_LIMIT_MS:
                        call = "load_context" if took[0] >= took[-1] else "append_turn"
                        return failed(
                            LAB,
                            f"request {n} took {sum(took):.1f} s during the outage ({call}: {max(took):.1f} s): "
                            f"nothing bounds how long a call waits, and the lab's budget is {BUDGET_MS} ms a call",
                            turn=n,
                        )
                    if stall * 1000 > STALL_LIMIT_MS:
                        return failed(
                            LAB,
                            f"by request {n} the outage had cost {stall:.1f} s of waiting in all; the lab allows "
                            f"{STALL_BUDGET_MS / 1000:g} s: does every request still try Redis first?",
                            turn=n,
                        )
            mode = getattr(store, "mode", "normal")
            if mode != "normal":
                return failed(
                    LAB,
                    f"the store came back at turn {OUTAGE.stop}, and at turn {TURNS} your store was still {mode}",
                )
            if isinstance(store, ResilientStore):
                store.flush()
            stored = [t["content"] for t in reader.load_context(sid).turns]
        finally:
            link.up()
            cleanup(reader.client, ns)
    missing = [n for n in range(1, TURNS + 1) if f"turn {n}" not in stored]
    twice = [n for n in range(1, TURNS + 1) if stored.count(f"turn {n}") > 1]
    if missing:
        return failed(LAB, _lost_hint(store, missing), lost=len(missing))
    if twice:
        return failed(LAB, f"turn {twice[0]} is stored twice: a write was replayed without its turn id")
    if not isinstance(store, ResilientStore):  # a store of the attendee's own making that rode it out
        return passed(
            LAB,
            f"all {TURNS} turns stored once, no request raised, and the outage cost {stall:.1f} s of waiting in all",
        )
    stats = store.stats.as_dict()
    return passed(
        LAB,
        f"all {TURNS} turns stored once, no request raised; during the outage a request waited at most "
        f"{store.timeout_ms:.0f} ms per call, the breaker opened after {store.breaker.fail_max} failures, "
        f"and {stats['writes_replayed']} buffered turns were replayed when the store came back",
        **stats,
    )


def _settings_hint(store: ResilientStore) -> Result | None:
    if store.timeout_ms > BUDGET_MS:
        return failed(
            LAB,
            f"timeout_ms={store.timeout_ms:g}: during the outage each call to Redis waits "
            f"{store.timeout_ms / 1000:g} s before it gives up"
            f", and the lab's budget for a state call is {BUDGET_MS} ms",
        )
    stall = store.breaker.fail_max * store.timeout_ms
    if stall > STALL_BUDGET_MS:
        return failed(
            LAB,
            f"fail_max={store.breaker.fail_max}: the first {store.breaker.fail_max} calls of the outage each wait "
            f"{store.timeout_ms:g} ms ({stall / 1000:g} s in all) before the breaker opens; the lab allows "
            f"{STALL_BUDGET_MS / 1000:g} s",
        )
    if store.breaker.reset_timeout > RECOVERY_BUDGET_S:
        return failed(
            LAB,
            f"reset_timeout_s={store.breaker.reset_timeout:g}: once Redis is back, your agent stays degraded "
            f"(no history, writes held) for up to {store.breaker.reset_timeout / 60:g} minutes; the lab allows "
            f"{RECOVERY_BUDGET_S} s",
        )
    return None


def _raise_reason(store: Any) -> str:
    if isinstance(store, ResilientStore):
        if store.write_policy == "raise":
            return "Your write policy is 'raise': a write the store cannot take is handed to the caller."
        return "What in your store lets the error through?"
    return f"The handler called a plain {type(store).__name__}, which raises when Redis cannot be reached."


def _lost_hint(store: Any, missing: list[int]) -> str:
    first = missing[0]
    policy = getattr(store, "write_policy", None)
    if policy == "drop":
        return f"turn {first} was lost during the outage ({len(missing)} turns in all): your write policy is 'drop'"
    if policy == "buffer" and store.stats.buffer_overflow:
        return (
            f"turn {first} was lost during the outage ({len(missing)} turns in all): the write buffer holds "
            f"{store.buffer_max_turns} turns and the outage lasted {len(OUTAGE)}"
        )
    return f"turn {first} was lost ({len(missing)} turns in all): where do writes go while Redis is away?"
