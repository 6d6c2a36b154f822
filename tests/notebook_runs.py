"""Each notebook is executed once per backend for the whole test run: the checks of what it
shows, the result of each of its cells and the browser's rendering all read the same executed
file. Across pytest-xdist workers the file is shared: the first worker that needs it executes
it under a file lock, and the others wait for it and read it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def shared_dir(tmp_path_factory) -> Path:  # noqa: ANN001 - pytest's TempPathFactory
    """A directory every worker of this run sees, and no other run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / "executed-notebooks"
    out.mkdir(exist_ok=True)
    return out


class NotebookFailed(AssertionError):
    """The notebook raised under papermill; the executed file (with the error) is kept."""


def executed(nb: Path, backend: str, directory: Path, **parameters: object) -> nbformat.NotebookNode:
    """`nb` executed with `parameters` on `backend`, once per run: later callers read the file.
    Raises NotebookFailed (naming the cell) when a cell raised, for every caller."""
    out = directory / f"{nb.stem}.{backend}.ipynb"
    failed = out.with_suffix(".failed")
    with open(directory / f"{nb.stem}.{backend}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            error = execute(nb, out, **parameters)
            if error is not None:
                failed.write_text(error[-3000:])
    if failed.exists():
        raise NotebookFailed(f"{nb.stem} on {backend}: {failed.read_text()}")
    return nbformat.read(out, as_version=4)


#: What a notebook's fakeredis run gets besides the URL. Notebook 02 writes its conversation
#: into 200 sessions of each kind by default: 12,000 scripted appends, 12 CPU-seconds on fakeredis, where
#: the memory it plots is estimated from the model, not measured. 50 sessions draw the same
#: curves at a quarter of the scale, through the same code.
FAKEREDIS_PARAMETERS: dict[str, dict[str, object]] = {"02_bounded_state": {"sessions": 50}}


def executed_on_fakeredis(nb: Path, directory: Path) -> nbformat.NotebookNode:
    """`executed` on embedded fakeredis, with the notebook's `FAKEREDIS_PARAMETERS`."""
    return executed(nb, "fakeredis", directory, redis_url="fakeredis://", **FAKEREDIS_PARAMETERS.get(nb.stem, {}))


#: How long a cell may run before the kernel counts as silent: the slowest cell (notebook 03's
#: failover drills on a real server) takes about 30 s on a loaded machine.
CELL_TIMEOUT_S = 120


def execute(nb: Path, out: Path, **parameters: object) -> str | None:
    """papermill's run of `nb` into `out`, in this process: None, or what went wrong.

    The kernel talks over Unix sockets of its own (as `statekit review`'s do), so no other
    process on the machine can take its ports between the moment they are chosen and the moment
    it binds them. It is started again (three times at most) when it exits before it answers,
    and the notebook runs again, once, when a cell gets no answer within CELL_TIMEOUT_S while
    the kernel lives (a kernel that stopped answering; said in a warning, never silently).

    The kernel is forked from a process of this worker that has imported what every kernel
    and most notebooks import (tests/forked_kernels.py): a fresh process per notebook, without
    the 1.8 CPU-seconds of a new interpreter's imports.

    The run has a thread of its own: a test that drives a browser runs an event loop
    (Playwright's) in this thread, which papermill's own would deadlock with. In this process
    rather than in a `papermill` command of its own: the worker has imported papermill once,
    where each command paid for it again (0.7 CPU-seconds a run, some forty runs).
    """
    import warnings

    import papermill as pm
    from forked_kernels import forked_kernel_manager

    outcome: list[str | None] = []

    def run() -> None:
        silent = 0
        for attempt in range(4):
            try:
                pm.execute_notebook(
                    str(nb), str(out), parameters=parameters, cwd=str(nb.parent), progress_bar=False,
                    kernel_name="python3", kernel_manager_class=forked_kernel_manager(),
                    execution_timeout=CELL_TIMEOUT_S,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - reported to every caller, named in full
                if attempt < 2 and kernel_did_not_start(str(exc)):
                    continue
                if silent == 0 and kernel_went_silent(exc):
                    silent += 1
                    warnings.warn(
                        f"{nb.name}: the kernel answered no cell within {CELL_TIMEOUT_S} s ({exc}); ran it again",
                        stacklevel=1,
                    )
                    continue
                outcome.append(f"{type(exc).__name__}: {exc}")
                return
            outcome.append(None)
            return

    thread = threading.Thread(target=run, name=f"papermill {nb.name}")
    thread.start()
    thread.join()
    return outcome[0]


#: What jupyter_client says when a kernel exits before it answers at all: the notebook never ran.
KERNEL_DID_NOT_START = "Kernel died before replying to kernel_info"


def kernel_did_not_start(text: str) -> bool:
    """Did the run fail before the kernel answered (so before any cell ran)? Such a run is
    started again (three times at most); a notebook that fails once running is never retried."""
    return KERNEL_DID_NOT_START in text


def kernel_went_silent(exc: BaseException) -> bool:
    """Did a cell get no answer within its time while the kernel lived? (nbclient's
    CellTimeoutError; a cell that raised is a PapermillExecutionError, a dead kernel a
    DeadKernelError.)"""
    return type(exc).__name__ == "CellTimeoutError"


def code_cells(nb: Path) -> list[int]:
    """Indexes of the stored notebook's code cells (before papermill injects its parameters)."""
    return [i for i, c in enumerate(nbformat.read(nb, as_version=4).cells) if c.cell_type == "code"]


def cell_outcome(nb: Path, backend: str, directory: Path, index: int) -> str:
    """'ok', or what went wrong with code cell `index` of the stored notebook in its run."""
    out = directory / f"{nb.stem}.{backend}.ipynb"
    ran = nbformat.read(out, as_version=4)
    stored = nbformat.read(nb, as_version=4)
    # papermill inserts one cell (its injected parameters) after the cell tagged `parameters`
    injected = [i for i, c in enumerate(ran.cells) if "injected-parameters" in c.metadata.get("tags", [])]
    shift = 1 if injected and injected[0] <= index else 0
    cell = ran.cells[index + shift]
    assert cell.source == stored.cells[index].source, "the executed file is not this notebook's run"
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in cell.get("outputs", []) if o.output_type == "error"]
    if errors:
        return "raised " + "; ".join(errors)
    if cell.get("execution_count") is None:
        return "did not run (an earlier cell raised)"
    return "ok"


def outputs_text(cells) -> str:  # noqa: ANN001 - nbformat cells
    """What the cells show, as one text to search: each cell's stream output joined into one
    string per stream (the kernel flushes stdout on a timer, so one printed line can arrive as
    two stream outputs on a loaded machine), then its other outputs as JSON."""
    import json

    parts = []
    for cell in cells:
        streams: dict[str, str] = {}
        others = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out.get("text", "")
                streams[out.get("name", "stdout")] = streams.get(out.get("name", "stdout"), "") + (
                    "".join(text) if isinstance(text, list) else text
                )
            else:
                others.append(out)
        parts.extend(streams.values())
        parts.append(json.dumps(others, ensure_ascii=False))
    return "\n".join(parts)
