"""The attendee's copy of the labs, made from the trainer's notebooks.

In a trainer's notebook the solution of a fix cell sits between `# BEGIN SOLUTION` and
`# END SOLUTION`; the attendee's copy drops it. A line `# PROMPT <code>` becomes `<code>` in
the attendee's copy (the stub the attendee starts from; in the trainer's it is a comment).
A line ending in `# SOLUTION` becomes its left-hand side `= ...`. Markdown cells tagged
`trainer` are dropped. The markers are otter-grader's, so `otter assign` reads the same
notebooks; see docs/workshop.md for why the workshop does not depend on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

BEGIN, END, PROMPT = "# BEGIN SOLUTION", "# END SOLUTION", "# PROMPT "
_ONE_LINE = re.compile(r"^(\s*)([\w.]+\s*=)\s*.*#\s*SOLUTION\s*$")


class MarkerError(ValueError):
    """A trainer's notebook whose solution markers do not pair up."""


def strip_source(source: str, where: str = "cell") -> str:
    """The attendee's version of one code cell's source."""
    out: list[str] = []
    inside = False
    for n, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise MarkerError(f"{where}, line {n}: {BEGIN} inside a solution")
            inside = True
        elif stripped == END:
            if not inside:
                raise MarkerError(f"{where}, line {n}: {END} without {BEGIN}")
            inside = False
        elif inside:
            continue
        elif stripped.startswith(PROMPT):
            out.append(line[: len(line) - len(line.lstrip())] + stripped[len(PROMPT) :])
        elif m := _ONE_LINE.match(line):
            out.append(f"{m.group(1)}{m.group(2)} ...")
        else:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def has_solution(source: str) -> bool:
    return BEGIN in source or any(_ONE_LINE.match(line) for line in source.splitlines())


def attendee_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of trainer's notebook `nb` with every solution stripped and trainer notes dropped."""
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    for i, cell in enumerate(nb.cells):
        if "trainer" in cell.get("metadata", {}).get("tags", []):
            continue
        cell = nbformat.from_dict(dict(cell))
        if cell.cell_type == "code":
            cell.source = strip_source(cell.source, f"{name}, cell {i}")
            cell.outputs, cell.execution_count = [], None
        out.cells.append(cell)
    return out


def write_attendee(trainer_dir: Path | str, out_dir: Path | str) -> list[Path]:
    """Write the attendee's copy of every lab notebook in `trainer_dir` to `out_dir`."""
    trainer_dir, out_dir = Path(trainer_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(trainer_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.name
        nbformat.write(attendee_notebook(nb, path.name), target)
        written.append(target)
    return written
