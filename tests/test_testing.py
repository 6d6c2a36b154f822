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


def test_missing_server_skips_by_default_and_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setenv("STATEKIT_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    assert testing.find_redis_server() is None

    monkeypatch.delenv(testing.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        fixtures._start_or_skip()

    monkeypatch.setenv(testing.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        fixtures._start_or_skip()
