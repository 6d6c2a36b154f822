"""A production with known ground truth, for calibration drills, tests, notebooks and benchmarks.

`simulate(client, namespace, production, policy, seed=...)` writes, through `SessionStore`,
the sessions a production would hold right now: sessions arrive as a Poisson process at
`arrivals_per_s`; each has lognormal turns (rounded, at least one) of lognormal bytes (the
encoded turn, as Redis stores it), spread over a session of about `session_minutes`. Only the
sessions still held at the moment of the snapshot are written (the others have expired), and
each is placed on the simulated timeline afterwards: its creation time `c` and its keys'
deadline (last write + TTL) are set to what the timeline says, because a store writes the
time it runs at. `SimulatedProduction.advance(seconds)` then plays the traffic of the next
`seconds` (arrivals and appends, in order) and moves its clock: the sampling window of
`statekit.observe.calibrate.measure` with `wait=sim.advance, clock=sim.clock`.

`truth()` gives the parameters a calibration should recover, computed from the
distributions (not from the draws).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from statekit import codec
from statekit.decide.profile import WorkloadProfile
from statekit.errors import StateTooLarge
from statekit.keys import key_pattern, session_keys
from statekit.lifecycle import LifecyclePolicy
from statekit.observe.calibrate import Measurement
from statekit.store import SessionStore
from statekit.walk import Walker

__all__ = [
    "Production",
    "SimulatedProduction",
    "simulate",
    "clear",
    "recovery_table",
    "drifted_production",
    "DRIFTED_PROFILE",
]


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _discrete_lognormal_mean(median: float, sigma: float, floor: int) -> float:
    """E[max(floor, round(X))] for X lognormal with `median` and `sigma`, summed over its bins."""
    mu = math.log(median)
    top = int(math.exp(mu + 8 * sigma)) + 2

    def cdf(x: float) -> float:
        return 0.0 if x <= 0 else _phi((math.log(x) - mu) / sigma)

    mean = floor * cdf(floor + 0.5)
    for k in range(floor + 1, top):
        mean += k * (cdf(k + 0.5) - cdf(k - 0.5))
    return mean


@dataclass(frozen=True)
class Production:
    """The parameters of a simulated production (the ground truth of a calibration)."""

    arrivals_per_s: float
    turns_median: float
    turns_sigma: float
    bytes_median: float
    bytes_sigma: float
    session_minutes: float  # a session of 2+ turns lasts uniformly 0.5x to 1.5x this

    def truth(self) -> dict[str, float]:
        """What `measure` should find: new sessions and appends per second, mean turns per
        session, mean bytes per turn (encoded, as stored) and mean session length in minutes."""
        turns = _discrete_lognormal_mean(self.turns_median, self.turns_sigma, 1)
        one_turn = _phi((math.log(1.5) - math.log(self.turns_median)) / self.turns_sigma)
        return {
            "new_sessions_per_s": self.arrivals_per_s,
            "turns_per_session": turns,
            "bytes_per_turn": _discrete_lognormal_mean(self.bytes_median, self.bytes_sigma, MIN_TURN_BYTES),
            "session_minutes": self.session_minutes * (1 - one_turn),
            "appends_per_s": self.arrivals_per_s * turns,
        }


#: The smallest encoded turn the simulator writes: the envelope of an empty turn.
MIN_TURN_BYTES = len(codec.encode({"role": "assistant", "content": ""}))


@dataclass
class _Session:
    sid: str
    times: list[float]  # of its turns, on the simulated clock
    sizes: list[int]
    written: int = 0


def _turn(size: int, k: int) -> dict[str, str]:
    """A turn whose encoding is exactly `size` bytes."""
    role = "user" if k % 2 == 0 else "assistant"
    empty = len(codec.encode({"role": role, "content": ""}))
    return {"role": role, "content": "x" * max(0, size - empty)}


@dataclass
class SimulatedProduction:
    """A namespace filled by `simulate`, with its timeline, clock and ground truth."""

    store: SessionStore
    production: Production
    sessions: list[_Session]
    t0: float
    offset: float = 0.0
    written_turns: int = 0
    rejected_turns: int = 0
    held_at_start: int = 0
    _pending: list[tuple[float, int, int]] = field(default_factory=list)  # (time, session index, turn index)

    def clock(self) -> float:
        """The simulated clock: real time, moved on by every `advance`."""
        return time.time() + self.offset

    def truth(self) -> dict[str, float]:
        return self.production.truth()

    def advance(self, seconds: float) -> None:
        """Play the next `seconds` of traffic (in order) and move the clock by as much."""
        end = self.t0 + self.offset + seconds
        due = [e for e in self._pending if e[0] <= end]
        self._pending = [e for e in self._pending if e[0] > end]
        touched: dict[int, float] = {}
        for at, i, _ in sorted(due):
            self._write(self.sessions[i], 1)
            touched[i] = at
        self._place(touched)
        self.offset += seconds

    def _write(self, s: _Session, count: int) -> None:
        for k in range(s.written, s.written + count):
            try:
                self.store.append_turn(s.sid, _turn(s.sizes[k], k))
                self.written_turns += 1
            except StateTooLarge:
                self.rejected_turns += 1
        s.written += count

    def _place(self, last_write: dict[int, float]) -> None:
        """Put the sessions on the timeline: creation time, and the deadline of every key."""
        client, ns = self.store.client, self.store.namespace
        ttl = self.store.policy.ttl_seconds
        pipe = client.pipeline() if hasattr(client, "get_primaries") else client.pipeline(transaction=False)
        for i, last in last_write.items():
            s = self.sessions[i]
            keys = session_keys(ns, s.sid)
            commands = [("HSET", keys[0], "c", int(s.times[0] * 1000))]
            commands += [("PEXPIREAT", key, int((last + ttl) * 1000)) for key in keys]
            for command in commands:
                pipe.execute_command(*command)
        pipe.execute()


def simulate(
    client: Any,
    namespace: str,
    production: Production,
    policy: LifecyclePolicy,
    *,
    seed: int = 0,
    horizon_s: float | None = None,
    fresh: bool = False,
) -> SimulatedProduction:
    """Write the sessions `production` holds now into `namespace` through a `SessionStore`
    with `policy`, and return the simulation (its clock, its next traffic, its truth).

    Arrivals are drawn from `horizon_s` before now (long enough that every earlier session
    has expired: 1.5 session lengths and the TTL, by default) to `horizon_s` after now, for
    `advance`. Deterministic for a given seed (bar the few milliseconds writing takes).
    `fresh` deletes the namespace's keys first (a notebook run again starts from nothing)."""
    if fresh:
        clear(client, namespace)
    rng = random.Random(seed)
    ttl = policy.ttl_seconds
    longest = 1.5 * production.session_minutes * 60
    back = longest + ttl + 60 if horizon_s is None else horizon_s
    ahead = back
    t, starts = -back, []
    while True:
        t += rng.expovariate(production.arrivals_per_s)
        if t > ahead:
            break
        starts.append(t)
    mu_t, mu_b = math.log(production.turns_median), math.log(production.bytes_median)
    sessions: list[_Session] = []
    for n, start in enumerate(starts):
        turns = max(1, round(rng.lognormvariate(mu_t, production.turns_sigma)))
        sizes = [max(MIN_TURN_BYTES, round(rng.lognormvariate(mu_b, production.bytes_sigma))) for _ in range(turns)]
        if turns == 1:
            times = [start]
        else:
            length = production.session_minutes * 60 * rng.uniform(0.5, 1.5)
            inner = sorted(rng.uniform(0, length) for _ in range(turns - 2))
            times = [start, *(start + x for x in inner), start + length]
        if times[-1] + ttl < 0:
            continue  # expired before now: nothing of it is left to write
        sessions.append(_Session(f"sim-{seed}-{n:06d}", times, sizes))
    store = SessionStore(client, policy=policy, namespace=namespace)
    sim = SimulatedProduction(store, production, sessions, t0=0.0)
    past: dict[int, float] = {}
    for i, s in enumerate(sessions):
        done = sum(1 for x in s.times if x <= 0)
        if done:
            sim._write(s, done)
            past[i] = s.times[done - 1]
        sim._pending += [(x, i, k) for k, x in enumerate(s.times) if x > 0]
    sim.held_at_start = len(past)
    # the timeline's "now" is when the writing is over: shift every time onto the real clock
    sim.t0 = time.time()
    for s in sessions:
        s.times = [x + sim.t0 for x in s.times]
    sim._pending = [(x + sim.t0, i, k) for x, i, k in sim._pending]
    sim._place({i: last + sim.t0 for i, last in past.items()})
    return sim


def clear(client: Any, namespace: str) -> int:
    """Delete every key of `namespace` on every node; the number deleted."""
    walker = Walker(client, key_pattern(namespace))
    deleted = 0
    for batch in walker:
        deleted += sum(r for r in walker.execute(batch.node, [("DEL", k) for k in batch.keys]) if isinstance(r, int))
    return deleted


def recovery_table(measurement: Measurement, truth: dict[str, float]) -> list[dict[str, Any]]:
    """For each simulated parameter: the truth, the estimate, its 99% interval, and whether the
    interval covers the truth."""
    rows = []
    for name, value in truth.items():
        e = measurement.estimates.get(name)
        rows.append(
            {
                "parameter": name,
                "truth": value,
                "measured": None if e is None else e.value,
                "low": None if e is None else e.low,
                "high": None if e is None else e.high,
                "covered": bool(e and e.covers(value)),
            }
        )
    return rows


#: A chat assistant profiled before launch at 14 turns per session, no explicit context
#: window (the model reads the whole conversation) and a peak of 180,000 sessions at once:
#: one Redis node holds it. Its production runs 40 turns per session (`drifted_production`).
DRIFTED_PROFILE: dict[str, Any] = {
    "service": "chat_assistant",
    "description": "A consumer chat assistant; profiled at launch, before users found it useful for long chats.",
    "traffic": {
        "new_sessions_per_day": 2_000_000,
        "requests_per_session": 14,
        "peak_concurrent_sessions": 180_000,
        "session_minutes": 25,
        "app_instances": 12,
    },
    "turns": {"per_session": 14, "bytes_per_turn": 700, "tokens_per_turn": 180},
    "client": {"can_send_full_context": False, "max_request_bytes": 16384, "trusted": False},
    "state": {
        "reused_across_requests": True,
        "units_independent": False,
        "shared_across_clients": False,
        "long_running_steps": False,
        "summary_tokens": 400,
    },
    "state_classes": [
        {"name": "conversation", "purpose": "conversation", "staleness_tolerance_s": 0},
        {"name": "ticket_context", "purpose": "personalization", "staleness_tolerance_s": 5},
    ],
    "compliance": {"allowed_regions": ["eu-west-1"], "retention_days": 30},
    "latency_budget_ms": 50,
}


def drifted_production(arrivals_per_s: float = 0.006, turns_median: float = 38.0) -> tuple[WorkloadProfile, Production]:
    """The profile of `DRIFTED_PROFILE` and a production that drifted from it: 40 turns per
    session on average where 14 were profiled (bytes per turn and session length as profiled).
    The arrival rate is a small share of the profile's, so that a test can write it."""
    profile = WorkloadProfile.from_dict(DRIFTED_PROFILE, source="DRIFTED_PROFILE")
    production = Production(
        arrivals_per_s=arrivals_per_s,
        turns_median=turns_median,
        turns_sigma=0.3,
        bytes_median=640,
        bytes_sigma=0.4,
        session_minutes=25,
    )
    return profile, production
