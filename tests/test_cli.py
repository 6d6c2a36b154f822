from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from statekit.cli import build_parser, main

PROFILE = Path(__file__).resolve().parent.parent / "data" / "profiles" / "support_agent.yaml"


def test_help_lists_commands_and_url_forms(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "review" in out and "assess" in out and "redis+cluster://" in out


def test_console_script_is_installed():
    """The `statekit` entry point that pip installed next to this Python, not `python -m`."""
    script = Path(sys.executable).parent / "statekit"
    assert script.is_file(), f"no console script at {script}: is statekit installed in this environment?"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("statekit ")
    done = subprocess.run([str(script), "assess", "/no/such/profile.yaml"], capture_output=True, text=True)
    assert done.returncode == 2 and "cannot read profile" in done.stderr and "Traceback" not in done.stderr


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
    assert len(err.splitlines()) == 1, "every invalid field on one line"


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
    out = capsys.readouterr().out
    assert "faq_widget: client-side state" in out
    # every file of the report is listed (the executed notebook was left out), and exists
    listed = [Path(line.strip()) for line in out.splitlines() if line.startswith("  ")]
    suffixes = {".html", ".json", ".ipynb", ".yml"}
    assert {p.suffix for p in listed} >= suffixes and len(listed) == 5, out
    assert all(p.exists() for p in listed)


# -- no tracebacks: every failure is one line and exit status 2 --------------------------


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_a_batch_below_one_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["migrate", "fakeredis://", "--namespace", "app", "--migrations", "m:x", "--batch", "0"])
    assert exit_.value.code == 2 and "--batch: must be a whole number >= 1, got 0" in _error(capsys)


def test_reports_that_cannot_be_written_fail_before_any_notebook_runs(capsys, tmp_path, profiles_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["review", str(profiles_dir / "faq_widget.yaml"), "--out", str(blocker / "reports"), "-q"])
    assert code == 2 and f"cannot write reports to {blocker / 'reports'}" in _error(capsys)


def test_a_damaged_checkpoint_is_named(capsys, tmp_path):
    checkpoint = tmp_path / "cp.json"
    checkpoint.write_text('{"namespace": "app"}')
    code = main(
        ["migrate", "fakeredis://", "--namespace", "app", "--migrations",
         "statekit.workbook.examples:support_agent_migrations", "--checkpoint", str(checkpoint), "-q"]
    )  # fmt: skip
    assert code == 2 and f"checkpoint {checkpoint} is damaged" in _error(capsys)


def test_migrate_after_a_dry_run_with_the_same_checkpoint_is_refused_not_faked(capsys, tmp_path):
    """`--dry-run` then the same command without it printed "migrated 50" and exited 0,
    having migrated nothing: the real run returned the dry run's finished checkpoint."""
    from statekit import SessionStore, connect
    from statekit.migrate import Migrations, version_census
    from statekit.workbook.examples import support_agent_migrations

    url = "fakeredis://cli-dry-run-checkpoint"
    client = connect(url)
    client.flushall()
    v1 = SessionStore(client, namespace="app", migrations=Migrations(current=1))
    for i in range(50):
        v1.update_state(f"s-{i}", lambda s, i=i: {"ticket_id": f"T{i}", "customer": str(i)})
    checkpoint = tmp_path / "migrate.json"
    args = ["migrate", url, "--namespace", "app", "--migrations",
            "statekit.workbook.examples:support_agent_migrations", "--checkpoint", str(checkpoint), "-q"]  # fmt: skip
    assert main([*args, "--dry-run"]) == 0
    assert "would migrate 50" in capsys.readouterr().out
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "migrated" not in captured.out
    [line] = captured.err.splitlines()
    assert line == (
        f"statekit: error: checkpoint {checkpoint} was written by a dry run, so a real migration cannot "
        "resume from it; give this run another checkpoint file (or delete that one)"
    )
    assert version_census(client, "app", support_agent_migrations) == {1: 50}
    checkpoint.unlink()
    assert main(args) == 0
    assert "migrated 50" in capsys.readouterr().out
    assert version_census(client, "app", support_agent_migrations) == {3: 50}
    assert main([*args, "--dry-run"]) == 2, "a dry run does not resume the real run's checkpoint either"
    assert "was written by a real migration" in _error(capsys)


def _acl_user(url: str, name: str, rules: str) -> str:
    from statekit import connect

    connect(url).execute_command("ACL", "SETUSER", name, "reset", "on", ">s3cret-pw", *rules.split())
    return url.replace("redis://", f"redis://{name}:s3cret-pw@")


@pytest.mark.realredis
def test_a_user_without_info_runs_health_and_migrate(capsys, redis_url):
    from statekit import Migrations, SessionStore, connect

    SessionStore(connect(redis_url), namespace="app", migrations=Migrations(current=1)).update_state(
        "s", lambda s: {"ticket_id": "T", "customer": "C-1"}
    )
    url = _acl_user(redis_url, "no-info", "~* +@all -info -dbsize")
    assert main(["health", url, "--namespace", "app", "-q"]) == 0
    assert main(["migrate", url, "--namespace", "app", "--migrations",
                 "statekit.workbook.examples:support_agent_migrations", "-q"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "1 sessions in 'app'" in out and "migrated 1" in out


@pytest.mark.realredis
@pytest.mark.parametrize("command", ["health", "migrate"])
def test_a_user_without_scan_gets_one_line_naming_the_command(capsys, redis_url, command):
    url = _acl_user(redis_url, "no-scan", "~* +@all -scan")
    extra = ["--migrations", "statekit.workbook.examples:support_agent_migrations"] if command == "migrate" else []
    assert main([command, url, "--namespace", "app", "-q", *extra]) == 2
    err = _error(capsys)
    assert "may not run a command statekit needs" in err and "scan" in err.lower() and "s3cret-pw" not in err


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster", "redis+sentinel"])
@pytest.mark.parametrize("command", ["health", "migrate"])
def test_an_unreachable_server_of_any_kind_is_one_line_and_exit_2(capsys, scheme, command):
    """No traceback from redis-py's cluster or Sentinel exceptions, and no password."""
    port = _closed_port()
    url = f"{scheme}://app:s3cret@127.0.0.1:{port}" + ("/svc" if scheme == "redis+sentinel" else "")
    args = [command, url, "--namespace", "app", "-q"]
    if command == "migrate":
        args += ["--migrations", "statekit.workbook.examples:support_agent_migrations"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "s3cret" not in err and err.strip().count("\n") == 0, err
    assert err.startswith("statekit: ")


@pytest.mark.realredis
def test_health_and_migrate_walk_every_node_of_a_cluster(capsys, redis_cluster):
    from statekit import Migrations, SessionStore, connect

    client = connect(redis_cluster.url)
    client.flushall(target_nodes="primaries")
    v1 = SessionStore(client, namespace="cli", migrations=Migrations(current=1))
    for i in range(60):
        v1.update_state(f"s{i}", lambda s, i=i: {"ticket_id": f"T-{i}", "customer": str(i)})
    main(["migrate", redis_cluster.url, "--namespace", "cli", "--migrations",
          "statekit.workbook.examples:support_agent_migrations", "-q", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    migrated = json.loads(out[out.index("{\n") :])  # the JSON report follows the summary lines
    assert migrated["migrated"] == 60 and len(migrated["cursors"]) == 3
    main(["health", redis_cluster.url, "--namespace", "cli", "-q", "--json"])
    assert json.loads(capsys.readouterr().out)["sessions"] == 60


def test_app_refuses_a_missing_profile_a_bad_profile_and_an_unreachable_server(capsys, tmp_path, profiles_dir):
    """`statekit app` checks what it was given before it starts Voila (nothing is served)."""
    assert main(["app", str(tmp_path / "nope.yaml")]) == 2
    assert "no such profile" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: x\n")
    assert main(["app", str(bad)]) == 2
    assert "traffic" in capsys.readouterr().err
    profile = str(profiles_dir / "support_agent.yaml")
    assert main(["app", profile, "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert main(["app", profile, "--redis-url", "redis//nope"]) == 2
    assert "no scheme" in capsys.readouterr().err


def test_app_without_voila_names_the_extra_that_installs_it(capsys, monkeypatch, profiles_dir):
    """A runtime-only install was told `pip install 'statekit[workbook]'`, which leaves Voila
    out; every extra the message names must exist, and together they must install Voila."""
    import tomllib

    monkeypatch.setitem(sys.modules, "voila", None)  # `import voila` raises ImportError
    assert main(["app", str(profiles_dir / "support_agent.yaml")]) == 2
    [line] = _error(capsys).splitlines()
    advice = re.search(r"needs voila, which the runtime install leaves out: pip install 'statekit\[([^\]]+)\]'$", line)
    assert advice, line
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    optional = pyproject["project"]["optional-dependencies"]
    named = advice.group(1).split(",")
    assert set(named) <= set(optional), f"{named} are not all extras of {sorted(optional)}"
    installs = [re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() for name in named for req in optional[name]]
    assert "voila" in installs and "ipywidgets" in installs, installs
    assert line.startswith("statekit: error: statekit app needs voila"), line


BAD_URLS = ["redis://:badport", "redis://host:badport", "nope://x", "redis://host:99999", "", "http://x",
            "redis://admin:s3cret-pw@host:99999",
            # redis-py took port 0 for none and connected to 6379; an unknown query parameter was a
            # TypeError deep in a traceback on the first command
            "redis://127.0.0.1:0", "redis://127.0.0.1:6379/0?foo=bar", "unix:///tmp/x.sock?foo=bar"]  # fmt: skip
URL_COMMANDS = {
    "review": lambda url, tmp: ["review", str(PROFILE), "--out", str(tmp / "reports"), "--redis-url", url, "-q"],
    "migrate": lambda url, tmp: [
        "migrate",
        url,
        "--namespace",
        "app",
        "--migrations",
        "statekit.workbook.examples:support_agent_migrations",
        "-q",
    ],  # fmt: skip
    "health": lambda url, tmp: ["health", url, "--namespace", "app", "-q"],
    "calibrate": lambda url, tmp: ["calibrate", url, "--namespace", "app", "--profile", str(PROFILE), "-q"],
    "network-drill": lambda url, tmp: ["network-drill", str(PROFILE), "--redis-url", url],
    "app": lambda url, tmp: ["app", str(PROFILE), "--redis-url", url, "--out", str(tmp / "scenarios")],
}


def test_every_command_that_takes_a_url_is_in_the_table():
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    takes_url = {name for name, p in sub.choices.items() if any(a.dest == "redis_url" for a in p._actions)}
    assert takes_url == set(URL_COMMANDS)


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("command", sorted(URL_COMMANDS))
def test_a_malformed_url_is_one_line_and_exit_2(capsys, tmp_path, command, url):
    """A malformed URL printed the error and then the eight URL forms: nine lines."""
    assert main(URL_COMMANDS[command](url, tmp_path)) == 2
    [line] = _error(capsys).splitlines()
    assert line.startswith("statekit: error: bad Redis URL "), line
    assert "s3cret-pw" not in line
    assert not (tmp_path / "reports").exists() and not (tmp_path / "scenarios").exists()


def _gone(process) -> bool:
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE  # exited; its reaper has not looked yet
    except psutil.NoSuchProcess:
        return True


def _wait_for(what: str, ready, timeout_s: float = 120):
    """Poll `ready()` until it returns something true, within `timeout_s` (the app gives no
    event to wait on but its port and its processes)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout_s} s")


@pytest.mark.notebook  # Voila runs the live review in a kernel
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_app_stopped_by_a_signal_stops_voila_and_its_kernels(tmp_path, sig):
    """SIGTERM or SIGINT ended `statekit app`, but its Voila child kept serving the port, with
    its kernels. The signal comes while the kernel a page request started is running the
    review (the request waits for it: Voila answers once the notebook has run)."""
    import contextlib
    import signal
    import socket
    import threading
    import urllib.request

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "statekit"), "app", str(PROFILE), "--port", str(port),
           "--out", str(tmp_path / "scenarios")]  # fmt: skip
    log = (tmp_path / "app.log").open("wb")
    app = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    below = []
    try:

        def listens() -> bool:
            assert app.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return True
            except OSError:
                return False

        def request() -> None:  # the page's request starts a kernel; its answer is not awaited
            with contextlib.suppress(OSError):  # the app stops under it
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=120).close()

        _wait_for("the port open", listens)
        threading.Thread(target=request, daemon=True).start()

        def kernels() -> list:
            found = psutil.Process(app.pid).children(recursive=True)
            return found if any("ipykernel" in " ".join(p.cmdline()) for p in found) else []

        below = _wait_for("kernel", kernels)
        app.send_signal(getattr(signal, sig))
        code = app.wait(timeout=60)
        _wait_for("end of every process below statekit app", lambda: all(_gone(p) for p in below), 30)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert code == 0, "stopped as asked"
    finally:
        for p in [*below, psutil.Process(app.pid) if app.poll() is None else None]:
            if p is not None and not _gone(p):
                p.kill()
        app.wait(timeout=30)
        log.close()
