"""A live outage, timed: a `ResilientStore` and a plain redis-py client side by side, and a
step-by-step walkthrough of what an application sees (notebook 01)."""

from __future__ import annotations

import threading
import time
from typing import Any

from statekit.resilience.store import ResilientStore
from statekit.store.blocking import SessionStore


def outage_timeline(
    redis_url: str = "fakeredis://",
    *,
    before_s: float = 1.0,
    outage_s: float = 3.0,
    after_s: float = 3.0,
    interval_ms: float = 50,
    timeout_ms: float = 100,
    fail_max: int = 3,
    reset_timeout_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Drive a ResilientStore and a plain redis-py client through the same outage; time every call.

    On fakeredis the outage is a FaultInjector hang (calls never answer until it ends); on
    a real server it is `CLIENT PAUSE ALL`, which freezes every client but the admin one.
    The plain client uses redis-py's defaults (no socket timeout, its own retries), as a
    first version of a service would. Returns one record per call: series, time since
    start, latency, whether it raised, and for statekit the mode and the context's source.
    """
    import redis as redis_lib

    from statekit.testing.faults import OutageDrill

    drill = OutageDrill(redis_url)
    plain = drill.plain_client()
    store_client = drill.client()
    store = SessionStore(store_client, namespace="outage-demo")
    rs = ResilientStore(store, timeout_ms=timeout_ms, fail_max=fail_max, reset_timeout_s=reset_timeout_s)
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = time.monotonic()
    end = start + before_s + outage_s + after_s

    def record(**fields: Any) -> None:
        with lock:
            records.append(fields)

    def drive_statekit() -> None:
        i = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            ctx = rs.load_context("demo")
            t1 = time.monotonic()
            record(
                series="statekit ResilientStore",
                op="load_context",
                t_s=t0 - start,
                latency_ms=(t1 - t0) * 1000,
                raised=False,
                mode=rs.mode,
                source=ctx.source,
            )
            rs.append_turn("demo", {"role": "user", "content": f"turn {i}"})
            record(
                series="statekit ResilientStore",
                op="append_turn",
                t_s=t1 - start,
                latency_ms=(time.monotonic() - t1) * 1000,
                raised=False,
                mode=rs.mode,
                source=None,
            )
            i += 1
            time.sleep(max(0.0, interval_ms / 1000 - (time.monotonic() - t0)))

    def drive_plain() -> None:
        i = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            for op, call in (
                ("load_context", lambda: plain.lrange("plain-demo", -10, -1)),
                ("append_turn", lambda n=i: plain.rpush("plain-demo", f"turn {n}")),
            ):
                t1 = time.monotonic()
                raised = False
                try:
                    call()
                except redis_lib.exceptions.RedisError:
                    raised = True
                record(
                    series="plain redis-py",
                    op=op,
                    t_s=t1 - start,
                    latency_ms=(time.monotonic() - t1) * 1000,
                    raised=raised,
                    mode=None,
                    source=None,
                )
            i += 1
            time.sleep(max(0.0, interval_ms / 1000 - (time.monotonic() - t0)))

    threads = [threading.Thread(target=drive_statekit), threading.Thread(target=drive_plain)]
    for th in threads:
        th.start()
    time.sleep(before_s)
    with drill.outage(outage_s):
        pass  # the drivers keep calling; the drill waits the outage out
    for th in threads:
        th.join()
    rs.flush()
    for rec in records:
        rec["outage"] = before_s <= rec["t_s"] < before_s + outage_s
        rec["outage_start_s"], rec["outage_end_s"] = before_s, before_s + outage_s
    return sorted(records, key=lambda r: (r["series"], r["t_s"]))


def summarize_timeline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per series and phase (before, during, after the outage): calls, p50/max latency, raised."""
    from statekit.observe.metrics import percentile

    out = []
    for series in sorted({r["series"] for r in records}):
        for phase in ("before", "during", "after"):
            rows = [r for r in records if r["series"] == series and _phase(r) == phase]
            if not rows:
                continue
            lat = sorted(r["latency_ms"] for r in rows)
            out.append(
                {
                    "series": series,
                    "phase": phase,
                    "calls": len(rows),
                    "p50_ms": round(percentile(lat, 50), 3),
                    "p99_ms": round(percentile(lat, 99), 3),
                    "max_ms": round(lat[-1], 1),
                    "raised": sum(r["raised"] for r in rows),
                }
            )
    return out


def _phase(record: dict[str, Any]) -> str:
    if record["t_s"] < record["outage_start_s"]:
        return "before"
    return "during" if record["t_s"] < record["outage_end_s"] else "after"


def degraded_walkthrough(*, timeout_ms: float = 50, reset_timeout_s: float = 0.5) -> dict[str, Any]:
    """What an application sees through a hang, step by step, on an embedded server.

    A turn is stored; the server hangs, and a write times out but still lands late (as a
    frozen server applies what was in its socket buffer when it thaws); the application
    reads a session it saw (from its cache, with the buffered turn) and one it never saw
    (the fallback's default); the server heals, the breaker's reset timeout passes (on a
    `FakeClock`, so the walkthrough takes no time), and the next read replays the buffer:
    each turn once, in order. Returns `{"steps": [...], "stats": {...}}`.
    """
    from statekit.testing.faults import FakeClock, FaultInjector

    injector, clock = FaultInjector(), FakeClock()
    rs = ResilientStore(
        SessionStore(injector.client()),
        timeout_ms=timeout_ms,
        fail_max=2,
        reset_timeout_s=reset_timeout_s,
        fallback=lambda sid: {"summary": "(context unavailable: ask the user to recap)"},
        clock=clock,
    )
    steps: list[dict[str, Any]] = []

    def read(step: str, session_id: str) -> None:
        ctx = rs.load_context(session_id)
        steps.append(
            {
                "step": step,
                "session": session_id,
                "source": ctx.source,
                "degraded": ctx.degraded,
                "mode": rs.mode,
                "buffered writes": rs.buffered,
                "turns": [t["content"] for t in ctx.turns],
                "summary": ctx.summary,
            }
        )

    rs.append_turn("s-1", {"role": "user", "content": "My order 1009 has not arrived."})
    read("before the outage", "s-1")
    injector.hang(deliver_late=True)  # writes time out, but a late one still lands on the server
    rs.append_turn("s-1", {"role": "assistant", "content": "Sorry to hear that: let me check."})
    read("outage: a session this process has seen", "s-1")
    read("outage: a session it has never seen", "s-2")
    injector.heal()
    clock.advance(reset_timeout_s)
    read("after recovery", "s-1")
    return {"steps": steps, "stats": rs.stats.as_dict()}
