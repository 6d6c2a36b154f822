"""The workshop's checks, called directly (no notebook): for every lab, on fakeredis and on a
real redis-server, the check fails on the attendee's copy as generated, passes on the
trainer's solution, and fails on plausible wrong fixes, each with a hint of its own.

The solutions are read from the trainer's notebooks (their fix cells), and the attendee's
copy of each cell is made by the same generator `statekit workshop` uses, so what is tested
is what the room gets."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import nbformat
import pytest

import statekit as sk
from statekit.workbook.labs import LABS
from statekit.workbook.labs.attendee import strip_source

ROOT = Path(__file__).resolve().parent.parent
LAB_NOTEBOOKS = sorted((ROOT / "notebooks" / "labs").glob("*.ipynb"))
#: the name each lab's fix cell defines, which its check takes
FIX_NAME = {
    "need_state": "handle",
    "degrade": "resilient",
    "bounded": "policy",
    "consistency": "add_item",
    "versions": "migrations",
    "health": "alerts",
}


def notebook_of(lab: str) -> Path:
    return next(p for p in LAB_NOTEBOOKS if p.stem.endswith(lab))


def fix_cell(lab: str) -> str:
    cells = [c for c in nbformat.read(notebook_of(lab), as_version=4).cells if "fix" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{lab}: one cell tagged fix"
    return cells[0].source


def run_check(lab: str, source: str, url: str) -> sk.workbook.labs.result.Result:  # type: ignore[name-defined]
    namespace: dict[str, object] = {"sk": sk}
    exec(textwrap.dedent(source), namespace)
    module = importlib.import_module(f"statekit.workbook.labs.{lab}")
    return module.check(namespace[FIX_NAME[lab]], url)


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.realredis)])
def lab_url(request) -> str:
    return "fakeredis://" if request.param == "fakeredis" else request.getfixturevalue("redis_url")


#: a ResilientStore with settings that pass the lab's budgets, but for the ones given
_RS = "def resilient(store):\n    return sk.ResilientStore(store, timeout_ms=100, fail_max=3, {})"

#: Plausible wrong fixes, as attendees write them, and the words of the hint each must get.
WRONG = {
    "need_state": {
        "stateless, the newest message only": (
            "def handle(client, session_id, message):\n    return [message]",
            "delivers only the newest one",
        ),
        "history in a dict of the process": (
            """
            history = {}
            def handle(client, session_id, message):
                history.setdefault(session_id, []).append(message)
                return history[session_id]
            """,
            "the context grows with every turn",
        ),
        "first message and a window, in the process": (
            """
            history = {}
            def handle(client, session_id, message):
                turns = history.setdefault(session_id, [])
                turns.append(message)
                return turns[:1] + turns[-10:]
            """,
            "nothing of it is in Redis",
        ),
        "a store that drops evicted turns": (
            """
            def handle(client, session_id, message):
                store = sk.SessionStore(client, sk.LifecyclePolicy(window_turns=10, summarizer=None))
                store.append_turn(session_id, message)
                return store.load_context(session_id).messages()
            """,
            "what stands for the turns that left the window",
        ),
        "history in the process, mirrored to Redis": (
            """
            import json
            history = {}
            def handle(client, session_id, message):
                turns = history.setdefault(session_id, [])
                turns.append(message)
                client.set(f"history:{session_id}", json.dumps(turns))
                return turns[:1] + turns[-10:]
            """,
            "written to Redis but what the model reads is never read back",
        ),
        "the first message and the newest only": (
            """
            import json
            def handle(client, session_id, message):
                client.set(f"first:{session_id}", json.dumps(message), nx=True)
                return [json.loads(client.get(f"first:{session_id}")), message]
            """,
            "it answers without what the customer just said",
        ),
        "a handler that returns strings": (
            "def handle(client, session_id, message):\n    return [message['content']]",
            "handle returned a list of str at turn 1",
        ),
    },
    "degrade": {
        "the plain store": ("def resilient(store):\n    return store", "plain SessionStore"),
        "write policy drop": (
            _RS.format("write_policy='drop'"),
            "your write policy is 'drop'",
        ),
        "write policy raise": (
            _RS.format("write_policy='raise'"),
            "Your write policy is 'raise'",
        ),
        "a generous timeout": (
            "def resilient(store):\n    return sk.ResilientStore(store, timeout_ms=5000)",
            "timeout_ms=5000",
        ),
        "a breaker that waits for 50 failures": (
            "def resilient(store):\n    return sk.ResilientStore(store, timeout_ms=100, fail_max=50)",
            "fail_max=50",
        ),
        "a small write buffer": (
            _RS.format("buffer_max_turns=5"),
            "the write buffer holds 5 turns",
        ),
        "a breaker that stays open ten minutes": (
            _RS.format("reset_timeout_s=600"),
            "reset_timeout_s=600",
        ),
        "a hand-written wrapper with no timeout": (
            """
            class Wrapper:
                def __init__(self, store):
                    self.store, self.last, self.pending = store, {}, []
                def load_context(self, sid):
                    try:
                        self.flush()
                        self.last[sid] = self.store.load_context(sid)
                    except Exception:
                        pass
                    return self.last[sid]
                def append_turn(self, sid, turn, turn_id=None):
                    self.pending.append((sid, turn, turn_id))
                    try:
                        self.flush()
                    except Exception:
                        pass
                def flush(self):
                    while self.pending:
                        sid, turn, turn_id = self.pending[0]
                        self.store.append_turn(sid, turn, turn_id=turn_id)
                        self.pending.pop(0)
            def resilient(store):
                return Wrapper(store)
            """,
            "nothing bounds how long a call waits",
        ),
        "no cache of contexts": (_RS.format("reset_timeout_s=5, cache_max_sessions=0"), "forgot the customer"),
        "load_context that returns None": (
            """
            class Quiet:
                def __init__(self, store):
                    self.store = store
                def load_context(self, sid):
                    return None
                def append_turn(self, sid, turn, turn_id=None):
                    self.store.append_turn(sid, turn, turn_id=turn_id)
            def resilient(store):
                return Quiet(store)
            """,
            "load_context returned None, not a context",
        ),
    },
    "bounded": {
        "a window too wide": (
            "policy = sk.LifecyclePolicy(window_turns=100, max_bytes=5_000_000)",
            "over the lab's budget",
        ),
        "the default window under the budget's cap": (
            "policy = sk.LifecyclePolicy(window_turns=10, max_bytes=256_000)",
            "was rejected",
        ),
        "no summary": (
            "policy = sk.LifecyclePolicy(window_turns=5, max_bytes=256_000, summarizer=None, summary_max_bytes=0)",
            "evicted turns are dropped",
        ),
        "a month of TTL": (
            "policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, max_bytes=256_000, ttl_seconds=30 * 86_400)",
            "live 30 days",
        ),
        "a TTL of a minute": (
            "policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, max_bytes=256_000, ttl_seconds=60)",
            "live 60 s once the customer stops",
        ),
        "a summarizer that raises": (
            """
            def summarize(summary, turns, budget):
                raise RuntimeError("model is down")
            policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, max_bytes=256_000, summarizer=summarize)
            """,
            "your summarizer raised RuntimeError: model is down",
        ),
        "a summarizer with the wrong signature": (
            """
            def summarize(turns):
                return "summary"
            policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, max_bytes=256_000, summarizer=summarize)
            """,
            "your summarizer raised TypeError",
        ),
        "a summarizer that returns a number": (
            """
            policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, max_bytes=256_000,
                                        summarizer=lambda summary, turns, budget: len(turns))
            """,
            "your summarizer returned int 2",
        ),
    },
    "consistency": {
        "GET and SET on the client": (
            """
            import json
            def add_item(store, session_id, item):
                raw = store.client.get(f"cart:{session_id}")
                cart = json.loads(raw) if raw else {"items": []}
                cart["items"].append(item)
                store.client.set(f"cart:{session_id}", json.dumps(cart))
            """,
            "never reached the session's state",
        ),
        "compare-and-set of a copy read before": (
            """
            def add_item(store, session_id, item):
                state, _ = store.get_state(session_id)
                new = {**state, "items": [*state.get("items", []), item]}
                store.update_state(session_id, lambda s: new)
            """,
            "compare-and-set succeeded with old data",
        ),
        "an update function with a side effect": (
            """
            def add_item(store, session_id, item):
                added = []
                def add(state):
                    added.append(item)
                    return {**state, "items": [*state.get("items", []), *added]}
                store.update_state(session_id, add)
            """,
            "added the item each time it ran",
        ),
        "an update that keeps only the items": (
            """
            def add_item(store, session_id, item):
                store.update_state(session_id, lambda s: {"items": [*s.get("items", []), item]})
            """,
            "the customer's other fields are gone",
        ),
        "a set of items": (
            """
            def add_item(store, session_id, item):
                store.update_state(session_id, lambda s: {**s, "items": sorted({*s.get("items", []), item})})
            """,
            "your cart keeps each item once",
        ),
        "items as a dict of counts": (
            """
            def add_item(store, session_id, item):
                store.update_state(session_id, lambda s: {**s, "items": {item: 1}})
            """,
            "the cart's items are a dict",
        ),
        "items as a string": (
            """
            def add_item(store, session_id, item):
                store.update_state(session_id, lambda s: {**s, "items": item})
            """,
            "the cart's items are a str",
        ),
        "update_state called twice": (
            """
            def add_item(store, session_id, item):
                for _ in range(2):
                    store.update_state(session_id, lambda s: {**s, "items": [*s.get("items", []), item]})
            """,
            "called store.update_state 2 times",
        ),
    },
    "versions": {
        "a version bump without a step": ("migrations = sk.Migrations(current=2)", "no migration step"),
        "a step that makes the field up": (
            """
            migrations = sk.Migrations(current=2)
            @migrations.step(1, 2)
            def add_customer_id(case):
                return {**case, "customer_id": ""}
            """,
            "lost its customer",
        ),
        "a step that changes the data in place": (
            """
            migrations = sk.Migrations(current=2)
            @migrations.step(1, 2)
            def rename(case):
                case["customer_id"] = case.pop("customer")
            """,
            "read back as None",
        ),
        "no version bump": ("migrations = sk.Migrations(current=1)", "the current version is 1"),
    },
    "health": {
        "errors only": (
            """
            def alerts(metrics):
                s = metrics.summary()
                return ["errors"] if len(s) and s["errors"].sum() > 0 else []
            """,
            "They read: summary",
        ),
        "any conflict at all": (
            "def alerts(metrics):\n    return ['conflicts'] if metrics.conflict_rate > 0 else []",
            "fired during calm traffic",
        ),
        "conflicts only": (
            "def alerts(metrics):\n    return ['retry storm'] if metrics.conflict_rate > 0.2 else []",
            "Redis was unreachable",
        ),
    },
}


#: Right fixes other than the trainer's, which the check must pass.
RIGHT = {
    "need_state": {
        "history in one hash, the session id a field": """
            import json
            def handle(client, session_id, message):
                raw = client.hget("conversations", session_id)
                turns = [*json.loads(raw or "[]"), message]
                client.hset("conversations", session_id, json.dumps(turns))
                return turns[:1] + turns[-10:]
            """,
    },
    "versions": {
        "a step that keeps the notes and adds one": """
            migrations = sk.Migrations(current=2)
            @migrations.step(1, 2)
            def rename(case):
                case = dict(case)
                case["customer_id"] = case.pop("customer")
                case["notes"] = [*case["notes"], "migrated"]
                return case
            """,
    },
}


@pytest.mark.parametrize(
    "lab, name", [(lab, name) for lab, fixes in RIGHT.items() for name in fixes], ids=lambda v: v.replace(" ", "-")
)
def test_a_right_fix_passes(lab, name, lab_url):
    result = run_check(lab, RIGHT[lab][name], lab_url)
    assert result.ok, f"{lab}: '{name}' failed the check: {result.hint}"


def test_a_ttl_shorter_than_a_pause_fails():
    source = "policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, max_bytes=256_000, ttl_seconds=1)"
    result = run_check("bounded", source, "fakeredis://")
    assert not result.ok and "at least 1 h" in result.hint, result.hint


#: a fix of each lab that never answers: it waits for `gate`, which the test opens at its end
HANGS = {
    "need_state": "def handle(client, session_id, message):\n    gate.wait()",
    "degrade": "def resilient(store):\n    gate.wait()",
    "bounded": "policy = sk.LifecyclePolicy(window_turns=4, fold_batch=2, summarizer=lambda s, t, b: gate.wait())",
    "consistency": "def add_item(store, session_id, item):\n    gate.wait()",
    "versions": """
        migrations = sk.Migrations(current=2)
        @migrations.step(1, 2)
        def wait(case):
            gate.wait()
        """,
    "health": "def alerts(metrics):\n    gate.wait()",
}


@pytest.mark.parametrize("lab", LABS)
def test_a_check_gives_up_on_code_that_never_answers(lab, monkeypatch):
    import threading
    import time

    from statekit.workbook.labs import result as result_module

    assert set(HANGS) == set(LABS)
    monkeypatch.setattr(result_module, "DEADLINE_S", 1.0)
    gate = threading.Event()
    namespace: dict[str, object] = {"sk": sk, "gate": gate}
    exec(textwrap.dedent(HANGS[lab]), namespace)
    module = importlib.import_module(f"statekit.workbook.labs.{lab}")
    try:
        started = time.monotonic()
        result = module.check(namespace[FIX_NAME[lab]], "fakeredis://")
        elapsed = time.monotonic() - started
    finally:
        gate.set()  # the abandoned call returns, and its thread ends
    assert not result.ok and "did not answer within 1 s" in result.hint, result.hint
    # the deadline is the feature: 1 s, with a 10 s margin for a loaded machine (the fix would wait forever)
    assert elapsed < 11


def test_a_check_that_raises_answers_with_a_hint():
    def handle(client, session_id, message):
        raise KeyboardInterrupt  # not an Exception: escapes the check's own handling

    from statekit.workbook.labs import need_state

    result = need_state.check(handle)
    assert not result.ok and "KeyboardInterrupt" in result.hint


@pytest.mark.realredis
def test_need_state_leaves_no_keys_when_a_fix_fails(redis_url):
    fixes = [
        WRONG["need_state"]["history in the process, mirrored to Redis"][0],
        WRONG["need_state"]["a handler that returns strings"][0],
        "def handle(client, session_id, message):\n    client.set(f'x:{session_id}', 1)\n    raise RuntimeError()",
    ]
    for source in fixes:
        assert not run_check("need_state", source, redis_url).ok
    assert sk.connect(redis_url).dbsize() == 0


def test_every_lab_has_a_notebook_and_wrong_fixes():
    assert set(WRONG) == set(LABS) == set(FIX_NAME)
    assert sorted(lab for lab in LABS if any(p.stem.endswith(lab) for p in LAB_NOTEBOOKS)) == sorted(LABS)
    assert all(len(fixes) >= 2 for fixes in WRONG.values())


@pytest.mark.parametrize("lab", LABS)
def test_the_check_passes_on_the_trainers_solution(lab, lab_url):
    result = run_check(lab, fix_cell(lab), lab_url)
    assert result.ok, result.hint
    assert str(result).startswith("✔")


@pytest.mark.parametrize("lab", LABS)
def test_the_check_fails_on_the_attendee_copy_as_generated(lab, lab_url):
    trainer = fix_cell(lab)
    attendee = strip_source(trainer)
    solution = trainer.split("# BEGIN SOLUTION")[1].split("# END SOLUTION")[0]
    prompt = [line.replace("# PROMPT ", "", 1) for line in trainer.splitlines() if line.startswith("# PROMPT ")]
    leaked = [line for line in solution.splitlines() if line.strip() and line in attendee.splitlines()]
    leaked = [line for line in leaked if line not in prompt]
    assert not leaked and "SOLUTION" not in attendee, attendee
    result = run_check(lab, attendee, lab_url)
    assert not result.ok
    assert str(result).startswith("✘")


@pytest.mark.parametrize(
    "lab, name", [(lab, name) for lab, fixes in WRONG.items() for name in fixes], ids=lambda v: v.replace(" ", "-")
)
def test_a_wrong_fix_fails_with_its_own_hint(lab, name, lab_url):
    source, words = WRONG[lab][name]
    result = run_check(lab, source, lab_url)
    assert not result.ok, f"{lab}: '{name}' passed the check: {result.hint}"
    assert words in result.hint, result.hint
    others = [w for other, (_, w) in WRONG[lab].items() if other != name]
    assert not any(w in result.hint for w in others), f"{lab}: '{name}' got another fix's hint: {result.hint}"


def test_the_guide_lists_every_wrong_fix_the_tests_hold():
    guide = (ROOT / "docs" / "workshop.md").read_text()
    missing = [f"{lab}: {name}" for lab, fixes in WRONG.items() for name in fixes if f"| {name} | ✘" not in guide]
    assert not missing, f"docs/workshop.md does not say what the check answers to {missing}"


def test_the_generator_strips_solutions_and_keeps_prompts():
    from statekit.workbook.labs.attendee import MarkerError

    trainer = "x = 1\n# PROMPT y = ...  # yours\n# BEGIN SOLUTION\ny = 42\n# END SOLUTION\nz = 3  # SOLUTION\nprint(y)"
    assert strip_source(trainer) == "x = 1\ny = ...  # yours\nz = ...\nprint(y)"
    for broken in ("# BEGIN SOLUTION\ny = 1", "y = 1\n# END SOLUTION", "# BEGIN SOLUTION\n# BEGIN SOLUTION"):
        with pytest.raises(MarkerError):
            strip_source(broken)


@pytest.mark.parametrize(
    "trainer, attendee",
    [
        ("#BEGIN SOLUTION\ny = 42\n#END SOLUTION\nprint(y)", "print(y)"),
        ("# begin solution\ny = 42\n# end solution\nprint(y)", "print(y)"),
        ("### BEGIN SOLUTION\ny = 42\n### END SOLUTION\nprint(y)", "print(y)"),
        ("# BEGIN SOLUTION  (trainer only)\ny = 42\n# END SOLUTION\nprint(y)", "print(y)"),
        ("x: int = 42  # SOLUTION", "x: int = ..."),
        ("def f():\n    return 42  # SOLUTION", "def f():\n    return ..."),
        ("a, b = 4, 2  # SOLUTION", "a, b = ..., ..."),
        ("y = 42  # solution", "y = ..."),
    ],
)
def test_the_generator_reads_markers_as_trainers_write_them(trainer, attendee):
    assert strip_source(trainer) == attendee


def test_the_generator_never_lets_a_solution_through():
    from statekit.workbook.labs.attendee import MarkerError, attendee_notebook

    def notebook(*cells):
        return nbformat.v4.new_notebook(cells=list(cells))

    md = nbformat.v4.new_markdown_cell("Intro\n# BEGIN SOLUTION\nThe answer is 42.\n# END SOLUTION\nDone.")
    raw = nbformat.v4.new_raw_cell("<!-- BEGIN SOLUTION -->\nsecret\n<!-- END SOLUTION -->")
    assert attendee_notebook(notebook(md)).cells[0].source == "Intro\nDone."
    for leak in (
        raw,
        nbformat.v4.new_markdown_cell("The SOLUTION: y = 42"),
        nbformat.v4.new_code_cell("y = 42  # the solution"),
    ):
        with pytest.raises(MarkerError, match="SOLUTION"):
            attendee_notebook(notebook(leak))
    in_string = 'text = """\n# BEGIN SOLUTION\n"""\ny = 42\ntext2 = """\n# END SOLUTION\n"""'
    with pytest.raises(MarkerError, match="inside a string"):
        strip_source(in_string)


def test_a_broken_trainer_notebook_leaves_no_staging_directory(tmp_path):
    from statekit.workbook.labs.attendee import MarkerError
    from statekit.workbook.labs.workshop import prepare

    trainer = tmp_path / "trainer"
    trainer.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# BEGIN SOLUTION\ny = 1")]),
                   trainer / "lab.ipynb")  # fmt: skip
    with pytest.raises(MarkerError):
        prepare(tmp_path / "out", trainer_dir=trainer)
    assert not (tmp_path / "out" / ".statekit-staging").exists()


def test_workshop_with_missing_trainer_notebooks_exits_2(tmp_path, capsys):
    from statekit.cli import main

    pytest.importorskip("jupyterlab")
    out = tmp_path / "out"
    assert main(["workshop", "--prepare-only", "--trainer-notebooks", str(tmp_path / "nonexistent"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nonexistent is not a directory" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_the_board_shows_each_attendees_progress(lab_url, capsys):
    from statekit.cli import main
    from statekit.workbook.labs.board import progress, publish
    from statekit.workbook.labs.result import Result

    url = "fakeredis://workshop-board" if lab_url.startswith("fakeredis") else lab_url
    for lab, ok, who in [("bounded", False, "ana"), ("bounded", True, "ana"), ("bounded", False, "ana"),
                         ("degrade", False, "ben"), ("degrade", False, "ben")]:  # fmt: skip
        assert publish(Result(lab, ok, f"{who}'s hint"), url, attendee=who)
    rows = {r["attendee"]: r for r in progress(url)}
    assert rows["ana"]["bounded"] == "✔" and rows["ana"]["degrade"] == ""  # a pass stays a pass
    assert rows["ben"]["degrade"] == "✘ 2" and rows["ben"]["last hint"] == "ben's hint"
    assert main(["workshop", "board", url]) == 0
    board = capsys.readouterr().out
    assert "ana" in board and "✘ 2" in board and "1 of 2" in board


def test_a_check_without_a_board_or_with_an_unreachable_one_still_answers(capsys):
    from statekit.workbook.labs.board import publish
    from statekit.workbook.labs.result import Result

    result = Result("bounded", True, "fine")
    assert publish(result, "") is None
    assert publish(result, "redis://127.0.0.1:1/0") is None
    assert "did not take the result" in capsys.readouterr().out
    for malformed in ("trainer:6379", "redis//10.0.0.5:6379"):
        assert publish(result, malformed) is None
        out = capsys.readouterr().out
        assert "did not take the result" in out and len(out.strip().splitlines()) == 1


def test_the_board_skips_entries_that_are_not_results(capsys):
    from statekit.cli import main
    from statekit.workbook.labs.board import STREAM, progress, publish
    from statekit.workbook.labs.result import Result

    url = "fakeredis://workshop-board-malformed"
    client = sk.connect(url)
    client.xadd(STREAM, {"foo": "bar"})
    client.xadd(STREAM, {"attendee": b"ana\xff", "lab": "bounded", "ok": "1", "hint": "fine"})
    assert publish(Result("degrade", False, "ben's hint"), url, attendee="ben")
    rows = progress(url)
    assert [r["attendee"] for r in rows] == ["ana\ufffd", "ben"] and rows.skipped == 1
    assert main(["workshop", "board", url]) == 0
    assert "1 malformed entries" in capsys.readouterr().out


def test_lab1_passes_a_store_whose_first_probe_after_the_outage_misses_its_timeout(monkeypatch):
    """On a loaded machine the first call after the link comes back can miss its 1 s timeout:
    the breaker opens again, and the check must let its reset timeout pass again (it did so
    once, and the trainer's solution ended the lab 'still degraded'). Here the link stays cut
    for the first call after the outage's `up()` (it times out) and is healed at the second;
    the check's own `up()` at its end heals at once."""
    from statekit.workbook.labs import result as lab_result

    heal, ups = lab_result.Link.up, []

    def up(link: lab_result.Link) -> None:
        ups.append(1)
        if len(ups) > 1:
            return heal(link)
        injector, real_lock, attempts = link.injector, link.injector._lock, []

        class HealAtTheSecondAttempt:  # the injector counts each attempt under its lock
            def __enter__(self) -> None:
                attempts.append(1)

            def __exit__(self, *exc: object) -> None:
                if len(attempts) == 2:
                    injector._lock = real_lock
                    heal(link)

        injector._lock = HealAtTheSecondAttempt()

    monkeypatch.setattr(lab_result.Link, "up", up)
    result = run_check("degrade", fix_cell("degrade"), "fakeredis://")
    assert result.ok, result.hint
