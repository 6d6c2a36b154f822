"""State outlives code: versioned state, migrate-on-read chains, compatibility checks,
rollout plans and a resumable batch migration.

A `Migrations` registry knows the current schema version and one upcaster per step
(`@m.step(1, 2)`). Stored state is an envelope `{"_v": version, "data": ...}` inside the
codec's own envelope; `load` walks the chain from the stored version to the current one.
A blob from newer code raises `UnknownVersionError` and is never overwritten; a gap in the
chain or a failing step raises `MigrationError` naming the versions.

`check_compatibility(old, new)` compares two pydantic models (or JSON Schemas) field by
field with the rules of Avro schema resolution and Protocol Buffers, gives the Schema
Registry modes (backward, forward, full) and a verdict, and writes an expand/contract
rollout plan. No library does this for pydantic models, hence this module.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import codec
from .errors import CorruptStateError, StatekitError, UnknownVersionError
from .keys import key_pattern, sibling_key
from .scripts import SCRIPTS

__all__ = [
    "Migrations",
    "MigrationError",
    "Loaded",
    "check_compatibility",
    "Compatibility",
    "Change",
    "load_migrations",
    "load_schema",
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

Verdict = Literal["safe", "multi-phase", "breaking"]

#: Type changes that old data survives (Avro promotions: int to long/float/double, float to double).
PROMOTIONS = {("integer", "number")}


@dataclass(frozen=True)
class Change:
    kind: str
    field: str
    detail: str
    backward: bool  # new code can read data written by old code
    forward: bool  # old code can read data written by new code

    @property
    def verdict(self) -> Verdict:
        if self.backward and self.forward:
            return "safe"
        if self.backward or self.forward:
            return "multi-phase"
        return "breaking"


@dataclass(frozen=True)
class Compatibility:
    """The result of comparing two schemas."""

    changes: list[Change]
    backward: bool
    forward: bool
    verdict: Verdict
    plan: list[dict[str, Any]] = field(default_factory=list)
    #: What the rules cannot judge but a reviewer should: a field removed beside fields
    #: added to the same object may have been replaced by them, and then old sessions'
    #: values are lost without a Migrations step.
    warnings: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        """The Schema Registry mode this change satisfies: FULL, BACKWARD, FORWARD or NONE."""
        return {(True, True): "FULL", (True, False): "BACKWARD", (False, True): "FORWARD"}.get(
            (self.backward, self.forward), "NONE"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "mode": self.mode,
            "backward": self.backward,
            "forward": self.forward,
            "changes": [dict(c.__dict__, verdict=c.verdict) for c in self.changes],
            "plan": self.plan,
            "warnings": self.warnings,
        }


def _schema(model: Any) -> dict[str, Any]:
    if isinstance(model, dict):
        return model
    if hasattr(model, "model_json_schema"):
        return model.model_json_schema(by_alias=False)
    raise TypeError("check_compatibility takes pydantic models or JSON Schema dicts")


def _aliases(model: Any) -> dict[str | None, dict[str, set[str]]]:
    """Other names each field accepts, per model: the root model under None, nested models
    under their class name (the name pydantic gives their JSON Schema definition)."""
    out: dict[str | None, dict[str, set[str]]] = {}
    pending: list[tuple[str | None, Any]] = [(None, model)]
    while pending:
        name, cls = pending.pop()
        if name in out or not hasattr(cls, "model_fields"):
            continue
        fields: dict[str, set[str]] = {}
        for field_name, info in cls.model_fields.items():
            names: set[str] = set()
            for alias in (info.alias, info.validation_alias):
                if isinstance(alias, str):
                    names.add(alias)
                elif alias is not None and hasattr(alias, "choices"):
                    names.update(c for c in alias.choices if isinstance(c, str))
            fields[field_name] = names - {field_name}
            pending.extend((sub.__name__, sub) for sub in _models_in(info.annotation))
        out[name] = fields
    return out


def _models_in(annotation: Any) -> list[Any]:
    """The pydantic models inside a type annotation (list[Step], Step | None, dict[str, Step])."""
    import typing

    if hasattr(annotation, "model_fields"):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


#: Upper and lower bounds of JSON Schema: data valid under a lower upper bound is valid
#: under a higher one, and the other way round for lower bounds.
_UPPER = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")
_EXACT = ("pattern", "format", "multipleOf")


class _Walk:
    """Compares two JSON Schemas node by node, with the rules of Avro schema resolution and
    Protocol Buffers: backward = new code reads old data, forward = old code reads new data."""

    def __init__(self, old: dict[str, Any], new: dict[str, Any], aliases: dict[str | None, dict[str, set[str]]]):
        self.roots = old, new
        self.aliases = aliases
        self.changes: list[Change] = []
        self.warnings: list[str] = []
        self._seen: set[tuple[int | str, int | str]] = set()

    def add(self, kind: str, path: str, detail: str, backward: bool, forward: bool) -> None:
        self.changes.append(Change(kind, path or "(state)", detail, backward, forward))

    @staticmethod
    def _deref(root: dict[str, Any], node: Any) -> tuple[dict[str, Any], str | None]:
        name = None
        for _ in range(64):  # a chain of $refs, never a loop
            if not isinstance(node, dict):
                return {}, name
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                defs = root.get("$defs") or root.get("definitions") or {}
                node = {**defs.get(name, {}), **{k: v for k, v in node.items() if k != "$ref"}}
            elif list(node) == ["allOf"] and len(node["allOf"]) == 1:
                node = node["allOf"][0]
            else:
                return node, name
        return node, name

    @staticmethod
    def _branches(node: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The non-null alternatives of a node, and whether null is allowed."""
        alternatives = node.get("anyOf") or node.get("oneOf")
        if alternatives:
            rest = [a for a in alternatives if a.get("type") != "null"]
            return rest, len(rest) < len(alternatives)
        kind = node.get("type")
        if isinstance(kind, list):
            types = [t for t in kind if t != "null"]
            return [{**node, "type": t} for t in types], "null" in kind
        return [node], kind == "null"

    def _key(self, root: dict[str, Any], node: dict[str, Any]) -> str:
        node, name = self._deref(root, node)
        if name is not None:
            return f"object {name}"
        if "properties" in node:
            return "object"
        return str(node.get("type", "any"))

    def compare(self, old: Any, new: Any, path: str, old_name: str | None = None, new_name: str | None = None) -> None:
        (old, old_ref), (new, new_ref) = self._deref(self.roots[0], old), self._deref(self.roots[1], new)
        old_name, new_name = old_ref or old_name, new_ref or new_name
        seen = (old_ref or id(old), new_ref or id(new))
        if seen in self._seen:  # a pair of definitions (a recursive model's too) is compared once
            return
        self._seen.add(seen)
        (old_alts, old_null), (new_alts, new_null) = self._branches(old), self._branches(new)
        if old_null != new_null:
            if new_null:
                self.add("widen type", path, "now nullable: old code cannot read a null", True, False)
            else:
                self.add("narrow type", path, "no longer nullable: old data may hold null", False, True)
        if len(old_alts) == 1 and len(new_alts) == 1:
            self._compare_one(old_alts[0], new_alts[0], path, old_name, new_name)
            return
        old_keys = {self._key(self.roots[0], a): a for a in old_alts}
        new_keys = {self._key(self.roots[1], a): a for a in new_alts}
        gone, added = sorted(set(old_keys) - set(new_keys)), sorted(set(new_keys) - set(old_keys))
        if gone:
            self.add("narrow type", path, f"no longer accepts {', '.join(gone)}: old data may hold it", False, True)
        if added:
            self.add("widen type", path, f"now also accepts {', '.join(added)}: old code cannot read it", True, False)
        for key in sorted(set(old_keys) & set(new_keys)):
            self.compare(old_keys[key], new_keys[key], path)

    def _compare_one(
        self, old: dict[str, Any], new: dict[str, Any], path: str, old_name: str | None, new_name: str | None
    ) -> None:
        (old, _), (new, _) = self._deref(self.roots[0], old), self._deref(self.roots[1], new)
        to, tn = _kind(old), _kind(new)
        if to == "any" or tn == "any":
            if to != tn:
                self.add(
                    "widen type" if tn == "any" else "narrow type",
                    path,
                    f"{to} -> {tn}",
                    backward=tn == "any",
                    forward=to == "any",
                )
            return
        if to != tn:
            if (to, tn) in PROMOTIONS:
                self.add(
                    "promote type",
                    path,
                    f"{to} -> {tn}: new code reads old values, old code cannot read new ones",
                    True,
                    False,
                )
            else:
                self.add("change type", path, f"{to} -> {tn}: neither side reads the other's values", False, False)
            return
        self._compare_values(old, new, path)
        if to == "object":
            self._compare_fields(old, new, path, old_name, new_name)
        elif to == "array":
            self.compare(old.get("items", {}), new.get("items", {}), f"{path}[]")

    def _compare_values(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        """Enumerations (Literal, Enum) and constraints (lengths, bounds, patterns)."""
        ov, nv = _allowed(old), _allowed(new)
        if ov != nv:
            if nv is None:
                self.add("add enum value", path, f"no longer limited to {sorted(map(repr, ov))}", True, False)
            elif ov is None:
                self.add(
                    "remove enum value",
                    path,
                    f"now limited to {sorted(map(repr, nv))}: old data may hold others",
                    False,
                    True,
                )
            else:
                if ov - nv:
                    self.add(
                        "remove enum value",
                        path,
                        f"{sorted(map(repr, ov - nv))} no longer allowed: old data may hold them",
                        False,
                        True,
                    )
                if nv - ov:
                    self.add(
                        "add enum value",
                        path,
                        f"{sorted(map(repr, nv - ov))} added: old code rejects them",
                        True,
                        False,
                    )
        for bound in (*_UPPER, *_LOWER):
            o, n = old.get(bound), new.get(bound)
            if o == n:
                continue
            looser_upper = n is None or (o is not None and n > o)
            loosened = looser_upper if bound in _UPPER else (n is None or (o is not None and n < o))
            detail = f"{bound} {o if o is not None else 'none'} -> {n if n is not None else 'none'}"
            if loosened:
                self.add(
                    "loosen constraint", path, f"{detail}: old code rejects new values past its bound", True, False
                )
            else:
                self.add("tighten constraint", path, f"{detail}: old data may break the new bound", False, True)
        for key in _EXACT:
            o, n = old.get(key), new.get(key)
            if o == n:
                continue
            if n is None:
                self.add(
                    "loosen constraint", path, f"{key} {o!r} dropped: old code rejects values outside it", True, False
                )
            elif o is None:
                self.add("tighten constraint", path, f"{key} {n!r} added: old data may not match", False, True)
            else:
                self.add("change constraint", path, f"{key} {o!r} -> {n!r}", False, False)

    def _compare_fields(
        self, old: dict[str, Any], new: dict[str, Any], path: str, old_name: str | None, new_name: str | None
    ) -> None:
        po, pn = old.get("properties", {}), new.get("properties", {})
        ro, rn = set(old.get("required", [])), set(new.get("required", []))
        old_closed, new_closed = old.get("additionalProperties") is False, new.get("additionalProperties") is False
        aliases = self.aliases.get(new_name if path else None, {})
        renamed_from = {a: n for n, names in aliases.items() for a in names if a in po and a not in pn}
        prefix = f"{path}." if path else ""
        if not po and not pn:  # a mapping: compare its values
            extra_o, extra_n = old.get("additionalProperties"), new.get("additionalProperties")
            if isinstance(extra_o, dict) or isinstance(extra_n, dict):
                self.compare(
                    extra_o if isinstance(extra_o, dict) else {},
                    extra_n if isinstance(extra_n, dict) else {},
                    f"{path}{{}}",
                )
            return
        for name in sorted(set(po) | set(pn)):
            here = prefix + name
            if name in renamed_from:
                continue  # handled as the rename of the field that aliases it
            if name in pn and name not in po:
                source = next((a for a in aliases.get(name, ()) if a in po and a not in pn), None)
                if source is not None:
                    self.add("rename", here, f"renamed from {source!r}, which it accepts as an alias", True, False)
                    self.compare(po[source], pn[name], here, old_name, new_name)
                elif _optional(pn[name], rn, name):
                    self.add(
                        "add optional",
                        here,
                        "added with a default or as optional"
                        + ("; old code forbids unknown fields" if old_closed else ""),
                        True,
                        not old_closed,
                    )
                else:
                    self.add(
                        "add required",
                        here,
                        "added as required without a default: data written by old code "
                        "lacks it" + ("; old code forbids unknown fields" if old_closed else ""),
                        False,
                        not old_closed,
                    )
            elif name in po and name not in pn:
                closed = "; new code forbids unknown fields, and old data has it" if new_closed else ""
                if name in ro:
                    self.add(
                        "remove required", here, "removed, but old code requires it" + closed, not new_closed, False
                    )
                else:
                    self.add(
                        "remove optional",
                        here,
                        "removed; it was optional (old code reads its default)" + closed,
                        not new_closed,
                        True,
                    )
            else:
                was_optional, now_optional = _optional(po[name], ro, name), _optional(pn[name], rn, name)
                if was_optional and not now_optional:
                    self.add("make required", here, "optional -> required", False, True)
                elif now_optional and not was_optional:
                    self.add("make optional", here, "required -> optional", True, False)
                self.compare(po[name], pn[name], here, old_name, new_name)
        removed = [prefix + n for n in sorted(set(po) - set(pn)) if n not in renamed_from]
        added = [prefix + n for n in sorted(set(pn) - set(po)) if not (aliases.get(n, set()) & set(po))]
        if removed and added:
            self.warnings.append(
                f"{', '.join(removed)} removed while {', '.join(added)} added beside it: if the new fields replace "
                "the old ones, old sessions' values are lost (and instances of both versions misread each other) "
                "unless a Migrations step carries them over and the deploy follows the expand/contract plan"
            )
        if new_closed and not old_closed:
            self.add("forbid extra fields", path, "new code rejects fields it does not declare", True, True)
        elif old_closed and not new_closed:
            self.add("allow extra fields", path, "new code accepts undeclared fields", True, True)


def _kind(node: dict[str, Any]) -> str:
    if "properties" in node or node.get("type") == "object":
        return "object"
    if "type" in node:
        return str(node["type"])
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(values[0]), "any")
    return "any"


def _allowed(node: dict[str, Any]) -> set[Any] | None:
    if "const" in node:
        return {node["const"]}
    if "enum" in node:
        return set(node["enum"])
    return None


def _optional(prop: dict[str, Any], required: set[str], name: str) -> bool:
    return name not in required or "default" in prop


def check_compatibility(old: Any, new: Any) -> Compatibility:
    """Classify every change between two schemas, nested ones included, and plan the rollout.

    The whole JSON Schema is walked (`$ref`s, nested models, list items, mapping values,
    unions), and each change is judged by the rules of Avro schema resolution and Protocol
    Buffers: adding an optional field or one with a default is safe; adding a required
    field breaks reading old data (backward); removing a required field breaks old code
    reading new data (forward), both multi-phase; a type change is breaking unless it is a
    known promotion (int to float: backward only) or a widening (a type made nullable, a
    union grown); an enum value removed or a constraint tightened (a lower max length)
    breaks reading old data, one added or loosened breaks old code reading new data; a
    model that forbids extra fields rejects fields the other side still writes; a rename
    is a removal plus an addition unless the new field accepts the old name as an alias.
    """
    so, sn = _schema(old), _schema(new)
    walk = _Walk(so, sn, _aliases(new) if not isinstance(new, dict) else {})
    walk.compare(so, sn, "")
    changes = walk.changes
    backward = all(c.backward for c in changes)
    forward = all(c.forward for c in changes)
    order = {"safe": 0, "multi-phase": 1, "breaking": 2}
    verdict: Verdict = max((c.verdict for c in changes), key=order.__getitem__, default="safe")
    return Compatibility(changes, backward, forward, verdict, _plan(changes, verdict, walk.warnings), walk.warnings)


def _plan(changes: list[Change], verdict: Verdict, warnings: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Expand/contract phases; each must be fully deployed (every instance) before the next."""
    if verdict == "safe":
        return [
            {
                "phase": 1,
                "name": "deploy",
                "steps": [f"first check: {w}" for w in warnings]
                + ["roll out the new code; old and new instances can share sessions in either order"],
                "wait_for": "nothing",
            }
        ]
    expand, migrate, contract = [], [], []
    for c in changes:
        if c.verdict == "safe":
            expand.append(f"{c.field}: {c.detail} (no care needed)")
        elif c.kind in ("add required", "make required"):
            expand.append(f"{c.field}: ship it as optional with a default, written by the new code")
            migrate.append(f"{c.field}: register a Migrations step that fills it for old sessions")
            contract.append(f"{c.field}: make it required")
        elif c.kind in ("remove required", "make optional"):
            expand.append(f"{c.field}: deploy code that no longer requires it but still writes it")
            contract.append(f"{c.field}: stop writing it, then drop it from the schema")
        elif c.backward:  # new code reads old data; old code cannot read new data
            expand.append(
                f"{c.field}: deploy readers that accept both forms ({c.detail}) before any writer writes the new form"
            )
            contract.append(f"{c.field}: switch writers to the new form")
        elif c.forward:  # old code reads new data; new code cannot read what old code wrote
            expand.append(f"{c.field}: deploy the new code still accepting old values ({c.detail})")
            migrate.append(f"{c.field}: register a Migrations step that converts old values")
            contract.append(f"{c.field}: enforce the new rule once no session holds old values")
        else:  # breaking both ways
            expand.append(f"{c.field}: add a new field with the new type beside the old one; write both")
            migrate.append(f"{c.field}: a Migrations step converts old values; batch-migrate or wait one TTL")
            contract.append(f"{c.field}: read only the new field, stop writing the old one, then remove it")
    phases = [{"phase": 1, "name": "expand", "steps": expand, "wait_for": "every instance runs the expand release"}]
    if migrate:
        phases.append(
            {
                "phase": 2,
                "name": "migrate",
                "steps": migrate
                + ["run `statekit migrate` (or let sessions migrate on read and wait one session TTL)"],
                "wait_for": "`statekit migrate --dry-run` reports no session below the current version",
            }
        )
    phases.append(
        {
            "phase": len(phases) + 1,
            "name": "contract",
            "steps": contract,
            "wait_for": "deploy only after the previous phase finished everywhere",
        }
    )
    return phases


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


def load_schema(spec: str | Path) -> Any:
    """A schema to compare: a JSON Schema file (a path ending in .json) or `module:Model`
    naming a pydantic model."""
    path = Path(spec)
    if str(spec).endswith(".json") or (path.is_file() and ":" not in str(spec)):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read schema {path}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a JSON Schema: {exc}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"{path} is not a JSON Schema: its top level is a {type(schema).__name__}")
        return schema
    model = import_spec(str(spec), "a schema")
    if not hasattr(model, "model_json_schema"):
        raise ValueError(f"{spec!r} is a {type(model).__name__}, not a pydantic model")
    return model


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
    that cannot be read or lacks fields raises `MigrationError` naming it.
    """
    from .walk import DONE, Walker, evalsha

    report = MigrationReport(dry_run=dry_run)
    walker = Walker(client, key_pattern(namespace, "state"), batch, on_node=on_node)
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.exists():
        _resume(report, path, namespace)
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


def _resume(report: MigrationReport, path: Path, namespace: str) -> None:
    """Fill `report` from a checkpoint file; MigrationError naming the file when it is unusable."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MigrationError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
    if not isinstance(saved, dict):
        raise MigrationError(f"checkpoint {path} is not a statekit migration checkpoint; delete it to start over")
    if saved.get("namespace") != namespace:
        raise MigrationError(f"checkpoint {path} belongs to namespace {saved.get('namespace')!r}, not {namespace!r}")
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
            version, data = migrations.unpack(raw, key)
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

    from .walk import Walker

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
                version, data = unpacker.unpack(raw, name)
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
