"""Lab 4, state outlives code: Wednesday's deploy renames `customer` to `customer_id`.

Monday's code (v1) wrote the live sessions. The first version of Wednesday's code reads
them with the new model, and every session from before the deploy crashes the request. The
attendee's fix: `migrations`, a `statekit.Migrations` that reads v1 sessions as v2. The
check writes sessions with v1 code, deploys v2 code with the attendee's migrations, brings
the users back, and also starts new sessions on v2.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from statekit.errors import StatekitError
from statekit.migrate import Migrations
from statekit.store.blocking import SessionStore
from statekit.workbook.labs.result import Result, _what, cleanup, failed, namespace, passed, with_deadline

LAB = "versions"
SESSIONS = 20


class CaseV1(BaseModel):
    """Monday's session state."""

    ticket_id: str
    customer: str
    notes: list[str] = []


class CaseV2(BaseModel):
    """Wednesday's: `customer` is now `customer_id`."""

    ticket_id: str
    customer_id: str
    notes: list[str] = []


def _monday(client: Any, ns: str, sessions: int) -> None:
    monday = SessionStore(client, namespace=ns, migrations=Migrations(current=1))
    for i in range(sessions):
        case = CaseV1(ticket_id=f"T-{i}", customer=f"C-{1000 + i}", notes=[f"opened on Monday ({i})"])
        monday.update_state(f"s-{i}", lambda s, case=case: case.model_dump())


def break_it(redis_url: str = "fakeredis://", *, sessions: int = 200) -> dict[str, Any]:
    """Monday's code writes `sessions`; Wednesday's reads them with CaseV2 and no
    migrations. How many returning users get an error, and the first error."""
    from statekit.backends import connect

    client = connect(redis_url)
    ns = namespace(LAB)
    _monday(client, ns, sessions)
    wednesday = SessionStore(client, namespace=ns)
    errors = []
    for i in range(sessions):
        state, _ = wednesday.get_state(f"s-{i}")
        try:
            CaseV2.model_validate(state)
        except ValidationError as exc:
            errors.append(str(exc).splitlines()[0:3])
    cleanup(client, ns)
    return {"returning users": sessions, "errors (HTTP 500)": len(errors), "first error": " ".join(errors[0])}


@with_deadline(LAB)
def check(migrations: Any, redis_url: str = "fakeredis://") -> Result:
    """Monday's v1 sessions read by Wednesday's code with `migrations`; new v2 sessions too."""
    from statekit.backends import connect

    if not isinstance(migrations, Migrations):
        return failed(LAB, f"migrations is {_what(migrations)}: make it a statekit Migrations(current=...)")
    client = connect(redis_url)
    ns = namespace(LAB)
    try:
        _monday(client, ns, SESSIONS)
        if migrations.current < 2:
            return failed(
                LAB,
                f"your migrations say the current version is {migrations.current}: Wednesday's code writes "
                "CaseV2, so Monday's v1 sessions and Wednesday's look the same to the store",
            )
        wednesday = SessionStore(client, namespace=ns, migrations=migrations)
        for i in range(SESSIONS):
            sid = f"s-{i}"
            try:
                state, _ = wednesday.get_state(sid)
            except StatekitError as exc:
                return failed(LAB, f"Monday's session {sid} could not be read: {type(exc).__name__}: {exc}")
            if state is None or not isinstance(state, dict):
                return failed(
                    LAB,
                    f"Monday's session {sid} read back as {state!r}: a migration step returns the upgraded data",
                )
            try:
                case = CaseV2.model_validate(state)
            except ValidationError as exc:
                first = exc.errors()[0]
                return failed(
                    LAB,
                    f"Monday's session {sid} still fails CaseV2 after your migrations: {first['loc'][0]} "
                    f"{first['msg'].lower()}",
                )
            if case.customer_id != f"C-{1000 + i}":
                return failed(
                    LAB,
                    f"Monday's session {sid} lost its customer: C-{1000 + i} became {case.customer_id!r}. "
                    "A migration moves what the old version stored; it does not make it up",
                )
            if f"opened on Monday ({i})" not in case.notes:
                return failed(LAB, f"Monday's session {sid} lost its notes: {case.notes!r}")
        # new sessions on Wednesday, read back by Wednesday's code
        fresh = CaseV2(ticket_id="T-new", customer_id="C-9999")
        wednesday.update_state("s-new", lambda s: fresh.model_dump())
        state, _ = wednesday.get_state("s-new")
        if CaseV2.model_validate(state) != fresh:
            return failed(LAB, f"a session started on Wednesday reads back as {state!r}: your steps ran on v2 data")
        stored = {migrations.version_of(client.get(wednesday.keys(f"s-{i}")[3])) for i in range(SESSIONS)}
    finally:
        cleanup(client, ns)
    return passed(
        LAB,
        f"all {SESSIONS} of Monday's sessions read as CaseV2 with their customer and notes, and were written back "
        f"at v{max(stored)}; Wednesday's new sessions read back unchanged",
        sessions=SESSIONS,
    )
