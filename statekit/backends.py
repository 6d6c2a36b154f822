"""connect(url): one place that turns a URL into a Redis client with explicit timeouts and retries.

redis-py 8 retries every command 10 times with backoff by default, so a dead server costs
seconds per call and a retried LPUSH can be applied twice. Every client made here has its
retries, socket timeout and connect timeout set on purpose; statekit's own write paths are
idempotent (turn ids) so that a caller may retry them safely, but nothing retries behind
the caller's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from statekit.errors import AccessDenied, ConnectionURLError, StoreUnavailable, classify_reply

__all__ = [
    "connect",
    "connect_async",
    "with_timeouts",
    "check_reachable_async",
    "resolve_url",
    "check_url",
    "redact_url",
    "backend_kind",
    "check_reachable",
    "BackendInfo",
    "URL_FORMS",
    "PoolExhausted",
    "WaitingConnectionPool",
    "WaitingSentinelConnectionPool",
    "WaitingRedisCluster",
]

URL_FORMS = (
    "fakeredis://[name]  (embedded, in-process; the same name shares one server)",
    "redis://[user[:password]@]host[:port][/db]",
    "rediss://[user[:password]@]host[:port][/db]  (TLS)",
    "unix://[user[:password]@]/path/to/redis.sock[?db=N]",
    "redis+cluster://[user[:password]@]host:port[,host:port...]",
    "redis+sentinel://[user[:password]@]host:port[,host:port...]/service_name[/db]  (the primary Sentinel names)",
    "rediss+cluster://..., rediss+sentinel://...  (TLS to every node and Sentinel)",
    "TLS query parameters (redis-py's names): ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs, "
    "ssl_check_hostname",
)

#: The TLS settings a cluster or Sentinel URL may carry in its query, by redis-py's names.
TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")

DEFAULT_SOCKET_TIMEOUT_S = 1.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0

# Brackets are not allowed unencoded in a URL's userinfo (RFC 3986), so `[user[:password]@]` in
# the list of URL forms is a placeholder, not a secret.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\[\]]*):(?P<pw>[^@/\[\]]*)@")
_SECRET_PARAM = re.compile(r"(?i)([?&](?:password|pass|pwd|token)=)[^&]*")

_fake_servers: dict[str, Any] = {}
_fake_lock = threading.Lock()


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, safe to print or log.

    Works on malformed URLs too (it never parses, only rewrites), so an error message that
    quotes a bad URL cannot leak its secret.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(url))
    text = _SECRET_PARAM.sub(r"\1***", text)
    # "redis://secret@host" is redis-py's password-only form: the userinfo is the password.
    return re.sub(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<pw>[^:@/\[\]]+)@", r"\g<scheme>***@", text)


class PoolExhausted(redis.exceptions.MaxConnectionsError):
    """No connection of an asyncio client's pool came free within its wait (`connect_timeout`):
    more requests ran at once, for longer, than `max_connections` serve. A store reports it as
    `StoreUnavailable`."""


def _exhausted(limit: int, wait_s: float | None, what: str) -> PoolExhausted:
    return PoolExhausted(
        f"no connection of the {what} (max_connections={limit}) was free within {wait_s:g} s: every one "
        "stayed busy with other requests; raise max_connections, or connect_timeout to wait longer"
    )


class WaitingConnectionPool(redis.asyncio.BlockingConnectionPool):
    """redis.asyncio's BlockingConnectionPool (a request that finds every connection busy waits
    up to `timeout` seconds for one), whose error when the wait runs out says so
    (`PoolExhausted`) rather than redis-py's "No connection available."."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except redis.exceptions.ConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError) and str(exc) == "No connection available.":
                raise _exhausted(self.max_connections, self.timeout, "pool") from exc
            raise


class WaitingSentinelConnectionPool(redis.asyncio.sentinel.SentinelConnectionPool, WaitingConnectionPool):
    """redis.asyncio's Sentinel pool (every new connection asks the Sentinels where the primary
    is) with the waiting of `WaitingConnectionPool`: redis.asyncio's own Sentinel pool fails a
    request at once with "Too many connections" when a burst passes `max_connections`."""


class _WaitingClusterPipeline(redis.asyncio.cluster.ClusterPipeline):
    """A cluster pipeline whose execution takes one of its client's permits (it uses at most
    one connection per node at a time, as a command does)."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        async with self.cluster_client.permit():
            return await super().execute(*args, **kwargs)


class WaitingRedisCluster(redis.asyncio.cluster.RedisCluster):
    """redis.asyncio's cluster client, whose `max_connections` makes a burst wait rather than fail.

    redis-py's per-node pools cannot wait: a command that finds its node's `max_connections`
    connections busy fails at once with an empty `MaxConnectionsError`. Here every command (and
    pipeline execution) first takes one of `max_connections` permits, waiting up to
    `pool_timeout` seconds for one (then `PoolExhausted`). A command uses at most one
    connection per node at a time, so no node's pool runs out; the limit counts commands in
    flight across the cluster. A WATCH transaction holds its connection between WATCH and
    EXEC outside this count.

    A user refused what a cluster client sends at start (CLUSTER SLOTS, COMMAND) gets
    `AccessDenied` naming the rule to add from the first command, instead of redis-py's
    "Cluster mode is not enabled on this node".
    """

    def __init__(self, *args: Any, pool_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_timeout = pool_timeout
        self.shown = ",".join(f"{n.host}:{n.port}" for n in self.startup_nodes)  # for messages; no secret
        self._permits = asyncio.Semaphore(self.connection_kwargs["max_connections"])

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        """Hold one of the client's `max_connections` permits (waiting up to `pool_timeout`)."""
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self._permits.acquire()
        except TimeoutError:
            limit = self.connection_kwargs["max_connections"]
            raise _exhausted(limit, self.pool_timeout, "cluster client, counted in commands in flight") from None
        try:
            yield
        finally:
            self._permits.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        return _WaitingClusterPipeline(self, transaction)

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().initialize(*args, **kwargs)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            denied = None
            if _MASKED_REFUSAL in str(exc):
                denied = await _probe_cluster_async(self.startup_nodes, self.connection_kwargs, self.shown)
            denied = denied or _refusal_in(exc, self.shown)
            if denied is not None:
                raise denied from exc
            raise


#: What redis-py's cluster client says when a startup node answers CLUSTER SLOTS with an error
#: reply, a NOPERM among them: the refusal is then found by asking again with a plain client
#: (a refused COMMAND comes back as the NOPERM reply itself, found in the chain of causes).
_MASKED_REFUSAL = "Cluster mode is not enabled"


def _cluster_start(shown: str) -> str:
    return f"connecting to Redis Cluster at {shown} (a cluster client first reads the slot map and the command table)"


def _refusal_in(exc: BaseException, shown: str) -> AccessDenied | None:
    """AccessDenied for a NOPERM reply anywhere in `exc`'s chain of causes, else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, redis.exceptions.NoPermissionError):
            denied = classify_reply(cause, _cluster_start(shown))
            if isinstance(denied, AccessDenied):
                return denied
        cause = cause.__cause__ or cause.__context__
    return None


def _probe_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A plain client's keyword arguments for a cluster node: the cluster client's user,
    timeouts and TLS, no retries."""
    options = {k: kwargs.get(k) for k in ("username", "password", "socket_timeout", "socket_connect_timeout")}
    return {**options, **_cluster_tls(kwargs)}


def _probe_cluster(nodes: Any, kwargs: dict[str, Any], shown: str) -> AccessDenied | None:
    """Ask the startup nodes, with a plain client, for what the cluster client asked first
    (CLUSTER SLOTS): AccessDenied when one refuses it to this user, else None."""
    for node in nodes:
        probe = redis.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **_probe_options(kwargs))
        try:
            probe.execute_command("CLUSTER SLOTS")
            return None
        except redis.exceptions.NoPermissionError as exc:
            return _refusal_in(exc, shown)
        except redis.exceptions.ResponseError:
            return None  # a real answer: not a refusal (a server without cluster mode)
        except (redis.exceptions.RedisError, OSError):
            continue
        finally:
            probe.close()
    return None


async def _probe_cluster_async(nodes: Any, kwargs: dict[str, Any], shown: str) -> AccessDenied | None:
    """`_probe_cluster` with an asyncio client."""
    for node in nodes:
        probe = redis.asyncio.Redis(
            host=node.host, port=node.port, retry=AsyncRetry(NoBackoff(), 0), **_probe_options(kwargs)
        )
        try:
            await probe.execute_command("CLUSTER SLOTS")
            return None
        except redis.exceptions.NoPermissionError as exc:
            return _refusal_in(exc, shown)
        except redis.exceptions.ResponseError:
            return None
        except (redis.exceptions.RedisError, OSError):
            continue
        finally:
            await probe.aclose()
    return None


def _bad(url: str, why: str) -> ConnectionURLError:
    forms = "\n  ".join(URL_FORMS)
    return ConnectionURLError(f"bad Redis URL {redact_url(url)!r}: {why}.\nExpected one of:\n  {forms}")


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int


def _parse_port(url: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise _bad(url, f"port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise _bad(url, f"port {port} is outside 1..65535")
    return port


def _cluster_nodes(url: str, netloc: str) -> list[_Endpoint]:
    hosts = netloc.rsplit("@", 1)[-1]
    nodes = []
    for part in filter(None, hosts.split(",")):
        host, sep, port = part.rpartition(":")
        if not sep or not host:
            raise _bad(url, f"cluster node {part!r} needs host:port")
        nodes.append(_Endpoint(host.strip("[]"), _parse_port(url, port)))
    if not nodes:
        raise _bad(url, "a cluster URL needs at least one host:port")
    return nodes


def resolve_url(url: str) -> str:
    """Return `url`, or for `env:NAME` the URL held in environment variable NAME.

    `env:NAME` keeps a password out of notebooks, reports and shell history: the report
    notebook is given `env:STATEKIT_REDIS_URL` whenever the real URL carries a secret.
    """
    if isinstance(url, str) and url.startswith("env:"):
        name = url[4:]
        value = os.environ.get(name)
        if not name or not value:
            raise ConnectionURLError(f"{url!r} names environment variable {name!r}, which is not set")
        return value
    return url


def check_url(url: str) -> str:
    """Validate `url` as `connect` does, without connecting: return it (an `env:NAME` URL
    resolved), or raise `ConnectionURLError` saying what is wrong with it."""
    return _parse(url, 1.0, 1.0, 0)[1]


def _parse(url: str, socket_timeout: float, connect_timeout: float, retries: int) -> tuple[str, str, Any]:
    """Validate `url` and the timeouts; return (scheme, url, parts). One place for `connect`
    and `connect_async`, so both accept and refuse exactly the same URLs."""
    url = resolve_url(url)
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "no scheme")
    if socket_timeout <= 0 or connect_timeout <= 0:
        raise ValueError("socket_timeout and connect_timeout must be positive seconds")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise _bad(url, "no host")
        try:
            port = parts.port  # urllib validates the port only when it is read
        except ValueError:
            raise _bad(url, "the port is not a number in 1..65535") from None
        if port == 0:  # redis-py would take port 0 for "none given" and connect to 6379
            raise _bad(url, "the port is not a number in 1..65535")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _bad(url, f"database {db!r} is not a number")
        _check_query(url, parts, scheme)
    elif scheme == "unix":
        if not parts.path:
            raise _bad(url, "no socket path")
        db = parse_qs(parts.query).get("db", ["0"])[0]
        if not db.isdigit():
            raise _bad(url, f"database {db!r} is not a number")
        _check_query(url, parts, scheme)
    elif scheme in ("redis+cluster", "rediss+cluster"):
        _cluster_nodes(url, parts.netloc)
        _tls_options(url, parts)
    elif scheme in ("redis+sentinel", "rediss+sentinel"):
        _cluster_nodes(url, parts.netloc)
        _sentinel_path(url, parts.path)
        _tls_options(url, parts)
    elif scheme != "fakeredis":
        raise _bad(url, f"unknown scheme {parts.scheme!r}")
    return scheme, url, parts


def _check_query(url: str, parts: Any, scheme: str) -> None:
    """Refuse a query parameter that redis-py would hand to the connection as an unknown keyword
    (it raises TypeError on the first command, deep in a traceback): the parameters redis-py
    parses from a URL, and the keyword arguments of the connection class the scheme uses."""
    import inspect

    from redis.connection import (
        URL_QUERY_ARGUMENT_PARSERS,
        Connection,
        SSLConnection,
        UnixDomainSocketConnection,
    )

    cls = {"redis": Connection, "rediss": SSLConnection, "unix": UnixDomainSocketConnection}[scheme]
    allowed = set(URL_QUERY_ARGUMENT_PARSERS) | {"max_connections", "db"}
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            allowed |= set(inspect.signature(klass.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(parse_qs(parts.query, keep_blank_values=True)) - allowed)
    if unknown:
        raise _bad(url, f"unknown query parameters {unknown} (redis-py takes the connection's keyword arguments)")


def _tls_options(url: str, parts: Any) -> dict[str, Any]:
    """redis-py's TLS keyword arguments for a cluster or Sentinel URL: `ssl=True` for the
    `rediss+` schemes, and the query's TLS parameters (redis-py does not parse these URLs
    itself). A parameter that is not a TLS one, or TLS parameters on a plain scheme, are a
    `ConnectionURLError` rather than silently ignored."""
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(TLS_PARAMS))
    if unknown:
        raise _bad(url, f"unknown query parameters {unknown}; a cluster or Sentinel URL takes {list(TLS_PARAMS)}")
    tls = parts.scheme.lower().startswith("rediss+")
    if query and not tls:
        raise _bad(url, "TLS parameters on a plain-text URL: use rediss+cluster:// or rediss+sentinel://")
    if not tls:
        return {}
    options: dict[str, Any] = {"ssl": True}
    for name, values in query.items():
        value = values[-1]
        if name == "ssl_check_hostname":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise _bad(url, f"ssl_check_hostname={value!r} is not true or false")
            options[name] = value.lower() in ("true", "1", "yes")
        elif name == "ssl_cert_reqs":
            if value not in ("none", "optional", "required"):
                raise _bad(url, f"ssl_cert_reqs={value!r} is not none, optional or required")
            options[name] = value
        else:
            options[name] = value
    return options


def _sentinel_path(url: str, path: str) -> tuple[str, int]:
    """The service name and database of a Sentinel URL's path: `/service_name[/db]`."""
    pieces = [p for p in path.split("/") if p]
    if not pieces or len(pieces) > 2:
        raise _bad(url, "a Sentinel URL names the service after the hosts: /service_name[/db]")
    if len(pieces) == 2 and not pieces[1].isdigit():
        raise _bad(url, f"database {pieces[1]!r} is not a number")
    return pieces[0], int(pieces[1]) if len(pieces) == 2 else 0


def _sentinel_manager(
    cls: Any, addresses: list[tuple[str, int]], options: dict[str, Any], socket_timeout: float,
    connect_timeout: float, **manager_kwargs: Any,
) -> Any:  # fmt: skip
    """A Sentinel manager (`cls`: redis.sentinel.Sentinel or its asyncio twin) whose
    connections to the Sentinels have no retries and a share of the caller's timeouts.

    A new data connection asks the Sentinels where the primary is, one after the other until
    one answers (redis-py then asks that one first). Each Sentinel gets the timeouts divided
    by the number of Sentinels, so that asking all of them, when none answers, still costs at
    most the caller's deadline; a frozen or unreachable first Sentinel leaves the others
    their share of it. `options` are the other settings of the Sentinel connections (TLS).
    """
    retry = (AsyncRetry if cls is redis.asyncio.sentinel.Sentinel else Retry)(NoBackoff(), 0)
    share = len(addresses)
    sentinel_kwargs = {
        **options,
        "socket_timeout": socket_timeout / share,
        "socket_connect_timeout": connect_timeout / share,
        "retry": retry,
    }
    return cls(addresses, sentinel_kwargs=sentinel_kwargs, **manager_kwargs)


def _renewed_sentinel_manager(manager: Any, socket_timeout: float, connect_timeout: float) -> Any:
    """A Sentinel manager like `manager` (its Sentinels, their other settings, its options)
    with these timeouts: the Sentinel connections of the manager of a client that
    `with_timeouts` copies keep their old timeouts."""
    addresses = []
    for sentinel in manager.sentinels:
        kwargs = sentinel.connection_pool.connection_kwargs
        addresses.append((kwargs["host"], kwargs["port"]))
    options = {k: v for k, v in manager.sentinel_kwargs.items() if k not in ("retry", "retry_on_timeout")}
    return _sentinel_manager(
        type(manager),
        addresses,
        options,
        socket_timeout,
        connect_timeout,
        min_other_sentinels=manager.min_other_sentinels,
        force_master_ip=getattr(manager, "_force_master_ip", None),
        **manager.connection_kwargs,
    )


def _sentinel_client(module: Any, url: str, parts: Any, common: dict[str, Any], **pool: Any) -> Any:
    """The primary of a Sentinel-managed service, through `module` (redis.sentinel or
    redis.asyncio.sentinel): every new connection asks the Sentinels where the primary is,
    so the client follows a failover. The URL's user and password are the data nodes'.
    `pool` are the options of the connection pool (its class, limit and wait)."""
    nodes = _cluster_nodes(url, parts.netloc)
    service, db = _sentinel_path(url, parts.path)
    tls = _tls_options(url, parts)
    sentinel = _sentinel_manager(
        module.Sentinel, [(n.host, n.port) for n in nodes], tls, common["socket_timeout"],
        common["socket_connect_timeout"],
    )  # fmt: skip
    return sentinel.master_for(
        service, db=db, username=parts.username or None, password=parts.password or None, **common, **tls, **pool
    )


def _fake_server(parts: Any) -> Any:
    """The embedded server for a fakeredis URL: private, or shared by name in this process."""
    import fakeredis

    name = (parts.netloc + parts.path).strip("/")
    if not name:
        return fakeredis.FakeServer()
    with _fake_lock:
        return _fake_servers.setdefault(name, fakeredis.FakeServer())


def connect(
    url: str = "fakeredis://",
    *,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_S,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    retries: int = 0,
    decode_responses: bool = False,
) -> Any:
    """Return a Redis client for `url` with explicit timeouts and `retries` retries (default none).

    `fakeredis://` gives a private embedded server; `fakeredis://name` the one shared server
    of that name in this process. A malformed URL raises `ConnectionURLError` saying which
    forms are accepted (with any password redacted). Connecting is lazy: use
    `check_reachable(client)` to fail fast on an unreachable server. `env:NAME` reads the
    URL from an environment variable (see `resolve_url`). For asyncio, `connect_async`
    takes the same URLs.
    """
    scheme, url, parts = _parse(url, socket_timeout, connect_timeout, retries)
    if scheme == "fakeredis":
        import fakeredis

        return fakeredis.FakeRedis(server=_fake_server(parts), decode_responses=decode_responses)
    common = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), retries),
        decode_responses=decode_responses,
    )
    if scheme.endswith("+cluster"):
        from redis.cluster import ClusterNode, RedisCluster

        nodes = _cluster_nodes(url, parts.netloc)
        options = dict(username=parts.username or None, password=parts.password or None, **common)
        return _blocking_cluster(RedisCluster, [ClusterNode(n.host, n.port) for n in nodes], options,
                                 _tls_options(url, parts), redact_url(url))  # fmt: skip
    if scheme.endswith("+sentinel"):
        from redis import sentinel

        return _sentinel_client(sentinel, url, parts, common)
    return _from_url(redis.Redis, url, common)


def _blocking_cluster(cls: Any, nodes: list[Any], options: dict[str, Any], tls: dict[str, Any], shown: str) -> Any:
    """A blocking RedisCluster: it reads the slot map and the command table at construction,
    so an unreachable cluster fails here (`StoreUnavailable`), and so does a user refused
    those commands (`AccessDenied` naming the rule to add)."""
    try:
        return cls(startup_nodes=nodes, **options, **tls)
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        denied = _probe_cluster(nodes, {**options, **tls}, shown) if _MASKED_REFUSAL in str(exc) else None
        denied = denied or _refusal_in(exc, shown)
        if denied is not None:
            raise denied from None
        raise StoreUnavailable(f"cannot reach Redis Cluster at {shown}: {redact_url(str(exc))}") from None


def connect_async(
    url: str = "fakeredis://",
    *,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_S,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    retries: int = 0,
    decode_responses: bool = False,
    max_connections: int = 100,
) -> Any:
    """An asyncio client for `url`, with the same URL forms, timeouts and retries as `connect`.

    `fakeredis://name` is the same embedded server that `connect("fakeredis://name")` uses,
    so a blocking and an asyncio client of one process can share it. Connecting is lazy (a
    cluster reads its slot map on the first command): `await check_reachable_async(client)`
    fails fast instead.

    The pool holds at most `max_connections` connections, and a coroutine that finds them
    all busy waits for one for up to `connect_timeout` (redis.asyncio's default pool would
    fail it at once with "Too many connections" when a burst of requests passes its limit);
    when the wait runs out, `PoolExhausted` says so. So on every backend: a single server and
    Sentinel (`WaitingConnectionPool`, `WaitingSentinelConnectionPool`) and a cluster, where
    the limit counts commands in flight (`WaitingRedisCluster`). A cluster user refused what
    a cluster client sends first gets `AccessDenied` from the first command.
    """
    scheme, url, parts = _parse(url, socket_timeout, connect_timeout, retries)
    if max_connections < 1:
        raise ValueError("max_connections must be >= 1")
    if scheme == "fakeredis":
        import fakeredis

        client = fakeredis.FakeAsyncRedis(
            server=_fake_server(parts),
            decode_responses=decode_responses,
            connection_pool_class=WaitingConnectionPool,
            max_connections=max_connections,
        )
        client.connection_pool.timeout = connect_timeout
        return client
    common = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=AsyncRetry(NoBackoff(), retries),
        decode_responses=decode_responses,
    )
    if scheme.endswith("+cluster"):
        nodes = _cluster_nodes(url, parts.netloc)
        cluster = WaitingRedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(n.host, n.port) for n in nodes],
            username=parts.username or None,
            password=parts.password or None,
            max_connections=max_connections,
            pool_timeout=connect_timeout,
            **common,
            **_tls_options(url, parts),
        )
        cluster.shown = redact_url(url)
        return cluster
    if scheme.endswith("+sentinel"):
        pool_options = dict(
            connection_pool_class=WaitingSentinelConnectionPool,
            max_connections=max_connections,
            timeout=connect_timeout,
        )
        return _sentinel_client(redis.asyncio.sentinel, url, parts, common, **pool_options)
    try:
        pool = WaitingConnectionPool.from_url(url, max_connections=max_connections, timeout=connect_timeout, **common)
    except ValueError as exc:
        raise _bad(url, f"a query parameter is not valid ({str(exc).rstrip('.')})") from None
    return redis.asyncio.Redis(connection_pool=pool)


def _from_url(cls: Any, url: str, options: dict[str, Any]) -> Any:
    """redis-py's from_url, with its ValueError for a bad query string made a ConnectionURLError."""
    try:
        return cls.from_url(url, **options)
    except ValueError as exc:
        raise _bad(url, f"a query parameter is not valid ({str(exc).rstrip('.')})") from None


def with_timeouts(client: Any, socket_timeout: float, connect_timeout: float | None = None) -> Any:
    """A client for the same server as `client` with its own pool, these timeouts and no retries.

    ResilientStore uses it so that its deadline is enforced by the socket, not by a timer
    around a call that may still be running. The wait for a free connection of a pool that
    waits (a burst past `max_connections`) is bounded by `connect_timeout` too: a call that
    queues for a connection costs no more than one that gets one.
    """
    connect_timeout = socket_timeout if connect_timeout is None else connect_timeout
    if socket_timeout <= 0 or connect_timeout <= 0:
        raise ValueError("timeouts must be positive seconds")
    asynchronous = is_async(client)
    retry = AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)
    if backend_kind(client) == "cluster":
        options: dict[str, Any] = dict(
            socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, retry=retry
        )
        if asynchronous:
            kwargs, nodes = client.connection_kwargs, client.nodes_manager.startup_nodes.values()
            options.update(
                username=kwargs.get("username"),
                password=kwargs.get("password"),
                max_connections=kwargs["max_connections"],
            )
            waiting = isinstance(client, WaitingRedisCluster)
            if waiting:  # its wait for a permit, as its limit, within the deadline
                options["pool_timeout"] = min(client.pool_timeout or connect_timeout, connect_timeout)
            copy = (type(client) if waiting else redis.asyncio.cluster.RedisCluster)(
                startup_nodes=[redis.asyncio.cluster.ClusterNode(n.host, n.port) for n in nodes],
                **options,
                **_cluster_tls(kwargs),
            )
            if waiting:
                copy.shown = client.shown
            return copy
        kwargs, nodes = client.nodes_manager.connection_kwargs, client.get_primaries()
        options.update(username=kwargs.get("username"), password=kwargs.get("password"))
        startup = [redis.cluster.ClusterNode(n.host, n.port) for n in nodes]
        shown = ",".join(f"{n.host}:{n.port}" for n in nodes)
        return _blocking_cluster(redis.cluster.RedisCluster, startup, options, _cluster_tls(kwargs), shown)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(retry=retry, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout)
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:  # its Sentinel connections get the new timeouts too
        manager = _renewed_sentinel_manager(manager, socket_timeout, connect_timeout)
    return type(client)(connection_pool=_same_pool(pool, kwargs, manager, wait_s=connect_timeout))


def _cluster_tls(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The TLS settings of a cluster client's connections, as keyword arguments for a new
    RedisCluster (the blocking client keeps `ssl=True`, the asyncio one an SSLConnection class)."""
    tls = kwargs.get("ssl") or "SSL" in getattr(kwargs.get("connection_class"), "__name__", "")
    if not tls:
        return {}
    return {"ssl": True, **{k: v for k, v in kwargs.items() if k.startswith("ssl_") and v is not None}}


def _same_pool(
    pool: Any, connection_kwargs: dict[str, Any], sentinel_manager: Any = None, wait_s: float | None = None
) -> Any:
    """A new pool of the same class with the user's settings: its limits (max connections, a
    blocking pool's wait, at most `wait_s`), its client-side cache configuration (in the
    connection kwargs), a Sentinel pool's service and Sentinels (through `sentinel_manager`
    when given)."""
    kwargs = {k: v for k, v in connection_kwargs.items() if k != "connection_pool"}
    kwargs["max_connections"] = pool.max_connections
    if hasattr(pool, "timeout"):  # a BlockingConnectionPool
        waits = [w for w in (pool.timeout, wait_s) if w is not None]
        kwargs["timeout"] = min(waits) if waits else None
    if getattr(pool, "_cache_factory", None) is not None:
        kwargs["cache_factory"] = pool._cache_factory
    if hasattr(pool, "service_name") and hasattr(pool, "sentinel_manager"):
        kwargs.update(is_master=pool.is_master, check_connection=pool.check_connection)
        manager = sentinel_manager if sentinel_manager is not None else pool.sentinel_manager
        return type(pool)(pool.service_name, manager, connection_class=pool.connection_class, **kwargs)
    return type(pool)(connection_class=pool.connection_class, **kwargs)


def is_async(client: Any) -> bool:
    """True for an asyncio client (redis.asyncio, its cluster client, FakeAsyncRedis)."""
    return inspect.iscoroutinefunction(getattr(client, "execute_command", None))


def backend_kind(client: Any) -> str:
    """Name the kind of backend behind `client`: "fakeredis", "cluster" or "redis"."""
    module = type(client).__module__
    if module.startswith("fakeredis"):
        return "fakeredis"
    if isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)):
        return "cluster"
    return "redis"


@dataclass(frozen=True)
class BackendInfo:
    """What a review says about the Redis it ran against."""

    url: str
    kind: str
    server_version: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "server_version": self.server_version}


def connection_hint(error: BaseException | str, tls: bool | None = None) -> str:
    """What a connection error most likely means, in a sentence (or '' when nothing specific):
    TLS certificates a client does not trust, a server that wants a client certificate, TLS
    spoken to a plain-text port or the other way round. `tls` says whether the client spoke
    TLS (None: unknown)."""
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "hostname" in text.lower() or "IP address mismatch" in text:
            return "TLS: the server's certificate does not name this host (check the host, or ssl_check_hostname)"
        return (
            "TLS: the server's certificate is not signed by a CA this client trusts; "
            "give the CA with ?ssl_ca_certs=/path/to/ca.pem"
        )
    if "certificate required" in text.lower() or (tls and "EOF occurred in violation of protocol" in text):
        return (
            "TLS: the server closed the connection after the handshake, as it does when it requires a client "
            "certificate (tls-auth-clients); give one with ?ssl_certfile=...&ssl_keyfile=..."
        )
    if tls and ("WRONG_VERSION_NUMBER" in text or "Timeout connecting" in text or "record layer" in text):
        return "TLS: the server did not answer the TLS handshake; if this is a plain-text port, use redis://"
    if tls is False and ("Connection reset by peer" in text or "Connection closed by server" in text):
        return "the server closed the connection at once: if it speaks TLS, use rediss://"
    return ""


def _speaks_tls(client: Any) -> bool | None:
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    return "SSL" in getattr(pool.connection_class, "__name__", "")


_PING_FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_PING_REFUSALS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)  # e.g. AUTH failures


def _ping_failed(exc: BaseException, client: Any, shown: str) -> StoreUnavailable:
    """The StoreUnavailable for a failed PING: the cause in a sentence where it is known."""
    if not isinstance(exc, _PING_FAILURES):
        return StoreUnavailable(f"Redis at {shown} refused the connection: {redact_url(str(exc))}")
    hint = connection_hint(exc, _speaks_tls(client))
    advice = (
        f"{hint}."
        if hint
        else "Check that the server runs and the URL is right, or use fakeredis:// for an embedded one."
    )
    return StoreUnavailable(f"cannot reach Redis at {shown}: {redact_url(str(exc)).rstrip('.')}. {advice}")


def _server_version(info: Any, kind: str) -> str | None:
    """redis_version from INFO server (a dict per node on a cluster: the first one's)."""
    if kind == "cluster" and info and isinstance(next(iter(info.values())), dict):
        info = next(iter(info.values()))
    return str(info.get("redis_version")) if isinstance(info, dict) else None


def check_reachable(client: Any, url: str = "") -> BackendInfo:
    """PING the server; raise `StoreUnavailable` (URL redacted) when it cannot be reached.

    Reports the server version from INFO on a real server; fakeredis has no real INFO, and
    a user whose ACL forbids INFO cannot read it, so either reports None rather than a guess.
    """
    kind = backend_kind(client)
    shown = redact_url(resolve_url(url)) if url else kind
    try:
        client.ping()
    except (*_PING_FAILURES, *_PING_REFUSALS) as exc:
        raise _ping_failed(exc, client, shown) from None
    info = None
    if kind != "fakeredis":
        with contextlib.suppress(redis.exceptions.NoPermissionError):  # least privilege: reachable all the same
            info = client.info("server")
    return BackendInfo(url=shown, kind=kind, server_version=_server_version(info, kind))


async def check_reachable_async(client: Any, url: str = "") -> BackendInfo:
    """`check_reachable` for an asyncio client: PING, then the server version from INFO."""
    kind = backend_kind(client)
    shown = redact_url(resolve_url(url)) if url else kind
    try:
        await client.ping()
    except (*_PING_FAILURES, *_PING_REFUSALS) as exc:
        raise _ping_failed(exc, client, shown) from None
    info = None
    if kind != "fakeredis":
        with contextlib.suppress(redis.exceptions.NoPermissionError):
            info = await client.info("server")
    return BackendInfo(url=shown, kind=kind, server_version=_server_version(info, kind))
