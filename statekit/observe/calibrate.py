"""Measure a live namespace, read-only, for calibrating a workload profile (`measure`).

What a design review assumed before launch (turns per session, bytes per turn, traffic,
session length) is in the production Redis: every session's meta hash holds its version
`v` (appends, folds and state updates: turns are `v - fv - sv`), its stored bytes `b` and
its creation time `c`; its keys' remaining TTL says how long ago it was last written.

`measure` walks every node with the walker (SCAN of the meta keys only: no value is read
while counting), reads a uniform random sample of at most `sample` sessions in pipelined
batches (HMGET, PTTL, STRLEN, LLEN, LINDEX, GET of the state), and takes a second look
after a sampling window for the rates: sessions that appeared (new sessions per second)
and the turns the sampled sessions gained (appends per second). Each figure is an
`Estimate` with a confidence interval (99% by default) that accounts for the sampling.

Nothing is written. The rules a user needs are `statekit.acl.rules("calibrate", ns)`.
Comparing the figures with a profile is a decision: `statekit.decide.calibrate`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import orjson

from statekit import codec
from statekit.errors import AccessDenied, CorruptStateError, InvalidInput, NeedsRealRedis, classify_reply
from statekit.keys import key_pattern, session_id_of, session_keys, validate_namespace, validate_session_id
from statekit.observe.metrics import percentile
from statekit.walk import Walker

__all__ = [
    "Estimate",
    "SessionSample",
    "Snapshot",
    "Measurement",
    "snapshot",
    "measure",
    "read_prometheus",
    "replica_lag_now",
    "Z99",
    "t99",
    "json_ready",
    "MAX_SESSION_BYTES",
]

#: The normal quantile of a two-sided 99% interval: the level every estimate here carries.
Z99 = 2.5758293035489004
SEP = b"\x1f"  # between a log record's turn id and its encoded turn (statekit.store.core)
#: Stored bytes beyond which a session's meta field `b` is not believed (1 TB: no Redis holds
#: such a session; a field this large was written by something else).
MAX_SESSION_BYTES = 10**12

#: Student t quantiles of a two-sided 99% interval (the 0.995 quantile) by degrees of freedom.
#: scipy is not a dependency of statekit, and an exact quantile needs the inverse incomplete
#: beta function: a table is exact where it matters (small samples) and, between the listed
#: degrees of freedom, takes the value at the next lower one, which is larger: conservative.
#: Beyond 1,000 degrees of freedom the 1,000 value (2.5808) stays, within 0.2% of the normal's.
_T99 = {
    1: 63.6567, 2: 9.9248, 3: 5.8409, 4: 4.6041, 5: 4.0321, 6: 3.7074, 7: 3.4995, 8: 3.3554,
    9: 3.2498, 10: 3.1693, 11: 3.1058, 12: 3.0545, 13: 3.0123, 14: 2.9768, 15: 2.9467,
    16: 2.9208, 17: 2.8982, 18: 2.8784, 19: 2.8609, 20: 2.8453, 21: 2.8314, 22: 2.8188,
    23: 2.8073, 24: 2.7969, 25: 2.7874, 26: 2.7787, 27: 2.7707, 28: 2.7633, 29: 2.7564,
    30: 2.7500, 40: 2.7045, 50: 2.6778, 60: 2.6603, 80: 2.6387, 100: 2.6259, 120: 2.6174,
    200: 2.6006, 500: 2.5857, 1000: 2.5808,
}  # fmt: skip


def t99(df: int) -> float:
    """The 0.995 quantile of Student's t with `df` degrees of freedom (conservative between
    the tabulated ones, see `_T99`)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df!r}")
    return _T99[max(k for k in _T99 if k <= df)]


def json_ready(value: Any) -> Any:
    """`value` (dicts, lists, tuples, numbers) with every non-finite float (an unbounded
    interval's end, a figure not measured) replaced by None: JSON has no Infinity or NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


@dataclass(frozen=True)
class Estimate:
    """A measured figure with its confidence interval [low, high], from `n` observations.

    `exact` says the whole population was read (the interval then only carries the
    randomness of the process that produced the data, e.g. Poisson arrivals). An end the
    sample cannot bound is infinite (`high` of a p99 from five sessions): `as_dict` and the
    JSON say None, the text says "unbounded"."""

    value: float
    low: float
    high: float
    n: int
    method: str
    exact: bool = False

    def covers(self, x: float) -> bool:
        """Is `x` inside the interval?"""
        return self.low <= x <= self.high

    def as_dict(self) -> dict[str, Any]:
        return json_ready(dict(self.__dict__))  # type: ignore[no-any-return]


def mean_estimate(values: Sequence[float], population: int | None = None, floor: float = -math.inf) -> Estimate | None:
    """The mean of `values` with a Student t interval (99%, `t99` of n - 1 degrees of
    freedom: a normal quantile is far too narrow on a handful of sessions); None for fewer
    than 2 values. `population` only says whether every unit was read; `floor` is the least
    value possible (0 for counts and durations): the interval does not reach below it."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    # no finite-population correction: the sessions are draws from the process the profile
    # describes, and the profile's number is that process's mean (a full scan of 40 sessions
    # still says little about the 41st)
    se = math.sqrt(var / n)
    t = t99(n - 1)
    low = max(floor, m - t * se)
    return Estimate(m, low, m + t * se, n, "mean, Student t interval", exact=bool(population and n >= population))


def ratio_estimate(ys: Sequence[float], xs: Sequence[float]) -> Estimate | None:
    """sum(ys) / sum(xs) over sampled units (e.g. bytes per turn over sessions), with the
    linearised variance of a ratio estimator (robust to units of different sizes) and a
    Student t quantile of n - 1 degrees of freedom (99%)."""
    pairs = [(y, x) for y, x in zip(ys, xs, strict=True) if x > 0]
    n = len(pairs)
    if n < 2:
        return None
    sy, sx = sum(y for y, _ in pairs), sum(x for _, x in pairs)
    r = sy / sx
    xbar = sx / n
    var = sum((y - r * x) ** 2 for y, x in pairs) / (n - 1) / n / xbar**2
    se = math.sqrt(var)
    t = t99(n - 1)
    low = r - t * se if any(y < 0 for y in ys) else max(0.0, r - t * se)  # a ratio of sums of sizes is >= 0
    return Estimate(r, low, r + t * se, n, "ratio of sums, linearised t interval")


def poisson_rate(count: float, seconds: float, thinning: float = 1.0, z: float = Z99) -> Estimate:
    """A rate from `count` events seen in `seconds`, of which a fraction `thinning` was looked
    at (a sample of the sessions): the count is Poisson, so the interval is the score interval
    of its mean, scaled to the whole."""
    if seconds <= 0:
        raise ValueError(f"a rate needs a window longer than 0 s, got {seconds!r}")
    k = count
    half = z * math.sqrt(k + z * z / 4)
    low, high = max(0.0, k + z * z / 2 - half), k + z * z / 2 + half
    scale = 1 / (thinning * seconds)
    return Estimate(
        k * scale, low * scale, high * scale, int(round(k)), "Poisson count, score interval", exact=thinning >= 1
    )


def compound_rate(contributions: Sequence[float], expand: float, seconds: float, z: float = Z99) -> Estimate:
    """A rate of events that come in bunches (a session's turns in a window), from the
    `contributions` of sampled units, each standing for `expand` units: a compound Poisson
    count, whose variance is the sum of the squared bunches, plus the sampling's."""
    total = sum(contributions) * expand
    n = len(contributions)
    var = expand * sum(c * c for c in contributions)
    if n > 1 and expand > 1:
        m = sum(contributions) / n
        s2 = sum((c - m) ** 2 for c in contributions) / (n - 1)
        var += (expand * n) ** 2 * s2 / n * (1 - 1 / expand)
    half = z * math.sqrt(var) if var > 0 else z * math.sqrt(z * z / 4) * 2
    return Estimate(
        total / seconds,
        max(0.0, total - half) / seconds,
        (total + half) / seconds,
        n,
        "compound Poisson count, normal interval",
        exact=expand <= 1,
    )


def _binomial_cdf(n: int, p: float) -> list[float]:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, p), 0 < p < 1 (log-space: n may be large)."""
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    out, total = [], 0.0
    for k in range(n + 1):
        total += math.exp(lgn - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
        out.append(min(1.0, total))
    return out


def quantile_estimate(
    values: Sequence[float], q: float, population: int, z: float = Z99, floor: float = -math.inf
) -> Estimate | None:
    """The q-th percentile of `values` (a uniform sample of a population of `population`),
    with a distribution-free interval from order statistics: the ranks l and u whose order
    statistics X(l) <= x_q <= X(u) hold with at least the level of `z` (99%), from the
    binomial count of sampled values below the percentile (exact, not its normal
    approximation). When the sample is too small for a rank (a p99 of a few sessions) that
    end is unbounded: `floor` (the least value possible, 0 for sizes) below, infinity above."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    value = percentile(ordered, q)
    if n >= population:
        return Estimate(value, value, value, n, "exact percentile of every session", exact=True)
    p = min(max(q / 100, 1e-12), 1 - 1e-12)
    tail = (1 - (2 * NormalDist().cdf(z) - 1)) / 2  # each side's share of the miss: 0.005
    cdf = _binomial_cdf(n, p)
    # X(l) > x_q when fewer than l values fall below it: P(B <= l - 1) <= tail, l largest
    lower = max((r for r in range(1, n + 1) if cdf[r - 1] <= tail), default=0)
    # X(u) < x_q when u or more values fall below it: P(B >= u) <= tail, u smallest
    upper = min((r for r in range(1, n + 1) if 1 - cdf[r - 1] <= tail), default=n + 1)
    low = float(ordered[lower - 1]) if lower >= 1 else floor
    high = float(ordered[upper - 1]) if upper <= n else math.inf
    return Estimate(value, low, high, n, "percentile, order-statistic interval (exact binomial ranks)")


@dataclass
class SessionSample:
    """What one sampled session's keys say (bytes as Redis stores them)."""

    session: str
    turns: int  # appends: v - fv - sv
    stored_bytes: int
    created_ms: int | None
    pttl_ms: int
    summary_bytes: int
    state_bytes: int
    log_records: int
    record_overhead: int  # turn id and separator of the newest record
    schema_version: str  # of the structured state: "v3", "unversioned", "none"
    newest_stored: int = 0  # bytes of the newest record's encoded turn, as stored
    newest_raw: int = 0  # the same turn's bytes uncompressed (raw envelope); 0 when unreadable

    @property
    def turn_bytes(self) -> int:
        """Bytes of the turns in the log (encoded turns, without their ids)."""
        return max(
            0, self.stored_bytes - self.summary_bytes - self.state_bytes - self.log_records * self.record_overhead
        )


@dataclass
class Snapshot:
    """One look at a namespace: every session id (from SCAN) and a sample read in full."""

    namespace: str
    at: float  # the clock's seconds
    sessions: set[str]
    sample: dict[str, SessionSample]
    round_trips: int
    keys_scanned: int
    nodes: int
    corrupt: int = 0  # sampled sessions whose meta fields are not numbers (left out)
    foreign: int = 0  # keys at a meta key's place that are no session: wrong type, bad id, not UTF-8


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _valid_id(session_id: str) -> bool:
    try:
        validate_session_id(session_id)
    except InvalidInput:
        return False
    return True


def _count(value: Any, most: int = MAX_SESSION_BYTES) -> int | None:
    """A meta field as a whole number from 0 to `most`, or None when it is anything else
    (not a number, a fraction, negative, absurd): such a session is corrupt, not empty."""
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        number = int(text)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return number if 0 <= number <= most else None


def _meta_fields(v: Any, fv: Any, sv: Any, b: Any, c: Any) -> tuple[int, int, int | None] | None:
    """(turns, stored bytes, creation ms or None) from a meta hash's fields, or None when a
    field is missing (a hash of another shape), not a whole number, negative or absurd."""
    version, stored = _count(v, most=2**53), _count(b)
    folds = 0 if fv is None else _count(fv)
    states = 0 if sv is None else _count(sv)
    created = None if c is None else _count(c, most=2**53)  # milliseconds since 1970
    if None in (version, stored, folds, states) or (c is not None and created is None):
        return None
    return max(0, version - folds - states), stored, created  # type: ignore[operator]


def _unpacked(client: Any, namespace: str, raw: bytes, key: str) -> bytes:
    """The orjson bytes in an envelope, fetching the namespace's dictionary it names once."""
    from statekit.store import dictionaries

    try:
        return codec.unpack(raw, key)
    except codec.MissingDictionary as missing:
        dictionaries.load(client, namespace, missing.dict_id)
        return codec.unpack(raw, key)


def _schema_version(raw: Any, client: Any = None, namespace: str = "") -> str:
    if raw is None:
        return "none"
    if isinstance(raw, Exception):
        return "unreadable"
    try:
        value = orjson.loads(_unpacked(client, namespace, raw, "state")) if raw[:1] in (b"\x01", b"\x02") else None
    except (orjson.JSONDecodeError, CorruptStateError):
        return "unreadable"
    if isinstance(value, dict) and set(value) == {"_v", "data"}:
        return f"v{value['_v']}"
    return "unversioned"


def read_sessions(
    walker: Walker, namespace: str, ids_by_node: dict[str, list[str]], batch: int = 500
) -> tuple[dict[str, SessionSample], int, int]:
    """Read the sessions `ids_by_node` (node name -> ids) in pipelined batches: (the samples,
    round trips, sessions found corrupt or gone)."""
    out: dict[str, SessionSample] = {}
    trips = bad = 0
    per = 8
    for node, ids in ids_by_node.items():
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            commands: list[tuple[Any, ...]] = []
            for sid in chunk:
                meta, log, summary, state = session_keys(namespace, sid)
                commands += [
                    ("HMGET", meta, "v", "fv", "sv", "b", "c"),
                    ("PTTL", meta),
                    ("STRLEN", summary),
                    ("STRLEN", state),
                    ("LLEN", log),
                    ("LINDEX", log, -1),
                    ("GET", state),
                    ("EXISTS", meta),
                ]
            replies = walker.execute(node, commands)
            trips += 1
            for reply in replies:
                if isinstance(reply, Exception) and isinstance(
                    error := classify_reply(reply, "calibrate's read of a session"), AccessDenied
                ):
                    raise error
            for i, sid in enumerate(chunk):
                r = replies[i * per : (i + 1) * per]
                if not r[7]:
                    continue  # gone since the SCAN (expired): not corrupt
                fields = None if any(isinstance(x, Exception) for x in r[:6]) else _meta_fields(*r[0])
                if fields is None:
                    bad += 1
                    continue
                turns, stored, created = fields
                newest = r[5] or b""
                cut = newest.find(SEP)
                newest_raw = 0
                if cut >= 0:
                    with contextlib.suppress(CorruptStateError):  # unreadable: no ratio from this session
                        newest_raw = 1 + len(_unpacked(walker.client, namespace, newest[cut + 1 :], "record"))
                out[sid] = SessionSample(
                    session=sid,
                    turns=turns,
                    stored_bytes=stored,
                    created_ms=created,
                    pttl_ms=int(r[1]),
                    summary_bytes=int(r[2]),
                    state_bytes=int(r[3]),
                    log_records=int(r[4]),
                    record_overhead=(newest.index(SEP) + 1) if SEP in newest else 0,
                    schema_version=_schema_version(r[6], walker.client, namespace),
                    newest_stored=len(newest) - cut - 1 if cut >= 0 else 0,
                    newest_raw=newest_raw,
                )
    return out, trips, bad


def snapshot(
    client: Any,
    namespace: str,
    *,
    sample: int | None = None,
    seed: int = 0,
    batch: int = 1000,
    clock: Callable[[], float] = time.time,
    progress: Callable[[int], None] | None = None,
    on_node: Callable[[str], None] | None = None,
    only: Iterable[str] | None = None,
) -> Snapshot:
    """Every session id of `namespace` (SCAN of its meta keys on every node) and a uniform
    random sample of at most `sample` of them (all when None) read in full; `only` reads
    those sessions instead of a fresh sample (the second look of a window)."""
    foreign = [0]  # keys matching the meta pattern that are no session of the namespace

    def undecodable(node: str, key: bytes) -> None:
        foreign[0] += 1

    walker = Walker(client, key_pattern(namespace, "meta"), batch, on_node=on_node, on_undecodable=undecodable)
    where: dict[str, str] = {}
    scanned = type_trips = 0
    for node_batch in walker:
        candidates = []
        for key in node_batch.keys:
            sid = session_id_of(key, namespace, "meta")
            if sid is None or not _valid_id(sid):
                foreign[0] += 1  # a brace in the id, a stray key: another program's
            else:
                candidates.append((key, sid))
        types = walker.execute(node_batch.node, [("TYPE", key) for key, _ in candidates])
        type_trips += 1 if candidates else 0
        for (_, sid), kind in zip(candidates, types, strict=True):
            if isinstance(kind, Exception):
                raise classify_reply(kind, "calibrate's TYPE of a meta key")
            if _text(kind) == "hash":
                where[sid] = node_batch.node
            elif _text(kind) != "none":  # "none": expired since the SCAN
                foreign[0] += 1  # a string or a stream where a meta hash belongs
        scanned += len(node_batch.keys)
        if progress is not None:
            progress(len(node_batch.keys))
    trips = walker.scans + type_trips
    at = clock()
    if only is not None:
        chosen = [sid for sid in only if sid in where]
    elif sample is None or sample >= len(where):
        chosen = sorted(where)
    else:
        chosen = random.Random(seed).sample(sorted(where), sample)
    by_node: dict[str, list[str]] = {}
    for sid in chosen:
        by_node.setdefault(where[sid], []).append(sid)
    read, read_trips, bad = read_sessions(walker, namespace, by_node)
    return Snapshot(namespace, at, set(where), read, trips + read_trips, scanned, len(walker.nodes()), bad, foreign[0])


@dataclass
class Measurement:
    """What a namespace showed: counts, distributions and rates, each with its interval."""

    namespace: str
    sessions: int
    sampled: int
    estimates: dict[str, Estimate] = field(default_factory=dict)
    bytes_percentiles: dict[str, Estimate] = field(default_factory=dict)
    schema_versions: dict[str, int] = field(default_factory=dict)
    ttl: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    round_trips: int = 0
    keys_scanned: int = 0
    nodes: int = 1
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    corrupt: int = 0  # sampled sessions left out: their meta fields are not numbers
    foreign: int = 0  # keys where a session's meta belongs that are no session (not counted)
    sizes: list[int] = field(default_factory=list)  # stored bytes of each sampled session, for plots

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("estimates", "bytes_percentiles", "sizes")}
        out["estimates"] = {k: e.as_dict() for k, e in self.estimates.items()}
        out["bytes_percentiles"] = {k: e.as_dict() for k, e in self.bytes_percentiles.items()}
        return json_ready(out)  # type: ignore[no-any-return]


def measure(
    client: Any,
    namespace: str,
    *,
    ttl_seconds: float,
    finished_after_s: float,
    sample: int | None = None,
    window_s: float = 0.0,
    wait: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    seed: int = 0,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
    on_node: Callable[[str], None] | None = None,
) -> Measurement:
    """Measure `namespace`, read-only: sessions held (exact, from SCAN), and from a uniform
    sample of at most `sample` sessions (all when None): stored bytes per session
    (p50/p95/p99/max), turns per session and session length (from sessions idle for at least
    `finished_after_s`: those still running would understate both), bytes per turn, summary
    bytes, remaining TTL against the policy's `ttl_seconds`, and the state schema versions
    in use. With `window_s` > 0 it waits that long (`wait`, on `clock`'s seconds) and looks
    again: new sessions per second and appends per second over the window.
    """
    validate_namespace(namespace)
    if sample is not None and sample < 2:
        raise ValueError(f"sample must be at least 2 sessions, got {sample!r}")
    started = time.perf_counter()
    first = snapshot(
        client, namespace, sample=sample, seed=seed, batch=batch, clock=clock, progress=progress, on_node=on_node
    )
    m = Measurement(namespace, len(first.sessions), len(first.sample), nodes=first.nodes)
    m.round_trips, m.keys_scanned = first.round_trips, first.keys_scanned
    population = len(first.sessions)
    rows = list(first.sample.values())
    m.corrupt, m.foreign = first.corrupt, first.foreign
    if first.corrupt:
        m.notes.append(
            f"{first.corrupt} sessions could not be read: corrupt meta (a field v, fv, sv, b or c missing, not a "
            "whole number, negative or beyond 1 TB): left out of the estimates"
        )
    if first.foreign:
        m.notes.append(
            f"{first.foreign} key{'s' if first.foreign > 1 else ''} where a session's meta belongs: no session "
            f"of {namespace!r} (another type, "
            "an id with braces or control characters, a name not UTF-8): foreign, not counted"
        )
    sizes = [s.stored_bytes for s in rows]
    m.sizes = sizes
    m.estimates["sessions_held"] = Estimate(population, population, population, population, "SCAN count", True)
    # every session was read (bar those that expired between the SCAN and the read): exact figures
    read_all = sample is None or sample >= population
    for q in (50, 95, 99):
        if (e := quantile_estimate(sizes, q, len(sizes) if read_all else population, floor=0.0)) is not None:
            m.bytes_percentiles[f"p{q}"] = e
    if sizes:
        top = float(max(sizes))
        exact = read_all
        m.bytes_percentiles["max"] = Estimate(
            top,
            top,
            top if exact else math.inf,
            len(sizes),
            "largest seen" + ("" if exact else " (a lower bound)"),
            exact,
        )
    ttl_ms = ttl_seconds * 1000
    idle = {s.session: max(0.0, (ttl_ms - s.pttl_ms) / 1000) for s in rows if s.pttl_ms >= 0}
    finished = [s for s in rows if idle.get(s.session, 0) >= finished_after_s]
    if len(finished) < 2:
        m.notes.append(
            f"fewer than 2 sampled sessions idle for {finished_after_s:g} s or more: turns per session and "
            "session length are not measured (sample longer after traffic, or sample more)"
        )
    share = len(finished) / len(rows) if rows else 0
    finished_population = round(population * share)
    if (e := mean_estimate([s.turns for s in finished], finished_population, floor=0.0)) is not None:
        m.estimates["turns_per_session"] = e
    now = clock()
    durations = [(now - idle[s.session]) - s.created_ms / 1000 for s in finished if s.created_ms is not None]
    durations = [max(0.0, d) for d in durations]
    if (e := mean_estimate([d / 60 for d in durations], finished_population, floor=0.0)) is not None:
        m.estimates["session_minutes"] = e
    with_turns = [s for s in rows if s.log_records > 0]
    readable = [s for s in with_turns if s.newest_raw and s.newest_stored]
    ratio = ratio_estimate([s.newest_raw for s in readable], [s.newest_stored for s in readable])
    if ratio is not None:
        m.estimates["compression_ratio"] = ratio
    if (e := ratio_estimate([s.turn_bytes for s in with_turns], [s.log_records for s in with_turns])) is not None:
        if ratio is not None and ratio.value > 1.0:  # a turn's bytes as the service writes them, before compression
            e = Estimate(
                e.value * ratio.value,
                e.low * ratio.low,
                e.high * ratio.high,
                e.n,
                e.method + ", times the compression ratio",
                e.exact and ratio.exact,
            )
        m.estimates["bytes_per_turn"] = e
    summaries = [s.summary_bytes for s in rows if s.summary_bytes > 0]
    if (
        e := quantile_estimate(
            summaries, 95, max(len(summaries), round(population * len(summaries) / max(1, len(rows)))), floor=0.0
        )
    ) is not None:
        m.estimates["summary_bytes_p95"] = e
    m.estimates["summarised_share"] = _share(len(summaries), len(rows), population)
    in_progress = len(rows) - len([s for s in rows if idle.get(s.session, 0) >= finished_after_s])
    m.estimates["sessions_in_progress"] = _scaled_share(in_progress, len(rows), population)
    ttls = sorted(s.pttl_ms / 1000 for s in rows if s.pttl_ms >= 0)
    m.ttl = {
        "policy_s": float(ttl_seconds),
        "without_ttl": float(sum(1 for s in rows if s.pttl_ms == -1)),
        "longest_remaining_s": ttls[-1] if ttls else 0.0,
        "median_remaining_s": percentile(ttls, 50) if ttls else 0.0,
        "over_policy": float(sum(1 for t in ttls if t > ttl_seconds + 1)),
    }
    for s in rows:
        m.schema_versions[s.schema_version] = m.schema_versions.get(s.schema_version, 0) + 1
    if window_s > 0:
        wait(window_s)
        before = {s.session: s.turns for s in rows}
        second = snapshot(client, namespace, batch=batch, clock=clock, only=list(before))
        elapsed = second.at - first.at
        new_ids = sorted(second.sessions - first.sessions)
        picked = (
            new_ids if sample is None or len(new_ids) <= sample else random.Random(seed + 1).sample(new_ids, sample)
        )
        walker = Walker(client, key_pattern(namespace, "meta"), batch)
        by_node = _by_node(walker, namespace, picked)
        fresh, trips, _ = read_sessions(walker, namespace, by_node)
        m.round_trips += second.round_trips + trips
        m.keys_scanned += second.keys_scanned
        m.window_s = elapsed
        m.estimates["new_sessions_per_s"] = poisson_rate(len(new_ids), elapsed)
        gained_old = [max(0, second.sample[sid].turns - t) if sid in second.sample else 0 for sid, t in before.items()]
        gained_new = [fresh[sid].turns for sid in picked if sid in fresh]
        expand_old = population / len(before) if before else 1.0
        expand_new = len(new_ids) / len(gained_new) if gained_new else 1.0
        old = compound_rate(gained_old, expand_old, elapsed)
        new = compound_rate(gained_new, expand_new, elapsed)
        value = old.value + new.value
        half = math.hypot(old.high - old.value, new.high - new.value)
        m.estimates["appends_per_s"] = Estimate(
            value, max(0.0, value - half), value + half, old.n + new.n, old.method, old.exact and new.exact
        )
    m.seconds = time.perf_counter() - started
    return m


def _share(k: int, n: int, population: int, z: float = Z99) -> Estimate:
    """A proportion k/n with its Wilson interval (exact when the whole population was read)."""
    if n == 0:
        return Estimate(0.0, 0.0, 1.0, 0, "no sessions")
    p = k / n
    if n >= population:
        return Estimate(p, p, p, n, "share of every session", True)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, "share, Wilson interval")


def _scaled_share(k: int, n: int, population: int) -> Estimate:
    s = _share(k, n, population)
    return Estimate(s.value * population, s.low * population, s.high * population, n, s.method, s.exact)


def _by_node(walker: Walker, namespace: str, ids: Sequence[str]) -> dict[str, list[str]]:
    """Group session ids by the node holding them (one node unless a cluster)."""
    nodes = walker.nodes()
    if len(nodes) == 1:
        return {nodes[0][0]: list(ids)} if ids else {}
    out: dict[str, list[str]] = {}
    for sid in ids:
        node = walker.client.get_node_from_key(session_keys(namespace, sid)[0])
        out.setdefault(node.name, []).append(sid)
    return out


# -- what StateMetrics exposed --------------------------------------------------------------


def read_prometheus(text: str, source: str = "the metrics") -> dict[str, Any]:
    """Figures from a Prometheus exposition of `StateMetrics` (what a scrape of the service
    returns, or a saved file), parsed by prometheus_client's own parser: the conflict ratio,
    the share of context reads not served by the store (degraded: cache or default), and
    p50/p95/p99 latency per operation in ms (read off the cumulative histogram buckets: an
    upper bound, the bucket's edge; infinite when it lies beyond the largest finite edge).

    Raises `CorruptStateError` naming `source` (a path or URL) when the text is not an
    exposition (a sample without a value, a bucket edge that is not a number, a negative
    count) or holds no statekit metric."""
    from prometheus_client.parser import text_string_to_metric_families

    def bad(why: str) -> CorruptStateError:
        return CorruptStateError(f"{source} is not a usable Prometheus exposition: {why}")

    try:  # the parser is lazy: its errors come while the samples are read
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise bad(str(exc) or type(exc).__name__) from None
    buckets: dict[str, list[tuple[float, float]]] = {}
    reads: dict[str, float] = {}
    conflict: float | None = None
    for sample in samples:
        name, label, value = sample.name, sample.labels, float(sample.value)
        counted = name in ("statekit_operation_duration_seconds_bucket", "statekit_context_reads_total")
        if counted and not value >= 0:
            raise bad(f"{name}{label} counts {value:g}: a count is 0 or more")
        if name == "statekit_operation_duration_seconds_bucket":
            try:
                le = float(label["le"])
            except (KeyError, ValueError):
                raise bad(f"{name} with a bucket edge le={label.get('le')!r} that is not a number") from None
            buckets.setdefault(label.get("operation", "?"), []).append((le, value))
        elif name in ("statekit_context_reads_total", "statekit_context_reads"):
            reads[label.get("tier", "?")] = value
        elif name == "statekit_conflict_ratio":
            if value < 0:
                raise bad(f"{name} is {value:g}: a ratio is 0 or more")
            conflict = value  # NaN (no attempt yet) stays: reported as not measured
    if not buckets and not reads and conflict is None:
        raise CorruptStateError(f"{source} holds no statekit_* family: is this a scrape of StateMetrics.prometheus()?")
    latency: dict[str, dict[str, float]] = {}
    for op, pairs in buckets.items():
        pairs.sort()
        total = pairs[-1][1] if pairs else 0
        if total <= 0:
            continue
        latency[op] = {}
        for q in (50, 95, 99):
            want = total * q / 100
            edge = next((le for le, c in pairs if c >= want), math.inf)
            latency[op][f"p{q}_ms"] = edge * 1000
        latency[op]["count"] = total
    read_total = sum(reads.values())
    return {
        "conflict_ratio": conflict,
        "degraded_share": (read_total - reads.get("store", 0)) / read_total if read_total else None,
        "context_reads": read_total,
        "latency_ms": latency,
    }


def replica_lag_now(primary: Any, replica: Any) -> dict[str, float]:
    """How far `replica` is behind `primary` right now, from INFO replication: bytes of
    replication offset not yet applied and seconds since the replica last heard from its
    primary. A real server only (fakeredis has no replication)."""
    from statekit.backends import backend_kind

    if backend_kind(primary) == "fakeredis" or backend_kind(replica) == "fakeredis":
        raise NeedsRealRedis("replica lag needs a real primary and replica: fakeredis has no replication")
    p, r = primary.info("replication"), replica.info("replication")
    if r.get("role") != "slave":
        raise NeedsRealRedis(f"the replica URL is a {r.get('role', 'server')!r}, not a replica")
    return {
        "offset_behind_bytes": float(max(0, int(p.get("master_repl_offset", 0)) - int(r.get("slave_repl_offset", 0)))),
        "last_io_seconds_ago": float(r.get("master_last_io_seconds_ago", -1)),
    }
