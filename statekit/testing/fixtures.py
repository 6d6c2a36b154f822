"""The pytest fixtures of `pytest_plugins = ["statekit.testing"]`: real servers, clusters,
replica pairs and Sentinel groups on loopback ports, skipped without redis-server (failed
instead with STATEKIT_REQUIRE_REDIS=1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from statekit.testing.servers import (
    REQUIRE_ENV,
    RedisClusterServers,
    RedisReplicaPair,
    RedisSentinelGroup,
    RedisServer,
    find_redis_server,
    require_real_redis,
)

try:
    import pytest
except ImportError:  # pragma: no cover - the fixtures need pytest; RedisServer does not
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    def start_redis_server(args: Sequence[str] = ()) -> RedisServer:
        """A started RedisServer with `args`, under the fixtures' rule: skipped when
        redis-server is missing, failed instead when STATEKIT_REQUIRE_REDIS=1."""
        return _start_or_skip(args)

    def skip_without_redis_server() -> None:
        """The fixtures' rule for a test that starts its servers some other way (a drill that
        starts a cluster of its own): skip it when redis-server is missing, fail it instead
        when STATEKIT_REQUIRE_REDIS=1."""
        if not find_redis_server():
            message = "redis-server is not installed"
            if require_real_redis():
                pytest.fail(f"{message}, and {REQUIRE_ENV}=1 forbids skipping real-Redis tests", pytrace=False)
            pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to make this a failure)")

    def _start_or_skip(args: Sequence[str] = ()) -> RedisServer:
        skip_without_redis_server()
        return RedisServer(args).start()

    @pytest.fixture(scope="session")
    def redis_server() -> Iterator[RedisServer]:
        """One real redis-server for the whole test session (flush between tests yourself)."""
        server = _start_or_skip()
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def redis_cluster() -> Iterator[RedisClusterServers]:
        """A three-primary Redis Cluster on loopback ports for the whole test session."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        cluster = RedisClusterServers(3).start()
        yield cluster
        cluster.stop()

    @pytest.fixture
    def fresh_redis_cluster() -> Iterator[RedisClusterServers]:
        """A three-primary cluster of its own for one test, free to reshard."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        cluster = RedisClusterServers(3).start()
        yield cluster
        cluster.stop()

    @pytest.fixture(scope="session")
    def redis_replica_pair() -> Iterator[RedisReplicaPair]:
        """A primary and a replica on loopback ports for the whole test session."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        pair = RedisReplicaPair().start()
        yield pair
        pair.stop()

    @pytest.fixture(scope="session")
    def lagging_redis_replica_pair() -> Iterator[RedisReplicaPair]:
        """A primary and a replica whose replication link is held back 50 ms each way."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        pair = RedisReplicaPair(link_delay_ms=50).start()
        yield pair
        pair.stop()

    @pytest.fixture
    def fresh_redis_replica_pair() -> Iterator[RedisReplicaPair]:
        """A primary and a replica of their own for one test, free to break."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        pair = RedisReplicaPair().start()
        yield pair
        pair.stop()

    @pytest.fixture
    def redis_sentinel_group() -> Iterator[RedisSentinelGroup]:
        """A primary, a replica and one Sentinel of their own for one test, free to fail over."""
        _start_or_skip().stop()  # the same skip-or-fail rule as a single server
        group = RedisSentinelGroup().start()
        yield group
        group.stop()

    @pytest.fixture
    def fresh_redis_server() -> Iterator[RedisServer]:
        """A real redis-server of its own for one test, free to pause, kill and restart."""
        server = _start_or_skip()
        yield server
        server.stop()
