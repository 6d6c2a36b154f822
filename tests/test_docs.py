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
NEXT = dict.fromkeys(DOC_FILES, 0)
FAILED: dict[Path, str] = {}
EMPTIED: set[tuple[Path, str]] = set()

#: One worker runs a page's blocks, in order (a block may use what an earlier one defined).
pytestmark = pytest.mark.xdist_group("docs")


def _blocks():
    for path, examples in EXAMPLES.items():
        for index, example in enumerate(examples):
            block = example.parsed
            marks = [pytest.mark.realredis] if block.needs_server else []
            yield pytest.param(path, index, id=f"{block.name}-{block.language}", marks=marks)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return scratch_checkout(tmp_path_factory.mktemp("checkout"))


def _servers(block, request) -> dict[str, str]:
    """The servers a block needs, emptied before the first block of its page that uses them (the
    blocks after it see what that one wrote, as the page's reader would)."""
    first = (block.path, block.fixture) not in EMPTIED
    EMPTIED.add((block.path, block.fixture))
    if block.fixture == "redis_url":
        url = request.getfixturevalue("redis_url") if first else request.getfixturevalue("redis_server").url
        return {LOCAL_URL: url}
    if block.fixture == "redis_replica_pair":
        pair = request.getfixturevalue("redis_replica_pair")
        if first:
            primary = pair.primary.client()
            primary.flushall()
            primary.close()
        return {LOCAL_URL: pair.primary_url, LOCAL_REPLICA_URL: pair.replica_url}
    return {}


@pytest.mark.parametrize(("path", "index"), list(_blocks()))
def test_block(path: Path, index: int, checkout: Path, request, monkeypatch):
    """Run the page's blocks up to this one (those before it have run already in a full run)."""
    monkeypatch.chdir(checkout)
    if path in FAILED:
        pytest.fail(f"an earlier block of this page failed ({FAILED[path]}); this one runs after it")
    while NEXT[path] <= index:
        position = NEXT[path]
        NEXT[path] += 1
        example = EXAMPLES[path][position]
        if position < index and example.parsed.needs_server:
            continue  # deselected (make check: -m "not realredis"): it runs as its own test, with its server
        try:
            example.parsed.urls = _servers(example.parsed, request)
            example.evaluate()
        except pytest.skip.Exception:
            raise  # no redis-server: the fixture skipped this block, and says so; the page goes on
        except BaseException:
            FAILED[path] = example.parsed.name
            raise


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
