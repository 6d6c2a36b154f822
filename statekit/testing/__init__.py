"""Helpers for testing code that uses statekit, yours and ours.

`RedisServer` runs a real redis-server on a free loopback port and can pause (SIGSTOP),
resume, kill and restart it, always by its own process id. With pytest installed, the
fixtures `redis_server` (one per test session) and `fresh_redis_server` (one per test)
are available after `pytest_plugins = ["statekit.testing"]` in a conftest.py, and
`start_redis_server(args)` starts a server with extra arguments under the same rule.

pytest-redis starts servers too, but its fixtures are tied to its own configuration
options and give no pause/kill/restart on the process, which the resilience tests need;
this helper is small and does only that.

When redis-server is not installed the fixtures skip, unless the environment variable
STATEKIT_REQUIRE_REDIS=1 is set (CI sets it): then they fail, so a CI run can never pass
with the real-Redis tests silently skipped.

The package: `servers` (real servers, clusters, replica pairs, Sentinel groups, TLS files),
`proxy` (`TcpProxy`), `faults` (`FaultInjector`, `Nemesis`, `FakeClock`, `OutageDrill`,
round-trip counting) and `fixtures` (the pytest fixtures). Nothing in statekit's runtime
imports it; the drills that drive it are in `statekit.drills`.
"""

from statekit.testing.faults import (
    FakeClock,
    FaultInjector,
    Nemesis,
    OutageDrill,
    RoundTrips,
    before_round_trip,
    count_round_trips,
)
from statekit.testing.fixtures import *  # noqa: F403 - the fixtures of `pytest_plugins = ["statekit.testing"]`
from statekit.testing.proxy import TcpProxy
from statekit.testing.servers import (
    REQUIRE_ENV,
    RedisClusterServers,
    RedisReplicaPair,
    RedisSentinelGroup,
    RedisServer,
    TlsFiles,
    TlsRedisServer,
    find_redis_server,
    require_real_redis,
)

__all__ = [
    "FakeClock",
    "FaultInjector",
    "Nemesis",
    "OutageDrill",
    "RedisServer",
    "RedisReplicaPair",
    "RedisSentinelGroup",
    "TlsFiles",
    "TlsRedisServer",
    "TcpProxy",
    "RedisClusterServers",
    "RoundTrips",
    "count_round_trips",
    "before_round_trip",
    "find_redis_server",
    "require_real_redis",
    "REQUIRE_ENV",
]
