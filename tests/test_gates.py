"""statekit as CI gates: exit codes, Prometheus rules and Grafana dashboards, editor-validated profiles."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tools import promtool

from statekit import WorkloadProfile, assess, connect
from statekit.cli import main
from statekit.decide.observability import EXPORTED_METRICS
from statekit.decide.profile import SCHEMA_FILE, schema_json
from statekit.observe import LATENCY_BUCKETS_S, StateMetrics
from statekit.store import SessionStore
from statekit.workbook.review import build_review, write_monitoring

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "data" / "profiles").glob("*.yaml"))


# -- statekit compat ---------------------------------------------------------------------


def _schema_file(tmp_path: Path, name: str, kind: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"type": "object", "properties": {"n": {"type": kind}}, "required": ["n"]}))
    return path


@pytest.mark.parametrize(
    "old, new, code, verdict",
    [
        ("statekit.workbook.examples:SupportAgentStateV1", "statekit.workbook.examples:SupportAgentStateV2", 0, "safe"),
        (
            "statekit.workbook.examples:SupportAgentStateV3",
            "statekit.workbook.examples:SupportAgentStateV4",
            1,
            "multi-phase",
        ),
        ("string", "integer", 3, "breaking"),
    ],
)
def test_compat_exit_codes(capsys, tmp_path, old, new, code, verdict):
    if ":" not in old:
        old, new = _schema_file(tmp_path, "old", old), _schema_file(tmp_path, "new", new)
    assert main(["compat", str(old), str(new)]) == code
    out = capsys.readouterr().out
    assert f": {verdict} (Schema Registry mode" in out and "phase 1" in out
    assert main(["compat", str(old), str(new), "--json"]) == code
    assert json.loads(capsys.readouterr().out)["verdict"] == verdict


def test_compat_through_the_installed_console_script(tmp_path):
    """A pull request's model, imported from the directory the job runs in."""
    (tmp_path / "mystate.py").write_text(
        "from pydantic import BaseModel\n"
        "class Old(BaseModel):\n    ticket: str\n"
        "class New(BaseModel):\n    ticket: str\n    priority: int\n"
    )
    script = Path(sys.executable).parent / "statekit"
    done = subprocess.run(
        [script, "compat", "mystate:Old", "mystate:New"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1 and "multi-phase" in done.stdout and "priority" in done.stdout, done.stderr


@pytest.mark.parametrize(
    "spec, message",
    [("no.such.module:Model", "cannot load"), ("statekit.workbook.examples:MIGRATIONS", "not a pydantic model"),
     ("missing.json", "cannot read schema")],
)  # fmt: skip
def test_compat_with_a_schema_it_cannot_load_exits_2(capsys, spec, message):
    assert main(["compat", spec, "statekit.workbook.examples:SupportAgentStateV1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- statekit health --fail-on -------------------------------------------------------------


def test_health_fails_on_findings_only_when_asked(capsys):
    url = "fakeredis://health-gate"
    client = connect(url)
    SessionStore(client, namespace="app").append_turn("s", {"role": "user", "content": "hi"})
    assert main(["health", url, "--namespace", "app", "-q", "--fail-on", "findings"]) == 0, (
        "fakeredis' note is no finding"
    )
    client.persist("app:{s}:meta")
    assert main(["health", url, "--namespace", "app", "-q"]) == 0
    assert main(["health", url, "--namespace", "app", "-q", "--fail-on", "findings"]) == 1
    assert main(["health", url, "--namespace", "app", "--json", "--fail-on", "findings"]) == 1
    assert "keys have no TTL" in capsys.readouterr().out


@pytest.mark.notebook
def test_review_fails_on_a_verdict_it_finds(capsys, tmp_path, profiles_dir):
    code = main(["review", str(profiles_dir / "support_agent.yaml"), "--out", str(tmp_path), "-q",
                 "--fail-on", "stateless", "--fail-on", "multi-phase"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1 and "--fail-on: support_agent: multi-phase" in captured.err and "stateless" not in captured.err
    assert (tmp_path / "support_agent.rules.yml").exists() and (tmp_path / "support_agent.dashboard.json").exists()


# -- alerts and dashboards as files --------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_promtool_accepts_the_rules_file_of_every_example_profile(profile, tmp_path):
    review = build_review(WorkloadProfile.from_yaml(profile))
    rules, dashboard = write_monitoring(review, tmp_path, profile.stem)
    done = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    prometheus_alerts = [a for a in review["observability"]["alerts"] if "source" not in a]
    assert f"SUCCESS: {len(prometheus_alerts)} rules found" in done.stdout
    loaded = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
    # the latency alert reads the bucket bound at or under 80% of the timeout the review chose
    timeout_s = review["resilience"]["timeout_ms"] / 1000
    (latency,) = [r for r in loaded if r["alert"] == "StatekitStateLatencyNearTheTimeout"]
    (le,) = {float(v) for v in re.findall(r'le="([^"]+)"', latency["expr"])}
    assert le <= 0.8 * timeout_s + 1e-12 and le in LATENCY_BUCKETS_S, (le, timeout_s)


def _metric_names(expr: str) -> set[str]:
    functions = {"histogram_quantile", "sum", "by", "rate", "increase", "le", "operation", "tier", "kind"}
    without_ranges = re.sub(r"\[[^\]]*\]|\{[^}]*\}", "", expr)  # ranges and label matchers
    return {name for name in re.findall(r"[a-z_][a-z0-9_]*", without_ranges) if name not in functions}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_the_dashboard_queries_only_metrics_that_exist(profile, tmp_path):
    review = build_review(WorkloadProfile.from_yaml(profile))
    _, path = write_monitoring(review, tmp_path, profile.stem)
    dashboard = json.loads(path.read_text())
    panels = review["observability"]["dashboards"]
    assert [p["title"] for p in dashboard["panels"]] == [p["panel"] for p in panels]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names and all(n in EXPORTED_METRICS or n.startswith("redis_memory_") for n in names), names
    (sizes,) = [p for p in dashboard["panels"] if p["title"] == "session size distribution"]
    cap = review["lifecycle"]["policy"]["max_bytes"]
    assert {"color": "red", "value": cap} in sizes["fieldConfig"]["defaults"]["thresholds"]["steps"]


def test_exported_metrics_are_what_statekit_exposes():
    metrics = StateMetrics()
    store = SessionStore(connect("fakeredis://"), metrics=metrics)
    store.append_turn("s", {"role": "user", "content": "hi"})
    store.load_context("s")
    exposed = {line.split("{")[0].split(" ")[0] for line in metrics.prometheus().splitlines() if line[:1] != "#"}
    assert set(EXPORTED_METRICS) <= exposed


# -- profiles that editors validate --------------------------------------------------------


def test_the_shipped_schema_is_the_models():
    assert (ROOT / "data" / "profiles" / SCHEMA_FILE).read_text() == schema_json()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_example_profile_points_editors_at_the_schema(profile):
    assert profile.read_text().splitlines()[0] == f"# yaml-language-server: $schema={SCHEMA_FILE}"


def test_profile_schema_command(capsys):
    assert main(["profile", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "WorkloadProfile" and "traffic" in schema["required"]


def test_profile_init_writes_a_profile_that_assess_accepts_as_is(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "init", "my_agent"]) == 0
    written = tmp_path / "my_agent.yaml"
    text = written.read_text()
    assert text.startswith("# yaml-language-server: $schema=profile.schema.json") and "# " in text.splitlines()[8]
    assert assess(WorkloadProfile.from_yaml(written)).verdict == "server-side session state"
    assert main(["assess", str(written)]) == 0
    assert main(["profile", "init", "my_agent"]) == 2, "never overwritten"
    assert "exists" in capsys.readouterr().err
    assert main(["profile", "init", "../escape"]) == 2
