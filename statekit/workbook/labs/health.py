"""Lab 5, observable state health: a retry storm that CPU and memory graphs do not show.

The first version watches the host: CPU and memory. Then one hot session (a shared case
many agents update at once) sends every compare-and-set round again and again: requests
slow down, Redis works for nothing, and CPU and memory barely move. The attendee's fix:
`alerts(metrics) -> list of alert names`, read from a `StateMetrics` attached to the store.
The check runs three phases, each with metrics of its own: calm traffic (a few conflicts,
as any shared session has: nothing may fire), a retry storm (something must fire) and an
outage ridden out on cached contexts (something must fire).
"""

from __future__ import annotations

import time
from typing import Any

from statekit.observe.metrics import StateMetrics
from statekit.resilience.store import ResilientStore
from statekit.store.blocking import SessionStore
from statekit.workbook.labs.result import Link, Result, cleanup, failed, namespace, passed, shared, with_deadline

LAB = "health"
CALM_UPDATES, CALM_CONFLICTS = 100, 2
STORM_UPDATES, STORM_RETRIES = 30, 3


def _updates(
    store: SessionStore, other: SessionStore, sid: str, updates: int, conflicted: set[int], retries: int
) -> None:
    """`updates` increments of `sid`; update i in `conflicted` meets `retries` writes from
    another instance, each between its read and its compare-and-set (made inside the update
    function, so the conflicts are exact, not a race)."""
    for i in range(updates):
        left = [retries if i in conflicted else 0]

        def bump(state: dict[str, Any], left: list[int] = left) -> dict[str, Any]:
            if left[0] > 0:
                left[0] -= 1
                other.update_state(sid, lambda s: {**s, "other": s.get("other", 0) + 1})
            return {**state, "n": state.get("n", 0) + 1}

        store.update_state(sid, bump)


def _phase(redis_url: str, name: str) -> tuple[StateMetrics, dict[str, Any]]:
    """One phase of the lab's traffic, observed by fresh metrics; returns them and what
    happened (the numbers a hint quotes)."""
    from statekit.backends import connect

    metrics = StateMetrics()
    ns = namespace(LAB)
    url = shared(redis_url)
    client = connect(url)
    store = SessionStore(client, namespace=ns, metrics=metrics, max_update_retries=STORM_RETRIES + 2)
    other = SessionStore(connect(url), namespace=ns)
    facts: dict[str, Any] = {"phase": name}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        if name == "calm":
            for s in range(20):
                store.append_turn(f"s-{s}", {"role": "user", "content": "hello"})
                store.load_context(f"s-{s}")
            _updates(store, other, "s-shared", CALM_UPDATES, set(range(CALM_CONFLICTS)), 1)
        elif name == "storm":
            _updates(store, other, "s-hot", STORM_UPDATES, set(range(STORM_UPDATES)), STORM_RETRIES)
        else:
            with Link(redis_url) as link:
                cut = SessionStore(link.client(), namespace=ns, metrics=metrics)
                rs = ResilientStore(cut, timeout_ms=50, fail_max=2, reset_timeout_s=30, listeners=[metrics])
                for s in range(10):
                    rs.append_turn(f"s-{s}", {"role": "user", "content": "hello"})
                    rs.load_context(f"s-{s}")
                link.down()
                for s in range(10):
                    rs.load_context(f"s-{s}")
                    rs.append_turn(f"s-{s}", {"role": "user", "content": "still there?"})
                facts["degraded_reads"] = rs.stats.reads_from_cache + rs.stats.reads_from_default
                link.up()
    finally:
        facts["cpu_share"] = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)
        cleanup(client, ns)
    facts["conflicts"] = metrics.events["conflict"]
    facts["conflict_rate"] = metrics.conflict_rate
    return metrics, facts


def break_it(redis_url: str = "fakeredis://") -> list[dict[str, Any]]:
    """Calm traffic, then a retry storm: what a host dashboard shows (the process's CPU
    share and memory) next to what the store saw (conflicts per update, p99 latency)."""
    import resource

    rows = []
    for name in ("calm", "storm"):
        metrics, facts = _phase(redis_url, name)
        updates = CALM_UPDATES if name == "calm" else STORM_UPDATES
        rows.append(
            {
                "phase": name,
                "CPU share of the app process": round(facts["cpu_share"], 2),
                "app memory, max RSS (MB)": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "retries per update": round(facts["conflicts"] / updates, 2),
                "conflict rate": round(facts["conflict_rate"], 3),
                "update p99 (us)": metrics.percentile_us("update_state", 99),
            }
        )
    return rows


class _Watched:
    """The metrics handed to the attendee's function, noting what it reads (for the hint)."""

    def __init__(self, metrics: StateMetrics) -> None:
        self._metrics = metrics
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.read.append(name)
        return getattr(self._metrics, name)


@with_deadline(LAB)
def check(alerts: Any, redis_url: str = "fakeredis://") -> Result:
    """Run `alerts(metrics)` after each phase: calm must be silent, the storm and the outage
    must each raise an alert."""
    if not callable(alerts):
        return failed(LAB, "alerts is not a function: define alerts(metrics) returning the names of alerts that fire")
    said = {}
    read: set[str] = set()
    facts = {}
    for name in ("calm", "storm", "outage"):
        metrics, facts[name] = _phase(redis_url, name)
        watched = _Watched(metrics)
        try:
            fired = alerts(watched)
        except Exception as exc:
            return failed(LAB, f"alerts(metrics) raised {type(exc).__name__} after the {name} phase: {exc}")
        read |= set(watched.read)
        if fired is None or isinstance(fired, str) or not hasattr(fired, "__iter__"):
            return failed(
                LAB, f"alerts(metrics) returned {fired!r}: return a list of the alerts that fire ([] when none)"
            )
        said[name] = list(fired)
    calm, storm = facts["calm"], facts["storm"]
    if said["calm"]:
        return failed(
            LAB,
            f"{said['calm']} fired during calm traffic ({calm['conflicts']} conflicts in "
            f"{CALM_UPDATES + calm['conflicts']} compare-and-set attempts, a rate of {calm['conflict_rate']:.1%}): "
            "a shared session always meets a few. An alert that rings all day gets muted",
        )
    if not said["storm"]:
        looked = ", ".join(sorted(read)) or "nothing"
        return failed(
            LAB,
            f"the retry storm ran ({storm['conflict_rate']:.0%} of compare-and-set attempts conflicted, "
            f"{STORM_RETRIES} retries per update, no errors) and your alerts said nothing. They read: {looked}. "
            "What does the store count each time it has to try an update again?",
        )
    if not said["outage"]:
        return failed(
            LAB,
            f"Redis was unreachable and {facts['outage'].get('degraded_reads', 0)} reads were answered from the "
            "app's cache instead of the store (degraded), and your alerts said nothing: nothing raised, so "
            "error counts stay flat",
        )
    return passed(
        LAB,
        f"calm traffic: silent ({calm['conflict_rate']:.1%} conflicts); retry storm: {said['storm']} "
        f"({storm['conflict_rate']:.0%} conflicts); outage: {said['outage']}",
    )
