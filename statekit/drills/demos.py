"""A workload to watch: sessions, a conflict storm and an outage, with metrics attached."""

from __future__ import annotations

import contextlib
import random
import threading
import time

from statekit.observe.metrics import StateMetrics


def demo_workload(
    redis_url: str = "fakeredis://",
    *,
    sessions: int = 40,
    turns: int = 20,
    storm_writers: int = 8,
    storm_updates: int = 30,
) -> StateMetrics:
    """Drive a store so that every panel of the dashboard has something to show.

    Phases, each marked in the metrics' timeline: normal traffic (appends and loads through
    a ResilientStore), a conflict storm (writers updating one session at once), oversized
    writes rejected by the cap, and a short outage (an injected hang on fakeredis, CLIENT
    PAUSE on a real server) that the resilient store rides out.
    """
    from statekit.lifecycle import LifecyclePolicy
    from statekit.resilience.store import ResilientStore
    from statekit.store.blocking import SessionStore
    from statekit.testing.faults import OutageDrill

    metrics = StateMetrics()
    drill = OutageDrill(redis_url)
    client = drill.client()
    policy = LifecyclePolicy(window_turns=8, max_bytes=20_000, summary_max_bytes=1_000, ttl_seconds=600)
    store = SessionStore(client, policy, namespace="demo-obs", metrics=metrics)
    rs = ResilientStore(store, timeout_ms=50, fail_max=3, reset_timeout_s=0.5, listeners=[metrics])

    def mark(phase: str) -> None:
        metrics.timeline.append((time.time(), f"phase: {phase}", ""))

    mark("normal traffic")
    rng = random.Random(0)
    for t in range(turns):
        for s in range(sessions):
            sid = f"s-{s}"
            rs.load_context(sid)
            size = int(rng.lognormvariate(6, 0.7))
            rs.append_turn(sid, {"role": "user" if t % 2 == 0 else "assistant", "content": "x" * size})
    mark("conflict storm")
    contender = SessionStore(
        drill.client(),
        policy,
        namespace="demo-obs",
        metrics=metrics,
        max_update_retries=200,
    )

    def writer() -> None:
        for _ in range(storm_updates):
            contender.update_state("hot", lambda st: {**st, "n": st.get("n", 0) + 1})

    threads = [threading.Thread(target=writer) for _ in range(storm_writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    mark("oversized writes")
    for s in range(5):
        with contextlib.suppress(Exception):
            rs.append_turn(f"s-{s}", {"role": "user", "content": "y" * 30_000})
    mark("outage")
    with drill.outage(1.0):
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # traffic keeps coming through the outage, every 20 ms
            rs.load_context("s-1")
            rs.append_turn("s-1", {"role": "user", "content": "during the outage"})
            time.sleep(0.02)
    rs.drain(timeout_s=10)  # until the breaker's probe finds the store and the buffer is replayed
    mark("recovered")
    for s in range(sessions):
        rs.load_context(f"s-{s}")
    for s in range(sessions):
        store.delete(f"s-{s}")
    store.delete("hot")
    return metrics
