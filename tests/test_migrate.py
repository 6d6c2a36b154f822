from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Literal

import pytest
import redis
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from statekit import CorruptStateError, SessionStore, UnknownVersionError, connect
from statekit.decide.compat import check_compatibility
from statekit.migrate import MigrationError, Migrations, load_migrations, migrate_namespace, version_census
from statekit.scripts import GET_STATE_LUA, KEEPTTL_CAS_LUA
from statekit.store import drive
from statekit.workbook.examples import MIGRATIONS, MODELS, SupportAgentStateV3, support_agent_migrations

CORPUS = Path(__file__).resolve().parent.parent / "data" / "sessions"


def chain() -> Migrations:
    m = Migrations(current=3)

    @m.step(1, 2)
    def one(d):
        return {**d, "b": 2}

    @m.step(2, 3)
    def two(d):
        return {**d, "c": d["a"] + d["b"]}

    return m


# -- the registry -----------------------------------------------------------------------


def test_load_walks_the_chain_and_reports_the_source_version():
    m = chain()
    loaded = m.load(Migrations(current=1).dump({"a": 1}))
    assert (loaded.data, loaded.from_version, loaded.version, loaded.migrated) == ({"a": 1, "b": 2, "c": 3}, 1, 3, True)
    again = m.load(m.dump(loaded.data))
    assert again.from_version == 3 and not again.migrated


def test_a_newer_blob_is_refused_by_older_code():
    with pytest.raises(UnknownVersionError, match="schema version 3, newer than this code's 1"):
        Migrations(current=1).load(chain().dump({"a": 1}), "sk:{s}:state")


def test_a_gap_in_the_chain_names_the_versions():
    m = Migrations(current=3)
    m.step(1, 2)(lambda d: d)
    with pytest.raises(MigrationError, match="no migration step from version 2 to 3"):
        m.load(Migrations(current=1).dump({}))


def test_a_failing_step_names_the_versions():
    m = Migrations(current=2)
    m.step(1, 2)(lambda d: d["missing"])
    with pytest.raises(MigrationError, match=r"step 1 -> 2 failed: KeyError"):
        m.load(Migrations(current=1).dump({}))


@pytest.mark.parametrize("raw", [b"", b"\x01{broken", b"\x07\x00", b'\x01{"_v": "x", "data": 1}'])
def test_corrupt_bytes(raw):
    with pytest.raises(CorruptStateError):
        chain().load(raw)


def test_bad_registrations():
    m = Migrations(current=3)
    with pytest.raises(ValueError):
        m.step(1, 3)
    with pytest.raises(ValueError):
        m.step(3, 4)
    m.step(1, 2)(lambda d: d)
    with pytest.raises(ValueError):
        m.step(1, 2)(lambda d: d)
    with pytest.raises(ValueError):
        Migrations(current=0)
    with pytest.raises(ValueError):
        m.dump({}, version=4)


def test_unversioned_state_is_read_as_version_one():
    from statekit import codec

    assert chain().load(codec.encode({"a": 5})).data == {"a": 5, "b": 2, "c": 7}


# -- in the store ---------------------------------------------------------------------------


def test_v1_sessions_are_read_by_v3_code_and_written_back_keeping_the_ttl(any_client):
    v1 = SessionStore(any_client, migrations=Migrations(current=1))
    v1.update_state("s", lambda s: {"ticket_id": "T-1", "customer": "C-42"})
    state_key = v1.keys("s")[3]
    any_client.pexpire(state_key, 50_000)
    v3 = SessionStore(any_client, migrations=support_agent_migrations)
    state, _ = v3.get_state("s")
    assert SupportAgentStateV3.model_validate(state).customer_id == 42
    assert support_agent_migrations.version_of(any_client.get(state_key)) == 3, "written back at v3"
    assert 45_000 < any_client.pttl(state_key) <= 50_000, "the remaining TTL is kept"
    # old code meets the migrated blob: refused, and left as it is
    before = any_client.get(state_key)
    with pytest.raises(UnknownVersionError):
        v1.get_state("s")
    assert any_client.get(state_key) == before


def test_write_back_never_overwrites_a_concurrent_writer():
    client = connect("fakeredis://")
    v1 = SessionStore(client, migrations=Migrations(current=1))
    v1.update_state("s", lambda s: {"ticket_id": "T-1", "customer": "7"})
    keys = v1.keys("s")
    old_blob, old_sv = client.get(keys[3]), int(client.hget(keys[0], "sv"))
    v3 = SessionStore(client, migrations=support_agent_migrations)
    v3.update_state("s", lambda s: {**s, "escalated": True})  # a live request, new code
    after_writer = client.get(keys[3])
    drive(v3._decode_state("s", keys, old_blob, old_sv), v3._wire)  # the slow reader's late write-back
    assert client.get(keys[3]) == after_writer


def test_update_state_sees_migrated_data_and_stores_the_current_version():
    client = connect("fakeredis://")
    SessionStore(client, migrations=Migrations(current=1)).update_state(
        "s", lambda s: {"ticket_id": "T", "customer": "3"}
    )
    v3 = SessionStore(client, migrations=support_agent_migrations)
    seen = []
    v3.update_state("s", lambda s: seen.append(dict(s)) or {**s, "channel": "email"})
    assert seen[0]["customer_id"] == 3
    assert json.loads(client.get(v3.keys("s")[3])[1:])["_v"] == 3


def test_the_same_sessions_without_migrations_fail_validation():
    """What Wednesday's deploy does to Monday's sessions when nobody wrote a migration."""
    client = connect("fakeredis://")
    SessionStore(client).update_state("s", lambda s: {"ticket_id": "T", "customer": "3"})
    raw, _ = SessionStore(client).get_state("s")
    with pytest.raises(ValueError):
        SupportAgentStateV3.model_validate(raw)


# -- the replay corpus ----------------------------------------------------------------------


@pytest.mark.parametrize("blob", sorted(CORPUS.rglob("*.bin")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_old_session_is_read_by_todays_code(blob):
    service = blob.parent.name
    loaded = MIGRATIONS[service].load(blob.read_bytes(), str(blob))
    current_model = MODELS[service][MIGRATIONS[service].current]
    current_model.model_validate(loaded.data)


def test_the_corpus_covers_every_earlier_version():
    for service, migrations in MIGRATIONS.items():
        versions = {migrations.version_of(p.read_bytes()) for p in (CORPUS / service).glob("*.bin")}
        assert versions == set(range(1, migrations.current + 1)), service


# -- compatibility ----------------------------------------------------------------------------


class Base(BaseModel):
    ticket_id: str
    customer: str
    note: str = ""


class AddOptional(Base):
    language: str = "en"


class AddRequired(Base):
    priority: int


class RemoveRequired(BaseModel):
    ticket_id: str
    note: str = ""


class RemoveOptional(BaseModel):
    ticket_id: str
    customer: str


class Retype(BaseModel):
    ticket_id: str
    customer: int
    note: str = ""


class Rename(BaseModel):
    ticket_id: str
    customer_ref: str
    note: str = ""


class RenameWithAlias(BaseModel):
    ticket_id: str
    customer_ref: str = Field(validation_alias=AliasChoices("customer_ref", "customer"))
    note: str = ""


class Counts(BaseModel):
    n: int


class CountsAsFloat(BaseModel):
    n: float


@pytest.mark.parametrize(
    "new, verdict, mode, kinds",
    [
        (AddOptional, "safe", "FULL", ["add optional"]),
        (AddRequired, "multi-phase", "FORWARD", ["add required"]),
        (RemoveRequired, "multi-phase", "BACKWARD", ["remove required"]),
        (RemoveOptional, "safe", "FULL", ["remove optional"]),
        (Retype, "breaking", "NONE", ["change type"]),
        (Rename, "multi-phase", "NONE", ["add required", "remove required"]),
        (RenameWithAlias, "multi-phase", "BACKWARD", ["rename"]),
    ],
    ids=["add-optional", "add-required", "remove-required", "remove-optional", "retype", "rename", "aliased-rename"],
)
def test_classic_cases(new, verdict, mode, kinds):
    result = check_compatibility(Base, new)
    assert result.verdict == verdict and result.mode == mode
    assert sorted(c.kind for c in result.changes) == sorted(kinds)


def test_int_to_float_is_a_promotion():
    result = check_compatibility(Counts, CountsAsFloat)
    assert [c.kind for c in result.changes] == ["promote type"] and result.mode == "BACKWARD"


def test_rollout_plans():
    assert [p["name"] for p in check_compatibility(Base, AddOptional).plan] == ["deploy"]
    plan = check_compatibility(Base, AddRequired).plan
    assert [p["name"] for p in plan] == ["expand", "migrate", "contract"]
    assert "optional with a default" in plan[0]["steps"][0] and "required" in plan[2]["steps"][0]
    assert [p["name"] for p in check_compatibility(Base, RemoveRequired).plan] == ["expand", "contract"]
    breaking = check_compatibility(Base, Retype).plan
    assert [p["name"] for p in breaking] == ["expand", "migrate", "contract"]
    assert all(p["wait_for"] for p in breaking)


def test_json_schema_input():
    old = {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}
    new = {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    assert check_compatibility(old, new).verdict == "multi-phase"
    assert check_compatibility(old, old).verdict == "safe" and check_compatibility(old, old).changes == []


# -- batch migration ---------------------------------------------------------------------------


def _seed(client, n: int, namespace: str = "app") -> None:
    v1 = SessionStore(client, namespace=namespace, migrations=Migrations(current=1))
    for i in range(n):
        v1.update_state(f"s-{i}", lambda s, i=i: {"ticket_id": f"T{i}", "customer": str(i)})


def test_batch_migration_dry_run_writes_nothing():
    client = connect("fakeredis://")
    _seed(client, 50)
    before = {k: client.get(k) for k in client.scan_iter(match="app:*:state")}
    report = migrate_namespace(client, "app", support_agent_migrations, batch=10, dry_run=True)
    assert report.finished and report.migrated == 50 and report.by_source_version == {"1": 50}
    assert {k: client.get(k) for k in before} == before


def test_mixed_versions_failures_and_newer_blobs_are_counted():
    client = connect("fakeredis://")
    _seed(client, 10)
    SessionStore(client, namespace="app", migrations=support_agent_migrations).update_state(
        "current", lambda s: {"ticket_id": "T", "customer_id": 1}
    )
    for sid in ("future", "broken"):  # sessions as the store writes them: a meta hash beside the state
        client.hset(f"app:{{{sid}}}:meta", mapping={"v": 1, "sv": 1})
    client.set("app:{future}:state", Migrations(current=9).dump({"x": 1}))
    client.set("app:{broken}:state", Migrations(current=1).dump({"ticket_id": "T", "customer": "not-a-number"}))
    report = migrate_namespace(client, "app", support_agent_migrations, batch=4)
    assert (report.migrated, report.current, report.skipped_newer, report.failed) == (10, 1, 1, 1)
    assert report.by_source_version == {"1": 11, "3": 1, "9": 1}
    assert "step 2 -> 3 failed" in report.errors[0]


@pytest.mark.realredis
def test_interrupted_batch_migration_resumes_without_migrating_anything_twice(redis_url, tmp_path):
    client = connect(redis_url)
    _seed(client, 3_000)
    checkpoint = tmp_path / "cursor.json"
    first = migrate_namespace(
        client, "app", support_agent_migrations, batch=200, checkpoint=checkpoint, stop_after=1_000
    )
    assert not first.finished and 1_000 <= first.migrated < 3_000
    resumed = migrate_namespace(client, "app", support_agent_migrations, batch=200, checkpoint=checkpoint)
    assert resumed.finished
    # counts carried over from the checkpoint: every session migrated exactly once
    assert resumed.migrated == 3_000 and resumed.failed == 0
    versions = [support_agent_migrations.version_of(client.get(k)) for k in client.scan_iter(match="app:*:state")]
    assert len(versions) == 3_000 and set(versions) == {3}
    again = migrate_namespace(client, "app", support_agent_migrations, batch=200)
    assert again.migrated == 0 and again.current == 3_000


def test_checkpoint_of_another_namespace_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"namespace": "other"}))
    with pytest.raises(MigrationError, match="belongs to namespace 'other'"):
        migrate_namespace(connect("fakeredis://"), "app", support_agent_migrations, checkpoint=path)


def test_a_real_run_refuses_a_dry_runs_checkpoint_and_then_migrates_everything(tmp_path):
    """A real run given the checkpoint of a finished dry run returned the dry run's report as
    its own ("migrated 50") and migrated nothing."""
    client = connect("fakeredis://")
    _seed(client, 50)
    path = tmp_path / "migrate.json"
    dry = migrate_namespace(client, "app", support_agent_migrations, batch=10, dry_run=True, checkpoint=path)
    assert dry.finished and dry.migrated == 50 and json.loads(path.read_text())["dry_run"] is True
    saved = path.read_text()
    with pytest.raises(MigrationError, match=f"checkpoint {path} was written by a dry run"):
        migrate_namespace(client, "app", support_agent_migrations, batch=10, checkpoint=path)
    assert version_census(client, "app", support_agent_migrations) == {1: 50}
    assert path.read_text() == saved, "the dry run's checkpoint is left as it was"
    real = migrate_namespace(client, "app", support_agent_migrations, batch=10, checkpoint=tmp_path / "real.json")
    assert real.finished and real.migrated == 50
    assert version_census(client, "app", support_agent_migrations) == {3: 50}


def test_a_dry_run_refuses_a_real_runs_checkpoint(tmp_path):
    client = connect("fakeredis://")
    _seed(client, 30)
    path = tmp_path / "migrate.json"
    first = migrate_namespace(client, "app", support_agent_migrations, batch=10, checkpoint=path, stop_after=10)
    assert not first.finished and first.migrated >= 10
    saved = path.read_text()
    with pytest.raises(MigrationError, match=f"checkpoint {path} was written by a real migration"):
        migrate_namespace(client, "app", support_agent_migrations, batch=10, dry_run=True, checkpoint=path)
    assert path.read_text() == saved, "the real run's checkpoint still resumes it"
    resumed = migrate_namespace(client, "app", support_agent_migrations, batch=10, checkpoint=path)
    assert resumed.finished and resumed.migrated == 30
    assert version_census(client, "app", support_agent_migrations) == {3: 30}


@pytest.mark.parametrize(
    "spec", ["nocolon", "no.such.module:x", "statekit.workbook.examples:nothing", "statekit.workbook.examples:MODELS"]
)
def test_bad_migrations_spec(spec):
    with pytest.raises(ValueError):
        load_migrations(spec)


@pytest.mark.realredis
def test_migrate_command(redis_url, capsys):
    from statekit.cli import main

    _seed(connect(redis_url), 20)
    args = [
        "migrate",
        redis_url,
        "--namespace",
        "app",
        "--migrations",
        "statekit.workbook.examples:support_agent_migrations",
        "-q",
    ]
    assert main([*args, "--dry-run"]) == 0
    assert "would migrate 20" in capsys.readouterr().out
    assert main(args) == 0
    assert "migrated 20" in capsys.readouterr().out
    assert main(["migrate", redis_url, "--namespace", "app", "--migrations", "nope:x"]) == 2


def test_readable_by_counts_sessions_new_code_cannot_read():
    from statekit.migrate import readable_by

    client = connect("fakeredis://")
    _seed(client, 12)
    SessionStore(client, namespace="app", migrations=support_agent_migrations).get_state("s-0")  # now at v3
    before = {k: client.dump(k) for k in client.scan_iter(match="app:*")}
    without = readable_by(client, "app", SupportAgentStateV3, batch=5)
    assert (without["sessions"], without["readable"], without["unreadable"]) == (12, 1, 11)
    assert "customer_id" in without["errors"][0]
    with_migrations = readable_by(client, "app", SupportAgentStateV3, support_agent_migrations)
    assert (with_migrations["readable"], with_migrations["unreadable"]) == (12, 0)
    assert {k: client.dump(k) for k in before} == before, "read-only"


# -- defects found in review: each of these failed before its fix ------------------------


class SplitPipelines:
    """A client whose pipelines send their commands one at a time and call `after(i)` after
    the i-th: a deterministic stand-in for a large pipeline that the server reads in pieces,
    letting another client's command in between two of them."""

    def __init__(self, client, after):
        self._client, self._after = client, after

    def __getattr__(self, name):
        return getattr(self._client, name)

    def pipeline(self, transaction=True):
        return _SplitPipeline(self)


class _SplitPipeline:
    def __init__(self, owner):
        self.owner, self.calls = owner, []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self

        return record

    def execute(self, raise_on_error=True):
        out = []
        for i, (name, args, kwargs) in enumerate(self.calls):
            try:
                out.append(getattr(self.owner._client, name)(*args, **kwargs))
            except redis.exceptions.ResponseError as exc:
                if raise_on_error:
                    raise
                out.append(exc)
            self.owner._after(i)
        self.calls = []
        return out


@pytest.mark.parametrize("backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.realredis)])
def test_batch_migration_never_overwrites_an_update_landing_between_its_reads(backend, request):
    client = connect("fakeredis://" if backend == "fakeredis" else request.getfixturevalue("redis_url"))
    SessionStore(client, namespace="app", migrations=Migrations(current=1)).update_state(
        "s", lambda s: {"ticket_id": "T-1", "customer": "C-7"}
    )
    live = SessionStore(client, namespace="app", migrations=support_agent_migrations)
    for script in (GET_STATE_LUA, KEEPTTL_CAS_LUA):  # the split pipelines send EVALSHA as is
        client.script_load(script)
    landed = []

    def after(i):
        if not landed:  # a live request (new code) updates the session right after the first read
            landed.append(live.update_state("s", lambda s: {**s, "escalated": True}))

    report = migrate_namespace(SplitPipelines(client, after), "app", support_agent_migrations)
    assert landed, "the update ran in the middle of the batch"
    state, _ = live.get_state("s")
    assert state["escalated"] is True, "the update survived the batch migration"
    assert (report.migrated, report.conflicts) == (0, 1)


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"namespace": "app", "cursor": 7}', "damaged"),
        (
            '{"namespace": "app", "scanned": "x", "migrated": 0, "current": 0, "skipped_newer": 0, "failed": 0, '
            '"conflicts": 0, "cursor": 0, "by_source_version": {}}',
            "not numbers",
        ),
        ("not json", "cannot be read"),
        ("[1, 2]", "not a statekit migration checkpoint"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_nothing_is_migrated(tmp_path, content, why):
    client = connect("fakeredis://")
    _seed(client, 5)
    path = tmp_path / "cursor.json"
    path.write_text(content)
    with pytest.raises(MigrationError, match=f"checkpoint {path}.*{why}"):
        migrate_namespace(client, "app", support_agent_migrations, checkpoint=path)
    assert version_census(client, "app", support_agent_migrations) == {1: 5}


def test_an_unwritable_checkpoint_fails_before_anything_is_migrated(tmp_path):
    client = connect("fakeredis://")
    _seed(client, 5)
    with pytest.raises(MigrationError, match="cannot write checkpoint"):
        migrate_namespace(client, "app", support_agent_migrations, checkpoint=tmp_path / "no" / "such" / "dir.json")
    assert version_census(client, "app", support_agent_migrations) == {1: 5}


@pytest.mark.parametrize("batch", [0, -1])
def test_batch_must_be_positive(batch):
    with pytest.raises(ValueError, match="batch must be"):
        migrate_namespace(connect("fakeredis://"), "app", support_agent_migrations, batch=batch)


def test_a_corrupt_state_version_is_counted_as_a_failure_not_a_crash():
    client = connect("fakeredis://")
    _seed(client, 3)
    client.hset("app:{s-0}:meta", "sv", "three")
    report = migrate_namespace(client, "app", support_agent_migrations)
    assert (report.migrated, report.failed) == (2, 1) and "app:{s-0}:meta field sv" in report.errors[0]


def test_version_census_counts_sessions_by_stored_version_and_writes_nothing():
    client = connect("fakeredis://")
    _seed(client, 4)
    SessionStore(client, namespace="app", migrations=support_agent_migrations).get_state("s-0")  # migrated on read
    before = {k: client.dump(k) for k in client.scan_iter(match="app:*")}
    assert version_census(client, "app", support_agent_migrations) == {1: 3, 3: 1}
    assert {k: client.dump(k) for k in before} == before


def test_glob_characters_in_a_namespace_match_only_its_own_keys():
    client = connect("fakeredis://")
    for ns in ("a*", "ab"):
        SessionStore(client, namespace=ns, migrations=Migrations(current=1)).update_state(
            "s", lambda s: {"ticket_id": "T", "customer": "C-1"}
        )
    assert migrate_namespace(client, "a*", support_agent_migrations).migrated == 1
    assert version_census(client, "ab", support_agent_migrations) == {1: 1}


# -- compatibility below the top level ----------------------------------------------------


class _Item(BaseModel):
    sku: str
    note: str = ""


class _ItemInt(BaseModel):
    sku: int
    note: str = ""


class _Order(BaseModel):
    items: list[_Item]


class _OrderInt(BaseModel):
    items: list[_ItemInt]


def _kinds(comp):
    return sorted((c.kind, c.field) for c in comp.changes)


def test_a_field_retyped_inside_a_list_of_models_is_breaking():
    comp = check_compatibility(_Order, _OrderInt)
    assert comp.verdict == "breaking" and comp.mode == "NONE"
    assert _kinds(comp) == [("change type", "items[].sku")]


def test_a_literal_losing_a_value_is_not_safe():
    class Old(BaseModel):
        channel: Literal["web", "email", "phone"] = "web"

    class New(BaseModel):
        channel: Literal["web", "email"] = "web"

    comp = check_compatibility(Old, New)
    assert comp.verdict == "multi-phase" and (comp.backward, comp.forward) == (False, True)
    assert _kinds(comp) == [("remove enum value", "channel")] and "'phone'" in comp.changes[0].detail
    assert check_compatibility(New, Old).mode == "BACKWARD"  # a value added: old code rejects it


def test_an_enum_class_losing_a_member_inside_a_nested_model():
    class Status(enum.Enum):
        OPEN = "open"
        CLOSED = "closed"
        HELD = "held"

    class Status2(enum.Enum):
        OPEN = "open"
        CLOSED = "closed"

    class Ticket(BaseModel):
        status: Status

    class Ticket2(BaseModel):
        status: Status2

    class Old(BaseModel):
        ticket: Ticket

    class New(BaseModel):
        ticket: Ticket2

    comp = check_compatibility(Old, New)
    assert _kinds(comp) == [("remove enum value", "ticket.status")] and comp.verdict == "multi-phase"


@pytest.mark.parametrize(
    "old, new, kind, backward, forward",
    [
        (Field(max_length=100), Field(max_length=20), "tighten constraint", False, True),
        (Field(max_length=20), Field(max_length=100), "loosen constraint", True, False),
        (Field(), Field(min_length=3), "tighten constraint", False, True),
        (Field(), Field(pattern=r"^T-\d+$"), "tighten constraint", False, True),
        (Field(pattern=r"^T-\d+$"), Field(pattern=r"^TK-\d+$"), "change constraint", False, False),
    ],
    ids=["max length lowered", "max length raised", "min length added", "pattern added", "pattern changed"],
)
def test_string_constraints(old, new, kind, backward, forward):
    Old = type("Old", (BaseModel,), {"__annotations__": {"ticket": str}, "ticket": old})
    New = type("New", (BaseModel,), {"__annotations__": {"ticket": str}, "ticket": new})
    comp = check_compatibility(Old, New)
    assert [(c.kind, c.field, c.backward, c.forward) for c in comp.changes] == [(kind, "ticket", backward, forward)]


def test_numeric_bounds_inside_a_mapping_of_models():
    class Limit(BaseModel):
        per_minute: int = Field(ge=0, le=1000)

    class Limit2(BaseModel):
        per_minute: int = Field(ge=1, le=1000)

    class Old(BaseModel):
        limits: dict[str, Limit]

    class New(BaseModel):
        limits: dict[str, Limit2]

    comp = check_compatibility(Old, New)
    assert _kinds(comp) == [("tighten constraint", "limits{}.per_minute")] and not comp.backward


def test_extra_forbid_rejects_what_the_other_side_still_writes():
    class Open(BaseModel):
        ticket_id: str
        legacy: str = ""

    class Closed(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ticket_id: str

    comp = check_compatibility(Open, Closed)
    assert not comp.backward, "old data still holds `legacy`, which the new model forbids"

    class ClosedOld(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ticket_id: str

    class OpenNew(BaseModel):
        ticket_id: str
        language: str = "en"

    comp = check_compatibility(ClosedOld, OpenNew)
    assert not comp.forward and comp.verdict == "multi-phase", "old code forbids the field new code writes"


def test_a_nested_rename_with_an_alias_is_a_rename_and_its_type_is_compared():
    class Customer(BaseModel):
        number: str

    class Customer2(BaseModel):
        customer_id: int = Field(validation_alias=AliasChoices("customer_id", "number"))

    class Old(BaseModel):
        customer: Customer

    class New(BaseModel):
        customer: Customer2

    comp = check_compatibility(Old, New)
    assert _kinds(comp) == [("change type", "customer.customer_id"), ("rename", "customer.customer_id")]
    assert comp.verdict == "breaking"


def test_optional_and_unions_widen_or_narrow():
    class Old(BaseModel):
        note: str
        amount: int | str

    class New(BaseModel):
        note: str | None
        amount: int

    comp = check_compatibility(Old, New)
    kinds = {(c.kind, c.field): (c.backward, c.forward) for c in comp.changes}
    assert kinds == {("widen type", "note"): (True, False), ("narrow type", "amount"): (False, True)}


def test_recursive_models_and_json_schema_refs_are_walked_once():
    class Node(BaseModel):
        name: str
        children: list[Node] = []

    class Node2(BaseModel):
        name: str = Field(max_length=10)
        children: list[Node2] = []

    comp = check_compatibility(Node, Node2)
    assert _kinds(comp) == [("tighten constraint", "name")]
    as_schema = check_compatibility(Node.model_json_schema(), Node2.model_json_schema())
    assert _kinds(as_schema) == _kinds(comp)


def test_workflow_v1_to_v2_lists_nested_changes_and_warns_of_the_replaced_flag():
    from statekit.workbook.examples import WorkflowStateV1, WorkflowStateV2

    comp = check_compatibility(WorkflowStateV1, WorkflowStateV2)
    assert _kinds(comp) == [
        ("add optional", "approved_by"),
        ("add optional", "steps[].attempts"),
        ("add optional", "steps[].status"),
        ("remove optional", "steps[].done"),
    ]
    assert comp.verdict == "safe", "by the Avro rules each change alone is compatible"
    (warning,) = comp.warnings
    assert "steps[].done removed while steps[].attempts, steps[].status added" in warning
    assert any(step.startswith("first check: steps[].done") for step in comp.plan[0]["steps"])
