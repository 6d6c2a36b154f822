"""Every notebook runs end to end under papermill, once on fakeredis and once on a real
redis-server; what each must show is checked on both runs, and each code cell's outcome on the
fakeredis run is a test of its own (where nbval's cell items were: one execution serves both,
and the browser tests render the same executed files)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import nbformat
import pytest
from conftest import EXAMPLE_REVIEWS
from notebook_runs import (
    NOTEBOOKS,
    NotebookFailed,
    cell_outcome,
    code_cells,
    execute,
    executed,
    executed_on_fakeredis,
    outputs_text,
    shared_dir,
)


@pytest.fixture(scope="session")
def notebooks_dir(tmp_path_factory) -> Path:
    return shared_dir(tmp_path_factory)


def _run(nb: Path, out: Path, **parameters) -> nbformat.NotebookNode:
    error = execute(nb, out, **parameters)
    if error is not None:
        raise NotebookFailed(f"{nb.stem}: {error}")
    return nbformat.read(out, as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    return outputs_text(nb.cells)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_stored_clean(nb):
    node = nbformat.read(nb, as_version=4)
    assert all(not c.get("outputs") for c in node.cells if c.cell_type == "code"), "strip outputs before committing"
    params = [c for c in node.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'redis_url = "fakeredis://"' in params[0].source


#: What a working run of each notebook prints, on each backend: numbers and sentences that
#: only the notebook's own computation produces (not its markdown, not its parameters).
MUST_SHOW = {
    "00_do_you_need_state": {
        "fakeredis": ["'kind': 'fakeredis'", "durable workflow state", "support_agent: server-side session state"],
        "redis": ["'kind': 'redis'", "support_agent: server-side session state"],
    },
    "01_graceful_degradation": {
        "fakeredis": ["'kind': 'fakeredis'", "statekit ResilientStore", "plain redis-py", "after recovery", "default"],
        "redis": ["'kind': 'redis'", "statekit ResilientStore", "plain redis-py"],
    },
    "02_bounded_state": {
        "fakeredis": ["estimated: fakeredis has no INFO memory", "nothing was written", "after the rejection"],
        "redis": ["'kind': 'redis'", "measured: INFO memory used_memory", "nothing was written"],
    },
    "03_consistency": {
        "fakeredis": [
            "0.97",
            "R=1 W=1",
            "routing is not measured",
            "bounded staleness",
            "under 1 in 1,000 after",
            "Failover drill not run",
        ],
        "redis": [
            "'kind': 'redis'",
            "0.97",
            "version compare-and-set",
            # (how many WAIT confirms within its 50 ms varies on a loaded machine: 270 or a few fewer)
            "lost without WAIT: 30 of 300 acknowledged writes; with WAIT 1: 0 of 2",
            "buffered turns replayed, 0 lost",
        ],
    },
    "04_migrations": {
        "fakeredis": ["100 of 200 returning users would see an error", "stored now at v3", "migrated 100"],
        "redis": ["'kind': 'redis'", "100 of 200 returning users would see an error", "migrated 100"],
    },
    "05_observability": {
        "fakeredis": ["conflict ratio", "tier=", "tagged with a region outside", "memory was not sampled"],
        "redis": ["'kind': 'redis'", "conflict ratio", "tagged with a region outside"],
    },
    "06_agent_frameworks": {
        "fakeredis": [
            "'kind': 'fakeredis'",
            "interrupted: waiting for approval",
            "resumed after a restart: refund issued",
            "checkpoints kept with keep_last=3: 3",
            "payload bytes (fakeredis has no MEMORY USAGE)",
            "keys without a TTL: 0",
        ],
        "redis": [
            "'kind': 'redis'",
            "resumed after a restart: refund issued",
            "memory (MEMORY USAGE)",
            "keys without a TTL: 0",
        ],
    },
    "07_live_review": {
        "fakeredis": ["backend fakeredis (fakeredis://)", "numbers updated in", "10x traffic, caller resends", "+900%"],
        "redis": ["backend redis (redis://", "numbers updated in", "+900%"],
    },
    "08_calibrate": {
        "fakeredis": [
            "'kind': 'fakeredis'",
            "the production's truth",
            "DRIFT (applied)",
            "flip: memory.nodes: 1 -> 2",
            "turns.per_session: 14 -> ",
        ],
        "redis": ["'kind': 'redis'", "DRIFT (applied)", "flip: memory.nodes: 1 -> 2"],
    },
    "design_review": {
        "fakeredis": [
            "server-side session state",
            "Stateful or stateless",
            "under 1 in 1,000 after",
            "Phase 1",
            "sessions held at the peak include their TTL tail",
        ],
        "redis": ["backend redis (", "server-side session state", "under 1 in 1,000 after"],
    },
}
#: Notebooks that must render at least one plot.
PLOTS = {"00_do_you_need_state", "01_graceful_degradation", "02_bounded_state", "03_consistency",
         "05_observability", "06_agent_frameworks", "08_calibrate", "design_review"}  # fmt: skip


def _check(nb: Path, out: nbformat.NotebookNode, backend: str) -> None:
    text = _text(out)
    missing = [marker for marker in MUST_SHOW[nb.stem][backend] if marker not in text]
    assert not missing, f"{nb.stem} on {backend} did not show {missing}"
    if nb.stem in PLOTS:
        assert '"image/png"' in text, f"{nb.stem} rendered no plot"


def test_every_notebook_has_its_checks():
    assert set(MUST_SHOW) == {nb.stem for nb in NOTEBOOKS}
    assert all(set(checks) == {"fakeredis", "redis"} and all(checks.values()) for checks in MUST_SHOW.values())


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_on_fakeredis(nb, notebooks_dir):
    _check(nb, executed_on_fakeredis(nb, notebooks_dir), "fakeredis")


@pytest.mark.notebook
@pytest.mark.parametrize(
    "nb, index", [(nb, i) for nb in NOTEBOOKS for i in code_cells(nb)], ids=lambda v: getattr(v, "stem", f"cell{v}")
)
def test_each_cell_runs_on_fakeredis(nb, index, notebooks_dir):
    with contextlib.suppress(AssertionError):  # the notebook's test reports it; this says which cell
        executed_on_fakeredis(nb, notebooks_dir)
    assert cell_outcome(nb, "fakeredis", notebooks_dir, index) == "ok"


#: Parameters a notebook gets on the real-Redis run besides the URL.
REAL_PARAMETERS = {"03_consistency": {"failover_url": "local"}}  # the failover drills start their own cluster


@pytest.mark.notebook
@pytest.mark.realredis
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_on_real_redis(nb, notebooks_dir, redis_url):
    out = executed(nb, "redis", notebooks_dir, redis_url=redis_url, **REAL_PARAMETERS.get(nb.stem, {}))
    _check(nb, out, "redis")


PROFILES = sorted((Path(__file__).resolve().parent.parent / "data" / "profiles").glob("*.yaml"))


@pytest.mark.notebook
@EXAMPLE_REVIEWS
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_design_review_for_every_example_profile(profile, example_reviews):
    """The design-review notebook, executed for each example profile (by `run_review`, all of
    them in one kernel, reset between profiles)."""
    from statekit import WorkloadProfile, assess

    report = example_reviews[profile.stem]
    out = nbformat.read(report.notebook, as_version=4)
    verdict = assess(WorkloadProfile.from_yaml(profile)).verdict
    assert f"{profile.stem}: **{verdict}**" in _text(out)
    assert json.loads(report.json.read_text())["assessment"]["verdict"] == verdict


@pytest.mark.notebook
@pytest.mark.realredis
def test_consistency_notebook_measures_a_real_replica(tmp_path, redis_replica_pair):
    nb = next(p for p in NOTEBOOKS if p.stem == "03_consistency")
    out = _run(
        nb, tmp_path / nb.name, redis_url=redis_replica_pair.primary_url, replica_url=redis_replica_pair.replica_url
    )
    text = _text(out)
    assert "stale_fraction" in text and "WAIT 1, 2 load writers" in text and "sticky" in text
    assert "No replica_url given" not in text


@pytest.mark.notebook
@pytest.mark.parametrize("silent_runs", [1, 2])
def test_a_kernel_that_stops_answering_gets_one_more_run_and_a_warning(silent_runs, tmp_path, monkeypatch):
    """A run whose cell gets no answer in time is run again once, with a warning that says so;
    a second silent run is a failure that names the timeout."""
    import notebook_runs

    monkeypatch.setattr(notebook_runs, "CELL_TIMEOUT_S", 3)
    runs = tmp_path / "runs"
    nb = tmp_path / "silent.ipynb"
    cell = (
        f"import pathlib, time\nruns = pathlib.Path({str(runs)!r})\n"
        "runs.write_text(runs.read_text() + 'x' if runs.exists() else 'x')\n"
        f"if len(runs.read_text()) <= {silent_runs}:\n    time.sleep(600)\nprint('answered')"
    )
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), nb)
    with pytest.warns(UserWarning, match="answered no cell within 3 s"):
        error = execute(nb, tmp_path / "out.ipynb")
    assert len(runs.read_text()) == 2, "one run, then exactly one more"
    if silent_runs == 1:
        assert error is None and "answered" in _text(nbformat.read(tmp_path / "out.ipynb", as_version=4))
    else:
        assert error is not None and "CellTimeoutError" in error


@pytest.mark.notebook
def test_each_run_gets_a_fresh_forked_kernel_that_plots_inline(tmp_path):
    """The test run's kernels are forked from a process that imported statekit and matplotlib
    (tests/forked_kernels.py): each notebook still gets a process of its own, in which nothing
    a previous notebook did remains, and plots arrive as a cold kernel sends them (inline PNG),
    also from a forkserver started again after the first one died."""
    import os
    import signal
    from multiprocessing import forkserver

    nb = tmp_path / "probe.ipynb"
    cells = [
        "import os, sys, statekit\nprint('pid', os.getpid(), 'ppid', os.getppid())\n"
        "print('left by an earlier run:', getattr(statekit, '_probe', None), 'x' in globals())",
        "statekit._probe = os.getpid()\nx = 1",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
        # what a notebook could tell of a kernel that is not a process of its own
        "import atexit, importlib.util, multiprocessing as mp\n"
        "def square(x):\n    return x * x\n"
        "with mp.Pool(2) as pool:\n    print('pool', pool.map(square, [1, 2, 3]), mp.get_start_method())\n"
        "print('test modules importable:', importlib.util.find_spec('notebook_runs') is not None)\n"
        f"atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'a').write('x'))",
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), nb)

    def run(i: int) -> tuple[int, int]:
        ran = _run(nb, tmp_path / f"out{i}.ipynb")
        text = _text(ran)
        assert "left by an earlier run: None False" in text, text
        assert "pool [1, 4, 9] fork" in text and "test modules importable: False" in text, text
        assert (tmp_path / "atexit").read_text() == "x" * (i + 1), "the kernel's atexit functions did not run"
        words = text.split()
        pid, ppid = int(words[words.index("pid") + 1]), int(words[words.index("ppid") + 1])
        assert ppid != os.getpid(), "the kernel was started as a child of the test process, not forked"
        pngs = [o for o in ran.cells[2].outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1, ran.cells[2].outputs
        return pid, ppid

    first, second = run(0), run(1)
    assert first[0] != second[0], "two notebooks ran in one kernel process"
    assert first[1] == second[1], "both kernels forked from one forkserver"
    os.kill(first[1], signal.SIGKILL)  # the forkserver dies: the next kernel needs a new one
    os.waitid(os.P_PID, first[1], os.WEXITED | os.WNOWAIT)  # it is gone (multiprocessing reaps it)
    assert forkserver._forkserver._forkserver_pid == first[1]
    third = run(2)
    assert third[1] != first[1], "the kernel came from a forkserver started again"


@pytest.mark.notebook
def test_a_forked_kernel_ends_with_the_process_that_manages_it(tmp_path):
    """A cold kernel ends when its parent does; a forked kernel's parent is the forkserver,
    which outlives a killed worker while a kernel it forked lives. The kernel watches the
    process that manages it instead: the manager killed, kernel and forkserver end."""
    import os
    import select
    import signal
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    script = (
        f"import sys, threading; sys.path.insert(0, {str(tests)!r})\n"
        "from forked_kernels import forked_kernel_manager\n"
        "from jupyter_core.utils import run_sync\n"
        "km = forked_kernel_manager()(kernel_name='python3')\n"
        "run_sync(km.start_kernel)()\n"
        "print(km.provisioner.pid, flush=True)\n"
        "threading.Event().wait()\n"
    )
    manager = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        kernel = int(manager.stdout.readline())
        forkserver = int(Path(f"/proc/{kernel}/stat").read_text().rsplit(")", 1)[1].split()[1])
        watched = [os.pidfd_open(kernel), os.pidfd_open(forkserver)]
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait()
    for fd, what in zip(watched, ("the kernel", "the forkserver"), strict=True):
        ready, _, _ = select.select([fd], [], [], 60)  # their exit, not a pause: 60 s is only a bound
        os.close(fd)
        assert ready, f"{what} outlived the process that managed it by 60 s"
