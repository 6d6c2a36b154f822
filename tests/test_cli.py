from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from statekit.cli import main


def test_help_lists_commands_and_url_forms(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "review" in out and "assess" in out and "redis+cluster://" in out


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "statekit.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("statekit ")


def test_assess_table(capsys, profiles_dir):
    assert main(["assess", str(profiles_dir / "batch_document_processing.yaml")]) == 0
    out = capsys.readouterr().out
    assert "batch_document_processing: stateless" in out
    assert re.search(r"Is each unit of work independent\? +yes", out)


def test_assess_json(capsys, profiles_dir):
    assert main(["assess", "--json", str(profiles_dir / "support_agent.yaml")]) == 0
    (data,) = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "server-side session state"


def test_bad_profile_exits_2_with_the_field(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: x\ntraffic: {}\n")
    assert main(["assess", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "traffic.new_sessions_per_day" in err


def test_review_with_bad_url_exits_2(capsys, tmp_path, profiles_dir):
    code = main(
        ["review", str(profiles_dir / "support_agent.yaml"), "--out", str(tmp_path), "--redis-url", "redis://:pw123@"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "bad Redis URL" in err and "pw123" not in err


@pytest.mark.notebook
def test_review_command(capsys, tmp_path, profiles_dir):
    assert main(["review", str(profiles_dir / "faq_widget.yaml"), "--out", str(tmp_path), "-q"]) == 0
    assert "faq_widget: client-side state" in capsys.readouterr().out
    assert (tmp_path / "faq_widget.html").exists() and (tmp_path / "faq_widget.json").exists()
