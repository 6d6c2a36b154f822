from __future__ import annotations

import pytest
import redis

import statekit as sk
from statekit.backends import backend_kind, connect, redact_url, resolve_url
from statekit.errors import ConnectionURLError, StoreUnavailable


def test_fakeredis_private_and_shared_servers():
    a, b = connect("fakeredis://"), connect("fakeredis://")
    a.set("k", "1")
    assert b.get("k") is None, "two plain fakeredis:// clients must not share data"

    x, y = connect("fakeredis://shared-test"), connect("fakeredis://shared-test")
    x.set("k", "2")
    assert y.get("k") == b"2"
    assert connect("fakeredis://other-name").get("k") is None
    assert backend_kind(x) == "fakeredis"


def test_fakeredis_runs_lua():
    c = connect("fakeredis://")
    assert c.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "n", 5) == 5


@pytest.mark.parametrize(
    "url, why",
    [
        ("localhost:6379", "no scheme"),
        ("http://localhost", "unknown scheme 'http'"),
        ("redis://", "no host"),
        ("redis://localhost:99999", "port"),
        ("redis://localhost:abc", "port"),
        ("redis://localhost/notadb", "database 'notadb'"),
        ("unix://", "no socket path"),
        ("unix:///tmp/r.sock?db=x", "database 'x'"),
        ("redis+cluster://localhost", "needs host:port"),
        ("redis+cluster://", "at least one host:port"),
    ],
)
def test_malformed_urls_say_what_form_is_expected(url, why):
    with pytest.raises(ConnectionURLError) as err:
        connect(url)
    message = str(err.value)
    assert why in message
    assert "redis://[user[:password]@]host[:port][/db]" in message


def test_bad_url_error_never_shows_the_password():
    with pytest.raises(ConnectionURLError) as err:
        connect("redis://admin:s3cr3t-pw@:99999")
    assert "s3cr3t-pw" not in str(err.value)
    assert "admin:***@" in str(err.value)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host", "redis://:***@host"),
        ("rediss://pw@host", "rediss://***@host"),
        ("redis+cluster://u:p%40ss@h1:7000,h2:7001", "redis+cluster://u:***@h1:7000,h2:7001"),
        ("unix://u:pw@/tmp/redis.sock?db=1", "unix://u:***@/tmp/redis.sock?db=1"),
        ("redis://host:6379?password=pw&db=1", "redis://host:6379?password=***&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("fakeredis://", "fakeredis://"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def _retries(retry) -> int:
    return retry.get_retries() if hasattr(retry, "get_retries") else retry._retries  # redis-py 5.3 has no getter


def test_clients_have_explicit_retries_and_timeouts():
    c = connect("redis://127.0.0.1:1/0", socket_timeout=0.25, connect_timeout=0.5)
    kwargs = c.connection_pool.connection_kwargs
    assert _retries(kwargs["retry"]) == 0, "redis-py's default of 10 retries must be overridden"
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["socket_connect_timeout"] == 0.5
    assert _retries(connect("redis://127.0.0.1:1/0", retries=2).connection_pool.connection_kwargs["retry"]) == 2


def test_invalid_timeouts_and_retries_are_rejected():
    with pytest.raises(ValueError):
        connect("fakeredis://", socket_timeout=0)
    with pytest.raises(ValueError):
        connect("fakeredis://", retries=-1)


def test_unreachable_server_is_a_clear_error_without_the_password():
    url = "redis://:topsecret@127.0.0.1:1/0"
    with pytest.raises(StoreUnavailable) as err:
        sk.check_reachable(connect(url), url)
    assert "topsecret" not in str(err.value)
    assert "redis://:***@127.0.0.1:1/0" in str(err.value)


def test_unreachable_cluster_is_a_clear_error():
    with pytest.raises(StoreUnavailable) as err:
        connect("redis+cluster://u:topsecret@127.0.0.1:1")
    assert "topsecret" not in str(err.value)
    assert "cannot reach Redis Cluster" in str(err.value)


def test_env_url_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SK_TEST_URL", "fakeredis://from-env")
    assert resolve_url("env:SK_TEST_URL") == "fakeredis://from-env"
    connect("env:SK_TEST_URL").set("k", "v")
    assert connect("fakeredis://from-env").get("k") == b"v"
    monkeypatch.delenv("SK_TEST_URL")
    with pytest.raises(ConnectionURLError, match="SK_TEST_URL"):
        connect("env:SK_TEST_URL")


@pytest.mark.realredis
def test_real_server_reachable_with_version(redis_url):
    client = connect(redis_url)
    info = sk.check_reachable(client, redis_url)
    assert info.kind == "redis"
    assert info.server_version and info.server_version[0].isdigit()
    client.set("k", "v")
    assert client.get("k") == b"v"


@pytest.mark.realredis
def test_frozen_server_costs_one_timeout_not_ten_retries(fresh_redis_server):
    from statekit.testing import count_round_trips

    client = connect(fresh_redis_server.url, socket_timeout=0.2)
    client.ping()  # the connection is open: what follows sends no handshake
    fresh_redis_server.pause()
    try:
        with count_round_trips() as sent, pytest.raises(redis.exceptions.TimeoutError):
            client.get("k")
    finally:
        fresh_redis_server.resume()
    # one send that meets its 0.2 s socket timeout; redis-py's default policy would send it ten more times
    assert sent.count == 1
    assert client.get("k") is None


@pytest.mark.realredis
def test_password_protected_server():
    from statekit.testing import start_redis_server

    with start_redis_server(["--requirepass", "pa55word"]) as server:
        good = f"redis://:pa55word@127.0.0.1:{server.port}/0"
        assert sk.check_reachable(connect(good), good).kind == "redis"
        bad = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        with pytest.raises(StoreUnavailable) as err:
            sk.check_reachable(connect(bad), bad)
        assert "wrong-pw" not in str(err.value)


@pytest.mark.parametrize(
    "url", ["redis://localhost?socket_timeout=abc", "unix:///tmp/r.sock?db=1&health_check_interval=x"]
)
def test_a_bad_query_string_is_a_url_error(url):
    with pytest.raises(ConnectionURLError, match="a query parameter is not valid"):
        connect(url)


@pytest.mark.parametrize("form", sk.backends.URL_FORMS)
def test_the_url_forms_are_not_mistaken_for_secrets(form):
    assert redact_url(form) == form


def test_a_bad_url_error_lists_the_forms_intact_through_the_cli(capsys):
    from statekit.cli import main

    assert main(["health", "ftp://u:hunter2@h", "--namespace", "sk"]) == 2
    err = capsys.readouterr().err
    assert "redis://[user[:password]@]host[:port][/db]" in err and "hunter2" not in err


def test_with_timeouts_keeps_the_users_pool_settings():
    """A blocking pool keeps its class, its limit and its wait, within the new deadline (a call
    that queues for a connection costs no more than one that gets one); a plain pool its limit."""
    import redis

    from statekit.backends import with_timeouts

    pool = redis.BlockingConnectionPool(host="127.0.0.1", port=6399, max_connections=7, timeout=3)
    copy = with_timeouts(redis.Redis(connection_pool=pool), 0.25)
    assert type(copy.connection_pool) is redis.BlockingConnectionPool
    assert (copy.connection_pool.max_connections, copy.connection_pool.timeout) == (7, 0.25)
    assert with_timeouts(redis.Redis(connection_pool=pool), 5).connection_pool.timeout == 3  # a shorter wait stays
    assert copy.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    assert copy.connection_pool.connection_kwargs["port"] == 6399
    plain = with_timeouts(redis.Redis(host="127.0.0.1", port=6399, max_connections=11), 0.25)
    assert plain.connection_pool.max_connections == 11


def test_with_timeouts_keeps_an_asyncio_clients_pool():
    from statekit.aio import connect_async
    from statekit.backends import with_timeouts

    client = connect_async("redis://127.0.0.1:6399/0", max_connections=9, connect_timeout=2)
    copy = with_timeouts(client, 0.1)
    assert type(copy.connection_pool) is type(client.connection_pool)
    assert (copy.connection_pool.max_connections, copy.connection_pool.timeout) == (
        9,
        0.1,
    )  # the wait within the deadline
    assert copy.connection_pool.connection_kwargs["socket_timeout"] == 0.1
