"""WorkloadProfile: the validated description of a service that every review starts from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from statekit.errors import ProfileError

__all__ = ["WorkloadProfile", "StateClass", "Purpose", "AUTHORITATIVE_PURPOSES"]

Purpose = Literal[
    "conversation",
    "workflow",
    "quota",
    "approval",
    "financial",
    "personalization",
    "recommendation",
    "cache",
    "analytics",
]

#: Purposes whose state must be authoritative on the server: a client cannot be trusted
#: to hold its own quota, approval or balance.
AUTHORITATIVE_PURPOSES: frozenset[str] = frozenset({"quota", "approval", "financial"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Traffic(_Model):
    new_sessions_per_day: int = Field(gt=0, description="sessions (conversations, tasks, documents) started per day")
    requests_per_session: int = Field(ge=1, description="requests that touch one session over its life")
    peak_concurrent_sessions: int = Field(gt=0, description="sessions active at once at the daily peak")
    session_minutes: float = Field(gt=0, description="time from a session's first request to its last")
    app_instances: int = Field(
        1, ge=1, description="application processes that call the store (each has its own breaker and buffer)"
    )


class Turns(_Model):
    per_session: int = Field(ge=1, description="turns (messages, steps, events) in a typical session")
    bytes_per_turn: int = Field(gt=0, description="bytes of one turn's text as the service stores it")
    tokens_per_turn: int = Field(ge=0, description="model tokens of one turn (0 when no model reads it)")
    compression_ratio: float = Field(
        1.0,
        ge=1.0,
        le=20.0,
        description="raw bytes over stored bytes of a record with a compressing codec (1: uncompressed); "
        "statekit dict train and statekit calibrate measure it",
    )


class Client(_Model):
    can_send_full_context: bool = Field(description="can the caller resend the whole history with each request")
    max_request_bytes: int = Field(gt=0, description="largest request body the caller or channel accepts")
    trusted: bool = Field(False, description="may the caller hold authoritative state (quotas, approvals)")


class StateUse(_Model):
    reused_across_requests: bool = Field(description="does a later request read what an earlier one wrote")
    units_independent: bool = Field(description="is each unit of work complete on its own")
    shared_across_clients: bool = Field(False, description="do several callers or devices share one session")
    long_running_steps: bool = Field(False, description="must progress survive restarts over hours or days")
    context_window_turns: int | None = Field(None, ge=1, description="recent turns the model needs verbatim")
    summary_tokens: int = Field(400, ge=0, description="tokens of the summary that stands for older turns")


class StateClass(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    purpose: Purpose
    staleness_tolerance_s: float = Field(ge=0, description="how old a read may be before it is wrong")
    description: str = ""


class Compliance(_Model):
    allowed_regions: list[str] = Field(min_length=1)
    retention_days: int = Field(gt=0)


class Costs(_Model):
    token_price_per_million: float = Field(3.0, ge=0, description="USD per million input tokens")
    redis_price_per_gb_hour: float = Field(0.017, ge=0, description="USD per GB-hour of Redis memory")


class StateSchema(_Model):
    """The structured state's schema today and, optionally, the version proposed next.

    Each is a pydantic model given as `module:Attribute`, or a JSON Schema written inline.
    """

    current: str | dict[str, Any]
    next: str | dict[str, Any] | None = None

    @field_validator("current", "next")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        if isinstance(value, str) and ":" not in value:
            raise ValueError("a schema is 'module:Model' (a pydantic model) or an inline JSON Schema")
        return value

    def resolve(self, which: str = "current") -> Any:
        """The pydantic model or JSON Schema dict named by `current` or `next`."""
        value = getattr(self, which)
        if not isinstance(value, str):
            return value
        import importlib

        module, _, attr = value.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ProfileError(f"state_schema.{which}: cannot import {value!r}: {exc}") from None


class WorkloadProfile(_Model):
    """A service's workload: traffic, turns, what its callers can do, its kinds of state,
    compliance and latency budget. Load one with `WorkloadProfile.from_yaml(path)`."""

    service: str = Field(min_length=1)
    description: str = ""
    traffic: Traffic
    turns: Turns
    client: Client
    state: StateUse
    state_classes: list[StateClass] = Field(min_length=1)
    compliance: Compliance
    latency_budget_ms: float = Field(gt=0, description="p99 time a request may spend on state operations")
    costs: Costs = Costs()
    state_schema: StateSchema | None = None

    @field_validator("state_classes")
    @classmethod
    def _unique_names(cls, classes: list[StateClass]) -> list[StateClass]:
        seen: set[str] = set()
        for c in classes:
            if c.name in seen:
                raise ValueError(f"state class {c.name!r} is listed twice")
            seen.add(c.name)
        return classes

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadProfile:
        window = self.state.context_window_turns
        if window is not None and window > self.turns.per_session:
            raise ValueError(
                f"state.context_window_turns ({window}) exceeds turns.per_session ({self.turns.per_session})"
            )
        return self

    @property
    def name(self) -> str:
        return self.service

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> WorkloadProfile:
        """Validate `data`; on failure raise `ProfileError` naming `source` and every bad field."""
        if not isinstance(data, dict):
            raise ProfileError(f"{source}: a profile is a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(profile)"
                lines.append(f"  {field}: {err['msg']}")
            raise ProfileError(f"{source}: invalid workload profile\n" + "\n".join(lines)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> WorkloadProfile:
        """Read and validate a YAML profile; `ProfileError` names the file and the field.

        The file must be UTF-8, and a key given twice in one mapping is refused with both
        lines named (YAML loaders keep the last one silently, so half an edit would win).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ProfileError(
                f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                "save the profile as UTF-8"
            ) from None
        return cls.from_yaml_text(text, source=str(path))

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<yaml>") -> WorkloadProfile:
        """Validate a profile given as YAML text; `ProfileError` names `source` and the field."""
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
        except _DuplicateKey as exc:
            raise ProfileError(f"{source}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ProfileError(f"{source}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=source)


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a key given twice in one mapping, naming both lines.

    PyYAML keeps the last of duplicate keys without a word and offers no option to refuse
    them (ruamel.yaml does, but a second YAML library for one check is not worth it).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges are meant to be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first_line:
                    raise _DuplicateKey(
                        f"key {key!r} appears twice in one mapping, on lines {first_line[key]} and "
                        f"{key_node.start_mark.line + 1}; keep one"
                    )
                first_line[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


#: JSON Schema's dialect for the profile schema (what pydantic writes).
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The file next to the example profiles that their `yaml-language-server` comment points to.
SCHEMA_FILE = "profile.schema.json"


def schema_json() -> str:
    """The workload profile's JSON Schema, from the pydantic model, for editors and validators."""
    import json

    schema = {"$schema": SCHEMA_DIALECT, **WorkloadProfile.model_json_schema()}
    return json.dumps(schema, indent=2) + "\n"


_TEMPLATE = """\
# yaml-language-server: $schema={schema}
# A workload profile for statekit: `statekit assess {name}.yaml`, `statekit review {name}.yaml`.
# Replace every number with your service's; each comment says what the field means.
service: {name}
description: >
  What the service does, for whom, and what its state is.
traffic:
  new_sessions_per_day: 10000        # sessions (conversations, tasks, documents) started per day
  requests_per_session: 10           # requests that touch one session over its life
  peak_concurrent_sessions: 500      # sessions active at once at the daily peak
  session_minutes: 20                # time from a session's first request to its last
  app_instances: 4                   # application processes that call the store (each has its own breaker)
turns:
  per_session: 10                    # turns (messages, steps, events) in a typical session
  bytes_per_turn: 600                # bytes of one turn's text as the service stores it
  tokens_per_turn: 150               # model tokens of one turn (0 when no model reads it)
  compression_ratio: 1.0             # raw over stored bytes with statekit.codec.Codec (1: uncompressed)
client:
  can_send_full_context: false       # can the caller resend the whole history with each request?
  max_request_bytes: 16384           # largest request body the caller or channel accepts
  trusted: false                     # may the caller hold authoritative state (quotas, approvals)?
state:
  reused_across_requests: true       # does a later request read what an earlier one wrote?
  units_independent: false           # is each unit of work complete on its own?
  shared_across_clients: false       # do several callers or devices share one session?
  long_running_steps: false          # must progress survive restarts over hours or days?
  context_window_turns: 8            # recent turns the model needs verbatim
  summary_tokens: 300                # tokens of the summary that stands for older turns (0: none)
state_classes:                       # each kind of state, with how stale a read of it may be
  - name: conversation
    purpose: conversation            # conversation, workflow, quota, approval, financial,
    staleness_tolerance_s: 0         # personalization, recommendation, cache or analytics
    description: the turns and the summary the model reads
compliance:
  allowed_regions: [eu-west-1]       # where session data may live
  retention_days: 30                 # how long any session data may be kept
latency_budget_ms: 50                # p99 time a request may spend on state operations
costs:
  token_price_per_million: 3.0       # USD per million input tokens
  redis_price_per_gb_hour: 0.017     # USD per GB-hour of Redis memory
# state_schema:                      # optional: your state's pydantic model, and the next version
#   current: myapp.state:StateV1
#   next: myapp.state:StateV2
"""


def profile_template(name: str, schema: str = SCHEMA_FILE) -> str:
    """A commented starting profile for service `name`, valid as written (edit the numbers).

    `schema` is where the `yaml-language-server` comment points editors for validation
    (write it with `statekit profile schema > profile.schema.json`).
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ProfileError(
            f"bad service name {name!r}: letters, digits, '_', '.' and '-', starting with one of the first two"
        )
    return _TEMPLATE.format(name=name, schema=schema)
