from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import WorkloadProfile, assess
from statekit.decide.assess import SESSION_ID_BYTES, cost_model, what_if


def load(profiles_dir, name) -> WorkloadProfile:
    return WorkloadProfile.from_yaml(profiles_dir / f"{name}.yaml")


def test_batch_documents_are_stateless_for_stated_reasons(profiles_dir):
    a = assess(load(profiles_dir, "batch_document_processing"))
    assert a.verdict == "stateless"
    rubric = {r.question: r.answer for r in a.rubric}
    assert rubric["Is each unit of work independent?"] is True
    assert rubric["Is state reused across requests?"] is False
    assert "complete on its own" in a.reasons[0]
    assert "nothing is reused" in a.reasons[0]


def test_support_agent_needs_server_side_state_for_stated_reasons(profiles_dir):
    a = assess(load(profiles_dir, "support_agent"))
    assert a.verdict == "server-side session state"
    text = " ".join(a.reasons)
    assert "cannot carry the full context" in text
    assert "refund_approval must be authoritative" in text
    assert "several callers share one session" in text
    assert "from request 14" in text and "a whole session sends fewer from 15 turns" in text


@pytest.mark.parametrize(
    "name, verdict",
    [
        ("agentic_workflow", "durable workflow state"),
        ("quota_enforcement", "server-side session state"),
        ("recommendations", "server-side session state"),
        ("analytics_events", "stateless"),
        ("faq_widget", "client-side state"),
    ],
)
def test_other_profiles(profiles_dir, name, verdict):
    assert assess(load(profiles_dir, name)).verdict == verdict


def test_quota_needs_the_server_even_when_the_client_could_send_everything(profiles_dir):
    a = assess(load(profiles_dir, "quota_enforcement"))
    rubric = {r.question: r for r in a.rubric}
    assert rubric["Can the client send the full context?"].answer is True
    assert rubric["Could client-side state do?"].answer is False
    assert "token_quota" in rubric["Could client-side state do?"].evidence


def test_cost_model_by_hand(profiles_dir):
    # 5 turns of 100 bytes / 10 tokens, a 2-turn window and a 5-token summary.
    base = load(profiles_dir, "support_agent")
    data = base.model_dump()
    data["turns"] = {"per_session": 5, "bytes_per_turn": 100, "tokens_per_turn": 10}
    data["traffic"]["requests_per_session"] = 5
    data["state"].update(context_window_turns=2, summary_tokens=5)
    data["costs"] = {"token_price_per_million": 1_000_000.0, "redis_price_per_gb_hour": 0.0}
    c = cost_model(WorkloadProfile.from_dict(data))
    assert c.replay_request_bytes == [100, 200, 300, 400, 500]
    assert c.server_request_bytes == [100 + SESSION_ID_BYTES] * 5
    # history kept: 0,1,2,2,2 turns; a 50-byte summary once turns fall out of the window
    assert c.store_read_bytes == [0, 100, 200, 250, 250]
    assert c.replay_prompt_tokens == [10, 20, 30, 40, 50]
    assert c.server_prompt_tokens == [10, 20, 30, 35, 35]
    assert c.token_break_even_turn == 4
    assert c.wire_break_even_turn == 2
    # at $1 per token, 1,000 sessions cost 1000 x total tokens
    assert c.replay_cost_per_1000_sessions == pytest.approx(1000 * 150)
    assert c.server_cost_per_1000_sessions == pytest.approx(1000 * 130)


def test_independent_units_carry_only_themselves(profiles_dir):
    c = cost_model(load(profiles_dir, "analytics_events"))
    assert set(c.replay_request_bytes) == {300}
    assert c.wire_break_even_turn is None


def test_what_if_changes_the_verdict(profiles_dir):
    support = load(profiles_dir, "support_agent")
    assert assess(what_if(support, can_send_full_context=True)).verdict == "server-side session state"
    longer = what_if(support, turns_per_session=40)
    assert longer.turns.per_session == 40
    assert assess(longer).cost.largest_replay_request_bytes == 40 * 700
    stateless = what_if(support, units_independent=True, reused_across_requests=False)
    assert assess(stateless).verdict == "stateless"
    shrunk = what_if(support, turns_per_session=3)
    assert shrunk.state.context_window_turns == 3, "the window shrinks with the session"


def test_assessment_is_json_serialisable(profiles_dir):
    a = assess(load(profiles_dir, "support_agent"))
    data = json.loads(json.dumps(a.as_dict()))
    assert data["verdict"] == a.verdict
    assert data["cost"]["largest_replay_request_bytes"] == 9800
    assert "support_agent: server-side session state" in a.as_text()
    assert a.headline()["verdict"] == a.verdict


profile_data = st.fixed_dictionaries(
    {
        "service": st.just("generated"),
        "traffic": st.fixed_dictionaries(
            {
                "new_sessions_per_day": st.integers(1, 10**7),
                "requests_per_session": st.integers(1, 200),
                "peak_concurrent_sessions": st.integers(1, 10**6),
                "session_minutes": st.floats(0.1, 10_000),
            }
        ),
        "turns": st.fixed_dictionaries(
            {
                "per_session": st.integers(1, 120),
                "bytes_per_turn": st.integers(1, 100_000),
                "tokens_per_turn": st.integers(0, 20_000),
            }
        ),
        "client": st.fixed_dictionaries(
            {
                "can_send_full_context": st.booleans(),
                "max_request_bytes": st.integers(1, 10**8),
                "trusted": st.booleans(),
            }
        ),
        "state": st.fixed_dictionaries(
            {
                "reused_across_requests": st.booleans(),
                "units_independent": st.booleans(),
                "shared_across_clients": st.booleans(),
                "long_running_steps": st.booleans(),
                "summary_tokens": st.integers(0, 5000),
            }
        ),
        "state_classes": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["a", "b", "c", "d"]),
                    "purpose": st.sampled_from(["conversation", "quota", "approval", "financial", "analytics"]),
                    "staleness_tolerance_s": st.floats(0, 3600),
                }
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda c: c["name"],
        ),
        "compliance": st.just({"allowed_regions": ["eu-west-1"], "retention_days": 30}),
        "latency_budget_ms": st.floats(0.1, 10_000),
    }
)


@settings(max_examples=200, deadline=None)
@given(profile_data)
def test_verdict_rules_hold_for_any_profile(data):
    profile = WorkloadProfile.from_dict(data)
    a = assess(profile)
    authoritative = any(c["purpose"] in ("quota", "approval", "financial") for c in data["state_classes"])
    if a.verdict == "client-side state":
        assert not (authoritative and not profile.client.trusted)
        assert profile.client.can_send_full_context
        assert a.cost.largest_replay_request_bytes <= profile.client.max_request_bytes
    if profile.state.units_independent and not (
        profile.state.reused_across_requests and profile.traffic.requests_per_session > 1
    ):
        assert a.verdict == "stateless"
    c = a.cost
    assert len(c.turns) == profile.turns.per_session
    # server state never makes a prompt longer than the window, the summary and the new turn
    window = profile.state.context_window_turns or profile.turns.per_session
    assert max(c.server_prompt_tokens) <= (window + 1) * profile.turns.tokens_per_turn + profile.state.summary_tokens
    if c.token_break_even_turn is not None:
        k = c.token_break_even_turn - 1
        assert all(s <= r for s, r in zip(c.server_prompt_tokens[k:], c.replay_prompt_tokens[k:], strict=True))
