"""papermill's command line, for the tests' notebook runs (tests/notebook_runs.py).

jsonschema imports `rfc3987_syntax` whenever it is installed (jupyter-events pulls it in
through jsonschema's `format-nongpl` extra), and that import builds an Earley parser from a
grammar: about 2 CPU-seconds in every process that imports nbformat, which papermill does.
Neither papermill nor nbformat checks an IRI's format, so these runs go without it; the test
suite starts some fifty of them. Nothing else changes: the notebook, the kernel and every
statekit import are the ones a user's `papermill` runs.
"""

import sys

sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # jsonschema then skips the IRI formats

from papermill.cli import papermill  # noqa: E402 - after the line above, by design

if __name__ == "__main__":
    papermill()
