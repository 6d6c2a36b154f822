from __future__ import annotations

import copy

import pytest
import yaml

from statekit import ProfileError, WorkloadProfile

REQUIRED = {
    "support_agent",
    "agentic_workflow",
    "batch_document_processing",
    "quota_enforcement",
    "recommendations",
    "analytics_events",
}


def _base(profiles_dir) -> dict:
    return yaml.safe_load((profiles_dir / "support_agent.yaml").read_text())


def test_every_shipped_profile_is_valid(profiles_dir):
    names = {p.stem for p in profiles_dir.glob("*.yaml")}
    assert names >= REQUIRED
    for path in profiles_dir.glob("*.yaml"):
        profile = WorkloadProfile.from_yaml(path)
        assert profile.service == path.stem, "a profile's service name matches its file name"
        assert profile.state_classes


def test_round_trip_through_dict(profiles_dir):
    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    assert WorkloadProfile.from_dict(profile.model_dump(mode="json")) == profile


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("traffic"), "traffic"),
        (lambda d: d["traffic"].update(new_sessions_per_day=-5), "traffic.new_sessions_per_day"),
        (lambda d: d["turns"].update(bytes_per_turn="lots"), "turns.bytes_per_turn"),
        (lambda d: d["client"].update(can_send_full_context="maybe"), "client.can_send_full_context"),
        (lambda d: d.update(latency_budget_ms=0), "latency_budget_ms"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["state_classes"][0].update(purpose="vibes"), "state_classes.0.purpose"),
        (lambda d: d["state_classes"][0].update(name="Has Spaces"), "state_classes.0.name"),
        (lambda d: d["state_classes"].append(dict(d["state_classes"][0])), "state_classes"),
        (lambda d: d["compliance"].update(allowed_regions=[]), "compliance.allowed_regions"),
        (lambda d: d["state"].update(context_window_turns=99), "context_window_turns"),
    ],
)
def test_invalid_profile_names_file_and_field(tmp_path, profiles_dir, mutate, field):
    data = copy.deepcopy(_base(profiles_dir))
    mutate(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        WorkloadProfile.from_yaml(path)
    message = str(err.value)
    assert str(path) in message
    assert field in message


def test_duplicate_state_class_is_named(tmp_path, profiles_dir):
    data = _base(profiles_dir)
    data["state_classes"].append(dict(data["state_classes"][0]))
    with pytest.raises(ProfileError, match="'conversation' is listed twice"):
        WorkloadProfile.from_dict(data, source="x.yaml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("service: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "a profile is a mapping"),
        ("", "a profile is a mapping"),
    ],
)
def test_unreadable_profiles(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=expected):
        WorkloadProfile.from_yaml(path)


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="cannot read profile"):
        WorkloadProfile.from_yaml(tmp_path / "nope.yaml")


def test_profiles_are_immutable(profiles_dir):
    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        profile.service = "other"


def test_a_profile_that_is_not_utf8_is_a_profile_error(tmp_path, profiles_dir):
    path = tmp_path / "latin1.yaml"
    text = (profiles_dir / "support_agent.yaml").read_text().replace("description:", "description: café", 1)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ProfileError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset \d+\)"):
        WorkloadProfile.from_yaml(path)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda t: t + "latency_budget_ms: 999\n", "latency_budget_ms"),
        (lambda t: t.replace("traffic:\n", "traffic:\n  session_minutes: 1\n", 1), "session_minutes"),
    ],
    ids=["top level", "nested"],
)
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, profiles_dir, edit, key):
    text = edit((profiles_dir / "support_agent.yaml").read_text())
    numbered = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip().startswith(f"{key}:")]
    assert len(numbered) == 2
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(
        ProfileError, match=rf"twice.yaml: key '{key}' appears twice .* lines {numbered[0]} and {numbered[1]}"
    ):
        WorkloadProfile.from_yaml(path)


def test_yaml_merge_keys_may_override():
    text = "base: &b {a: 1}\nother:\n  <<: *b\n  a: 2\n"
    import yaml

    from statekit.decide.profile import _UniqueKeyLoader

    assert yaml.load(text, Loader=_UniqueKeyLoader)["other"] == {"a": 2}
