"""The session store against a model: random sequences of appends (with repeated turn ids),
loads, state updates, folds, failing summaries, deletes and expiry, on every backend, with
each answer compared to what a plain-Python model of the policy says it must be.

The model is the policy written out long-hand (window, parked turns and the summary they
fold into, byte count, cap, versions, duplicate turn ids); it shares nothing with the
store but the codec, whose round trip has its own property test.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from fault_rules import pttls
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from statekit import LifecyclePolicy, SessionStore, codec, connect
from statekit.errors import StateTooLarge

SESSIONS = ("a", "b")
TURN_IDS = ("t0", "t1", "t2", "t3", "t4", "t5")
EXAMPLES = int(os.environ.get("STATEKIT_MODEL_EXAMPLES", "150"))  # fewer in `make check`
STEPS = 50
_namespaces = itertools.count()
STATS: dict[str, dict[str, int]] = {}


class SummaryFailed(Exception):
    pass


@dataclass
class Session:
    """What the model says one session holds."""

    log: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)  # (turn id, turn, record bytes)
    summary: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    state_blob: int = 0  # bytes of the encoded state; 0 when never set
    v: int = 0  # the session's version: one per write that changed it
    sv: int = 0  # the state's version
    b: int = 0  # bytes stored: records, summary, state

    @property
    def ids(self) -> set[str]:
        return {tid for tid, _, _ in self.log}


def summarize(summary: str, turns: list[dict[str, Any]], budget: int) -> str:
    """The summary the model expects: the old one and the folded turns' numbers, the tail
    kept within the budget (ASCII, so bytes are characters)."""
    text = summary + "+" + ",".join(str(t["n"]) for t in turns)
    return text[-budget:]


class StoreVersusModel(RuleBasedStateMachine):
    url: str = ""
    backend: str = ""
    #: One client for every example of a run (each example has namespaces of its own, and no
    #: fault touches the client): a cluster client costs about 50 ms to make (COMMAND and
    #: CLUSTER SLOTS read and parsed), a third of the cluster run when made per example.
    client: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.sessions = {sid: Session() for sid in SESSIONS}
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []  # what the summarizer was handed
        self.fail_summary = False
        self.counter = itertools.count()
        self.steps = 0
        stats = STATS.setdefault(self.backend, {"examples": 0, "longest": 0, "steps": 0})
        stats["examples"] += 1

    def teardown(self) -> None:
        stats = STATS[self.backend]
        stats["longest"] = max(stats["longest"], self.steps)
        stats["steps"] += self.steps

    def _summarizer(self, summary: str, turns: list[dict[str, Any]], budget: int) -> str:
        self.calls.append((summary, list(turns)))
        if self.fail_summary:
            raise SummaryFailed("the model is down")
        return summarize(summary, turns, budget)

    @initialize(
        window=st.integers(1, 3),
        fold_batch=st.integers(1, 3),
        summarised=st.booleans(),
        max_bytes=st.integers(150, 700),
        summary_budget=st.integers(8, 40),
    )
    def policy(self, window: int, fold_batch: int, summarised: bool, max_bytes: int, summary_budget: int) -> None:
        self.policy = LifecyclePolicy(
            window_turns=window,
            ttl_seconds=3600,
            max_bytes=max_bytes,
            summary_max_bytes=summary_budget,
            summarizer=self._summarizer if summarised else None,
            fold_batch=fold_batch,
        )
        self.store = SessionStore(self.client, self.policy, namespace=f"model{next(_namespaces)}")

    # -- appends --------------------------------------------------------------------------

    @rule(
        sid=st.sampled_from(SESSIONS),
        turn_id=st.none() | st.sampled_from(TURN_IDS),
        text=st.text(max_size=30) | st.text(min_size=100, max_size=400),
    )
    def append(self, sid: str, turn_id: str | None, text: str) -> None:
        self.steps += 1
        model = self.sessions[sid]
        turn = {"n": next(self.counter), "text": text}
        tid = turn_id or f"auto{turn['n']}"
        record = len(tid.encode()) + 1 + len(codec.encode(turn))
        self.calls.clear()
        if record > self.policy.max_bytes:  # over the cap on its own, replay or not: refused unsent
            with pytest.raises(StateTooLarge):
                self.store.append_turn(sid, turn, tid)
            return
        if turn_id is not None and turn_id in model.ids:  # a replay: stored once
            assert self.store.append_turn(sid, turn, turn_id) == model.b
            assert self.calls == []
            return
        if model.b + record > self.policy.max_bytes:  # over the cap: nothing written
            with pytest.raises(StateTooLarge):
                self.store.append_turn(sid, turn, tid)
            assert self.calls == []
            return
        got = self.store.append_turn(sid, turn, tid)
        model.log.append((tid, turn, record))
        model.b += record
        model.v += 1
        excess = len(model.log) - self.policy.window_turns
        if self.policy.summarizer is None:
            if excess > 0:  # dropped in the append script
                model.b -= sum(r for _, _, r in model.log[:excess])
                del model.log[:excess]
        elif excess >= self.policy.fold_batch:  # every parked turn is handed to the summarizer
            parked = model.log[:excess]
            assert self.calls == [(model.summary, [t for _, t, _ in parked])], "the summary's inputs"
            if not self.fail_summary:  # folded; a failed summary leaves them parked
                new = summarize(model.summary, [t for _, t, _ in parked], self.policy.summary_max_bytes)
                model.b += len(new) - len(model.summary) - sum(r for _, _, r in parked)
                model.summary = new
                model.v += 1
                del model.log[:excess]
        if self.policy.summarizer is None or excess < self.policy.fold_batch:
            assert self.calls == []
        assert got == model.b

    @rule(fail=st.booleans())
    def summarizer_fails(self, fail: bool) -> None:
        self.fail_summary = fail

    # -- structured state -----------------------------------------------------------------

    @rule(sid=st.sampled_from(SESSIONS), key=st.sampled_from("xyz"), value=st.text(max_size=300))
    def update_state(self, sid: str, key: str, value: str) -> None:
        self.steps += 1
        model = self.sessions[sid]
        new = {**model.state, key: value}
        blob = len(codec.encode(new))
        size = model.b - model.state_blob + blob
        if size > self.policy.max_bytes:
            with pytest.raises(StateTooLarge):
                self.store.update_state(sid, lambda s: {**s, key: value})
            return
        assert self.store.update_state(sid, lambda s: {**s, key: value}) == new
        model.state, model.state_blob, model.b = new, blob, size
        model.sv += 1
        model.v += 1

    @rule(sid=st.sampled_from(SESSIONS))
    def get_state(self, sid: str) -> None:
        self.steps += 1
        model = self.sessions[sid]
        assert self.store.get_state(sid) == (model.state, model.sv)

    # -- reads, deletes, expiry -----------------------------------------------------------

    @rule(sid=st.sampled_from(SESSIONS))
    def load(self, sid: str) -> None:
        self.steps += 1
        model = self.sessions[sid]
        ctx = self.store.load_context(sid)
        cut = max(0, len(model.log) - self.policy.window_turns)
        assert ctx.turns == [t for _, t, _ in model.log[cut:]]
        assert ctx.pending == [t for _, t, _ in model.log[:cut]]
        assert ctx.turn_ids == [tid for tid, _, _ in model.log]
        assert ctx.summary == model.summary
        assert (ctx.version, ctx.bytes) == (model.v, model.b)

    @rule(sid=st.sampled_from(SESSIONS))
    def delete(self, sid: str) -> None:
        self.steps += 1
        assert self.store.delete(sid) == (self.sessions[sid].v > 0)
        self.sessions[sid] = Session()

    @precondition(lambda self: any(s.v for s in self.sessions.values()))
    @rule(sid=st.sampled_from(SESSIONS))
    def idle_past_the_ttl(self, sid: str) -> None:
        """The session's idle time runs out: its keys' TTL is brought down to 1 ms (only
        keys that have one: a key without a TTL would survive, and `load` would see it)."""
        self.steps += 1
        keys = [k for k in self.store.keys(sid) if self.client.pttl(k) > 0]
        for key in keys:
            self.client.pexpire(key, 1)
        while any(self.client.exists(k) for k in keys):  # waits on the expiry itself, about 1 ms
            pass
        self.sessions[sid] = Session()

    @invariant()
    def every_key_expires_within_the_ttl(self) -> None:
        if not hasattr(self, "store"):
            return
        groups = [self.store.keys(sid) for sid in SESSIONS]
        for keys, ttls in zip(groups, pttls(self.client, groups), strict=True):
            for key, ttl in zip(keys, ttls, strict=True):
                assert ttl == -2 or 0 < ttl <= self.policy.ttl_ms, f"{key} has PTTL {ttl}"


def test_the_store_answers_as_the_model_says(any_url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["any_url"]
    STATS.pop(backend, None)
    client = connect(any_url)
    machine = type(f"StoreVersusModel_{backend}", (StoreVersusModel,), {"url": any_url, "backend": backend,
                                                                        "client": client})  # fmt: skip
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        client.close()
    stats = STATS[backend]
    print(f"\n{backend}: {stats['examples']} sequences, {stats['steps']} store calls, longest {stats['longest']}")
    assert stats["examples"] >= EXAMPLES, "every example ran"


def test_a_replayed_turn_id_with_a_body_over_the_cap_is_refused_and_the_stored_turn_kept() -> None:
    """Found by the model test: an over-cap body under a turn id already stored is refused
    unsent (`StateTooLarge`) rather than answered as a duplicate; what was stored stays."""
    store = SessionStore(
        connect("fakeredis://"),
        LifecyclePolicy(max_bytes=150, summary_max_bytes=0, summarizer=None),
        namespace="replay",
    )
    size = store.append_turn("a", {"text": ""}, "t0")
    with pytest.raises(StateTooLarge):
        store.append_turn("a", {"text": "0" * 200}, "t0")
    ctx = store.load_context("a")
    assert (ctx.turns, ctx.turn_ids, ctx.bytes) == ([{"text": ""}], ["t0"], size)
