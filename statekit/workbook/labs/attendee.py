"""The attendee's copy of the labs, made from the trainer's notebooks.

In a trainer's notebook the solution of a fix cell sits between `# BEGIN SOLUTION` and
`# END SOLUTION`; the attendee's copy drops it. A line `# PROMPT <code>` becomes `<code>` in
the attendee's copy (the stub the attendee starts from; in the trainer's it is a comment).
A line ending in `# SOLUTION` becomes its left-hand side `= ...`. Markdown cells tagged
`trainer` are dropped. Markers are read leniently (any case, any number of `#`, a note after
a block marker) and solution blocks are dropped from markdown and raw cells too; a marker
inside a string, or the word SOLUTION left anywhere in the attendee's copy, is a
`MarkerError`, never a leak. The markers are otter-grader's, so `otter assign` reads the same
notebooks; see docs/workshop.md for why the workshop does not depend on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

BEGIN, END, PROMPT = "# BEGIN SOLUTION", "# END SOLUTION", "# PROMPT "
#: a block marker as trainers write it: any number of #, any case, spaces or none, and a note
#: after it (`### BEGIN SOLUTION`, `#begin solution`, `# BEGIN SOLUTION  (trainer only)`)
_BLOCK = re.compile(r"^\s*#+\s*(BEGIN|END)\s*SOLUTION\b.*$", re.IGNORECASE)
#: a line whose value is the solution: `<code>  # SOLUTION`
_ONE_LINE = re.compile(r"^(\s*)(\S.*?)\s*#+\s*SOLUTION\s*$", re.IGNORECASE)
#: the left-hand side of an assignment (`x`, `x.y`, `x: int`, `a, b`), up to its `=`
_ASSIGN = re.compile(r"^([\w.]+(?:\s*:\s*[^=]+?)?|[\w.]+(?:\s*,\s*[\w.]+)+)\s*=(?!=)")
_WORD = re.compile(r"solution", re.IGNORECASE)


class MarkerError(ValueError):
    """A trainer's notebook whose solution markers do not pair up, or whose solution would reach
    the attendee's copy."""


def _in_strings(source: str) -> set[int]:
    """The lines (1-based) that lie inside a string spanning several lines."""
    import io
    import tokenize

    inside: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError, IndentationError):  # a cell magic, a syntax error: lines as lines
        pass
    return inside


def _stub(indent: str, code: str) -> str:
    """The attendee's stub for a one-line solution `code`."""
    if m := _ASSIGN.match(code):
        lhs = m.group(1).strip()
        names = [n for n in lhs.split(",")] if ":" not in lhs else [lhs]
        return f"{indent}{lhs} = {', '.join(['...'] * len(names))}"
    if code == "return" or code.startswith("return "):
        return f"{indent}return ..."
    return f"{indent}..."


def strip_source(source: str, where: str = "cell", *, code: bool = True) -> str:
    """The attendee's version of one cell's source (`code=False`: a markdown or raw cell, where
    only solution blocks are dropped)."""
    out: list[str] = []
    inside = False
    strings = _in_strings(source) if code else set()
    for n, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        block = _BLOCK.match(line)
        if (block or _ONE_LINE.match(line)) and n in strings:
            raise MarkerError(f"{where}, line {n}: a solution marker inside a string: {stripped!r}")
        if block and block.group(1).upper() == "BEGIN":
            if inside:
                raise MarkerError(f"{where}, line {n}: {BEGIN} inside a solution")
            inside = True
        elif block:
            if not inside:
                raise MarkerError(f"{where}, line {n}: {END} without {BEGIN}")
            inside = False
        elif inside:
            continue
        elif code and stripped.startswith(PROMPT):
            out.append(line[: len(line) - len(line.lstrip())] + stripped[len(PROMPT) :])
        elif code and (m := _ONE_LINE.match(line)):
            if not m.group(2).startswith("#"):
                out.append(_stub(m.group(1), m.group(2)))
        else:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def has_solution(source: str) -> bool:
    return any(_BLOCK.match(line) or _ONE_LINE.match(line) for line in source.splitlines())


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
        elif any(_BLOCK.match(line) for line in cell.source.splitlines()):
            cell.source = strip_source(cell.source, f"{name}, cell {i}", code=False)
        if _WORD.search(cell.source):
            line = next(x for x in cell.source.splitlines() if _WORD.search(x))
            raise MarkerError(
                f"{name}, cell {i}: 'SOLUTION' would reach the attendee's copy ({line.strip()!r}): "
                "mark the solution with # BEGIN SOLUTION / # END SOLUTION or end its line with # SOLUTION"
            )
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
