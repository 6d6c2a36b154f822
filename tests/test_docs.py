"""Every code block of the README and the manual (docs/), run as written: Python blocks executed in
order, one namespace per page, on fakeredis unless the block says it needs a real server; console
blocks run with their exit status and output checked; blocks that cannot run checked for what they
name. How each kind is run, and why Sybil, is in tests/doc_blocks.py. The terminal summary counts
the blocks run and skipped (tests/conftest.py).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from doc_blocks import (  # tests/ is on sys.path (rootdir conftest)
    DOC_FILES,
    KINDS,
    LOCAL_REPLICA_URL,
    LOCAL_URL,
    ROOT,
    RUN,
    check_not_run,
    console_commands,
    parse,
    scratch_checkout,
)

DOCUMENTS = {path: parse(path) for path in DOC_FILES}
EXAMPLES = {path: list(document.examples()) for path, document in DOCUMENTS.items()}


#: Pages whose blocks run whole CLI commands (reviews, a calibration): 11 and 3 CPU-seconds
SLOW_PAGES = {ROOT / "docs" / "guide" / "cli.md", ROOT / "docs" / "calibrate.md"}


def _pages():
    """One test per page: its blocks depend on one another, so they run in order in one test (a
    test per block would rely on xdist's groups, which pytest 9.2 and pytest-xdist 3.8 do not keep)."""
    for path, examples in EXAMPLES.items():
        marks = [pytest.mark.realredis] if any(e.parsed.needs_server for e in examples) else []
        marks += [pytest.mark.slow] if path.resolve() in SLOW_PAGES else []
        yield pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return scratch_checkout(tmp_path_factory.mktemp("checkout"))


def _servers(block, request, emptied: set[str]) -> dict[str, str]:
    """The servers a block needs, emptied before the page's first block that uses them (the blocks
    after it see what that one wrote, as the page's reader would)."""
    first = block.fixture not in emptied
    emptied.add(block.fixture)
    if block.fixture == "redis_url":
        url = request.getfixturevalue("redis_url") if first else request.getfixturevalue("redis_server").url
        return {LOCAL_URL: url}
    if block.fixture == "fresh_redis_server":  # started for this page: nothing else has run on it
        return {LOCAL_URL: request.getfixturevalue("fresh_redis_server").url}
    if block.fixture == "redis_replica_pair":
        pair = request.getfixturevalue("redis_replica_pair")
        if first:
            primary = pair.primary.client()
            primary.flushall()
            primary.close()
        return {LOCAL_URL: pair.primary_url, LOCAL_REPLICA_URL: pair.replica_url}
    return {}


@pytest.mark.parametrize("path", list(_pages()))
def test_page(path: Path, checkout: Path, request, monkeypatch):
    """Every block of the page, in order, in one namespace. A block whose server cannot start (no
    redis-server, and STATEKIT_REQUIRE_REDIS unset) is skipped with its output, the others run, and
    the page is then reported skipped, naming them. What ran is recorded for the terminal summary."""
    monkeypatch.chdir(checkout)
    ran: list[str] = []
    skipped: dict[str, str] = {}
    emptied: set[str] = set()
    previous = None
    try:
        for example in parse(path).examples():  # a fresh namespace for each run of the page
            block = example.parsed
            if block.is_output and previous in skipped:
                skipped[block.name] = "the output of a skipped block"
                continue
            previous = block.name
            try:
                block.urls = _servers(block, request, emptied)
            except pytest.skip.Exception as skip:
                skipped[block.name] = str(skip)
                continue
            try:
                example.evaluate()
            except Exception as exc:
                raise AssertionError(f"{block.name} ({block.language} block) failed") from exc
            ran.append(block.name)
    finally:
        request.node.user_properties.append(("docs_blocks", {"ran": ran, "skipped": list(skipped)}))
    if skipped:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        pytest.skip(f"{len(skipped)} blocks of {path.name} not run: {reasons}")


def _fences(text: str) -> int:
    """Code blocks counted without Sybil: fence lines, each block opening and closing one."""
    lines = re.findall(r"^[ \t]*(?:```|~~~)", text, re.MULTILINE)
    assert len(lines) % 2 == 0, "an unclosed fence"
    return len(lines) // 2


def test_every_block_is_run_or_checked(capsys):
    """No block is left out: each fence is one that runs (python, console), the output of the Python
    block before it, a diagram (text), or a block that cannot run whose commands are checked."""
    counts: Counter[str] = Counter()
    for path, examples in EXAMPLES.items():
        assert len(examples) == _fences(path.read_text()), f"{path.name}: Sybil missed a block"
        previous = None
        for example in examples:
            block = example.parsed
            assert block.language in KINDS, f"{block.name}: a block of language {block.language!r}"
            if block.language in RUN:
                assert not block.not_run, f"{block.name}: a {block.language} block must run"
                counts[block.language] += 1
            elif block.language in {"yaml", "bash"}:
                assert block.not_run, f"{block.name}: a {block.language} block needs `<!-- docs-test: not-run WHY -->`"
                counts["checked"] += 1
            elif block.is_output:
                assert previous is not None and previous.language == "python", f"{block.name}: output of what?"
                counts["output"] += 1
            else:
                assert not block.marker, f"{block.name}: a marker on a text block: {block.marker!r}"
                counts["text"] += 1
            previous = block
    with capsys.disabled():
        print(f"\ndocumentation blocks in {len(DOC_FILES)} files: {dict(counts)}")
    assert counts["python"] and counts["console"]


def test_the_readme_example_runs_on_fakeredis_without_a_server():
    """The README's first Python block is the one a newcomer pastes: no real server, no fixture."""
    readme = EXAMPLES[ROOT / "README.md"]
    first = next(e.parsed for e in readme if e.parsed.language == "python")
    assert not first.fixture and "fakeredis://" in first.source


def test_not_run_blocks_are_checked_and_a_wrong_name_fails():
    """The checker of blocks that cannot run finds what they name, and refuses a made-up name."""
    from doc_blocks import Block

    good = Block(ROOT / "README.md", 1, "bash", "make review   # a comment\nmake test\n", "not-run why")
    assert check_not_run(good) == ["make review", "make test"]
    job = "steps:\n  - run: pip install -e '.[workbook]'\n  - run: cd /tmp && statekit compat a b\n"
    assert check_not_run(Block(ROOT / "x.md", 1, "yaml", job, "not-run ci")) == ["extra workbook", "statekit compat"]
    env = Block(ROOT / "x.md", 1, "bash", 'STATEKIT_SCREENSHOTS=1 make test PYTEST_ARGS="-k browser"\n', "not-run")
    assert check_not_run(env) == ["make test"]
    for wrong in ("make reveiw\n", "statekit comapt a b\n", "pip install '.[nope]'\n", "echo hi\n"):
        with pytest.raises(AssertionError):
            check_not_run(Block(ROOT / "x.md", 1, "bash", wrong, "not-run why"))


def test_console_blocks_are_split_into_commands_and_their_output():
    source = "$ statekit a \\\n    --b c\nline 1\n...\n$ statekit d\n"
    assert console_commands(source) == [("statekit a  --b c", "line 1\n...\n"), ("statekit d", "")]


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t and not t.startswith("#")]
    assert links
    for target in links:
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"
