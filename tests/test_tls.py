"""TLS: rediss:// against a real redis-server that speaks only TLS, with certificates made here."""

from __future__ import annotations

import asyncio

import pytest

from statekit import LifecyclePolicy, ResilientStore, SessionStore, StoreUnavailable, check_reachable, connect
from statekit.aio import AsyncSessionStore, check_reachable_async, connect_async
from statekit.testing import RedisServer, TlsFiles, TlsRedisServer, start_redis_server


@pytest.fixture(scope="module")
def tls():
    start_redis_server().stop()  # skipped without redis-server, failed instead in CI
    files = TlsFiles()
    yield files
    files.cleanup()


@pytest.fixture(scope="module")
def tls_server(tls):
    server = TlsRedisServer(tls, client_certs="optional").start()
    yield server
    server.stop()


@pytest.mark.realredis
def test_the_store_and_the_resilient_store_run_over_tls(tls_server):
    client = connect(tls_server.url)
    assert "SSL" in client.connection_pool.connection_class.__name__, "the connection speaks TLS"
    store = SessionStore(client, LifecyclePolicy(window_turns=2))
    for i in range(3):
        store.append_turn("tls", {"n": i})
    assert store.load_context("tls").turns == [{"n": 1}, {"n": 2}]
    resilient = ResilientStore(store, timeout_ms=500)  # its own client keeps the TLS settings
    assert "SSL" in resilient.store.client.connection_pool.connection_class.__name__
    assert resilient.load_context("tls").source == "store"
    assert check_reachable(client, tls_server.url).server_version


@pytest.mark.realredis
def test_the_asyncio_store_runs_over_tls(tls_server):
    async def body():
        client = connect_async(tls_server.url)
        await check_reachable_async(client, tls_server.url)
        store = AsyncSessionStore(client)
        await store.append_turn("atls", {"n": 1})
        ctx = await store.load_context("atls")
        await client.aclose()
        return ctx

    assert asyncio.run(body()).turns == [{"n": 1}]


@pytest.mark.realredis
def test_a_server_that_requires_client_certificates(tls):
    with TlsRedisServer(tls, client_certs="yes") as server:
        with pytest.raises(StoreUnavailable, match="requires a client certificate") as error:
            check_reachable(connect(server.url), server.url)
        assert "Traceback" not in str(error.value) and "ssl_certfile" in str(error.value)
        assert connect(server.client_url()).ping()


@pytest.mark.realredis
def test_an_unknown_ca_is_named_as_the_cause(tls, tls_server):
    url = tls_server.url.replace(str(tls.ca_cert), str(tls.other_ca_cert))
    with pytest.raises(StoreUnavailable, match="not signed by a CA this client trusts"):
        check_reachable(connect(url), url)
    with pytest.raises(StoreUnavailable, match="not signed by a CA this client trusts"):
        SessionStore(connect(url)).append_turn("s", {"n": 1})


@pytest.mark.realredis
def test_a_server_certificate_from_another_ca_is_refused(tls):
    """The server presents a certificate of an unrelated CA: the client, trusting ours, refuses."""
    with TlsRedisServer(tls, certificate=(tls.stranger_cert, tls.stranger_key)) as stranger:
        url = f"rediss://127.0.0.1:{stranger.port}/0?ssl_ca_certs={tls.ca_cert}"
        with pytest.raises(StoreUnavailable, match="not signed by a CA this client trusts"):
            check_reachable(connect(url), url)


@pytest.mark.realredis
def test_tls_to_a_plain_port_and_plain_to_a_tls_port_say_so(tls, tls_server):
    with RedisServer() as plain:
        url = f"rediss://127.0.0.1:{plain.port}/0?ssl_ca_certs={tls.ca_cert}"
        with pytest.raises(StoreUnavailable, match="use redis://"):
            check_reachable(connect(url, connect_timeout=0.5), url)
    url = f"redis://127.0.0.1:{tls_server.port}/0"
    with pytest.raises(StoreUnavailable, match="use rediss://"):
        check_reachable(connect(url), url)


@pytest.fixture(scope="module")
def tls_cluster(tls):
    from statekit.testing import RedisClusterServers

    with RedisClusterServers(3, tls=tls) as cluster:
        yield cluster


@pytest.mark.realredis
@pytest.mark.xdist_group("tls_cluster")  # one TLS cluster serves both
def test_every_client_runs_on_a_tls_cluster(tls_cluster):
    """rediss+cluster://: TLS to clients, on the cluster bus and for replication. The
    blocking, resilient (its own client with its deadline, TLS kept) and asyncio stores, and
    the health scan's walk over every primary."""
    from statekit.observe import health_scan

    url = tls_cluster.url
    assert url.startswith("rediss+cluster://")
    client = connect(url)
    assert check_reachable(client, url).kind == "cluster"
    store = SessionStore(client, LifecyclePolicy(window_turns=3), namespace="tlsc")
    for i in range(30):
        store.append_turn(f"s{i}", {"n": i})
    assert {client.get_node_from_key(store.keys(f"s{i}")[0]).name for i in range(30)} == {
        f"127.0.0.1:{n.port}" for n in tls_cluster.nodes
    }, "the sessions live on every primary"
    resilient = ResilientStore(store, timeout_ms=1000)
    resilient.append_turn("s0", {"n": 100})
    ctx = resilient.load_context("s0")
    assert (ctx.source, ctx.turns[-1]) == ("store", {"n": 100})
    assert health_scan(client, "tlsc").sessions == 30

    async def run_async():
        aclient = connect_async(url)
        try:
            await check_reachable_async(aclient, url)
            astore = AsyncSessionStore(aclient, LifecyclePolicy(window_turns=3), namespace="tlsc")
            await astore.append_turn("s1", {"n": 101})
            return await astore.load_context("s1")
        finally:
            await aclient.aclose()

    assert asyncio.run(run_async()).turns[-1] == {"n": 101}


@pytest.mark.realredis
@pytest.mark.xdist_group("tls_cluster")  # one TLS cluster serves both
def test_a_tls_cluster_without_the_ca_or_over_plain_text_is_named(tls_cluster):
    hosts = tls_cluster.url.split("://", 1)[1].split("?", 1)[0]
    with pytest.raises(StoreUnavailable, match="cannot reach Redis Cluster"):
        connect(f"redis+cluster://{hosts}", connect_timeout=0.5)
    with pytest.raises(StoreUnavailable, match="certificate|CA"):
        connect(f"rediss+cluster://{hosts}", connect_timeout=0.5)


def test_cluster_and_sentinel_urls_take_tls_parameters_and_refuse_others():
    from statekit.backends import ConnectionURLError, _parse, _tls_options

    _, url, parts = _parse(
        "rediss+sentinel://127.0.0.1:26379/svc?ssl_ca_certs=/ca.pem&ssl_check_hostname=false&ssl_cert_reqs=required",
        1, 1, 0,
    )  # fmt: skip
    assert _tls_options(url, parts) == {
        "ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False, "ssl_cert_reqs": "required"
    }  # fmt: skip
    with pytest.raises(ConnectionURLError, match="unknown query parameters"):
        connect("rediss+cluster://127.0.0.1:7000?sslcacerts=/ca.pem")
    with pytest.raises(ConnectionURLError, match="use rediss\\+cluster"):
        connect("redis+cluster://127.0.0.1:7000?ssl_ca_certs=/ca.pem")
    with pytest.raises(ConnectionURLError, match="is not true or false"):
        connect("rediss+cluster://127.0.0.1:7000?ssl_check_hostname=maybe")
