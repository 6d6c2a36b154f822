"""Every notebook runs end to end under papermill, on fakeredis and on a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _run(nb: Path, out: Path, **parameters) -> nbformat.NotebookNode:
    pm.execute_notebook(
        str(nb), str(out), parameters=parameters, cwd=str(nb.parent), progress_bar=False, kernel_name="python3"
    )
    return nbformat.read(out, as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    return json.dumps([c.get("outputs", []) for c in nb.cells])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_clean(nb):
    node = nbformat.read(nb, as_version=4)
    assert all(not c.get("outputs") for c in node.cells if c.cell_type == "code"), "strip outputs before committing"
    params = [c for c in node.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'redis_url = "fakeredis://"' in params[0].source


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_on_fakeredis(nb, tmp_path):
    out = _run(nb, tmp_path / nb.name, redis_url="fakeredis://")
    text = _text(out)
    assert "fakeredis" in text
    if nb.stem == "02_bounded_state":
        assert "estimated: fakeredis has no INFO memory" in text
        assert "nothing was written" in text
    if nb.stem == "05_observability":
        assert "conflict ratio" in text and "tier=" in text and "tagged with a region outside" in text
    if nb.stem == "04_migrations":
        assert "would see an error" in text and "stored now at v3" in text
    if nb.stem == "01_graceful_degradation":
        assert "statekit ResilientStore" in text and "after recovery: store normal" in text


@pytest.mark.notebook
@pytest.mark.realredis
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_on_real_redis(nb, tmp_path, redis_url):
    out = _run(nb, tmp_path / nb.name, redis_url=redis_url)
    text = _text(out)
    assert "'kind': 'redis'" in text or "backend redis" in text
    if nb.stem == "02_bounded_state":
        assert "measured: INFO memory used_memory" in text


@pytest.mark.notebook
def test_design_review_for_every_profile_shape(tmp_path):
    nb = next(p for p in NOTEBOOKS if p.stem == "design_review")
    profile = nb.parent.parent / "data" / "profiles" / "agentic_workflow.yaml"
    out = _run(nb, tmp_path / "dr.ipynb", profile_path=str(profile), review_json_path=str(tmp_path / "r.json"))
    assert "durable workflow state" in _text(out)
    assert json.loads((tmp_path / "r.json").read_text())["assessment"]["verdict"] == "durable workflow state"


@pytest.mark.notebook
@pytest.mark.realredis
def test_consistency_notebook_measures_a_real_replica(tmp_path, redis_replica_pair):
    nb = next(p for p in NOTEBOOKS if p.stem == "03_consistency")
    out = _run(
        nb, tmp_path / nb.name, redis_url=redis_replica_pair.primary_url, replica_url=redis_replica_pair.replica_url
    )
    text = _text(out)
    assert "stale_fraction" in text and "WAIT 1, 2 load writers" in text
    assert "No replica_url given" not in text
