"""State outlives code: versioned state, migrate-on-read chains and a resumable batch
migration.

A `Migrations` registry knows the current schema version and one upcaster per step
(`@m.step(1, 2)`). Stored state is an envelope `{"_v": version, "data": ...}` inside the
codec's own envelope; `load` walks the chain from the stored version to the current one.
A blob from newer code raises `UnknownVersionError` and is never overwritten; a gap in the
chain or a failing step raises `MigrationError` naming the versions.

Whether a change of schema is safe to roll out is a decision: `statekit.decide.compat`.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statekit import codec
from statekit.errors import CorruptStateError, StatekitError, UnknownVersionError
from statekit.keys import dictionary_key, key_pattern, sibling_key
from statekit.scripts import SCRIPTS

__all__ = [
    "Migrations",
    "MigrationError",
    "Loaded",
    "load_migrations",
    "import_spec",
    "MigrationStepFailed",
    "migrate_namespace",
    "MigrationReport",
    "readable_by",
    "version_census",
]


class MigrationError(StatekitError):
    """A migration chain has a gap, or one of its steps failed."""


class MigrationStepFailed(MigrationError, CorruptStateError):
    """A migration step failed on a stored value: the value does not have the shape its
    schema version promises, so to this code it is corrupt (and it was left as it was)."""


@dataclass(frozen=True)
class Loaded:
    """State read through a Migrations registry: the data at the current version, and the
    version it was stored at."""

    data: Any
    from_version: int
    version: int

    @property
    def migrated(self) -> bool:
        return self.from_version != self.version


class Migrations:
    """Schema versions of one kind of state, and the steps between them.

    `unversioned_as` is the version given to state stored before versioning was adopted
    (plain data without an envelope), so an existing store can adopt migrations.
    """

    def __init__(self, current: int, unversioned_as: int = 1) -> None:
        if not isinstance(current, int) or current < 1:
            raise ValueError(f"current must be a version number >= 1, got {current!r}")
        self.current = current
        self.unversioned_as = unversioned_as
        self._steps: dict[int, tuple[int, Callable[[Any], Any]]] = {}

    def step(self, from_version: int, to_version: int) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Register an upcaster from `from_version` to `to_version` (to = from + 1)."""
        if to_version != from_version + 1:
            raise ValueError(f"a step goes from one version to the next, not {from_version} -> {to_version}")
        if to_version > self.current:
            raise ValueError(f"step {from_version} -> {to_version} goes past the current version {self.current}")

        def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            if from_version in self._steps:
                raise ValueError(f"a step from version {from_version} is already registered")
            self._steps[from_version] = (to_version, fn)
            return fn

        return register

    def check_chain(self, from_version: int = 1) -> None:
        """Raise MigrationError when some version from `from_version` up has no step onwards."""
        missing = [v for v in range(from_version, self.current) if v not in self._steps]
        if missing:
            raise MigrationError(
                "no migration step from version "
                + ", ".join(f"{v} to {v + 1}" for v in missing)
                + f" (current version {self.current}); register them with @migrations.step(from, to)"
            )

    def dump(self, data: Any, version: int | None = None) -> bytes:
        """Encode `data` in a versioned envelope (the current version unless given)."""
        version = self.current if version is None else version
        if version > self.current:
            raise ValueError(f"cannot write version {version}: this code knows up to {self.current}")
        return codec.encode({"_v": version, "data": data}, what="the versioned state")

    def version_of(self, raw: bytes, key: str = "state") -> int:
        """The schema version of a stored blob (without migrating it)."""
        return self.unpack(raw, key)[0]

    def unpack(self, raw: bytes, key: str = "state") -> tuple[int, Any]:
        """Decode a stored blob into (schema version, data), without migrating it."""
        value = codec.decode(raw, key)
        if isinstance(value, dict) and set(value) == {"_v", "data"}:
            version = value["_v"]
            if not isinstance(version, int) or version < 1:
                raise CorruptStateError(f"{key}: schema version {version!r} is not a version number")
            return version, value["data"]
        return self.unversioned_as, value

    def upgrade(self, data: Any, from_version: int, key: str = "state") -> Any:
        """Run the steps from `from_version` to the current version."""
        if from_version > self.current:
            raise UnknownVersionError(
                f"{key}: written at schema version {from_version}, newer than this code's {self.current}; "
                "it was left untouched. Deploy the newer code, or roll forward before rolling back."
            )
        self.check_chain(from_version)
        version = from_version
        while version < self.current:
            to_version, fn = self._steps[version]
            try:
                data = fn(data)
            except Exception as exc:
                raise MigrationStepFailed(
                    f"{key}: migration step {version} -> {to_version} failed: {type(exc).__name__}: {exc}; "
                    "the stored value was left as it was"
                ) from exc
            version = to_version
        return data

    def load(self, raw: bytes, key: str = "state") -> Loaded:
        """Decode a blob and migrate it to the current version."""
        version, data = self.unpack(raw, key)
        return Loaded(self.upgrade(data, version, key), version, self.current)


# -- compatibility -------------------------------------------------------------------------


# -- batch migration -----------------------------------------------------------------------


def import_spec(spec: str, what: str) -> Any:
    """Import `module:attribute` (the module found from the current directory too, as
    `python -m` would find it) and return the object; ValueError saying what is wrong."""
    import os
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} takes module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None


def load_migrations(spec: str) -> Migrations:
    """Import `module:attribute` and return the Migrations object it names."""
    obj = import_spec(spec, "--migrations")
    if not isinstance(obj, Migrations):
        raise ValueError(f"{spec!r} is a {type(obj).__name__}, not a statekit Migrations object")
    return obj


@dataclass
class MigrationReport:
    """What a batch migration found and did."""

    scanned: int = 0
    migrated: int = 0
    current: int = 0
    skipped_newer: int = 0
    failed: int = 0
    conflicts: int = 0
    by_source_version: dict[str, int] = field(default_factory=dict)
    cursor: int = 0
    cursors: dict[str, int] = field(default_factory=dict)
    passes: int = 1
    topology: str | None = None
    finished: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def rate(self) -> float:
        return self.scanned / self.seconds if self.seconds else 0.0


def migrate_namespace(
    client: Any,
    namespace: str,
    migrations: Migrations,
    *,
    batch: int = 500,
    dry_run: bool = False,
    checkpoint: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    stop_after: int | None = None,
    on_node: Callable[[str], None] | None = None,
) -> MigrationReport:
    """Walk every session's state with SCAN, on every node, and migrate what is older than the
    current version.

    Each batch is read with one pipeline of scripts that read a session's state and its
    state version together, atomically (two separate reads could pair an old blob with the
    version of an update that landed between them, and the write-back would then overwrite
    that update). Each batch is written with one pipeline of compare-and-set scripts that
    keep each key's remaining TTL, so a session a live request changed since it was read is
    left to that request (counted as a conflict, and already at the current version if that
    request ran new code). On a Redis Cluster each primary is walked in turn, batches go to
    the node that holds their keys, and a key whose slot moved is followed (`statekit.walk`).
    If the slot map changed during a pass (a reshard), keys may have moved past a node's
    cursor, so the walk runs again (`passes` counts them): a session found current is
    skipped, so none is migrated twice and none is missed. Each node's SCAN cursor and the
    counts are saved to `checkpoint` after every batch; a run given the same checkpoint
    resumes where each node stopped. `stop_after` stops after that many sessions (for tests
    of resumption); `on_node(name)` is called as the walk reaches each node. A checkpoint
    that cannot be read or lacks fields raises `MigrationError` naming it, and so does one
    written by a dry run given to a real run or the other way round: the file records which
    kind wrote it, and a real run resuming a dry run's counts would report sessions as
    migrated that were never written.
    """
    from statekit.walk import DONE, Walker, evalsha

    report = MigrationReport(dry_run=dry_run)
    walker = Walker(client, key_pattern(namespace, "state"), batch, on_node=on_node)
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.exists():
        _resume(report, path, namespace, dry_run)
        if report.finished:
            return report
        walker.cursors = dict(report.cursors)
    if path is not None:
        _save_checkpoint(path, report, namespace)  # an unwritable checkpoint fails before anything is migrated
    walker.load_scripts([SCRIPTS["get_state"], SCRIPTS["keepttl_cas"]])
    start = time.perf_counter()
    resumed_topology = report.topology if report.cursors else None
    while True:
        # a resumed pass compares with the slot map its first part saw, saved in the checkpoint
        before = resumed_topology or walker.topology()
        resumed_topology = None
        report.topology = before
        redirected = walker.redirected
        for node_batch in walker:
            _migrate_batch(walker, node_batch.node, node_batch.keys, migrations, report, dry_run, evalsha)
            if progress is not None:
                progress(len(node_batch.keys))
            report.cursors = dict(walker.cursors)
            report.cursor = max(0, walker.cursors.get("server", 0))
            report.seconds += time.perf_counter() - start
            start = time.perf_counter()
            if path is not None:
                _save_checkpoint(path, report, namespace)
            if stop_after is not None and report.scanned >= stop_after:
                return report
        moved = walker.topology() != before or walker.redirected != redirected
        if not moved:
            break
        walker.refresh()  # slots moved under this pass: walk again, now that they have settled
        walker.restart()
        report.passes += 1
    report.cursors = {name: DONE for name, _ in walker.nodes()}
    report.cursor = 0
    report.finished = True
    report.seconds += time.perf_counter() - start
    if path is not None:
        _save_checkpoint(path, report, namespace)
    return report


_CHECKPOINT_COUNTS = ("scanned", "migrated", "current", "skipped_newer", "failed", "conflicts", "cursor")


def _resume(report: MigrationReport, path: Path, namespace: str, dry_run: bool) -> None:
    """Fill `report` from a checkpoint file; MigrationError naming the file when it is unusable
    or was written by the other kind of run (a dry run's for a real run, or the reverse)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MigrationError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
    if not isinstance(saved, dict):
        raise MigrationError(f"checkpoint {path} is not a statekit migration checkpoint; delete it to start over")
    if saved.get("namespace") != namespace:
        raise MigrationError(f"checkpoint {path} belongs to namespace {saved.get('namespace')!r}, not {namespace!r}")
    saved_dry_run = saved.get("dry_run", False)
    if not isinstance(saved_dry_run, bool):
        raise MigrationError(f"checkpoint {path} is damaged (dry_run is not true or false); delete it to start over")
    if saved_dry_run != dry_run:
        written_by, this_run = ("a dry run", "a real migration") if saved_dry_run else ("a real migration", "a dry run")
        raise MigrationError(
            f"checkpoint {path} was written by {written_by}, so {this_run} cannot resume from it; "
            "give this run another checkpoint file (or delete that one)"
        )
    missing = [k for k in (*_CHECKPOINT_COUNTS, "by_source_version") if k not in saved]
    wrong = [k for k in _CHECKPOINT_COUNTS if k in saved and not isinstance(saved[k], int)]
    cursors = saved.get("cursors", {"server": saved.get("cursor", 0)})
    bad_cursors = not isinstance(cursors, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in cursors.items()
    )
    if missing or wrong or bad_cursors or not isinstance(saved.get("by_source_version", {}), dict):
        raise MigrationError(
            f"checkpoint {path} is damaged (missing {missing}, not numbers {wrong}"
            f"{', node cursors unreadable' if bad_cursors else ''}); "
            "delete it to start over (a new run skips sessions already migrated)"
        )
    for k in _CHECKPOINT_COUNTS:
        setattr(report, k, saved[k])
    report.by_source_version = saved["by_source_version"]
    report.cursors = cursors
    report.passes = int(saved.get("passes", 1))
    report.topology = saved.get("topology") if isinstance(saved.get("topology"), str) else None
    report.finished = bool(saved.get("finished"))


def _save_checkpoint(path: Path, report: MigrationReport, namespace: str) -> None:
    try:
        path.write_text(json.dumps(dict(report.as_dict(), namespace=namespace), indent=1), encoding="utf-8")
    except OSError as exc:
        raise MigrationError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def _unpack(client: Any, migrations: Migrations, raw: bytes, key: str) -> tuple[int, Any]:
    """`migrations.unpack`, fetching from Redis (once per process) a zstd dictionary the blob names."""
    try:
        return migrations.unpack(raw, key)
    except codec.MissingDictionary as missing:
        namespace = key.split(":{", 1)[0]
        data = client.get(dictionary_key(namespace, missing.dict_id))
        if not data or codec.register(data) != missing.dict_id:
            raise codec.MissingDictionary(missing.dict_id, key, asked_redis=True) from None
        return migrations.unpack(raw, key)


def _migrate_batch(
    walker: Any,
    node: str,
    keys: list[str],
    migrations: Migrations,
    report: MigrationReport,
    dry_run: bool,
    evalsha: Any,
) -> None:
    # (state version, blob) of each state key, each pair read atomically by one script, all in
    # one pipeline to the node; an error reply (a corrupt meta field) comes back in its place
    reads = walker.execute(node, [evalsha(SCRIPTS["get_state"], [sibling_key(k, "meta"), k]) for k in keys])
    writes = []
    for key, reply in zip(keys, reads, strict=True):
        if isinstance(reply, Exception):
            report.scanned += 1
            report.failed += 1
            if len(report.errors) < 20:
                report.errors.append(f"{key}: {reply}")
            continue
        sv, raw = reply
        if raw is None:
            continue  # expired or deleted since SCAN saw it
        report.scanned += 1
        try:
            version, data = _unpack(walker.client, migrations, raw, key)
            report.by_source_version[str(version)] = report.by_source_version.get(str(version), 0) + 1
            if version == migrations.current:
                report.current += 1
                continue
            if version > migrations.current:
                report.skipped_newer += 1
                continue
            upgraded = migrations.upgrade(data, version, key)
        except StatekitError as exc:
            report.failed += 1
            if len(report.errors) < 20:
                report.errors.append(str(exc))
            continue
        writes.append((key, int(sv or 0), migrations.dump(upgraded)))
    if dry_run:
        report.migrated += len(writes)  # in a dry run: sessions that would be migrated
        return
    commands = [evalsha(SCRIPTS["keepttl_cas"], [sibling_key(key, "meta"), key], sv, blob) for key, sv, blob in writes]
    for (key, _, _), ok in zip(writes, walker.execute(node, commands), strict=True):
        if isinstance(ok, Exception):
            report.failed += 1
            if len(report.errors) < 20:
                report.errors.append(f"{key}: {ok}")
        elif ok == 1:
            report.migrated += 1
        else:
            report.conflicts += 1


def readable_by(
    client: Any, namespace: str, model: Any, migrations: Migrations | None = None, *, batch: int = 500
) -> dict[str, Any]:
    """Can code that uses `model` read every session's state in `namespace`? Read-only.

    Each stored state is unpacked (its version envelope removed), migrated when
    `migrations` is given, and validated with the pydantic `model`. Run it before a deploy:
    `unreadable` is how many returning users would hit an error. Walks every node of a
    cluster (`statekit.walk`).
    """
    from pydantic import ValidationError

    from statekit.walk import Walker

    unpacker = migrations or Migrations(current=1)
    counts: dict[str, Any] = {"sessions": 0, "readable": 0, "unreadable": 0, "errors": []}
    walker = Walker(client, key_pattern(namespace, "state"), batch)
    for node_batch in walker:
        values = walker.execute(node_batch.node, [("GET", k) for k in node_batch.keys])
        for name, raw in zip(node_batch.keys, values, strict=True):
            if raw is None:
                continue
            counts["sessions"] += 1
            try:
                if isinstance(raw, Exception):
                    raise CorruptStateError(f"{name}: {raw}")
                version, data = _unpack(client, unpacker, raw, name)
                if migrations is not None:
                    data = migrations.upgrade(data, version, name)
                model.model_validate(data)
            except (StatekitError, ValidationError) as exc:
                counts["unreadable"] += 1
                if len(counts["errors"]) < 5:
                    if isinstance(exc, ValidationError):
                        why = "; ".join(
                            f"{'.'.join(map(str, e['loc'])) or '(state)'}: {e['msg']}" for e in exc.errors()
                        )
                    else:
                        why = str(exc)
                    counts["errors"].append(f"{name}: {why}")
                continue
            counts["readable"] += 1
    return counts


def version_census(client: Any, namespace: str, migrations: Migrations, *, batch: int = 500) -> dict[int, int]:
    """How many sessions of `namespace` hold state stored at each schema version, oldest
    version first. Read-only: a dry run of the batch migration (corrupt blobs are left out)."""
    report = migrate_namespace(client, namespace, migrations, batch=batch, dry_run=True)
    return {int(v): n for v, n in sorted(report.by_source_version.items(), key=lambda item: int(item[0]))}
