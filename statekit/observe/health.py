"""A read-only scan of a live namespace: sizes, keys without a TTL, retention and residency
(`health_scan`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statekit.keys import key_pattern, session_id_of, session_keys
from statekit.observe.metrics import percentile


@dataclass
class HealthReport:
    """What a read-only scan of a live Redis found."""

    namespace: str
    sessions: int = 0
    keys_without_ttl: list[str] = field(default_factory=list)
    size_percentiles: dict[str, float] = field(default_factory=dict)
    biggest: list[tuple[str, int]] = field(default_factory=list)
    sampled_memory_bytes: dict[str, float] = field(default_factory=dict)
    retention_violations: list[str] = field(default_factory=list)
    residency_violations: list[tuple[str, str]] = field(default_factory=list)
    audit_retention_violation: bool = False
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)
    #: What the scan could not do (not problems of the data): no MEMORY USAGE on fakeredis.
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def health_scan(
    client: Any,
    namespace: str,
    *,
    retention_days: float | None = None,
    allowed_regions: list[str] | None = None,
    audit_stream: str | None = None,
    sample_every: int = 100,
    top: int = 10,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
    on_node: Callable[[str], None] | None = None,
) -> HealthReport:
    """Scan a live Redis, read-only: sessions, sizes, keys without TTL, compliance.

    SCAN over every key of the namespace in pipelined batches (TYPE-free: PTTL for each
    key; HMGET of size, creation time and region for each session's meta), MEMORY USAGE on
    one session in `sample_every` (a real server only; skipped on fakeredis, which lacks
    it), sizes from the store's own byte counts. Retention: sessions created more than
    `retention_days` ago, and audit entries older than that. Residency: sessions tagged with
    a region outside `allowed_regions`. Nothing is written.
    """
    from statekit.backends import backend_kind

    if sample_every < 1:
        raise ValueError(f"sample_every must be >= 1, got {sample_every!r}")
    report = HealthReport(namespace)
    start = time.perf_counter()
    sizes: list[int] = []
    biggest: list[tuple[int, str]] = []
    memory: list[int] = []
    real = backend_kind(client) != "fakeredis"
    now_ms = time.time() * 1000
    cutoff_ms = now_ms - retention_days * 86_400_000 if retention_days else None
    from statekit.walk import Walker

    walker = Walker(client, key_pattern(namespace), batch, on_node=on_node)
    for node_batch in walker:  # every primary of a cluster, in turn
        keys = node_batch.keys
        metas = [(k, sid) for k in keys if (sid := session_id_of(k, namespace, "meta")) is not None]
        replies = walker.execute(
            node_batch.node, [("PTTL", k) for k in keys] + [("HMGET", k, "b", "c", "rg") for k, _ in metas]
        )
        for k, ttl in zip(keys, replies[: len(keys)], strict=True):
            if ttl == -1:
                report.keys_without_ttl.append(k)
        sample = []
        for (_, sid), fields in zip(metas, replies[len(keys) :], strict=True):
            if isinstance(fields, Exception):  # the key holds another type: counted, not read
                fields = (None, None, None)
            b, c, rg = fields
            report.sessions += 1
            size = int(b or 0)
            sizes.append(size)
            biggest.append((size, sid))
            if cutoff_ms is not None and c is not None and int(c) < cutoff_ms:
                report.retention_violations.append(sid)
            if allowed_regions is not None and rg is not None:
                region = rg.decode() if isinstance(rg, bytes) else rg
                if region not in allowed_regions:
                    report.residency_violations.append((sid, region))
            if real and (report.sessions - 1) % sample_every == 0:
                sample.append(sid)
        if sample:
            commands = [
                ("MEMORY", "USAGE", key, "SAMPLES", 0) for sid in sample for key in session_keys(namespace, sid)
            ]
            usages = walker.execute(node_batch.node, commands)
            for i in range(len(sample)):
                memory.append(sum(u for u in usages[4 * i : 4 * i + 4] if isinstance(u, int)))
        if len(biggest) > 4 * top:
            biggest = sorted(biggest, reverse=True)[:top]
        if progress is not None:
            progress(len(keys))
    if sizes:
        ordered = sorted(sizes)
        report.size_percentiles = {f"p{q}": percentile(ordered, q) for q in (50, 95, 99)} | {"max": float(ordered[-1])}
    report.biggest = [(sid, size) for size, sid in sorted(biggest, reverse=True)[:top]]
    if memory:
        report.sampled_memory_bytes = {
            "sessions_sampled": len(memory),
            "mean": sum(memory) / len(memory),
            "p99": percentile(sorted(memory), 99),
        }
    if audit_stream and cutoff_ms is not None:
        first = client.xrange(audit_stream, count=1)
        if first:
            entry_id = first[0][0].decode() if isinstance(first[0][0], bytes) else first[0][0]
            report.audit_retention_violation = int(entry_id.split("-")[0]) < cutoff_ms
    report.seconds = time.perf_counter() - start
    if report.keys_without_ttl:
        report.findings.append(f"{len(report.keys_without_ttl)} keys have no TTL: they will never expire")
    if report.retention_violations:
        report.findings.append(
            f"{len(report.retention_violations)} sessions are older than the {retention_days:g}-day retention period"
        )
    if report.residency_violations:
        report.findings.append(
            f"{len(report.residency_violations)} sessions are tagged with a region outside {allowed_regions}"
        )
    if report.audit_retention_violation:
        report.findings.append(f"the audit stream holds entries older than {retention_days:g} days")
    if not real:
        report.notes.append("memory was not sampled: fakeredis has no MEMORY USAGE (sizes are the store's counts)")
    return report
