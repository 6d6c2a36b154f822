"""Decide whether a schema change is safe: `check_compatibility(old, new)` compares two pydantic
models (or JSON Schemas) field by field with the rules of Avro schema resolution and Protocol
Buffers, gives the Schema Registry modes (backward, forward, full) and a verdict, and writes an
expand/contract rollout plan. No library does this for pydantic models, hence this module."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from statekit.migrate import import_spec

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
