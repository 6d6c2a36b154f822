"""The review held against a second implementation of its formulas (tests/oracle.py), on
the example profiles and on hypothesis-generated ones: every number the oracle computes must
match, and every number in the review JSON must be either checked by the oracle, an input
echoed back, or rest on a judgement call that the review names (`review["judgements"]`).

`STATEKIT_ORACLE_EXAMPLES` sets how many generated profiles a run draws (default 40; 100 takes about 2 minutes).
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, get_args

import oracle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import WorkloadProfile
from statekit.decide.profile import Purpose
from statekit.workbook.review import build_review

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "data" / "profiles").glob("*.yaml"))
EXAMPLES = int(os.environ.get("STATEKIT_ORACLE_EXAMPLES", "40"))

PURPOSES = get_args(Purpose)

#: Numbers that are not computed: the profile echoed back, the review's own metadata, the
#: schema rollout's phase numbers, and the judgement calls' own figures.
INPUTS = ("profile.*", "meta.*", "migrations.*", "judgements.*")


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every number (and None where the oracle expects one) in the review, by dotted path."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{path}.{i}"))
        return out
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return {path: value}
    return {}


def _pattern(path: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", path)


def mismatches(review: dict[str, Any]) -> list[str]:
    """Where the review and the oracle disagree, and the review's numbers nobody accounts for."""
    leaves = _leaves(review)
    expected = oracle.expected(review["profile"], review)
    wrong = []
    for path, want in expected.items():
        if path not in leaves:
            wrong.append(f"{path}: missing from the review (oracle says {want!r})")
            continue
        got = leaves[path]
        ok = (
            want.matches(got)
            if isinstance(want, oracle.Approx) and got is not None
            else got == want and type(got) is type(want) or (got == want and isinstance(got, int | float))
        )
        if not ok:
            wrong.append(f"{path}: review {got!r}, oracle {want!r}")
    judged = [p for j in review["judgements"] for p in j["paths"]]
    # fnmatchcase against each pattern, as one regular expression: a review has thousands of numbers
    accounted = re.compile("|".join(fnmatch.translate(p) for p in (*INPUTS, *judged)))
    for path, value in leaves.items():
        if value is None or path in expected:
            continue
        if accounted.match(path) or accounted.match(_pattern(path)):
            continue
        wrong.append(f"{path} = {value!r}: neither checked by the oracle nor resting on a named judgement")
    return wrong


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_the_example_profiles_match_the_oracle(path):
    review = build_review(WorkloadProfile.from_yaml(path))
    assert mismatches(review) == []


@st.composite
def profiles(draw: Any) -> dict[str, Any]:
    per_session = draw(st.integers(1, 120))
    classes = draw(
        st.lists(
            st.tuples(st.sampled_from(PURPOSES), st.sampled_from((0, 0.5, 5, 300, 3600))),
            min_size=1,
            max_size=4,
        )
    )
    return {
        "service": "generated",
        "traffic": {
            "new_sessions_per_day": draw(st.integers(1, 500_000)),
            "requests_per_session": draw(st.integers(1, 200)),
            "peak_concurrent_sessions": draw(st.integers(1, 50_000)),
            "session_minutes": draw(st.sampled_from((0.5, 1, 7.5, 25, 90, 240, 600))),
            "app_instances": draw(st.integers(1, 64)),
        },
        "turns": {
            "per_session": per_session,
            "bytes_per_turn": draw(st.integers(1, 5_000)),
            "tokens_per_turn": draw(st.integers(0, 2_000)),
        },
        "client": {
            "can_send_full_context": draw(st.booleans()),
            "max_request_bytes": draw(st.integers(1, 10_000_000)),
            "trusted": draw(st.booleans()),
        },
        "state": {
            "reused_across_requests": draw(st.booleans()),
            "units_independent": draw(st.booleans()),
            "shared_across_clients": draw(st.booleans()),
            "long_running_steps": draw(st.booleans()),
            "context_window_turns": draw(st.none() | st.integers(1, per_session)),
            "summary_tokens": draw(st.sampled_from((0, 1, 300, 800, 2_000))),
        },
        "state_classes": [
            {"name": f"c{i}", "purpose": purpose, "staleness_tolerance_s": tolerance}
            for i, (purpose, tolerance) in enumerate(classes)
        ],
        "compliance": {"allowed_regions": ["eu-west-1"], "retention_days": draw(st.integers(1, 400))},
        "latency_budget_ms": draw(st.sampled_from((0.5, 1, 2, 5, 7.5, 15, 50, 200, 1000))),
        "costs": {
            "token_price_per_million": draw(st.sampled_from((0, 0.15, 3.0, 15.0))),
            "redis_price_per_gb_hour": draw(st.sampled_from((0, 0.017, 0.1))),
        },
    }


@pytest.mark.slow  # every decision of many generated profiles, computed twice
def test_generated_profiles_match_the_oracle():
    checked: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(profiles())
    def run(data: dict[str, Any]) -> None:
        review = build_review(WorkloadProfile.from_dict(data))
        wrong = mismatches(review)
        assert wrong == [], "\n".join(wrong[:20])
        checked.append(len(oracle.expected(review["profile"], review)))

    run()
    print(f"\noracle: {len(checked)} generated profiles, {sum(checked):,} numbers checked, 0 mismatches")
    assert len(checked) >= EXAMPLES // 2, "hypothesis ran too few profiles to mean anything"
