"""The real-server helper itself: pause, kill, restart, and fail-not-skip in CI."""

from __future__ import annotations

import os

import pytest
import redis

from statekit import testing
from statekit.testing import fixtures


@pytest.mark.realredis
def test_server_lifecycle_by_pid(fresh_redis_server):
    server = fresh_redis_server
    client = server.client(socket_timeout=0.2)
    client.set("k", "v")
    server.pause()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.get("k")
    server.resume()
    assert client.get("k") == b"v"

    old_pid = server.pid
    server.kill()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.get("k")
    server.restart()
    assert server.pid != old_pid
    assert client.get("k") is None, "a restarted server without persistence comes back empty"


@pytest.mark.realredis
def test_listens_on_loopback_only(fresh_redis_server):
    bind = fresh_redis_server.client().config_get("bind")["bind"]
    assert bind.split() == ["127.0.0.1"]


@pytest.mark.realredis
def test_stop_removes_process_and_directory():
    server = fixtures._start_or_skip()
    pid, directory = server.pid, server._dir
    server.stop()
    assert not os.path.exists(directory)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.realredis
def test_a_port_another_server_holds_is_never_taken_for_our_own(fresh_redis_server):
    # Another redis-server answers PING on the port this one was given: that is not this one
    # up. Before the fix, start() returned at the other server's PONG, and a cluster MEETing
    # "its" node joined another test's cluster.
    taken = fresh_redis_server.port
    pinned = testing.RedisServer(port=taken)
    with pytest.raises(RuntimeError, match=f"port {taken} is in use"):
        pinned.start()
    assert pinned.proc is not None and pinned.proc.poll() is not None, "the process that lost the port exited"
    pinned.stop()

    chosen = testing.RedisServer()
    chosen.port = taken  # as if another process took the port between its choice and the bind
    chosen.start()
    try:
        assert chosen.port != taken, "a fresh port was chosen"
        assert chosen.client().info("server")["process_id"] == chosen.pid
    finally:
        chosen.stop()


@pytest.mark.realredis
@pytest.mark.parametrize("how", ["warning", "WARNING", "include", "logfile"])
def test_a_server_whose_log_may_hide_the_ready_line_starts_all_the_same(how, tmp_path):
    if how == "include":
        (tmp_path / "quiet.conf").write_text("loglevel warning\n")
        args = ["--include", str(tmp_path / "quiet.conf")]
    elif how == "logfile":
        args = ["--logfile", str(tmp_path / "elsewhere.log")]
    else:
        args = ["--loglevel", how]
    server = testing.RedisServer(args).start(timeout_s=5)
    try:
        assert server.client().info("server")["process_id"] == server.pid
    finally:
        server.stop()


@pytest.mark.realredis
def test_a_restart_whose_port_was_taken_meanwhile_says_so_and_never_moves(fresh_redis_server):
    server = fresh_redis_server
    port = server.port
    server.kill()
    other = testing.RedisServer(port=port).start()  # another process takes the port while ours is down
    try:
        with pytest.raises(RuntimeError, match=f"port {port} is in use"):
            server.restart()
        assert server.port == port, "the clients hold this port's URL: a restart never moves"
        assert server.proc is not None and server.proc.poll() is not None
    finally:
        other.stop()
    server.restart()  # the port is free again: the same server comes back on it
    assert server.port == port and server.client().info("server")["process_id"] == server.pid


@pytest.mark.realredis
def test_an_interrupted_start_leaves_no_process_and_no_directory(monkeypatch):
    started: list[testing.RedisServer] = []
    real = testing.RedisServer._answers_ping

    def interrupted(self):
        started.append(self)
        if len({id(s) for s in started}) == 2:  # the replica of a pair: its primary is up by now
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(testing.RedisServer, "_answers_ping", interrupted)
    pair = testing.RedisReplicaPair()
    with pytest.raises(KeyboardInterrupt):
        pair.start()
    servers = {id(s): s for s in started}.values()
    assert len(servers) == 2
    for server in servers:
        assert server.proc is not None and server.proc.poll() is not None, "a server was left running"
        assert not os.path.exists(server._dir), "a server's directory was left behind"


@pytest.mark.realredis
def test_a_cluster_that_does_not_join_in_time_is_formed_again_on_fresh_ports():
    cluster = testing.RedisClusterServers(3)
    cluster.JOIN_S = 0.0  # no time to join: the first two formations give up at once
    first = list(cluster.nodes)
    with cluster:
        assert all(node.proc is not None and node.proc.poll() is not None for node in first), "old nodes stopped"
        assert not {n.pid for n in first} & {n.pid for n in cluster.nodes}, "the cluster runs on new processes"
        for node in cluster.nodes:
            info = redis.Redis(port=node.port).execute_command("CLUSTER", "INFO").decode()
            assert "cluster_known_nodes:3" in info and "cluster_state:ok" in info


def test_missing_server_skips_by_default_and_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setenv("STATEKIT_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    assert testing.find_redis_server() is None

    monkeypatch.delenv(testing.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        fixtures._start_or_skip()

    monkeypatch.setenv(testing.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        fixtures._start_or_skip()


DRILL_TEST = "tests/test_review.py::test_review_with_the_failover_drill_reports_the_writes_it_lost"


@pytest.mark.slow  # a pytest of its own
@pytest.mark.parametrize("required", ["", "1"])
def test_a_test_whose_drill_starts_the_servers_follows_the_rule_without_redis_server(tmp_path, required):
    """The review's failover drill starts its own cluster, not through a fixture: without
    redis-server its test failed where the rule says skipped. Run it in a pytest of its own
    whose PATH holds only python (no redis-server)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("STATEKIT_REDIS_SERVER", testing.REQUIRE_ENV)}
    env["PATH"] = str(bin_dir)
    # only the plugins this run needs: the installed ones (nbval, langsmith, hypothesis's) cost
    # seconds of start-up each and take no part in it
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if required:
        env[testing.REQUIRE_ENV] = required
    run = subprocess.run(
        [sys.executable, "-m", "pytest", DRILL_TEST, "-p", "no:cacheprovider", "-q", "-rA"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert "redis-server is not installed" in out, out[-3000:]
    if required:
        assert run.returncode != 0 and "skipped" not in out.splitlines()[-1], out[-3000:]
        assert f"{testing.REQUIRE_ENV}=1 forbids skipping" in out
    else:
        assert run.returncode == 0 and out.splitlines()[-1].startswith("1 skipped"), out[-3000:]


def test_xdist_groups_keep_their_tests_on_one_worker(tmp_path):
    """The browser tests share one JupyterLab through an xdist group; pytest 9.2 with
    pytest-xdist 3.8 silently stopped keeping groups together (pytest-xdist issue #1386)."""
    import subprocess
    import sys

    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.xdist_group('g')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_a(i):\n"
        "    with open(f'worker-{i}', 'w') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'])\n"
    )
    # xdist alone: the other installed plugins cost seconds of start-up in each of the three
    # processes and take no part in the grouping
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "xdist", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "test_grouped.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {(tmp_path / f"worker-{i}").read_text() for i in range(6)}
    assert len(workers) == 1, f"one group ran on {sorted(workers)}"
