"""The two installs, each in a fresh virtual environment outside the source tree, from the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_STACK = ("numpy", "pandas", "matplotlib", "papermill", "nbconvert", "nbformat", "ipywidgets", "IPython")

#: One worker runs both installs: they share the wheel it builds once.
pytestmark = [pytest.mark.install, pytest.mark.xdist_group("install")]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, ROOT])
    (built,) = out.glob("statekit-*.whl")
    return built


def _venv(path: Path, *requirements: str) -> Path:
    """A fresh virtual environment with `requirements`, made by uv (a few seconds where pip takes
    a minute for the workbook's 90 packages); it installs exactly what the wheel declares."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is in the dev extra: pip install -e '.[dev]'"
    _run([uv, "venv", "--quiet", "--python", sys.executable, path])
    python = path / "bin" / "python"
    _run([uv, "pip", "install", "--quiet", "--python", python, *requirements])
    return python


def site_packages_bytes(python: Path) -> int:
    """Bytes installed in a venv's site-packages (what a container image carries)."""
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    return sum(f.stat().st_size for f in Path(site).rglob("*") if f.is_file() and not f.is_symlink())


RUNTIME_CHECK = """
import importlib.util, sys
import statekit as sk
stack = {stack!r}
assert not [m for m in stack if importlib.util.find_spec(m)], "the runtime install pulled in the notebook stack"
store = sk.SessionStore(sk.connect(sys.argv[1]), sk.LifecyclePolicy(window_turns=3), metrics=sk.StateMetrics())
rs = sk.ResilientStore(store, timeout_ms=200)
for i in range(5):
    rs.append_turn("s", {{"role": "user", "content": f"turn {{i}}"}})
ctx = rs.load_context("s")
assert ctx.source == "store" and [t["content"] for t in ctx.turns] == ["turn 2", "turn 3", "turn 4"], ctx
assert "statekit_operation_duration_seconds_bucket" in store.listeners[0].prometheus()
try:
    sk.consistency
except sk.MissingExtra as exc:
    assert "pip install 'statekit[workbook]'" in str(exc)
else:
    raise AssertionError("statekit.consistency imported without numpy")
import asyncio
from statekit.aio import AsyncResilientStore, AsyncSessionStore, connect_async
async def run_async():
    ars = AsyncResilientStore(AsyncSessionStore(connect_async(sys.argv[1]), sk.LifecyclePolicy(window_turns=3)))
    await ars.append_turn("a", {{"role": "user", "content": "async turn"}})
    return await ars.load_context("a")
assert asyncio.run(run_async()).turns == [{{"role": "user", "content": "async turn"}}]
try:
    import statekit.langgraph
except sk.MissingExtra as exc:
    assert "pip install 'statekit[langgraph]'" in str(exc)
else:
    raise AssertionError("statekit.langgraph imported without langgraph")
print("runtime ok")
"""


@pytest.mark.realredis
def test_the_runtime_install_runs_store_resilience_and_metrics_without_the_notebook_stack(wheel, tmp_path, redis_url):
    python = _venv(tmp_path / "venv", str(wheel))
    out = _run([python, "-c", RUNTIME_CHECK.format(stack=NOTEBOOK_STACK), redis_url], cwd=tmp_path).stdout
    assert "runtime ok" in out
    statekit = tmp_path / "venv" / "bin" / "statekit"
    _run([statekit, "health", redis_url, "--namespace", "sk", "-q"], cwd=tmp_path)
    profile = shutil.copy(ROOT / "data" / "profiles" / "faq_widget.yaml", tmp_path)
    assert "faq_widget: client-side state" in _run([statekit, "assess", profile], cwd=tmp_path).stdout
    review = subprocess.run([statekit, "review", profile, "--out", tmp_path / "r"], capture_output=True, text=True)
    assert review.returncode == 2 and "pip install 'statekit[workbook]'" in review.stderr
    assert "Traceback" not in review.stderr and not (tmp_path / "r").exists()


def test_the_wheel_writes_a_report_outside_the_source_tree(wheel, tmp_path):
    python = _venv(tmp_path / "venv", f"{wheel}[workbook]")
    profile = shutil.copy(ROOT / "data" / "profiles" / "support_agent.yaml", tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH")}
    done = _run([tmp_path / "venv" / "bin" / "statekit", "review", profile, "--out", tmp_path / "out", "-q"],
                cwd=tmp_path, env=env)  # fmt: skip
    assert "support_agent: server-side session state" in done.stdout
    html = (tmp_path / "out" / "support_agent.html").read_text()
    assert "Stateful or stateless" in html and "under 1 in 1,000 after" in html
    location = _run([python, "-c", "import statekit.workbook.review as r; print(r.NOTEBOOK)"], cwd=tmp_path).stdout
    assert str(ROOT) not in location, "the report notebook came from the source tree, not the wheel"

    # The README's example, pasted into the Python of what `make review` installs (the workbook extra)
    from doc_blocks import readme_example  # tests/ is on sys.path (rootdir conftest)

    code, printed = readme_example()
    (tmp_path / "data" / "profiles").mkdir(parents=True)
    shutil.copy(profile, tmp_path / "data" / "profiles")
    assert _run([python, "-c", code], cwd=tmp_path, env=env).stdout == printed
