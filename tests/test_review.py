from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import EXAMPLE_REVIEWS

from statekit import ProfileError, StoreUnavailable
from statekit.workbook.review import build_review, run_review


def test_build_review_has_profile_and_assessment(profiles_dir):
    review = build_review(profiles_dir / "support_agent.yaml", "fakeredis://")
    assert set(review) >= {"meta", "profile", "assessment", "lifecycle"}
    life = review["lifecycle"]
    assert life["applies"] is True
    assert life["policy"]["window_turns"] == 10 and "ttl_seconds" in life["policy"]["reasons"]
    assert life["capacity"]["nodes"] >= 1
    assert life["capacity"]["total_bytes"] < life["capacity"]["unbounded_week_bytes"]
    res = review["resilience"]
    assert res["applies"] is True and res["timeout_ms"] == 16  # 50 ms over three round trips (it folds)
    assert res["write_policy_by_state_class"]["refund_approval"] == "raise"
    levels = {ch["state_class"]: ch["level"] for ch in review["consistency"]["classes"]}
    assert levels == {
        "conversation": "session",
        "ticket_context": "bounded staleness",
        "refund_approval": "strong",
        "csat_events": "eventual",
    }
    assert review["assessment"]["verdict"] == "server-side session state"
    assert review["profile"]["service"] == "support_agent"
    assert review["meta"]["backend"] == {"url": "fakeredis://", "kind": "fakeredis", "server_version": None}
    json.dumps(review)


def test_build_review_fails_fast_on_unreachable_redis(profiles_dir):
    with pytest.raises(StoreUnavailable) as err:
        build_review(profiles_dir / "support_agent.yaml", "redis://:hidden-pw@127.0.0.1:1/0")
    assert "hidden-pw" not in str(err.value)


@pytest.mark.notebook
@EXAMPLE_REVIEWS
def test_run_review_writes_html_without_code_and_json(example_reviews):
    report = example_reviews["support_agent"]
    assert report.verdict == "server-side session state"
    page = report.html.read_text()
    assert "server-side session state" in page
    assert "<img" in page, "the payload plot is in the report"
    code_cells = [c for c in nbformat.read(report.notebook, as_version=4).cells if c.cell_type == "code"]
    for cell in code_cells:
        first_line = cell.source.strip().splitlines()[0]
        assert first_line not in page, f"code leaked into the HTML: {first_line!r}"
    data = json.loads(report.json.read_text())
    assert data["assessment"]["verdict"] == report.verdict
    assert data["profile"]["service"] == "support_agent"
    # the decision summary at the top links to each section, and every link lands
    links = re.findall(r'href="#([^"]+)"', page)
    targets = set(re.findall(r'id="([^"]+)"', page))
    assert "Stateful or stateless" in page and len(links) >= 6
    assert [link for link in links if html.unescape(link) not in targets] == []
    assert "text-align: left" in page, "text columns are left-aligned"
    # least privilege: one user per kind of process, each line as statekit.acl prints it
    users = data["access"]["users"]
    assert [u["user"] for u in users] == [f"support_agent-{k}" for k in ("app", "ops", "watcher", "audit")]
    for u in users:
        assert html.escape(u["setuser"], quote=False) in page or u["setuser"] in page, u["user"]


@pytest.mark.notebook
@EXAMPLE_REVIEWS
def test_several_profiles_give_an_index(example_reviews):
    reports = list(example_reviews.values())
    index = (reports[0].html.parent / "index.html").read_text()
    for r in reports:
        assert f'href="{r.html.name}"' in index
        assert r.verdict in index


@pytest.mark.notebook
@EXAMPLE_REVIEWS
def test_profiles_reviewed_in_one_kernel_are_reviewed_as_each_alone(example_reviews, profiles_dir):
    """The profiles of one run share a kernel, reset between them: each notebook counts its
    cells from 1, shows no error, and its review is what the review of that profile alone is."""
    assert len(example_reviews) == len(list(profiles_dir.glob("*.yaml"))) > 1
    for name, report in example_reviews.items():
        nb = nbformat.read(report.notebook, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count") is not None]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), name
        outputs = [o for c in code for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"], name
        alone = build_review(profiles_dir / f"{name}.yaml")
        written = json.loads(report.json.read_text())
        for part in (alone, written):
            part["meta"].pop("generated_at")
        assert written == json.loads(json.dumps(alone)), name


def test_bad_profile_writes_nothing(tmp_path, profiles_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: x\n")
    out = tmp_path / "out"
    with pytest.raises(ProfileError, match="bad.yaml"):
        run_review([profiles_dir / "support_agent.yaml", bad], out, progress=False)
    assert not out.exists()


def test_unreachable_redis_writes_nothing(tmp_path, profiles_dir):
    out = tmp_path / "out"
    with pytest.raises(StoreUnavailable):
        run_review([profiles_dir / "support_agent.yaml"], out, "redis://127.0.0.1:1/0", progress=False)
    assert not out.exists()


def test_no_profiles(tmp_path):
    with pytest.raises(ProfileError, match="no profile"):
        run_review([], tmp_path)


@pytest.mark.realredis
@pytest.mark.notebook
def test_review_against_password_protected_redis_leaks_no_secret(tmp_path, profiles_dir):
    from statekit.testing import start_redis_server

    with start_redis_server(["--requirepass", "n0t-in-reports"]) as server:
        url = f"redis://:n0t-in-reports@127.0.0.1:{server.port}/0"
        (report,) = run_review([profiles_dir / "faq_widget.yaml"], tmp_path, url, progress=False)
    for path in (report.notebook, report.html, report.json):
        assert "n0t-in-reports" not in path.read_text(), path
    data = json.loads(report.json.read_text())
    assert data["meta"]["backend"]["url"] == f"redis://:***@127.0.0.1:{server.port}/0"
    assert data["meta"]["backend"]["kind"] == "redis"


def test_a_review_without_the_drill_says_failover_is_not_measured_and_how(profiles_dir):
    from statekit.workbook import report
    from statekit.workbook.review import build_review

    review = build_review(profiles_dir / "support_agent.yaml")
    assert review["consistency"]["failover"]["measured"] is False
    text = report.failover(review)
    assert "not measured" in text and "--failover-drill" in text


@pytest.mark.realredis
@pytest.mark.notebook
def test_review_with_the_failover_drill_reports_the_writes_it_lost(tmp_path, profiles_dir):
    from statekit.workbook.review import run_review

    [files] = run_review([profiles_dir / "support_agent.yaml"], out_dir=tmp_path, progress=False, failover_drill=True)
    review = json.loads(files.json.read_text())
    failover = review["consistency"]["failover"]
    assert failover["measured"] and failover["wait_0"]["lost"] == 30 and failover["wait_1"]["lost"] == 0
    assert failover["store"]["lost_from_buffer"] == 0 and failover["store"]["mode_after"] == "normal"
    html = files.html.read_text()
    assert "30 of 300 acknowledged writes lost" in html and "Failover, measured" in html


def test_text_columns_are_left_aligned_and_numbers_stay_right():
    """pandas 3 stores text as `str`, not `object`: the report's consistency table came out
    right-aligned in a browser screenshot while this check only looked at headers."""
    import pandas as pd

    from statekit.workbook import report

    html_text = report.left_aligned(pd.DataFrame({"why": ["a reason", "another"], "n": [1, 2]})).to_html()
    rules = re.findall(r"([^{}]+)\{\s*text-align: left;\s*\}", html_text)
    selectors = " ".join(rules)
    assert "_row0_col0" in selectors and "_row1_col0" in selectors, "the text column"
    assert "_col1" not in selectors, "the number column"


def _kernels_and_sockets_left(before: set[int], sockets: Path) -> list[str]:
    """Kernel processes started since `before` still running, and kernel socket directories
    left under `sockets`."""
    import psutil

    running = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                running.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:  # it ended between the listing and the look
            pass
    return running + [str(d) for d in sockets.glob("statekit-kernel-*")]


@pytest.fixture
def kernel_sockets(monkeypatch):
    """The directory the review's kernels make their socket directories in, and the processes
    that ran before the test."""
    import tempfile

    import psutil

    # short: a Unix socket's path holds at most 107 bytes, and pytest's tmp_path can be longer
    sockets = Path(tempfile.mkdtemp(prefix="sk-sockets-"))
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))
    yield {p.pid for p in psutil.Process().children(recursive=True)}, sockets
    shutil.rmtree(sockets, ignore_errors=True)


@pytest.mark.notebook
@pytest.mark.parametrize("profiles", [1, 2], ids=["own-kernel", "shared-kernel"])
@pytest.mark.parametrize(
    "cell, error",
    [
        ("import time\ntime.sleep(600)", "a cell got no answer within 3 s"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "the kernel died"),
    ],
    ids=["silent", "dies"],
)
def test_a_review_whose_kernel_stops_answering_or_dies_fails_with_its_name_and_leaves_nothing(
    tmp_path, profiles_dir, monkeypatch, profiles, cell, error, kernel_sockets
):
    """A cell that gets no answer within `timeout_s`, or a kernel that dies, ends the review with
    an error naming the profile, the partial notebook kept, and no kernel and no kernel socket
    directory left (in a kernel of its own or shared)."""
    from statekit import StatekitError
    from statekit.workbook import review as sk_review

    params = nbformat.v4.new_code_cell(
        'profile_path = ""\nredis_url = ""\nreview_json_path = ""\nfailover_path = ""\ncalibration_path = ""'
    )
    params.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(cell)])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(notebook, tmp_path / "broken.ipynb")
    monkeypatch.setattr(sk_review, "NOTEBOOK", tmp_path / "broken.ipynb")
    names = ["faq_widget", "support_agent"][:profiles]
    with pytest.raises(StatekitError, match=f"faq_widget.yaml: {error}"):
        run_review([profiles_dir / f"{n}.yaml" for n in names], tmp_path / "out", progress=False, timeout_s=3)
    assert (tmp_path / "out" / "faq_widget.ipynb").exists(), "the partial notebook is kept"
    assert _kernels_and_sockets_left(*kernel_sockets) == []


@pytest.mark.notebook
@pytest.mark.parametrize("reset, error", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "died"),
    ("raise ValueError('no')", "could not be reset [(]ValueError: no[)]"),
], ids=["dies", "raises"])  # fmt: skip
def test_a_shared_kernel_that_fails_between_profiles_is_named_at_once(
    tmp_path, profiles_dir, monkeypatch, reset, error, kernel_sockets
):
    """The shared kernel dies (or its reset fails) after one profile's review: the error names
    the next profile, at once rather than after the timeout; the first report stays written,
    and nothing is left running."""
    from statekit import StatekitError
    from statekit.workbook import review as sk_review

    monkeypatch.setattr(sk_review, "_RESET", reset)
    with pytest.raises(StatekitError, match=f"kernel {error} before the review of support_agent.yaml"):
        run_review(
            [profiles_dir / "faq_widget.yaml", profiles_dir / "support_agent.yaml"],
            tmp_path / "out",
            progress=False,
            timeout_s=600,  # a death noticed only at the timeout would outlast pytest's
        )
    assert (tmp_path / "out" / "faq_widget.html").exists()
    assert _kernels_and_sockets_left(*kernel_sockets) == []


@pytest.mark.notebook
@pytest.mark.parametrize("profiles", [1, 2], ids=["own-kernel", "shared-kernel"])
def test_a_kernel_that_exits_before_it_answers_is_one_line(
    tmp_path, profiles_dir, monkeypatch, profiles, kernel_sockets
):
    """A kernel that exits at start (a broken kernelspec) is named in one line, not a traceback."""
    from statekit import StatekitError

    spec = tmp_path / "jupyter" / "kernels" / "exits"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", "raise SystemExit(3)", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "exits", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    names = ["faq_widget", "support_agent"][:profiles]
    with pytest.raises(StatekitError, match="faq_widget.yaml: its kernel exited before it answered .*'exits'"):
        run_review([profiles_dir / f"{n}.yaml" for n in names], tmp_path / "out", progress=False, kernel_name="exits")
    assert _kernels_and_sockets_left(*kernel_sockets) == []


def test_a_long_tmpdir_still_gives_kernel_sockets_that_fit(tmp_path, monkeypatch):
    """A Unix socket's path holds at most 107 bytes: under a TMPDIR too long for them, the
    review's kernel gets its sockets under /tmp (it answered "File name too long" before)."""
    import tempfile

    from jupyter_core.utils import run_sync

    from statekit.workbook.review import _ipc_kernel_manager

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    km = _ipc_kernel_manager()(kernel_name="python3")
    run_sync(km.start_kernel)()
    try:
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kc.stop_channels()
        assert len(os.fsencode(f"{km.ip}-{km.control_port}")) <= 107
    finally:
        run_sync(km.shutdown_kernel)(now=True)
    assert not Path(km.ip).parent.exists(), "its socket directory goes with it"
