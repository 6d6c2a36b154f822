"""Consistency chosen per kind of state, with the probability of a stale read quantified.

- `select(state_classes)`: a level for each class in the five-level vocabulary Azure Cosmos
  DB made familiar (strong, bounded staleness, session, consistent prefix, eventual), the
  Redis recipe that delivers it, the routing, the reasons and the honest limits.
- `t_visibility(...)`: the probability that a read started t ms after a write commits sees
  it, by Monte Carlo over the WARS model of Bailis et al., "Probabilistically Bounded
  Staleness for Practical Partial Quorums" (VLDB 2012); `k_staleness(...)` in closed form;
  `replica_stale_probability(...)` for a Redis replica from measured lag.
- `measure_replica_lag(...)` on a real primary and replica.
- `Router`: sticky routing by rendezvous hashing; `simulate_routing(...)` measures stale
  replica reads under round-robin and none under sticky routing, on a real primary and replica.
- `concurrent_increments(...)`: optimistic concurrency against a naive get-then-set.

No library models PBS staleness or routes by rendezvous hashing in a few lines, so both
are written here; numpy does the sampling.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from statekit._optional import require
from statekit.lifecycle import LifecyclePolicy

np = require("numpy", what="statekit.decide.consistency")

__all__ = [
    "LatencyFit",
    "visibility_curves",
    "visibility_table",
    "k_staleness_table",
    "replica_lag_runs",
    "Distribution",
    "pareto",
    "exponential",
    "mixture",
    "empirical",
    "PBS_FITS",
    "t_visibility",
    "visibility_time",
    "k_staleness",
    "replica_stale_probability",
    "Level",
    "Choice",
    "select",
    "read_gap_ms",
    "measure_replica_lag",
    "Router",
    "remap_fraction",
    "simulate_routing",
    "compare_routing",
    "concurrent_increments",
]


# -- latency distributions ----------------------------------------------------------------


class Distribution:
    """A latency distribution in milliseconds that numpy can sample in bulk."""

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class _Pareto(Distribution):
    xm: float
    alpha: float

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return self.xm * (1.0 + rng.pareto(self.alpha, size))  # numpy's pareto is Lomax: shift it


@dataclass(frozen=True)
class _Exponential(Distribution):
    rate: float

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return rng.exponential(1.0 / self.rate, size)


@dataclass(frozen=True)
class _Mixture(Distribution):
    parts: tuple[tuple[float, Distribution], ...]

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        weights = np.array([w for w, _ in self.parts], dtype=float)
        choice = rng.choice(len(self.parts), size=size, p=weights / weights.sum())
        out = np.empty(choice.shape)
        for i, (_, dist) in enumerate(self.parts):
            mask = choice == i
            out[mask] = dist.sample(rng, int(mask.sum()))
        return out


@dataclass(frozen=True)
class _Empirical(Distribution):
    samples: tuple[float, ...]

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return rng.choice(np.asarray(self.samples), size=size, replace=True)


def pareto(xm: float, alpha: float) -> Distribution:
    """Pareto with scale `xm` ms and shape `alpha`."""
    if xm <= 0 or alpha <= 0:
        raise ValueError("pareto needs xm > 0 and alpha > 0")
    return _Pareto(xm, alpha)


def exponential(rate: float) -> Distribution:
    """Exponential with `rate` per ms (mean 1/rate ms)."""
    if rate <= 0:
        raise ValueError("exponential needs rate > 0")
    return _Exponential(rate)


def mixture(parts: Iterable[tuple[float, Distribution]]) -> Distribution:
    """A mixture: each part drawn with its weight (weights are normalised)."""
    parts = tuple(parts)
    if not parts or any(w < 0 for w, _ in parts) or sum(w for w, _ in parts) <= 0:
        raise ValueError("mixture needs parts with non-negative weights that sum above 0")
    return _Mixture(parts)


def empirical(samples_ms: Sequence[float]) -> Distribution:
    """Resampling of measured latencies (ms), e.g. from `measure_replica_lag`."""
    values = tuple(float(s) for s in samples_ms)
    if not values:
        raise ValueError("empirical needs at least one sample")
    return _Empirical(values)


@dataclass(frozen=True)
class LatencyFit:
    """The message delays of a replicated store, as the WARS model names them (ms each way).

    W: the write reaching a replica; A: its acknowledgement coming back; R: a read request
    reaching a replica; S: its response coming back.
    """

    write: Distribution
    ack: Distribution
    read: Distribution
    response: Distribution

    @classmethod
    def symmetric(cls, write: Distribution, others: Distribution) -> LatencyFit:
        """A fit whose ack, read and response delays share one distribution (as the PBS paper's do)."""
        return cls(write, others, others, others)


#: The production latency fits of the PBS paper (Table 3): LinkedIn's Voldemort on SSDs and on
#: disks, and Yammer's Riak. W is the write message delay; A, R and S (ack, read, response)
#: share one fit.
PBS_FITS: dict[str, LatencyFit] = {
    "LNKD-SSD": LatencyFit.symmetric(
        mixture([(0.9122, pareto(0.235, 10)), (0.0878, exponential(1.66))]),
        mixture([(0.9122, pareto(0.235, 10)), (0.0878, exponential(1.66))]),
    ),
    "LNKD-DISK": LatencyFit.symmetric(
        mixture([(0.38, pareto(1.05, 1.51)), (0.62, exponential(0.183))]),
        mixture([(0.9122, pareto(0.235, 10)), (0.0878, exponential(1.66))]),
    ),
    "YMMR": LatencyFit.symmetric(
        mixture([(0.939, pareto(3, 3.35)), (0.061, exponential(0.0028))]),
        mixture([(0.982, pareto(1.5, 3.8)), (0.018, exponential(0.0217))]),
    ),
}


# -- PBS: t-visibility and k-staleness ---------------------------------------------------


def _check_quorum(n: int, r: int, w: int) -> None:
    if not (1 <= r <= n and 1 <= w <= n):
        raise ValueError("need 1 <= r <= n and 1 <= w <= n")


def _wars_margins(fit: LatencyFit, n: int, r: int, w: int, trials: int, rng: np.random.Generator) -> np.ndarray:
    """Per trial, the smallest t (ms after commit) at which the read sees the write."""
    wd = fit.write.sample(rng, (trials, n))
    ad = fit.ack.sample(rng, (trials, n))
    rd = fit.read.sample(rng, (trials, n))
    sd = fit.response.sample(rng, (trials, n))
    commit = np.partition(wd + ad, w - 1, axis=1)[:, w - 1]  # the W-th acknowledgement
    # the read waits for the first R responses; replica i answers with the write when the
    # write reached it before the read request did: W_i <= commit + t + R_i
    first = np.argsort(rd + sd, axis=1)[:, :r]
    need = np.take_along_axis(wd - rd, first, axis=1).min(axis=1) - commit
    return need


def t_visibility(
    fit: LatencyFit,
    t_ms: float | Sequence[float],
    *,
    n: int = 3,
    r: int = 1,
    w: int = 1,
    trials: int = 100_000,
    seed: int | None = 0,
) -> np.ndarray:
    """P(a read started t ms after a write commits returns that write), for each t.

    WARS model: the write goes to all N replicas (delay W), commits at the W-th ack (A);
    the read goes to all N (R) and returns with the first R responses (S); it is
    consistent if one of them had the write when the read arrived. Monte Carlo over
    `trials`, vectorised: one sample set serves every t. R + W > N always gives 1.
    """
    _check_quorum(n, r, w)
    t = np.atleast_1d(np.asarray(t_ms, dtype=float))
    if r + w > n:
        return np.ones_like(t)
    need = np.sort(_wars_margins(fit, n, r, w, trials, np.random.default_rng(seed)))
    return np.searchsorted(need, t, side="right") / trials


def visibility_time(
    fit: LatencyFit,
    probability: float,
    *,
    n: int = 3,
    r: int = 1,
    w: int = 1,
    trials: int = 100_000,
    seed: int | None = 0,
) -> float:
    """The wait after commit (ms) for which reads are consistent with `probability`."""
    _check_quorum(n, r, w)
    if r + w > n:
        return 0.0
    need = _wars_margins(fit, n, r, w, trials, np.random.default_rng(seed))
    return max(0.0, float(np.quantile(need, probability)))


#: The quorums a workshop compares on N = 3 replicas: (R, W).
QUORUMS = ((1, 1), (1, 2), (2, 1))
#: How far each PBS fit's curve is worth drawing (ms): where it gets close to 1.
HORIZONS_MS = {"LNKD-SSD": 5.0, "LNKD-DISK": 100.0, "YMMR": 2000.0}


def visibility_curves(
    fits: dict[str, LatencyFit] | None = None,
    *,
    horizons_ms: dict[str, float] | None = None,
    quorums: Sequence[tuple[int, int]] = QUORUMS,
    n: int = 3,
    points: int = 200,
    trials: int = 100_000,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """t-visibility curves: for each fit and quorum "R=r, W=w", the times (ms) and P(consistent)."""
    fits = PBS_FITS if fits is None else fits
    horizons_ms = HORIZONS_MS if horizons_ms is None else horizons_ms
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, fit in fits.items():
        t = np.linspace(0, horizons_ms.get(name, 100.0), points)
        out[name] = {f"R={r}, W={w}": (t, t_visibility(fit, t, n=n, r=r, w=w, trials=trials)) for r, w in quorums}
    return out


def visibility_table(
    fits: dict[str, LatencyFit] | None = None, *, n: int = 3, r: int = 1, w: int = 1, probability: float = 0.999
) -> list[dict[str, Any]]:
    """Per fit: P(consistent) right after commit, and the wait until reads are consistent with `probability`."""
    fits = PBS_FITS if fits is None else fits
    return [
        {
            "fit": name,
            "consistent right after commit": float(t_visibility(fit, 0.0, n=n, r=r, w=w)[0]),
            f"{probability:.1%} consistent after (ms)": round(visibility_time(fit, probability, n=n, r=r, w=w), 2),
        }
        for name, fit in fits.items()
    ]


def k_staleness_table(
    n: int = 3, quorums: Sequence[tuple[int, int]] = QUORUMS, ks: Sequence[int] = (1, 2, 3, 5)
) -> list[dict[str, Any]]:
    """P(a read returns one of the last k versions), per quorum and k (closed form)."""
    return [{"quorum": f"R={r} W={w}", **{f"k={k}": k_staleness(n, r, w, k) for k in ks}} for r, w in quorums]


def k_staleness(n: int, r: int, w: int, k: int = 1) -> float:
    """P(a read returns one of the last k versions), closed form (PBS, section 3).

    With read and write quorums chosen uniformly at random, a read misses one write with
    probability C(N-W, R) / C(N, R), and k independent writes with that to the k-th power.
    """
    if not (1 <= r <= n and 1 <= w <= n) or k < 1:
        raise ValueError("need 1 <= r <= n, 1 <= w <= n and k >= 1")
    miss = math.comb(n - w, r) / math.comb(n, r)
    return 1.0 - miss**k


def replica_stale_probability(lag_samples_ms: Sequence[float], gap_ms: float | Sequence[float]) -> np.ndarray:
    """P(a replica read `gap_ms` after the primary acknowledged a write misses it).

    Redis replication is asynchronous and in order: a read on the replica misses the write
    exactly when the replica's lag at that moment exceeds the gap.
    """
    lag = np.sort(np.asarray(lag_samples_ms, dtype=float))
    if lag.size == 0:
        raise ValueError("need at least one lag sample")
    gap = np.atleast_1d(np.asarray(gap_ms, dtype=float))
    return 1.0 - np.searchsorted(lag, gap, side="right") / lag.size


# -- select: a level per state class -------------------------------------------------------

Level = Literal["strong", "bounded staleness", "session", "consistent prefix", "eventual"]

#: Replica lag assumed until it is measured: an exponential with a 1 ms mean, what a replica
#: in the same zone shows under moderate load (measure_replica_lag gives the real one).
DEFAULT_LAG = exponential(1.0)


@dataclass(frozen=True)
class Choice:
    """The consistency decision for one state class."""

    state_class: str
    purpose: str
    level: Level
    staleness_bound_s: float | None
    recipe: list[str]
    routing: str
    reads_from: Literal["primary", "replica"]
    stale_read_probability: float
    reasons: list[str]
    limits: list[str]
    #: P(stale) of a read that comes this soon after the write, at the 1st and 50th
    #: percentile of the gap: {"p1": {"gap_ms": ..., "p": ...}, "p50": {...}}.
    stale_at_gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The gap after a write (ms) beyond which fewer than 1 read in 1,000 is stale.
    safe_after_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_ASYNC = (
    "Redis replication is asynchronous: a write acknowledged by the primary can be lost in a "
    "failover before any replica has it."
)
_WAIT = (
    "WAIT n timeout makes the client wait until n replicas have the write, which narrows that "
    "window; it does not make Redis strongly consistent (a failover can still promote a replica "
    "that lacks it, and a timed-out WAIT does not undo the write)."
)


def read_gap_ms(profile: Any) -> float:
    """The mean time between a write to a session and the next read of it (ms): a session's
    length over the gaps between its requests (requests - 1). A session of one request is
    never read again after its write; its gap is taken as the whole session."""
    t = profile.traffic
    return t.session_minutes * 60_000 / max(1, t.requests_per_session - 1)


def select(
    state_classes: Iterable[Any],
    *,
    lag: Distribution = DEFAULT_LAG,
    read_gap_ms: float = 1000.0,
    trials: int = 100_000,
    queue_workers: bool = False,
) -> list[Choice]:
    """A consistency level, Redis recipe and routing for each state class.

    `queue_workers`: the service's workers take steps off a queue (a durable workflow), so
    no request can be routed to the instance that served its session last; conversation and
    workflow state then get read-your-writes from the primary alone, without sticky routing.

    `state_classes` are a profile's StateClass objects (purpose, staleness tolerance).
    `read_gap_ms` is the mean time between a write and the next read of the same state;
    the gaps are taken as exponential (requests arriving as a Poisson process). With `lag`
    (a replica-lag distribution; measured lag via `empirical`) it gives, for classes read
    from replicas: the probability that a read is stale, averaged over the gaps (the
    share of reads that are stale); the probability at the 1st and 50th percentile gap;
    and the gap beyond which fewer than 1 read in 1,000 is stale (the lag's 99.9th
    percentile). Classes read from the primary are never stale by recipe (0).
    """
    lag_samples = lag.sample(np.random.default_rng(0), trials)
    # P(gap < lag) for an exponential gap of mean read_gap_ms, averaged over the lag
    p_replica = float(np.mean(-np.expm1(-lag_samples / read_gap_ms)))
    gaps = {q: -read_gap_ms * math.log1p(-q / 100) for q in (1, 50)}
    at_gaps = {
        f"p{q}": {"gap_ms": gap, "p": float(replica_stale_probability(lag_samples, gap)[0])} for q, gap in gaps.items()
    }
    safe_after = float(np.quantile(lag_samples, 0.999))
    choices = []
    for sc in state_classes:
        tolerance = float(sc.staleness_tolerance_s)
        purpose = sc.purpose
        if purpose == "financial":
            choices.append(
                Choice(
                    sc.name,
                    purpose,
                    "strong",
                    0.0,
                    [
                        "keep the ledger in a transactional database (serializable transactions); Redis "
                        "holds at most a cache of it, invalidated on commit",
                        "if Redis must hold it: primary reads and writes, MULTI/EXEC or a Lua script per "
                        "change, WAIT 1 100 after each write, min-replicas-to-write 1, "
                        "appendonly yes with appendfsync always",
                    ],
                    "any instance; every read and write goes to the primary",
                    "primary",
                    0.0,
                    ["money must never be read stale or lost once acknowledged"],
                    [_ASYNC, _WAIT, "state that moves money belongs in a transactional database, not in Redis"],
                )
            )
        elif purpose in ("approval", "quota"):
            choices.append(
                Choice(
                    sc.name,
                    purpose,
                    "strong",
                    0.0,
                    [
                        "primary reads and writes only",
                        "change it in one Lua script or with version compare-and-set (SessionStore.update_state)",
                        "WAIT 1 100 after writes that must survive a failover; min-replicas-to-write 1 with "
                        "min-replicas-max-lag 10 so the primary refuses writes it cannot replicate",
                    ],
                    "any instance; every read goes to the primary",
                    "primary",
                    0.0,
                    [f"a stale {purpose} is acted on: a revoked approval honoured, a quota overspent"],
                    [_ASYNC, _WAIT],
                )
            )
        elif purpose in ("conversation", "workflow"):
            level: Level = "session" if tolerance == 0 else "consistent prefix"
            route = (
                [
                    "workers take steps off a queue, so no sticky routing: every worker reads the session "
                    "from the primary before its step and writes with version compare-and-set "
                    "(SessionStore.update_state), so a step never acts on another worker's stale copy"
                ]
                if queue_workers
                else [
                    "route a session's requests to one instance (rendezvous hashing on the session id) "
                    "so its in-process cache is never behind"
                ]
            )
            choices.append(
                Choice(
                    sc.name,
                    purpose,
                    level,
                    None,
                    [
                        "primary reads and writes for the session's own requests (read-your-writes)",
                        *route,
                    ]
                    + (
                        [
                            "other readers (dashboards, audits) may read replicas: replication is in order, so "
                            "they see a prefix of the conversation, never a gap"
                        ]
                        if level == "consistent prefix"
                        else []
                    ),
                    "any worker off the queue; every read from the primary"
                    if queue_workers
                    else "sticky by session id (rendezvous hashing)",
                    "primary",
                    0.0,
                    ["each request must see the turns its session wrote before it, in order"],
                    [
                        _ASYNC,
                        "a worker's read from the primary costs a round trip per step; no in-process cache "
                        "is trusted across steps"
                        if queue_workers
                        else "sticky routing keeps read-your-writes only while the instance lives; on "
                        "failover the session moves and reads from the primary",
                    ],
                )
            )
        elif purpose in ("personalization", "recommendation", "cache") and tolerance > 0:
            bound_ms = tolerance * 1000
            p_bound = float(replica_stale_probability(lag_samples, bound_ms)[0])
            choices.append(
                Choice(
                    sc.name,
                    purpose,
                    "bounded staleness",
                    tolerance,
                    [
                        f"read from replicas while the measured replica lag stays under {tolerance:g} s "
                        "(INFO replication: master_last_io_seconds_ago, offsets); fall back to the primary "
                        "beyond it",
                        "writes to the primary; no WAIT needed",
                    ],
                    "any instance",
                    "replica",
                    p_replica,
                    [
                        f"{tolerance:g} s of staleness is harmless for {purpose}; replica reads spread the load",
                        f"with the assumed lag, a replica is behind by more than the bound with probability "
                        f"{p_bound:.2e}",
                    ],
                    [_ASYNC],
                )
            )
        elif tolerance == 0:  # personalization, recommendation, cache or analytics that tolerate no staleness
            choices.append(
                Choice(
                    sc.name,
                    purpose,
                    "session",
                    0.0,
                    [
                        "primary reads and writes: the profile tolerates no staleness, so no replica reads",
                        "writes to the primary; no WAIT needed (losing it in a failover is tolerable, reading "
                        "it stale is not)",
                    ],
                    "any instance; every read goes to the primary",
                    "primary",
                    0.0,
                    [f"{purpose} with a staleness tolerance of 0 s: a replica behind by any lag would be wrong"],
                    [_ASYNC, f"give {sc.name} a tolerance above 0 s to let replicas serve its reads"],
                )
            )
        else:  # analytics that tolerates staleness: eventual
            choices.append(
                Choice(
                    sc.name,
                    purpose,
                    "eventual",
                    None,
                    [
                        "write to the primary (batched or pipelined); read from any replica",
                        "aggregate into counters or streams; no WAIT",
                    ],
                    "any instance",
                    "replica",
                    p_replica,
                    [f"{purpose} tolerates {tolerance:g} s: a count that is briefly behind misleads no one"],
                    [_ASYNC],
                )
            )
    replica_numbers = {"stale_at_gaps": at_gaps, "safe_after_ms": safe_after}
    primary_numbers = {"stale_at_gaps": {k: {"gap_ms": v["gap_ms"], "p": 0.0} for k, v in at_gaps.items()}}
    return [replace(ch, **(replica_numbers if ch.reads_from == "replica" else primary_numbers)) for ch in choices]


# -- measured replica lag --------------------------------------------------------------------


def measure_replica_lag(
    primary_url: str,
    replica_url: str,
    writes: int = 1000,
    *,
    wait: bool = False,
    load_writers: int = 0,
    value_bytes: int = 512,
    deadline_s: float = 5.0,
) -> dict[str, Any]:
    """Measure replication lag on a real primary and replica.

    For each write: SET on the primary (then `WAIT 1 1000` when `wait`), one immediate read
    on the replica (stale or not), then poll the replica until the write shows; the lag is
    the time from the primary's acknowledgement to first visibility. `load_writers` threads
    write 4 KB values to the primary meanwhile. Returns the samples (ms) for `empirical()`
    and the fraction of immediate replica reads that were stale. A write the replica has
    not shown after `deadline_s` raises `ReplicationStalled` with the replica's link status
    (replication stopped, or lag beyond the deadline); the probe keys are removed either way.
    """
    from statekit.backends import backend_kind, connect, redact_url
    from statekit.errors import NeedsRealRedis, ReplicationStalled

    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be positive, got {deadline_s!r}")

    primary, replica = connect(primary_url, socket_timeout=5), connect(replica_url, socket_timeout=5)
    if "fakeredis" in (backend_kind(primary), backend_kind(replica)):
        raise NeedsRealRedis("replica lag needs a real primary and replica: fakeredis has no replication")
    role = replica.info("replication").get("role")
    if role != "slave":
        raise ValueError(f"{replica_url} is not a replica (role {role!r})")
    stop = threading.Event()
    # a node of a cluster serves only its own slots, and a replica of one answers reads only
    # on a connection that said READONLY: the probe keys share a hash tag of the primary's
    tag = _own_tag(primary) if _cluster_enabled(primary) else None
    prefix = f"lag-probe:{{{tag}}}:" if tag else "lag-probe:"
    load_prefix = f"lag-load:{{{tag}}}:" if tag else "lag-load:"

    def read(key: str) -> Any:
        if tag is None:
            return replica.get(key)
        pipe = replica.pipeline(transaction=False)
        pipe.execute_command("READONLY")
        pipe.get(key)
        return pipe.execute()[1]

    def load() -> None:
        c = connect(primary_url, socket_timeout=5)
        blob = b"x" * 4096
        i = 0
        while not stop.is_set():
            c.set(f"{load_prefix}{i % 1000}", blob)
            i += 1

    loaders = [threading.Thread(target=load, daemon=True) for _ in range(load_writers)]
    for th in loaders:
        th.start()
    value = "v" * value_bytes
    lags, stale = [], 0
    try:
        for i in range(writes):
            key = f"{prefix}{i}"
            primary.set(key, f"{i}:{value}")
            if wait:
                primary.execute_command("WAIT", 1, 1000)
            acked = time.perf_counter()
            if read(key) is None:
                stale += 1
                # poll as fast as round trips allow (the lag is sub-millisecond on a LAN), to a deadline
                while read(key) is None:
                    if time.perf_counter() - acked > deadline_s:
                        link = replica.info("replication")
                        raise ReplicationStalled(
                            f"the replica at {redact_url(replica_url)} has not shown write {i + 1} of {writes} "
                            f"{deadline_s:g} s after the primary acknowledged it: replication is stopped or "
                            f"far behind (master_link_status={link.get('master_link_status')}, "
                            f"master {link.get('master_host')}:{link.get('master_port')})"
                        )
            lags.append((time.perf_counter() - acked) * 1000)
    finally:
        stop.set()
        for th in loaders:
            th.join()
        primary.delete(*[f"{prefix}{i}" for i in range(writes)])
        if load_writers:
            primary.delete(*[f"{load_prefix}{i}" for i in range(1000)])
    arr = np.asarray(lags)
    return {
        "samples_ms": lags,
        "stale_fraction": stale / writes,
        "writes": writes,
        "wait": wait,
        "load_writers": load_writers,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


def _cluster_enabled(client: Any) -> bool:
    return bool(client.info("cluster").get("cluster_enabled"))


def _own_tag(primary: Any) -> str:
    """A hash tag whose slot the cluster node `primary` serves."""
    from redis.crc import key_slot

    me = primary.execute_command("CLUSTER", "MYID")
    me = me.decode() if isinstance(me, bytes) else me
    owned = [
        (int(first), int(last))
        for first, last, node, *_ in primary.execute_command("CLUSTER", "SLOTS")
        if (node[2].decode() if isinstance(node[2], bytes) else node[2]) == me
    ]
    for n in range(100_000):
        slot = key_slot(f"lag{n}".encode())
        if any(first <= slot <= last for first, last in owned):
            return f"lag{n}"
    raise ValueError("this cluster node serves no slots: it is not a primary")


def cluster_replica_lag(cluster_url: str, writes: int = 300, **options: Any) -> dict[str, dict[str, Any]]:
    """`measure_replica_lag` on every shard of a Redis Cluster: each primary against its first
    replica, keyed by the primary's host:port. A shard without a replica is reported as such."""
    from statekit.backends import connect

    cluster = connect(cluster_url, socket_timeout=5)
    out: dict[str, dict[str, Any]] = {}
    for node in cluster.get_primaries():
        client = cluster.get_redis_connection(node)
        me = client.execute_command("CLUSTER", "MYID")
        replicas = client.execute_command("CLUSTER", "REPLICAS", me)
        if not replicas:
            out[node.name] = {"replica": None}
            continue
        line = replicas[0].decode() if isinstance(replicas[0], bytes) else replicas[0]
        address = line.split()[1].split("@")[0]
        primary_url = f"redis://{node.host}:{node.port}/0"
        result = measure_replica_lag(primary_url, f"redis://{address}/0", writes, **options)
        out[node.name] = {"replica": address, **{k: v for k, v in result.items() if k != "samples_ms"}}
    return out


def replica_lag_runs(
    primary_url: str, replica_url: str, writes: int = 500, *, load_writers: Sequence[int] = (0, 2)
) -> dict[str, dict[str, Any]]:
    """`measure_replica_lag` without and with `WAIT 1`, each with the given numbers of load
    writers, keyed by a label such as "WAIT 1, 2 load writers"."""
    return {
        f"{'WAIT 1' if wait else 'no WAIT'}, {load} load writers": measure_replica_lag(
            primary_url, replica_url, writes=writes, wait=wait, load_writers=load
        )
        for wait in (False, True)
        for load in load_writers
    }


# -- sticky routing ------------------------------------------------------------------------


class Router:
    """Rendezvous (highest random weight) hashing of session ids onto instances.

    Every instance scores every session; the highest score wins. When an instance leaves,
    only its own sessions move (about 1/N of them), and they spread evenly over the rest.
    """

    def __init__(self, instances: Iterable[str]) -> None:
        self.instances = list(dict.fromkeys(instances))
        if not self.instances:
            raise ValueError("a router needs at least one instance")

    @staticmethod
    def _score(instance: str, session_id: str) -> int:
        digest = hashlib.blake2b(f"{instance}\x00{session_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def route(self, session_id: str) -> str:
        return max(self.instances, key=lambda inst: self._score(inst, session_id))

    def without(self, instance: str) -> Router:
        return Router(i for i in self.instances if i != instance)


def remap_fraction(instances: int, sessions: int = 10_000) -> float:
    """Fraction of sessions that change instance when one of `instances` leaves."""
    names = [f"app-{i}" for i in range(instances)]
    before, after = Router(names), Router(names[1:])
    ids = [f"s-{i}" for i in range(sessions)]
    return sum(before.route(s) != after.route(s) for s in ids) / sessions


def simulate_routing(
    primary_url: str,
    replica_url: str,
    routing: Literal["round_robin", "sticky"],
    *,
    instances: int = 2,
    sessions: int = 20,
    requests: int = 8,
    namespace: str = "routing-demo",
) -> dict[str, Any]:
    """App instances that read sessions from a replica, routed round-robin or sticky; stale
    reads measured against real replication.

    Each request reads its session's context from the replica, then appends a turn on the
    primary. With sticky routing every request of a session lands on one instance, which
    keeps the session's token: the version its last write left (as Azure Cosmos DB's
    session consistency does). A replica answer older than the token is refused and read
    again from the primary, so no read is stale. A round-robin fleet is stateless: the
    next request lands elsewhere, so an instance has no token to check (unless the client
    carries one, the other recipe) and takes what the replica answers, stale whenever the
    replica lags. A read is counted stale when its context misses turns the session had
    written before the request (the driver knows how many). Needs a real primary and
    replica; fakeredis has no replication.
    """
    from statekit.backends import backend_kind, connect
    from statekit.errors import NeedsRealRedis
    from statekit.store.blocking import SessionStore

    clients = [(connect(primary_url), connect(replica_url)) for _ in range(instances)]
    if "fakeredis" in {backend_kind(c) for pair in clients for c in pair}:
        raise NeedsRealRedis("stale reads need a real primary and replica: fakeredis has no replication")
    # no summarizer and a window larger than the run: a session's version counts its turns
    policy = LifecyclePolicy(window_turns=requests + 1, summary_max_bytes=0, summarizer=None, ttl_seconds=600)
    stores = [(SessionStore(p, policy, namespace), SessionStore(r, policy, namespace)) for p, r in clients]
    router = Router(f"app-{i}" for i in range(instances))
    index = {name: i for i, name in enumerate(router.instances)}
    tokens: list[dict[str, int]] = [{} for _ in range(instances)]
    ids = [f"{namespace}-{s}" for s in range(sessions)]
    for sid in ids:
        stores[0][0].delete(sid)
    reads = stale = primary_reads = 0
    for r in range(requests):
        for s, sid in enumerate(ids):
            inst = index[router.route(sid)] if routing == "sticky" else (r + s) % instances
            on_primary, on_replica = stores[inst]
            ctx = on_replica.load_context(sid)
            if routing == "sticky" and ctx.version < tokens[inst].get(sid, 0):  # older than the token
                ctx = on_primary.load_context(sid)
                primary_reads += 1
            reads += 1
            stale += ctx.version < r  # r turns were written before this request
            on_primary.append_turn(sid, {"role": "user", "content": f"turn {r}"})
            tokens[inst][sid] = ctx.version + 1
    for sid in ids:
        stores[0][0].delete(sid)
    return {
        "routing": routing,
        "instances": instances,
        "reads": reads,
        "stale_reads": stale,
        "stale_fraction": stale / reads,
        "primary_reads": primary_reads,
    }


def compare_routing(primary_url: str, replica_url: str, **kwargs: Any) -> list[dict[str, Any]]:
    """`simulate_routing` round-robin, then sticky, on the same primary and replica."""
    return [simulate_routing(primary_url, replica_url, routing, **kwargs) for routing in ("round_robin", "sticky")]


# -- optimistic concurrency against a naive get-then-set -------------------------------------


def concurrent_increments(
    redis_url: str,
    *,
    instances: int = 2,
    threads: int = 4,
    increments: int = 50,
    naive: bool = False,
    session_id: str = "occ-demo",
) -> dict[str, Any]:
    """`instances` app instances (own clients), `threads` each, all incrementing one counter.

    With `naive=True` each update is GET, +1, SET: concurrent writers overwrite each other.
    Otherwise SessionStore.update_state (version compare-and-set, retried). Returns the
    expected and final counts, lost updates and the conflicts counted. On `fakeredis://`
    the instances share one embedded server of their own (each `fakeredis://` client
    would otherwise get a private one, and no two instances would touch the same counter).
    """
    import uuid

    from statekit.backends import connect, resolve_url
    from statekit.codec import decode, encode
    from statekit.store.blocking import SessionStore
    from statekit.store.core import StoreListener

    if resolve_url(redis_url).rstrip("/") == "fakeredis:":
        redis_url = f"fakeredis://occ-demo-{uuid.uuid4().hex}"

    class Conflicts(StoreListener):
        def __init__(self) -> None:
            self.count = 0
            self.lock = threading.Lock()

        def on_event(self, kind: str, session_id: str, info: Any) -> None:
            if kind == "conflict":
                with self.lock:
                    self.count += 1

    conflicts = Conflicts()
    stores = [
        SessionStore(connect(redis_url), listeners=[conflicts], max_update_retries=1000) for _ in range(instances)
    ]
    stores[0].delete(session_id)
    naive_key = f"occ-naive:{{{session_id}}}"
    stores[0].client.delete(naive_key)

    def work(store: SessionStore) -> None:
        for _ in range(increments):
            if naive:
                raw = store.client.get(naive_key)
                value = decode(raw, naive_key)["n"] if raw else 0
                store.client.set(naive_key, encode({"n": value + 1}))
            else:
                store.update_state(session_id, lambda s: {"n": s.get("n", 0) + 1})

    workers = [threading.Thread(target=work, args=(st,)) for st in stores for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if naive:
        raw = stores[0].client.get(naive_key)
        final = decode(raw, naive_key)["n"] if raw else 0
        stores[0].client.delete(naive_key)
    else:
        final = stores[0].get_state(session_id)[0].get("n", 0)
        stores[0].delete(session_id)
    expected = instances * threads * increments
    return {
        "method": "naive get-then-set" if naive else "version compare-and-set",
        "expected": expected,
        "final": final,
        "lost_updates": expected - final,
        "conflicts": conflicts.count,
    }
