"""Property tests: inputs nobody planned for get a clear error or a right answer, never anything else."""

from __future__ import annotations

import contextlib
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit import codec
from statekit.decide.profile import WorkloadProfile
from statekit.errors import CorruptStateError, InvalidInput, ProfileError, UnknownVersionError
from statekit.keys import key_pattern, session_id_of, session_keys, thread_keys, validate_namespace
from statekit.workbook.examples import support_agent_migrations

# JSON-like values orjson writes and reads back equal (integers within 64 bits, finite floats)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isclose(a, b) and a != 0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@given(json_values)
@settings(max_examples=300)
def test_the_codec_round_trips_any_json_like_value(value):
    try:
        blob = codec.encode(value)
    except InvalidInput:
        return  # e.g. a string with a lone surrogate: refused by name, nothing written
    assert _same(codec.decode(blob, "k"), value)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_migrations_given_arbitrary_bytes_raise_only_corrupt_or_unknown_version(raw):
    """Found by this test: b"\\x010" (the integer 0, unversioned) made a step fail with a plain
    MigrationError; a step failing on stored data is now MigrationStepFailed, a CorruptStateError."""
    try:
        support_agent_migrations.load(raw, "app:{s}:state")
    except (CorruptStateError, UnknownVersionError) as exc:
        assert "app:{s}:state" in str(exc) or "version" in str(exc)


yaml_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


@given(yaml_documents | st.text(max_size=300))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_the_profile_loader_given_arbitrary_yaml_raises_only_profile_error(document):
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    with contextlib.suppress(ProfileError):
        WorkloadProfile.from_yaml_text(text)


@given(st.text(max_size=40), st.text(max_size=300))
@settings(max_examples=1000)
def test_ids_and_namespaces_are_accepted_or_refused_and_keys_never_leave_the_namespace(namespace, session_id):
    try:
        validate_namespace(namespace)
        keys = session_keys(namespace, session_id)
    except InvalidInput:
        return
    for key in keys:
        assert key.startswith(f"{namespace}:{{")
        assert session_id_of(key, namespace) == session_id
        assert session_id_of(key, namespace + "x") is None
    try:
        thread = thread_keys(namespace, session_id)
    except InvalidInput:
        return
    assert all(k.startswith(f"{namespace}:{{{session_id}}}:") for k in thread)


@given(st.text(max_size=20), st.text(max_size=20))
@settings(max_examples=300)
def test_a_namespace_pattern_matches_only_its_own_keys(namespace, other):
    """SCAN MATCH (Redis's glob, as the embedded server implements it) with a namespace's
    pattern finds that namespace's keys and no other's, whatever characters either holds."""
    import fakeredis

    try:
        validate_namespace(namespace)
        validate_namespace(other)
        key = session_keys(other, "s")[0]
    except InvalidInput:
        return
    client = fakeredis.FakeRedis()
    client.set(key, b"1")
    found = list(client.scan_iter(match=key_pattern(namespace)))
    assert found == ([key.encode()] if namespace == other else [])


def test_a_step_failing_on_stored_data_is_corrupt_state_regression():
    """The example the property test found, kept as a plain regression test."""
    import pytest

    from statekit.migrate import MigrationError

    with pytest.raises(CorruptStateError, match="migration step 1 -> 2 failed") as error:
        support_agent_migrations.load(b"\x010", "app:{s}:state")
    assert isinstance(error.value, MigrationError), "still a MigrationError for code that catches those"
