"""`statekit workshop`: the attendee's copy of the labs in a directory, and JupyterLab on it.

The attendee's notebooks ship in the package (`notebooks/`, made from the trainer's
notebooks in the repository's `notebooks/labs/` by `attendee`; a test keeps them current),
so a wheel with the `workshop` extra is all a laptop needs: the labs run on embedded
fakeredis, with no server and no network.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from statekit.errors import StatekitError
from statekit.workbook.labs.attendee import write_attendee

PACKAGED = Path(__file__).with_name("notebooks")


def prepare(directory: Path | str, trainer_dir: Path | str | None = None) -> dict[str, list[Path]]:
    """Put the attendee's notebooks in `directory`: made from `trainer_dir` when given (the
    trainer's notebooks), else copied from the package. A notebook already there is kept as
    it is (it may hold an attendee's work). Returns {"written": [...], "kept": [...]}."""
    directory = Path(directory)
    if trainer_dir is not None and not sorted(Path(trainer_dir).glob("*.ipynb")):
        what = "is not a directory" if not Path(trainer_dir).is_dir() else "holds no notebooks (*.ipynb)"
        raise StatekitError(f"--trainer-notebooks {trainer_dir} {what}")
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / ".statekit-staging"
    done: dict[str, list[Path]] = {"written": [], "kept": []}
    try:
        sources = sorted(PACKAGED.glob("*.ipynb")) if trainer_dir is None else write_attendee(trainer_dir, staging)
        for source in sources:
            target = directory / source.name
            if target.exists():
                done["kept"].append(target)
            else:
                shutil.copyfile(source, target)
                done["written"].append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return done


def refresh_packaged(trainer_dir: Path | str) -> list[Path]:
    """Regenerate the attendee's notebooks that ship in the package from the trainer's."""
    for old in PACKAGED.glob("*.ipynb"):
        old.unlink()
    return write_attendee(trainer_dir, PACKAGED)


def jupyter_lab_command(directory: Path | str, port: int = 8888, open_browser: bool = True) -> list[str]:
    """JupyterLab on `directory`, on loopback (root needs --allow-root, as in a container)."""
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or shutil.which("jupyter") or "jupyter"
    cmd = [jupyter, "lab", f"--ServerApp.root_dir={Path(directory).resolve()}", f"--port={port}",
           "--ServerApp.ip=127.0.0.1"]  # fmt: skip
    if not open_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd


if __name__ == "__main__":  # python -m statekit.workbook.labs.workshop notebooks/labs
    for path in refresh_packaged(sys.argv[1] if len(sys.argv) > 1 else "notebooks/labs"):
        print(path)
