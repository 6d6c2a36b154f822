"""The lab notebooks: stored clean, the attendee's copies that ship in the package current, and
each lab executed under papermill: on fakeredis the attendee's copy as generated (its check
shows ✘) and the trainer's (its check shows ✔); on a real redis-server the trainer's.

The trainer's runs measure each lab's cells; with STATEKIT_RECORD_TIMINGS=1 they are written to
docs/workshop_timings.json, and the facilitator guide's table must be the one rendered from that
file (test_the_guide_shows_the_measured_run_times), so its times are measured, never typed in.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from pathlib import Path

import nbformat
import pytest
from notebook_runs import executed, outputs_text, shared_dir

from statekit.workbook.labs import LABS
from statekit.workbook.labs.attendee import attendee_notebook, has_solution, write_attendee
from statekit.workbook.labs.workshop import PACKAGED

ROOT = Path(__file__).resolve().parent.parent
LAB_NOTEBOOKS = sorted((ROOT / "notebooks" / "labs").glob("*.ipynb"))
TIMINGS = ROOT / "docs" / "workshop_timings.json"
GUIDE = ROOT / "docs" / "workshop.md"
#: labs whose break-it shows a plot (the others show a table: numbers a person reads)
PLOTS = {"lab0_need_state", "lab1_degrade", "lab2_bounded"}


def _tags(cell) -> list[str]:  # noqa: ANN001
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("nb", LAB_NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_notebooks_are_stored_clean(nb):
    node = nbformat.read(nb, as_version=4)
    assert all(not c.get("outputs") for c in node.cells if c.cell_type == "code"), "strip outputs before committing"
    params = [c for c in node.cells if "parameters" in _tags(c)]
    assert len(params) == 1 and 'redis_url = "fakeredis://"' in params[0].source
    fixes = [c for c in node.cells if "fix" in _tags(c)]
    checks = [c for c in node.cells if "check" in _tags(c)]
    assert len(fixes) == 1 and has_solution(fixes[0].source), "one cell tagged fix, holding the solution"
    assert len(checks) == 1 and "lab.check(" in checks[0].source
    assert not any(has_solution(c.source) for c in node.cells if c.cell_type == "code" and "fix" not in _tags(c))


def test_every_lab_has_a_notebook():
    assert [nb.stem.split("_", 1)[1] for nb in LAB_NOTEBOOKS] == list(LABS)


def test_the_packaged_attendee_copies_are_current():
    """What `statekit workshop` copies from a wheel is what the generator makes of the trainer's
    notebooks now (after an edit: make workshop-copies)."""
    packaged = sorted(PACKAGED.glob("*.ipynb"))
    assert [p.name for p in packaged] == [p.name for p in LAB_NOTEBOOKS]
    for trainer, copy in zip(LAB_NOTEBOOKS, packaged, strict=True):
        made = attendee_notebook(nbformat.read(trainer, as_version=4))
        shipped = nbformat.read(copy, as_version=4)
        assert [(c.cell_type, c.source, _tags(c)) for c in made.cells] == [
            (c.cell_type, c.source, _tags(c)) for c in shipped.cells
        ], f"{copy.name} is stale: run make workshop-copies"


def test_lab0_ships_the_repositorys_support_agent_profile():
    from statekit.workbook.labs.need_state import PROFILE

    assert PROFILE.read_text() == (ROOT / "data" / "profiles" / "support_agent.yaml").read_text()


@pytest.fixture(scope="session")
def lab_runs(tmp_path_factory) -> Path:
    out = shared_dir(tmp_path_factory)
    attendee = out / "attendee-labs"
    if not attendee.exists():
        write_attendee(ROOT / "notebooks" / "labs", attendee)
    return out


def _run(nb_name: str, version: str, backend: str, url: str, runs: Path) -> nbformat.NotebookNode:
    source = (runs / "attendee-labs" if version == "attendee" else ROOT / "notebooks" / "labs") / nb_name
    return executed(source, f"{backend}-{version}", runs, redis_url=url)


def _check_output(ran: nbformat.NotebookNode) -> str:
    cell = next(c for c in ran.cells if "check" in _tags(c))
    return outputs_text([cell])


def _assert_ran(ran: nbformat.NotebookNode, version: str, stem: str) -> None:
    errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{stem} ({version}) raised: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    shown = _check_output(ran)
    if version == "trainer":
        assert "✔" in shown and "✘" not in shown, shown
    else:
        assert "✘" in shown and "✔" not in shown, shown
    if stem in PLOTS:
        assert '"image/png"' in json.dumps([c.get("outputs", []) for c in ran.cells]), f"{stem} rendered no plot"


def _durations(ran: nbformat.NotebookNode) -> dict[str, float]:
    """Seconds per part of the lab, from papermill's record of each executed cell."""
    parts = {"total": 0.0, "break it": 0.0, "check": 0.0}
    part = "setup"
    for cell in ran.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## 1. Break it"):
            part = "break it"
        elif "check" in _tags(cell):
            part = "check"
        if cell.cell_type != "code":
            continue
        seconds = float(cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)
        parts["total"] += seconds
        if part in parts:
            parts[part] += seconds
        if part == "check":
            part = "after"
    return {k: round(v, 2) for k, v in parts.items()}


def _record(runs: Path, stem: str, backend: str, durations: dict[str, float]) -> None:
    """Add a lab's durations to the run's record (and, with STATEKIT_RECORD_TIMINGS, to the
    guide's), under a lock the workers share: without it one worker read the file another had
    just truncated (a JSONDecodeError on '' in a full run), and updates could be lost."""
    with open(runs / "lab_timings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _record_locked(runs, stem, backend, durations)


def _record_locked(runs: Path, stem: str, backend: str, durations: dict[str, float]) -> None:
    path = runs / "lab_timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(stem, {})[backend] = durations
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    if os.environ.get("STATEKIT_RECORD_TIMINGS"):
        recorded = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {"labs": {}}
        recorded["labs"].setdefault(stem, {})[backend] = durations
        recorded["measured_on"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        recorded["measured_by"] = "tests/test_lab_notebooks.py (papermill's duration of each executed cell)"
        TIMINGS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


@pytest.mark.notebook
@pytest.mark.parametrize("version", ["attendee", "trainer"])
@pytest.mark.parametrize("nb", LAB_NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_on_fakeredis(nb, version, lab_runs):
    ran = _run(nb.name, version, "fakeredis", "fakeredis://", lab_runs)
    _assert_ran(ran, version, nb.stem)
    if version == "trainer":
        _record(lab_runs, nb.stem, "fakeredis", _durations(ran))


@pytest.mark.notebook
@pytest.mark.realredis
@pytest.mark.parametrize("nb", LAB_NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_on_real_redis(nb, lab_runs, redis_url):
    """The trainer's notebook on a real server (the attendee's check on a real server is
    tests/test_labs.py's, without a kernel: each notebook run costs seconds of CPU)."""
    ran = _run(nb.name, "trainer", "redis", redis_url, lab_runs)
    _assert_ran(ran, "trainer", nb.stem)
    _record(lab_runs, nb.stem, "redis", _durations(ran))


def render_timings(recorded: dict) -> str:
    """The guide's table of measured run times, from docs/workshop_timings.json."""
    lines = [
        "| lab | all cells, fakeredis | break it | check | all cells, real redis-server |",
        "|---|---|---|---|---|",
    ]
    for stem in sorted(recorded["labs"]):
        fake, real = recorded["labs"][stem].get("fakeredis", {}), recorded["labs"][stem].get("redis", {})
        lines.append(
            f"| {stem} | {fake.get('total', float('nan')):.1f} s | {fake.get('break it', float('nan')):.1f} s | "
            f"{fake.get('check', float('nan')):.1f} s | {real.get('total', float('nan')):.1f} s |"
        )
    lines.append(f"\nMeasured on {recorded['measured_on']} by {recorded['measured_by']}.")
    return "\n".join(lines)


def test_the_guide_shows_the_measured_run_times():
    recorded = json.loads(TIMINGS.read_text())
    assert sorted(recorded["labs"]) == [nb.stem for nb in LAB_NOTEBOOKS]
    assert all(set(r) == {"fakeredis", "redis"} for r in recorded["labs"].values())
    assert render_timings(recorded) in GUIDE.read_text(), (
        "docs/workshop.md's table of run times is not the measured one: run the lab notebook tests with "
        "STATEKIT_RECORD_TIMINGS=1 and paste render_timings() into the guide"
    )


def test_statekit_workshop_writes_the_attendee_copy_and_keeps_an_attendees_work(tmp_path, capsys):
    from statekit.cli import main

    assert main(["workshop", str(tmp_path), "--prepare-only"]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == [p.name for p in LAB_NOTEBOOKS]
    for path in tmp_path.glob("*.ipynb"):
        assert not any(has_solution(c.source) for c in nbformat.read(path, as_version=4).cells)
    work = tmp_path / "lab2_bounded.ipynb"
    work.write_text(work.read_text().replace("policy = ...", "policy = 'mine'"))
    assert main(["workshop", str(tmp_path), "--trainer-notebooks", str(ROOT / "notebooks" / "labs"),
                 "--prepare-only"]) == 0  # fmt: skip
    assert "policy = 'mine'" in work.read_text()
    assert f"kept {work}" in capsys.readouterr().out
