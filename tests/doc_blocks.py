"""The code blocks of the README and the manual (docs/), parsed by Sybil, with an evaluator per kind.

Why Sybil: it is maintained and released steadily, parses Markdown fences (prefixes, nesting and
all) into examples that keep one namespace per page, so a page's blocks run in order as a reader
pasting them into one `python` session would; and it takes evaluators of our own, so console
blocks and blocks that cannot run are handled in the same pass and none is left out. Its API is
used directly (not through its pytest collector, which sees only files that pytest walks, and
`pytest tests` walks only tests/), one test per page. pytest-markdown-docs and pytest-examples run
Python fences only, and each fence as a test of its own.

What a page may contain, and what happens to it (tests/test_docs.py checks every fence is one of these):

- ```python: executed, in the page's namespace, from a directory laid out like the checkout;
- ```console: each `$ command` run by bash from that directory with the venv's bin first on PATH;
  it must exit 0, and the lines under it, when there are any, must match what it printed (`...`
  matches anything, as doctest's ELLIPSIS);
- ```text after `<!-- docs-test: output -->`: what the Python block before it printed;
- ```text otherwise: a diagram or a listing, nothing to run;
- ```yaml or ```bash after `<!-- docs-test: not-run REASON -->`: cannot run inside the tests (a CI
  job, `make test` itself); the `make` targets, `statekit` subcommands, extras and files that it
  names are checked to exist.

A block that needs a real server says so with `<!-- docs-test: redis-server -->` (the `redis_url`
fixture's server stands in for `redis://localhost:6379/0`), `<!-- docs-test: fresh-redis-server -->`
(a server started for the page alone, for a block that measures an empty server's memory) or
`<!-- docs-test: replica-pair -->`
(the `redis_replica_pair` fixture's primary and replica stand in for `redis://localhost:6379/0`
and `redis://localhost:6380/0`). Those fixtures skip without redis-server, and fail instead under
STATEKIT_REQUIRE_REDIS=1 (CI), like every real-Redis test.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml
from sybil import Document, Example, Region
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

LOCAL_URL = "redis://localhost:6379/0"
LOCAL_REPLICA_URL = "redis://localhost:6380/0"
RUN = {"python", "console"}
KINDS = {"python", "console", "text", "yaml", "bash"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<marker>[^\n]*?)\s*-->\s*\n\s*\Z")


@dataclass
class Block:
    path: Path
    line: int
    language: str
    source: str
    marker: str = ""
    #: what the block needs: set by the test from the marker before it runs
    urls: dict[str, str] = field(default_factory=dict)
    #: the output of a block that needs a server needs that server's block to have run
    output_of_fixture: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def fixture(self) -> str | None:
        return {
            "redis-server": "redis_url",
            "fresh-redis-server": "fresh_redis_server",
            "replica-pair": "redis_replica_pair",
        }.get(self.marker.split(" ")[0])

    @property
    def needs_server(self) -> bool:
        return bool(self.fixture or self.output_of_fixture)

    @property
    def not_run(self) -> bool:
        return self.marker.startswith("not-run")

    @property
    def is_output(self) -> bool:
        return self.marker == "output"


def _substitute(text: str, urls: dict[str, str]) -> str:
    for old, new in urls.items():
        text = text.replace(old, new)
    return text


def _parse(document: Document):
    lexer = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE))
    previous: Block | None = None
    for region in lexer(document):
        before = document.text[: region.start]
        marker = MARKER.search(before[-300:])
        line = before.count("\n") + 1
        block = Block(
            path=Path(document.path),
            line=line,
            language=region.lexemes["language"].strip(),
            source=str(region.lexemes["source"]),
            marker=marker.group("marker") if marker else "",
        )
        if block.is_output and previous is not None:
            block.output_of_fixture = previous.fixture
        previous = block
        yield Region(region.start, region.end, parsed=block, evaluator=evaluate)


def parse(path: Path) -> Document:
    """The page's blocks, in order, sharing one namespace."""
    document = Document.parse(str(path), _parse)
    document.namespace["__name__"] = "__docs__"
    return document


def evaluate(example: Example) -> None:
    block: Block = example.parsed
    if block.not_run:
        check_not_run(block)
    elif block.language == "python":
        run_python(block, example.namespace)
    elif block.language == "console":
        run_console(block)
    elif block.is_output:
        expect(block, example.namespace.get("__docs_stdout__"), "the Python block above printed")
    elif block.language != "text":
        raise AssertionError(f"{block.name}: a ```{block.language} block with no way to check it")


def expect(block: Block, got: str | None, what: str) -> None:
    want = block.source
    assert got is not None, f"{block.name}: nothing ran before this output block"
    got = "\n".join(line.rstrip() for line in got.splitlines()) + "\n"
    checker = doctest.OutputChecker()
    assert checker.check_output(want, got, doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), (
        f"{block.name}: {what}:\n{got}\nwhere the page shows:\n{want}"
    )


# -- the checkout's layout: where examples run -------------------------------------------------------


def scratch_checkout(tmp: Path) -> Path:
    """A directory laid out like the checkout (its top-level entries linked), so the examples' relative
    paths (data/profiles/...) resolve, while what they write (reports/, my_agent.yaml) stays out of it."""
    for entry in ROOT.iterdir():
        if entry.name in {".git", ".venv", "reports", "site"} or entry.name.startswith("."):
            continue
        (tmp / entry.name).symlink_to(entry)
    (tmp / ".venv").symlink_to(BIN.parent)  # the environment running the tests, as `make review` makes it
    return tmp


def run_python(block: Block, namespace: dict) -> None:
    code = "\n" * block.line + _substitute(block.source, block.urls)  # tracebacks name the page's lines
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(block.path), "exec"), namespace)
    namespace["__docs_stdout__"] = out.getvalue()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    return env


def console_commands(source: str) -> list[tuple[str, str]]:
    """(command, the output shown under it) for each `$ ` line; `\\` continues a command."""
    commands: list[tuple[str, list[str]]] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            commands.append((command, []))
        else:
            assert commands, f"output before any command: {line!r}"
            commands[-1][1].append(line)
        i += 1
    return [(c, "\n".join(out) + "\n" if out else "") for c, out in commands]


def run_console(block: Block) -> None:
    commands = console_commands(block.source)
    assert commands, f"{block.name}: a console block without a `$ ` command"
    for command, shown in commands:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", _substitute(command, block.urls)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=240,
        )
        assert done.returncode == 0, (
            f"{block.name}: `{command}` exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
        if shown:
            block_for_output = Block(block.path, block.line, "text", shown)
            expect(block_for_output, done.stdout, f"`{command}` printed")


# -- blocks that cannot run: check what they name ----------------------------------------------------


@cache
def statekit_subcommands() -> frozenset[str]:
    done = subprocess.run([BIN / "statekit", "--help"], capture_output=True, text=True, check=True)
    commands = re.findall(r"^    ([a-z][a-z-]*)(?:\s|$)", done.stdout.split("positional arguments:")[1], re.MULTILINE)
    assert "review" in commands, done.stdout
    return frozenset(commands)


@cache
def make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


@cache
def statekit_version() -> str:
    return re.search(r'__version__ = "(.+)"', (ROOT / "statekit" / "_version.py").read_text()).group(1)


@cache
def extras() -> frozenset[str]:
    return frozenset(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _shell_commands(block: Block) -> list[str]:
    if block.language == "yaml":
        runs: list[str] = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "run" and isinstance(value, str):
                        runs.append(value)
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(yaml.safe_load(block.source))
        text = "\n".join(runs)
    else:
        text = block.source
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        commands += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return commands


def check_not_run(block: Block) -> list[str]:
    """Check each `make` target, `statekit` subcommand, pip extra and file the block names; return what
    was checked (a block with nothing to check fails: it would be a test that cannot fail)."""
    assert block.language in {"yaml", "bash"}, f"{block.name}: only yaml and bash blocks may be not-run"
    checked = []
    for command in _shell_commands(block):
        words = shlex.split(command)
        while len(words) > 1 and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value command
            words.pop(0)
        if words[0] == "make":
            for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                assert target in make_targets(), f"{block.name}: `make {target}`: no such target in the Makefile"
                checked.append(f"make {target}")
        elif words[0] == "statekit":
            assert words[1] in statekit_subcommands(), f"{block.name}: `statekit {words[1]}` is not a subcommand"
            checked.append(f"statekit {words[1]}")
        elif "pip" in words[:3] and "install" in words:
            for word in words[words.index("install") + 1 :]:
                match = re.fullmatch(r"(?P<what>[^\[]+)(?:\[(?P<extras>[\w,-]+)\])?", word)
                if match and match.group("what").endswith(".whl"):
                    version = re.search(r"statekit-([^-]+)-", match.group("what"))
                    assert version and version.group(1) == statekit_version(), f"{block.name}: {word}: not this version"
                    checked.append(f"wheel {version.group(1)}")
                if (
                    match
                    and match.group("extras")
                    and (match.group("what") in {".", "statekit"} or "statekit-" in word)
                ):
                    for extra in match.group("extras").split(","):
                        assert extra in extras(), f"{block.name}: `{word}`: no extra {extra!r} in pyproject.toml"
                        checked.append(f"extra {extra}")
        elif words[0] == "conda" and "-f" in words:
            name = words[words.index("-f") + 1]
            assert (ROOT / name).is_file(), f"{block.name}: {name} does not exist"
            checked.append(name)
    assert checked, f"{block.name}: a not-run block with nothing that can be checked"
    return checked


def readme_example() -> tuple[str, str]:
    """The README's first Python block, and what the README shows it prints."""
    blocks = [example.parsed for example in parse(ROOT / "README.md").examples()]
    index = next(i for i, block in enumerate(blocks) if block.language == "python")
    assert blocks[index + 1].is_output, "the README shows what its first example prints"
    return blocks[index].source, blocks[index + 1].source
