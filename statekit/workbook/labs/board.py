"""The room, live: each check publishes its result to a Redis Stream on the trainer's server,
and `statekit workshop board URL` shows who has passed which lab.

An attendee's notebook publishes only when its `board_url` parameter is set; the labs
themselves keep running on the attendee's own embedded fakeredis.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from typing import Any

from statekit.workbook.labs import LABS
from statekit.workbook.labs.result import Result

STREAM = "statekit:workshop:results"
#: results kept on the trainer's server (30 attendees, six labs, many attempts each)
KEEP = 20_000


def attendee_name() -> str:
    """Who this laptop is on the board: STATEKIT_ATTENDEE, else user@host."""
    return os.environ.get("STATEKIT_ATTENDEE") or f"{getpass.getuser()}@{socket.gethostname()}"


def publish(result: Result, board_url: str, attendee: str | None = None) -> str | None:
    """Add `result` to the board at `board_url` (nothing when it is empty); the entry's id.
    A board that cannot be reached never costs the attendee their check: it is reported and
    skipped."""
    if not board_url:
        return None
    from statekit.backends import connect

    client = None
    try:
        client = connect(board_url, socket_timeout=2)
        entry = client.xadd(
            STREAM,
            {"attendee": attendee or attendee_name(), "lab": result.lab, "ok": int(result.ok), "hint": result.hint},
            maxlen=KEEP,
            approximate=True,
        )
    except Exception as exc:  # the board is the trainer's, not part of the lab
        why = (str(exc).splitlines() or [""])[0]
        print(
            f"(the board at {board_url} could not be reached and did not take the result: {type(exc).__name__}: {why})"
        )
        return None
    finally:
        if client is not None:
            client.close()
    return entry.decode() if isinstance(entry, bytes) else entry


class Rows(list):  # type: ignore[type-arg]
    """The board's rows, and how many stream entries were skipped as malformed."""

    skipped = 0


def progress(board_url: str) -> Rows:
    """One row per attendee: per lab '✔' once a check passed, '✘ n' after n failed checks
    and no pass, '' before any; the attendee's last hint. Entries that are not a check's
    result (fields missing, an unknown lab) are skipped and counted in `skipped`."""
    from statekit.backends import connect

    client = connect(board_url, socket_timeout=5)
    try:
        entries = client.xrange(STREAM)
    finally:
        client.close()
    rows: dict[str, dict[str, Any]] = {}
    skipped = 0
    for _, fields in entries:
        f = {_text(k): _text(v) for k, v in fields.items()}
        if not {"attendee", "lab", "ok", "hint"} <= set(f) or f["lab"] not in LABS or f["ok"] not in ("0", "1"):
            skipped += 1
            continue
        row = rows.setdefault(f["attendee"], {"attendee": f["attendee"], **dict.fromkeys(LABS, "")})
        lab = f["lab"]
        if row.get(lab) == "✔":
            continue
        if f["ok"] == "1":
            row[lab] = "✔"
        else:
            tries = int(row[lab][2:]) if row.get(lab, "").startswith("✘") else 0
            row[lab] = f"✘ {tries + 1}"
        row["last hint"] = f["hint"]
    out = Rows(sorted(rows.values(), key=lambda r: r["attendee"]))
    out.skipped = skipped
    return out


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def render(rows: list[dict[str, Any]]) -> str:
    """The board as text: a column per lab, and how many have passed each."""
    width = max([len("attendee"), *(len(r["attendee"]) for r in rows)])
    lines = [f"{'attendee':<{width}}  " + "  ".join(f"{lab:<11}" for lab in LABS)]
    for r in rows:
        lines.append(f"{r['attendee']:<{width}}  " + "  ".join(f"{r.get(lab, ''):<11}" for lab in LABS))
    passed = [sum(r.get(lab) == "✔" for r in rows) for lab in LABS]
    lines.append(f"{'passed':<{width}}  " + "  ".join(f"{f'{n} of {len(rows)}':<11}" for n in passed))
    skipped = getattr(rows, "skipped", 0)
    if skipped:
        lines.append(f"({skipped} malformed entries on the board's stream skipped)")
    return "\n".join(lines)


def watch(board_url: str, every_s: float, printer: Any = print) -> None:
    """Print the board every `every_s` seconds until interrupted."""
    while True:
        printer(render(progress(board_url)) + "\n")
        time.sleep(every_s)
