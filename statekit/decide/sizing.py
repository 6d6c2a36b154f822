"""How much Redis a workload needs, from numbers: a memory model of what SessionStore writes.

`estimate_memory` builds the model from Redis 7.0's own data structures rather than from a
fudge factor: every allocation is rounded up to its jemalloc size class, each key costs a
dict entry, its name and an object header, each TTL an entry in the expires dict, both
dicts a power-of-two bucket array, hashes are listpacks and lists are quicklists of
listpack nodes of at most 8 KB, filled and trimmed in the order the store's scripts push
and trim them. `measure` writes the same sessions through SessionStore into a real Redis
and reads `INFO memory`, so the model is checked against the server, not against itself.
(redis-py and Redis offer nothing that predicts memory before the data exists; MEMORY
USAGE only measures keys that are already written, hence this module.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from statekit import codec
from statekit.backends import backend_kind
from statekit.codec import Codec
from statekit.errors import NeedsRealRedis
from statekit.keys import key_name_bytes, session_keys
from statekit.lifecycle import ExtractiveSummarizer, LifecyclePolicy, truncate_utf8

__all__ = [
    "estimate_memory",
    "session_bytes_unbounded",
    "MemoryEstimate",
    "Measurement",
    "measure",
    "active_sessions",
    "peak_held_sessions",
    "nodes_needed",
    "growth_over_turns",
    "growth_over_days",
    "synthetic_turn",
    "jemalloc_size",
    "BASELINE_USED_MEMORY",
    "FIRST_SCRIPT_BYTES",
    "plan_cluster",
    "measure_cluster",
    "CLIENT_BYTES",
    "used_memory",
    "live_growth",
    "plan_capacity",
]

#: used_memory of an empty Redis 7.0 (default settings) after SessionStore's scripts have
#: run once, with one client connected: 964,160 bytes at start, plus 233,720 that the
#: first script calls leave behind (the Lua client and its buffers), measured on this
#: project's CI machine. It does not grow with the number of sessions.
BASELINE_USED_MEMORY = 1_198_000
#: The part of the baseline that SessionStore's first script calls leave on a server: each
#: node of a cluster runs the scripts for the first time too.
FIRST_SCRIPT_BYTES = 233_720
#: What each further client connection adds once it has sent and read a few KB.
CLIENT_BYTES = 22_272

_ROBJ = 16  # redisObject
_DICT_ENTRY = 24  # key, value, next; +16 bytes of slot metadata in cluster mode (Redis 7.0)
_QUICKLIST = 40
_QUICKLIST_NODE = 40
_LISTPACK_NODE_LIMIT = 8192  # list-max-listpack-size -2
_QUICKLIST_INSERT_SLACK = 8  # SIZE_ESTIMATE_OVERHEAD in quicklist.c
_LP_HEADER, _LP_END = 6, 1
_EMBSTR_MAX = 44
_TURN_ID_BYTES = 20  # SessionStore's generated ids


def jemalloc_size(n: int) -> int:
    """The jemalloc size class that an allocation of `n` bytes really takes (x86-64, 16-byte quantum)."""
    if n <= 8:
        return 8
    if n <= 128:
        return -(-n // 16) * 16
    k = (n - 1).bit_length() - 1  # 2**k < n <= 2**(k+1): four classes per doubling
    step = 1 << (k - 2)
    return -(-n // step) * step


def _sds_alloc(length: int) -> int:
    header = 3 if length < 256 else 5 if length < 65536 else 9
    return jemalloc_size(header + length + 1)


def _string_value(length: int) -> int:
    if length <= _EMBSTR_MAX:
        return jemalloc_size(_ROBJ + 3 + length + 1)
    return _ROBJ + _sds_alloc(length)


def _backlen(encoded: int) -> int:
    return 1 if encoded < 128 else 2 if encoded < 16384 else 3 if encoded < 2097152 else 4


def _lp_string(length: int) -> int:
    encoded = length + (1 if length < 64 else 2 if length < 4096 else 5)
    return encoded + _backlen(encoded)


def _lp_int(value: int) -> int:
    for limit, size in ((127, 1), (4095, 2), (32767, 3), (8388607, 4), (2147483647, 5)):
        if -limit - 1 <= value <= limit and (size > 1 or value >= 0):
            return size + 1
    return 10


def _lp_value(value: str) -> int:
    # an integer to listpack only when written as Redis writes one: ASCII digits, a sign, no padding
    digits = value[1:] if value.startswith("-") else value
    if digits.isascii() and digits.isdigit() and len(value) <= 20 and str(int(value)) == value:
        return _lp_int(int(value))
    return _lp_string(len(value.encode()))


def _hash_listpack(fields: dict[str, str], more: int = 0) -> int:
    """A listpack-encoded hash of `fields`, and `more` bytes of further entries."""
    size = _LP_HEADER + _LP_END + more + sum(_lp_value(k) + _lp_value(v) for k, v in fields.items())
    return _ROBJ + jemalloc_size(size)


class _Quicklist:
    """A quicklist of listpack nodes, grown and trimmed as Redis 7.0 does. The nodes' allocated
    bytes are kept as a running total, so a replay that reads them after each turn stays linear."""

    def __init__(self) -> None:
        self.nodes: list[list[int]] = []  # [listpack bytes, entry sizes...]
        self._node_bytes = 0  # sum of jemalloc_size(_QUICKLIST_NODE) + jemalloc_size(listpack) per node

    def push(self, length: int) -> None:
        entry = _lp_string(length)
        tail = self.nodes[-1] if self.nodes else None
        if tail is not None and tail[0] + length + _QUICKLIST_INSERT_SLACK <= _LISTPACK_NODE_LIMIT:
            self._node_bytes -= jemalloc_size(tail[0])
            tail[0] += entry
            tail.append(entry)
            self._node_bytes += jemalloc_size(tail[0])
        else:
            self.nodes.append([_LP_HEADER + _LP_END + entry, entry])
            self._node_bytes += jemalloc_size(_QUICKLIST_NODE) + jemalloc_size(self.nodes[-1][0])

    def trim_head(self, count: int) -> None:
        while count and self.nodes:
            head = self.nodes[0]
            take = min(count, len(head) - 1)
            self._node_bytes -= jemalloc_size(head[0])
            head[0] -= sum(head[1 : 1 + take])
            del head[1 : 1 + take]
            count -= take
            if len(head) == 1:
                self.nodes.pop(0)
                self._node_bytes -= jemalloc_size(_QUICKLIST_NODE)
            else:
                self._node_bytes += jemalloc_size(head[0])

    def __len__(self) -> int:
        return sum(len(n) - 1 for n in self.nodes)

    def bytes(self) -> int:
        if not self.nodes:
            return 0
        return _ROBJ + jemalloc_size(_QUICKLIST) + self._node_bytes


def synthetic_turn(i: int, turn_bytes: int) -> dict[str, str]:
    """Turn `i` of a synthetic session: alternating roles, `turn_bytes` of text."""
    return {"role": "user" if i % 2 == 0 else "assistant", "content": "x" * turn_bytes}


@dataclass(frozen=True)
class MemoryEstimate:
    """Modelled Redis memory for `sessions` sessions of `turns_per_session` turns each.

    `per_session` is the memory one session's keys take (values, key names, expiry
    entries); `dict_tables` the two global hash tables' buckets; `total` adds the server's
    own baseline: it is what `INFO memory` reports as used_memory. `stored_bytes` is what
    SessionStore counts against `max_bytes` for one session.
    """

    sessions: int
    turns_per_session: int
    turn_bytes: int
    keys_per_session: int
    log_turns: int
    summary_bytes: int
    stored_bytes: int
    per_session: int
    breakdown: dict[str, int]
    dict_tables: int
    baseline: int
    total: int
    unbounded_per_session: int
    unbounded_total: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key_overhead(name_len: int, cluster: bool, with_ttl: bool) -> int:
    entry = jemalloc_size(_DICT_ENTRY + (16 if cluster else 0))
    return entry + _sds_alloc(name_len) + (jemalloc_size(_DICT_ENTRY) if with_ttl else 0)


def _table(keys: int) -> int:
    return 8 * max(4, 1 << max(0, (keys - 1).bit_length())) if keys else 0


class _Summary:
    """The summary's length as the store folds: the summarizer run batch by batch, in
    `fold_batch` turns, on the turns folded so far. Complete batches are folded once and kept,
    so a replay that asks after every turn pays for each batch once."""

    def __init__(self, policy: LifecyclePolicy, summary_bytes: int | None) -> None:
        self.policy = policy
        self.summary_bytes = summary_bytes
        self.folded: list[dict[str, Any]] = []
        self.text = ""  # the summary of folded[: self.done]
        self.done = 0

    def _fold(self, summary: str, batch: list[dict[str, Any]]) -> str:
        budget = self.policy.summary_max_bytes
        return truncate_utf8(self.policy.summarizer(summary, batch, budget), budget)  # type: ignore[misc]

    def length(self) -> int:
        policy = self.policy
        if not self.folded or policy.summarizer is None:
            return 0
        if self.summary_bytes is not None:
            return min(self.summary_bytes, policy.summary_max_bytes)
        if not isinstance(policy.summarizer, ExtractiveSummarizer):
            return policy.summary_max_bytes  # an unknown summarizer: assume it uses its whole budget
        # Deterministic and cheap: run it on the same turns, batch by batch, as the store would.
        batch = policy.fold_batch
        while len(self.folded) - self.done >= batch:
            self.text = self._fold(self.text, self.folded[self.done : self.done + batch])
            self.done += batch
        rest = self.folded[self.done :]
        return len((self._fold(self.text, rest) if rest else self.text).encode())


def compressed(length: int, ratio: float, envelope: int = 1) -> int:
    """Stored bytes of a value of `length` raw bytes (its envelope included) under a codec that
    compresses `ratio` times: raw below `codec.MIN_BYTES` or when that does not pay."""
    if ratio <= 1.0 or length - envelope < codec.MIN_BYTES:
        return length
    return min(length, envelope + math.ceil((length - envelope) / ratio))


def _naive_record_lengths(turn_bytes: int) -> tuple[int, int]:
    """Encoded lengths of the synthetic turns, even and odd (all a synthetic turn varies with)."""
    return len(codec.encode(synthetic_turn(0, turn_bytes))), len(codec.encode(synthetic_turn(1, turn_bytes)))


def session_bytes_unbounded(turns: int, turn_bytes: int, namespace: str = "sk", session_id_bytes: int = 10) -> int:
    """Memory of one session kept the naive way: every turn RPUSHed to one list, no window,
    no summary, no TTL."""
    ql = _Quicklist()
    lengths = _naive_record_lengths(turn_bytes)
    for i in range(turns):
        ql.push(lengths[i % 2])
    return _key_overhead(key_name_bytes(namespace, session_id_bytes, "log"), False, with_ttl=False) + ql.bytes()


#: A turn's field in the meta hash: '#' and its id (never an integer to listpack), and "1".
_LOG_FIELD = _lp_value("#" + "0" * _TURN_ID_BYTES) + _lp_value("1")


def estimate_memory(
    policy: LifecyclePolicy,
    sessions: int,
    turns_per_session: int,
    turn_bytes: int,
    *,
    state_bytes: int = 0,
    summary_bytes: int | None = None,
    namespace: str = "sk",
    session_id_bytes: int = 10,
    cluster: bool = False,
    clients: int = 1,
    baseline: int = BASELINE_USED_MEMORY,
    compression_ratio: float = 1.0,
    session_turns: list[dict[str, Any]] | None = None,
) -> MemoryEstimate:
    """Model the used_memory of `sessions` sessions written through SessionStore with `policy`.

    `turn_bytes` is the size of one turn's text; records add the turn id, the codec's
    envelope and the JSON around the text. `state_bytes` is the encoded structured state
    per session (0: none). `summary_bytes` overrides the summary size (by default the
    ExtractiveSummarizer is run on synthetic turns; another summarizer is assumed to fill
    its budget). `session_id_bytes` is the length of a session id (10 for `s-00000001`, 36
    for a UUID). `cluster=True` models Redis Cluster's larger dict entries (per node).
    `clients` is the number of connections to the server (each holds its own buffers).
    `compression_ratio` is a compressing codec's raw bytes over stored bytes (`statekit dict
    train` and `statekit calibrate` measure it; 1: stored uncompressed): records, the summary
    and the state of at least `codec.MIN_BYTES` are stored that many times smaller.
    `session_turns`, when given, are the turns of a session (`turns_per_session` of them,
    cycled) in place of synthetic turns of `turn_bytes`.
    """
    *_, last = _replay(
        policy,
        sessions,
        turns_per_session,
        turn_bytes,
        every_turn=False,
        state_bytes=state_bytes,
        summary_bytes=summary_bytes,
        namespace=namespace,
        session_id_bytes=session_id_bytes,
        cluster=cluster,
        clients=clients,
        baseline=baseline,
        compression_ratio=compression_ratio,
        session_turns=session_turns,
    )
    return last


def _replay(
    policy: LifecyclePolicy,
    sessions: int,
    turns_per_session: int,
    turn_bytes: int,
    *,
    every_turn: bool,
    state_bytes: int = 0,
    summary_bytes: int | None = None,
    namespace: str = "sk",
    session_id_bytes: int = 10,
    cluster: bool = False,
    clients: int = 1,
    baseline: int = BASELINE_USED_MEMORY,
    compression_ratio: float = 1.0,
    session_turns: list[dict[str, Any]] | None = None,
) -> Iterator[MemoryEstimate]:
    """`estimate_memory`'s model, the store's scripts replayed turn by turn: the estimate after
    the last turn, or (`every_turn`) after each of turns 1..`turns_per_session` from one replay.
    (Replaying 1..n turns afresh for each n, as `growth_over_turns` once did, is quadratic.)"""
    if sessions < 0 or turns_per_session < 0 or turn_bytes < 0 or state_bytes < 0:
        raise ValueError("sessions, turns_per_session, turn_bytes and state_bytes must be >= 0")
    if not compression_ratio >= 1.0:
        raise ValueError(f"compression_ratio is raw over stored bytes, at least 1.0, got {compression_ratio!r}")
    # A turn's record depends only on its place in the cycle of distinct turns: each is encoded once.
    cycle = list(session_turns) if session_turns else [synthetic_turn(0, turn_bytes), synthetic_turn(1, turn_bytes)]
    lengths = [_TURN_ID_BYTES + 1 + compressed(len(codec.encode(t)), compression_ratio) for t in cycle]
    naive = _naive_record_lengths(turn_bytes)
    state_bytes = compressed(state_bytes, compression_ratio) if state_bytes else 0
    bytes_per_part = {
        part: _key_overhead(key_name_bytes(namespace, session_id_bytes, part), cluster, True)
        for part in ("meta", "log", "summary", "state")
    }
    naive_key = _key_overhead(key_name_bytes(namespace, session_id_bytes, "log"), False, with_ttl=False)
    client_bytes = baseline + (clients - 1) * CLIENT_BYTES
    # `c`, the session's creation time in ms: its length is all that counts
    created = str(int(time.time() * 1000))

    # Replay the store's scripts: push, then fold (park mode) or pop (drop mode).
    ql, naive_ql, in_log = _Quicklist(), _Quicklist(), []
    summary = _Summary(policy, summary_bytes)
    folds = log_bytes = 0

    def estimate(turns: int) -> MemoryEstimate:
        summary_len = summary.length()
        summary_len = compressed(summary_len, compression_ratio, envelope=0) if summary_len else 0
        stored = log_bytes + summary_len + state_bytes
        meta_fields = {"v": str(turns + folds + (1 if state_bytes else 0)), "b": str(stored), "c": created}
        if folds:
            meta_fields["fv"] = str(folds)
        if state_bytes:
            meta_fields["sv"] = "1"
        parts = ["meta", "log"] + (["summary"] if summary_len else []) + (["state"] if state_bytes else [])
        has_session = turns > 0 or state_bytes > 0
        if turns == 0:
            parts.remove("log")
        breakdown = {
            "key names, dict and expiry entries": sum(bytes_per_part[p] for p in parts),
            # one field per turn in the log
            "meta hash": _hash_listpack(meta_fields, len(in_log) * _LOG_FIELD) if has_session else 0,
            "log list": ql.bytes(),
            "summary": _string_value(summary_len) if summary_len else 0,
            "state": _string_value(state_bytes) if state_bytes else 0,
        }
        if not has_session:
            breakdown = dict.fromkeys(breakdown, 0)
            parts = []
        per_session = sum(breakdown.values())
        tables = 2 * _table(sessions * len(parts))
        unbounded = naive_key + naive_ql.bytes()
        return MemoryEstimate(
            sessions=sessions,
            turns_per_session=turns,
            turn_bytes=turn_bytes,
            keys_per_session=len(parts),
            log_turns=len(in_log),
            summary_bytes=summary_len,
            stored_bytes=stored if has_session else 0,
            per_session=per_session,
            breakdown=breakdown,
            dict_tables=tables,
            baseline=client_bytes,
            total=client_bytes + sessions * per_session + tables,
            unbounded_per_session=unbounded,
            unbounded_total=baseline + sessions * unbounded + _table(sessions if turns else 0),
        )

    if turns_per_session == 0:
        yield estimate(0)
        return
    for i in range(turns_per_session):
        ql.push(lengths[i % len(lengths)])
        naive_ql.push(naive[i % 2])
        in_log.append(i)
        log_bytes += lengths[i % len(lengths)]
        parked = len(in_log) - policy.window_turns
        if policy.mode == "drop" and parked > 0:
            ql.trim_head(parked)
            log_bytes -= sum(lengths[j % len(lengths)] for j in in_log[:parked])
            del in_log[:parked]
        elif policy.mode == "park" and parked >= policy.fold_batch:
            ql.trim_head(parked)
            log_bytes -= sum(lengths[j % len(lengths)] for j in in_log[:parked])
            summary.folded += [cycle[j % len(cycle)] for j in in_log[:parked]]
            del in_log[:parked]
            folds += 1
        if every_turn or i == turns_per_session - 1:
            yield estimate(i + 1)


def active_sessions(new_sessions_per_day: float, session_seconds: float, ttl_seconds: float) -> int:
    """Sessions held in Redis at once, by Little's law: arrival rate x (session length + TTL).

    A session's keys live from its first write until `ttl_seconds` after its last one.
    """
    return math.ceil(new_sessions_per_day / 86_400 * (session_seconds + ttl_seconds))


def peak_held_sessions(
    peak_concurrent: int, session_seconds: float, ttl_seconds: float, new_sessions_per_day: float | None = None
) -> int:
    """Sessions held in Redis at a peak of `peak_concurrent` sessions at once: Little's law at
    the peak's arrival rate (peak_concurrent / session length), each held for the session and
    its TTL. It holds when the peak lasts at least a session and a TTL. With
    `new_sessions_per_day`, never more than the sessions started within a session and a TTL
    (at least a day's): a profile whose peak implies more arrivals than its day has is held to
    its day."""
    held = session_seconds + ttl_seconds
    at_peak = math.ceil(peak_concurrent * held / session_seconds)
    if new_sessions_per_day is None:
        return at_peak
    return min(at_peak, math.ceil(new_sessions_per_day * max(1.0, held / 86_400)))


def nodes_needed(total_bytes: int, maxmemory_bytes: int, usable_fraction: float = 0.75) -> int:
    """Redis nodes (shards) for `total_bytes`, filling each to `usable_fraction` of maxmemory.

    The rest is headroom for fragmentation, replication and client buffers, and the
    copy-on-write of a fork during persistence.
    """
    if maxmemory_bytes <= 0 or not 0 < usable_fraction <= 1:
        raise ValueError("maxmemory_bytes must be positive and usable_fraction in (0, 1]")
    return max(1, math.ceil(total_bytes / (maxmemory_bytes * usable_fraction)))


def growth_over_turns(policy: LifecyclePolicy, turns: int, turn_bytes: int, **kwargs: Any) -> dict[str, list[int]]:
    """Memory of one session after 1..`turns` turns, with the policy and without (naive list)."""
    bounded, unbounded = [], []
    if turns > 0:  # one replay, read after each turn
        for e in _replay(policy, 1, turns, turn_bytes, every_turn=True, **kwargs):
            bounded.append(e.per_session)
            unbounded.append(e.unbounded_per_session)
    return {"turns": list(range(1, turns + 1)), "with_policy": bounded, "without_policy": unbounded}


def growth_over_days(
    policy: LifecyclePolicy,
    new_sessions_per_day: float,
    session_seconds: float,
    turns_per_session: int,
    turn_bytes: int,
    days: int = 14,
    *,
    floor_sessions: int = 0,
    **kwargs: Any,
) -> dict[str, list[float]]:
    """Total memory at the end of each day, with the policy (a TTL holds the active set
    steady) and without (no TTL: every session ever started stays).

    Sessions held ramp up with the sessions started (Little's law's steady state once a
    session and its TTL have passed), and never fall below `floor_sessions` (the sessions a
    peak holds, which a peak on the first day holds already: `plan_capacity` passes its own,
    so the chart levels where the capacity plan does)."""
    e = estimate_memory(policy, 1, turns_per_session, turn_bytes, **kwargs)
    steady = active_sessions(new_sessions_per_day, session_seconds, policy.ttl_seconds)
    with_policy, without = [], []
    for day in range(1, days + 1):
        alive = max(min(steady, math.ceil(new_sessions_per_day * day)), floor_sessions)
        with_policy.append(e.baseline + alive * e.per_session + 2 * _table(alive * e.keys_per_session))
        kept = math.ceil(new_sessions_per_day * day)
        without.append(e.baseline + kept * e.unbounded_per_session + _table(kept))
    return {"days": list(range(1, days + 1)), "with_policy": with_policy, "without_policy": without}


@dataclass(frozen=True)
class Measurement:
    """used_memory of a real Redis before and after writing sessions, next to the model."""

    sessions: int
    used_memory_before: int
    used_memory_after: int
    estimate: MemoryEstimate
    seconds: float

    @property
    def error(self) -> float:
        """Relative error of the model's total against the measured used_memory."""
        return (self.estimate.total - self.used_memory_after) / self.used_memory_after

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "used_memory_before": self.used_memory_before,
            "used_memory_after": self.used_memory_after,
            "estimated_total": self.estimate.total,
            "error": self.error,
            "seconds": self.seconds,
        }


def _used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def measure(
    client: Any,
    policy: LifecyclePolicy,
    sessions: int,
    turns_per_session: int,
    turn_bytes: int,
    *,
    state_bytes: int = 0,
    namespace: str = "sk",
    threads: int = 4,
    progress: Callable[[int], None] | None = None,
    codec_: Codec | None = None,
    session_turns: list[dict[str, Any]] | None = None,
) -> Measurement:
    """Write `sessions` synthetic sessions through SessionStore into an empty real Redis and
    compare `INFO memory` used_memory with `estimate_memory` for the same sessions.

    `session_turns` are written in place of synthetic turns (cycled to `turns_per_session`);
    with a compressing `codec_`, the model is given the ratio measured on those turns (raw
    over stored bytes of their records), as `statekit calibrate` measures it on a namespace.

    The database must be empty (the model's baseline is an empty server). Raises
    `NeedsRealRedis` on fakeredis, which has no INFO memory to measure.
    """
    from statekit.store.blocking import SessionStore

    if backend_kind(client) == "cluster":
        raise ValueError(
            "measure() runs against one redis-server: a cluster's used_memory adds per-node baselines and "
            "cluster bookkeeping that the single-server model does not cover"
        )
    if backend_kind(client) == "fakeredis":
        raise NeedsRealRedis(
            "sizing.measure needs a real Redis: fakeredis keeps data in Python objects and has no INFO memory. "
            "Use sizing.estimate_memory for an estimate, or pass a client for redis://..."
        )
    if client.dbsize():
        raise ValueError("measure() needs an empty database: the model's baseline is an empty server")
    store = SessionStore(client, policy, namespace=namespace, codec=codec_)
    before = _used_memory(client)
    threads = max(1, min(threads, sessions))
    if session_turns:
        turns = [session_turns[i % len(session_turns)] for i in range(turns_per_session)]
    else:
        turns = [synthetic_turn(i, turn_bytes) for i in range(turns_per_session)]
    ratio = 1.0
    if codec_ is not None and codec_.compress:
        ratio = sum(len(codec.encode(t)) for t in turns) / sum(len(codec_.encode(t)) for t in turns)
    state = {"blob": "s" * max(0, state_bytes - len(codec.encode({"blob": ""})))} if state_bytes else None
    width = 10
    start = time.perf_counter()

    def write(index: int) -> None:
        sid = f"s-{index:0{width - 2}d}"
        for t in turns:
            store.append_turn(sid, t)
        if state is not None:
            store.update_state(sid, lambda _s: state)
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, range(sessions)))
    elapsed = time.perf_counter() - start
    time.sleep(0.3)  # let incremental rehashing of the key dicts finish
    after = _used_memory(client)
    real_state = len(codec.encode(state)) if state is not None else 0
    estimate = estimate_memory(
        policy,
        sessions,
        turns_per_session,
        turn_bytes,
        compression_ratio=ratio,
        session_turns=session_turns,
        state_bytes=real_state,
        namespace=namespace,
        session_id_bytes=width,
        clients=threads,
    )
    return Measurement(sessions, before, after, estimate, elapsed)


#: Default maxmemory per node for capacity plans: 13 GiB, the memory of a common 16 GB
#: cache node after the operating system and Redis's own reservations.
DEFAULT_NODE_MAXMEMORY = 13 * 1024**3


def plan_capacity(
    profile: Any,
    policy: LifecyclePolicy,
    *,
    node_maxmemory_bytes: int = DEFAULT_NODE_MAXMEMORY,
    usable_fraction: float = 0.75,
    days: int = 14,
) -> dict[str, Any]:
    """Memory per session and in total, with and without the policy, and nodes needed.

    Sessions held at once: the more of Little's law over the day's traffic (arrivals x
    (session + TTL)) and the peak's (`peak_held_sessions`: the peak's concurrent sessions
    plus those waiting out their TTL after it). Sizing for the peak is a judgement: it
    assumes the peak lasts a session and a TTL; both numbers are returned. Without the
    policy nothing expires, so the total is what a week of sessions would hold.
    """
    t = profile.turns
    session_s = profile.traffic.session_minutes * 60
    daily = active_sessions(profile.traffic.new_sessions_per_day, session_s, policy.ttl_seconds)
    at_peak = peak_held_sessions(
        profile.traffic.peak_concurrent_sessions, session_s, policy.ttl_seconds, profile.traffic.new_sessions_per_day
    )
    active = max(daily, at_peak)
    ratio = getattr(t, "compression_ratio", 1.0)
    e = estimate_memory(policy, active, t.per_session, t.bytes_per_turn, session_id_bytes=36, compression_ratio=ratio)
    week = math.ceil(profile.traffic.new_sessions_per_day * 7)
    unbounded_week = e.baseline + week * e.unbounded_per_session + _table(week)
    days_growth = growth_over_days(
        policy,
        profile.traffic.new_sessions_per_day,
        session_s,
        t.per_session,
        t.bytes_per_turn,
        days,
        floor_sessions=active,
        session_id_bytes=36,
        compression_ratio=ratio,
    )
    long_session = growth_over_turns(
        policy, max(4 * t.per_session, 50), t.bytes_per_turn, session_id_bytes=36, compression_ratio=ratio
    )
    return {
        "active_sessions": active,
        "daily_held_sessions": daily,
        "peak_held_sessions": at_peak,
        "sized_for": "peak" if at_peak >= daily else "day",
        "little_law": {
            "arrivals_per_second": profile.traffic.new_sessions_per_day / 86_400,
            "seconds_held": session_s + policy.ttl_seconds,
            "peak_arrivals_per_second": profile.traffic.peak_concurrent_sessions / session_s,
        },
        "compression_ratio": ratio,
        "per_session_bytes": e.per_session,
        "per_session_breakdown": e.breakdown,
        "stored_bytes_per_session": e.stored_bytes,
        "unbounded_per_session_bytes": e.unbounded_per_session,
        "total_bytes": e.total,
        "unbounded_week_bytes": unbounded_week,
        "node_maxmemory_bytes": node_maxmemory_bytes,
        "usable_fraction": usable_fraction,
        "nodes": nodes_needed(e.total, node_maxmemory_bytes, usable_fraction),
        "nodes_without_policy_after_a_week": nodes_needed(unbounded_week, node_maxmemory_bytes, usable_fraction),
        "growth_over_days": days_growth,
        "growth_over_turns": long_session,
        "cluster": plan_cluster(
            policy,
            active,
            t.per_session,
            t.bytes_per_turn,
            node_maxmemory_bytes=node_maxmemory_bytes,
            usable_fraction=usable_fraction,
            compression_ratio=ratio,
        ),
    }


def used_memory(client: Any) -> int:
    """INFO memory used_memory of a real server; `NeedsRealRedis` on fakeredis."""
    if backend_kind(client) == "fakeredis":
        raise NeedsRealRedis("fakeredis has no INFO memory: point redis_url at a real Redis to measure")
    if backend_kind(client) == "cluster":
        return sum(int(node["used_memory"]) for node in client.info("memory").values())
    return _used_memory(client)


def live_growth(
    client: Any,
    policy: LifecyclePolicy,
    sessions: int = 200,
    turns: int = 60,
    turn_bytes: int = 700,
    *,
    every: int = 5,
    namespace: str = "growth",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the same conversation into `sessions` unbounded sessions (plain RPUSH, no TTL,
    as a naive service would) and into as many SessionStore sessions, and report memory
    every `every` turns.

    On a real Redis the memory is measured (used_memory before and after each step of
    each phase; the two phases run one after the other and clean up after themselves).
    On fakeredis the data is written all the same, but memory comes from `estimate_memory`
    and `source` says so.
    """
    from statekit.store.blocking import SessionStore

    real = backend_kind(client) != "fakeredis"
    store = SessionStore(client, policy, namespace=namespace)
    ids = [f"s-{i:08d}" for i in range(sessions)]
    checkpoints = [t for t in range(1, turns + 1) if t % every == 0 or t == 1]
    series: dict[str, list[int]] = {"unbounded": [], "bounded": []}
    stored: list[int] = []
    naive_keys = [session_keys(f"{namespace}-naive", sid)[1] for sid in ids]  # a log alone, the naive way

    for phase in ("unbounded", "bounded"):
        start = used_memory(client) if real else 0
        for t in range(1, turns + 1):
            turn = synthetic_turn(t - 1, turn_bytes)
            if phase == "unbounded":
                raw = codec.encode(turn)
                pipe = client.pipeline(transaction=False)
                for key in naive_keys:
                    pipe.rpush(key, raw)
                pipe.execute()
            else:
                for sid in ids:
                    store.append_turn(sid, turn)
            if progress is not None:
                progress(1)
            if t not in checkpoints:
                continue
            if real:
                time.sleep(0.05)
                series[phase].append(used_memory(client) - start)
            else:
                e = estimate_memory(policy, sessions, t, turn_bytes, namespace=namespace, session_id_bytes=10)
                grown = (
                    e.total - e.baseline
                    if phase == "bounded"
                    else sessions * e.unbounded_per_session + _table(sessions)
                )
                series[phase].append(grown)
            if phase == "bounded":
                stored.append(store.load_context(ids[0]).bytes)
        # clean up this phase before measuring the next one
        if phase == "unbounded":
            for key in naive_keys:  # one key per call: keys of different sessions may sit on different nodes
                client.delete(key)
        else:
            for sid in ids:
                store.delete(sid)
    return {
        "turns": checkpoints,
        "unbounded_bytes": series["unbounded"],
        "bounded_bytes": series["bounded"],
        "stored_bytes_per_session": stored,
        "sessions": sessions,
        "turn_bytes": turn_bytes,
        "source": "measured: INFO memory used_memory" if real else "estimated: fakeredis has no INFO memory",
    }


# -- Redis Cluster -----------------------------------------------------------------------------

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: One-sided z of the 99th percentile: a shard's session count stays under mean + Z99 * sd.
Z99 = 2.326


def plan_cluster(
    policy: LifecyclePolicy,
    sessions: int,
    turns_per_session: int,
    turn_bytes: int,
    *,
    shards: int | None = None,
    slots_per_shard: list[int] | None = None,
    node_maxmemory_bytes: int = DEFAULT_NODE_MAXMEMORY,
    usable_fraction: float = 0.75,
    session_id_bytes: int = 36,
    baseline: int = BASELINE_USED_MEMORY,
    compression_ratio: float = 1.0,
) -> dict[str, Any]:
    """Memory per shard of a Redis Cluster holding `sessions` sessions, with its slot balance.

    Sessions spread over the slots by hash, so a shard holds its share of the slots' worth of
    sessions, give or take a binomial spread: each shard is sized for the 99th percentile of
    that count (`sessions_p99`), with the model's cluster layout (`cluster=True`: Redis
    7.0's larger dict entries) per session. `slots_per_shard` gives an uneven split (an even
    one by default). Without `shards`, the fewest shards whose busiest one stays under
    `usable_fraction` of `node_maxmemory_bytes` is chosen.
    """
    if sessions < 0:
        raise ValueError("sessions must be >= 0")
    one = estimate_memory(
        policy,
        1,
        turns_per_session,
        turn_bytes,
        cluster=True,
        session_id_bytes=session_id_bytes,
        baseline=baseline,
        compression_ratio=compression_ratio,
    )
    budget = usable_fraction * node_maxmemory_bytes

    def layout(n: int, slots: list[int] | None) -> list[dict[str, Any]]:
        slots = slots or [SLOTS // n + (1 if i < SLOTS % n else 0) for i in range(n)]
        if len(slots) != n or sum(slots) != SLOTS or min(slots) < 0:
            raise ValueError(f"slots_per_shard must give each of {n} shards its slots, {SLOTS} in all")
        rows = []
        for i, owned in enumerate(slots):
            share = owned / SLOTS
            mean = sessions * share
            p99 = math.ceil(mean + Z99 * math.sqrt(sessions * share * (1 - share))) if 0 < share < 1 else round(mean)
            keys = p99 * one.keys_per_session
            memory = baseline + p99 * one.per_session + 2 * _table(keys)
            rows.append({
                "shard": i, "slots": owned, "slot_share": share, "sessions_mean": mean, "sessions_p99": p99,
                "memory_bytes": memory, "fill": memory / node_maxmemory_bytes,
            })  # fmt: skip
        return rows

    if shards is None:
        shards = len(slots_per_shard) if slots_per_shard else 1
        while max(r["memory_bytes"] for r in layout(shards, None)) > budget and shards < SLOTS:
            shards += 1
    rows = layout(shards, slots_per_shard)
    busiest = max(rows, key=lambda r: r["memory_bytes"])
    return {
        "shards": shards,
        "per_session_bytes": one.per_session,
        "per_shard": rows,
        "busiest_shard_bytes": busiest["memory_bytes"],
        "slot_imbalance": max(r["slots"] for r in rows) / min(max(1, r["slots"]) for r in rows),
        "fits": busiest["memory_bytes"] <= budget,
        "node_maxmemory_bytes": node_maxmemory_bytes,
        "usable_fraction": usable_fraction,
    }


def measure_cluster(
    client: Any,
    policy: LifecyclePolicy,
    sessions: int,
    turns_per_session: int,
    turn_bytes: int,
    *,
    namespace: str = "sk",
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Write `sessions` synthetic sessions through SessionStore into an empty Redis Cluster and
    compare, node by node, the growth of `INFO memory` used_memory with the model's: what the
    store's first script calls leave on a server (`FIRST_SCRIPT_BYTES`, part of the
    single-server baseline), the sessions the node holds (by the slots of their keys) times
    the model's per-session bytes in the cluster layout, and the growth of its key tables.
    Returns a row per primary with the relative error. One writer connection per node,
    reused: no client buffers are added."""
    from statekit.store.blocking import SessionStore

    if backend_kind(client) != "cluster":
        raise ValueError("measure_cluster() needs a Redis Cluster client (redis+cluster://...); see measure()")
    primaries = {n.name: client.get_redis_connection(n) for n in client.get_primaries()}
    if any(node.dbsize() for node in primaries.values()):
        raise ValueError("measure_cluster() needs an empty cluster: the model compares growth from empty")
    store = SessionStore(client, policy, namespace=namespace)
    before = {name: _used_memory(node) for name, node in primaries.items()}
    turns = [synthetic_turn(i, turn_bytes) for i in range(turns_per_session)]
    width = 10
    on_node: dict[str, int] = dict.fromkeys(primaries, 0)
    for index in range(sessions):
        sid = f"s-{index:0{width - 2}d}"
        for t in turns:
            store.append_turn(sid, t)
        on_node[client.get_node_from_key(store.keys(sid)[0]).name] += 1
        if progress is not None:
            progress(1)
    time.sleep(0.3)  # let incremental rehashing of the key dicts finish
    one = estimate_memory(
        policy, 1, turns_per_session, turn_bytes, cluster=True, session_id_bytes=width, namespace=namespace
    )
    rows = []
    for name, node in primaries.items():
        grown = _used_memory(node) - before[name]
        n = on_node[name]
        modeled = FIRST_SCRIPT_BYTES + n * one.per_session + 2 * _table(n * one.keys_per_session) - 2 * _table(0)
        rows.append({
            "node": name, "sessions": n, "measured_bytes": grown, "modeled_bytes": modeled,
            "error": (modeled - grown) / grown if grown else 0.0,
        })  # fmt: skip
    return rows
