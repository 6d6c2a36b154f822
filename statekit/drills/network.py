"""Network drills: an application's requests through a `ResilientStore` set up from a profile,
while the link is slow, half-open or flapping (`statekit network-drill`)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from statekit.testing.proxy import TcpProxy
from statekit.testing.servers import RedisServer

#: The impairments `network_drills` puts on the link, by name.
NETWORK_DRILLS = ("latency", "half_open", "flapping")


def network_drill(
    profile: Any,
    drill: str,
    *,
    redis_url: str,
    latency_ms: float = 200,
    jitter_ms: float = 20,
    before_s: float = 1.0,
    impaired_s: float = 2.0,
    interval_ms: float = 20,
    flap_ms: float = 300,
    reset_timeout_s: float | None = None,
    sessions: int = 10,
) -> dict[str, Any]:
    """Run an application's requests (load the context, append a turn) through a
    `ResilientStore` set up as `resilience.recommend(profile)` says, over a `TcpProxy` in
    front of the redis-server at `redis_url` (`redis://`, same user and database), while the
    link is impaired by `drill`:

    - `latency`: `latency_ms` more per round trip (half each way), jitter `jitter_ms`;
    - `half_open`: replies from the server are lost, the connection stays up (requests land);
    - `flapping`: the link goes down and comes back every `flap_ms`; connections open when
      it comes back are reset.

    Phases: `before_s` healthy, `impaired_s` impaired, then healed until the store is normal
    with its buffer empty. Returns per phase and call the p50/p99/max latency (ms), what
    the application saw (contexts from the store, the cache or the default; exceptions
    raised to it), the breaker's transitions (`opened`: closed to open, the flaps), and the
    turns it was told were stored against those found afterwards (lost, duplicated), read
    by a client that does not go through the proxy.
    """
    from statekit._optional import require

    np = require("numpy", what="statekit network-drill")

    from statekit.backends import connect
    from statekit.decide.resilience import recommend
    from statekit.lifecycle import LifecyclePolicy
    from statekit.resilience.store import ResilientStore
    from statekit.store.blocking import SessionStore
    from statekit.store.core import StoreListener

    if drill not in NETWORK_DRILLS:
        raise ValueError(f"drill is one of {NETWORK_DRILLS}, got {drill!r}")
    settings = recommend(profile)
    reset_s = settings["reset_timeout_s"] if reset_timeout_s is None else reset_timeout_s
    events: list[tuple[float, str, str]] = []

    class Transitions(StoreListener):
        def on_event(self, kind: str, session_id: str, info: Any) -> None:
            if kind == "breaker":
                events.append((time.monotonic(), str(info["from"]), str(info["to"])))

    namespace = f"net-{drill}-{os.urandom(3).hex()}"
    policy = LifecyclePolicy(window_turns=1000, max_bytes=1 << 20, summarizer=None, summary_max_bytes=0)
    parts = _drill_url(redis_url)
    try:
        with TcpProxy(parts.port or 6379, upstream_host=parts.hostname or "127.0.0.1").start() as proxy:
            auth = parts.netloc.rpartition("@")[0]
            client = connect(
                urlunsplit(parts._replace(netloc=(auth + "@" if auth else "") + f"127.0.0.1:{proxy.port}"))
            )
            resilient = ResilientStore(
                SessionStore(client, policy, namespace=namespace),
                timeout_ms=settings["timeout_ms"],
                fail_max=settings["fail_max"],
                reset_timeout_s=reset_s,
                buffer_max_turns=100_000,
                listeners=[Transitions()],
            )
            calls: list[dict[str, Any]] = []
            acked: list[str] = []
            raised: list[str] = []
            n = 0

            def request(phase: str) -> None:
                nonlocal n
                sid, tid = f"s{n % sessions}", f"t{n}"
                n += 1
                for op in ("load_context", "append_turn"):
                    t0 = time.perf_counter()
                    try:
                        if op == "load_context":
                            out = resilient.load_context(sid).source
                        else:
                            stored = resilient.append_turn(sid, {"n": n}, turn_id=tid)  # None: buffered
                            out = "buffered" if stored is None else "store"
                            acked.append(tid)
                    except Exception as exc:  # noqa: BLE001 - what reaches the application is the finding
                        raised.append(f"{op}: {type(exc).__name__}: {exc}")
                        out = "raised"
                    calls.append({"phase": phase, "op": op, "ms": (time.perf_counter() - t0) * 1000, "saw": out})

            def run(phase: str, seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    request(phase)
                    time.sleep(interval_ms / 1000)  # the application's pace between requests

            run("before", before_s)
            impaired_at = time.monotonic()
            flapper: threading.Thread | None = None
            stop_flapping = threading.Event()
            if drill == "latency":
                proxy.delay_ms, proxy.jitter_ms = latency_ms / 2, jitter_ms / 2
            elif drill == "half_open":
                proxy.drop("down")
            else:

                def flap() -> None:
                    while not stop_flapping.wait(flap_ms / 1000):
                        proxy.stall()
                        if stop_flapping.wait(flap_ms / 1000):
                            break
                        proxy.cut()
                        proxy.resume()

                flapper = threading.Thread(target=flap, daemon=True)
                flapper.start()
            run("impaired", impaired_s)
            stop_flapping.set()
            if flapper is not None:
                flapper.join()
            breaker_at_heal = str(resilient.breaker.current_state)
            proxy.delay_ms = proxy.jitter_ms = 0
            proxy.heal()
            healed_at = time.monotonic()
            # after: requests go on until the store is normal with its buffer empty (waits on that
            # state, bounded by two probe intervals and ten seconds)
            deadline = healed_at + 2 * reset_s + 10
            while time.monotonic() < deadline and (resilient.mode != "normal" or resilient.buffered):
                request("after")
                time.sleep(interval_ms / 1000)
            left = resilient.drain(timeout_s=max(1.0, deadline - time.monotonic()))
            recovered_s = time.monotonic() - healed_at
            mode_after = resilient.mode
            client.close()

        direct = connect(redis_url)
        try:
            reader = SessionStore(direct, policy, namespace=namespace)
            stored = [tid for i in range(sessions) for tid in reader.load_context(f"s{i}").turn_ids]
        finally:
            direct.close()
    except BaseException:
        # an interrupted drill removes its keys too; should that fail as well (the server is
        # gone), the interruption is what to report
        with contextlib.suppress(Exception):
            _remove_keys(redis_url, namespace)
        raise
    _remove_keys(redis_url, namespace)

    def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ms = np.array([r["ms"] for r in rows]) if rows else np.array([0.0])
        saw = dict(Counter(r["saw"] for r in rows))
        return {
            "calls": len(rows),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2),
            "saw": saw,
        }

    phases = {
        phase: {
            op: figures([r for r in calls if r["phase"] == phase and r["op"] == op])
            for op in ("load_context", "append_turn")
        }
        for phase in ("before", "impaired", "after")
    }
    opened = sum(1 for _, old, new in events if old == "closed" and new == "open")
    return {
        "drill": drill,
        "impairment": {
            "latency": f"+{latency_ms:g} ms per round trip, jitter +/-{jitter_ms:g} ms",
            "half_open": "replies from the server lost, connections left open",
            "flapping": f"link down and up every {flap_ms:g} ms, connections reset when it returns",
        }[drill],
        "profile": profile.name,
        "settings": {
            "timeout_ms": settings["timeout_ms"],
            "fail_max": settings["fail_max"],
            "reset_timeout_s": reset_s,
        },
        "phases": phases,
        "breaker": {
            "opened": opened,
            "closed_again": sum(1 for _, old, new in events if old != "closed" and new == "closed"),
            # during the impairment alone (a loaded machine can also time calls out before it)
            "opened_while_impaired": sum(
                1 for t, old, new in events if old == "closed" and new == "open" and impaired_at <= t <= healed_at
            ),
            "state_at_heal": breaker_at_heal,
            "closed_while_impaired": sum(
                1 for t, old, new in events if old != "closed" and new == "closed" and impaired_at <= t <= healed_at
            ),
            "transitions": [{"at_s": round(t - impaired_at, 3), "from": old, "to": new} for t, old, new in events],
        },
        "raised_to_application": raised,
        "turns": {
            "acknowledged": len(acked),
            "stored": len(set(stored)),
            "lost": len(set(acked) - set(stored)),
            "duplicated": len(stored) - len(set(stored)),
            "still_buffered": left,
        },
        "connections": proxy.connections,
        "recovered_s": round(recovered_s, 2),
        "mode_after": mode_after,
    }


def _remove_keys(redis_url: str, namespace: str) -> None:
    """Delete every key of the drill's `namespace` on the server itself (not through the
    proxy). The namespace is the drill's own (`net-<drill>-<random>`): no key of the user's
    matches it."""
    from statekit.backends import connect
    from statekit.keys import key_pattern

    client = connect(redis_url)
    try:
        for keys in _batches(client.scan_iter(match=key_pattern(namespace), count=500), 500):
            client.unlink(*keys)
    finally:
        client.close()


def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _drill_url(redis_url: str) -> Any:
    """The parts of a `redis://` URL the network drills can put a proxy in front of;
    `InvalidInput` for any other."""
    from statekit.backends import check_url
    from statekit.errors import InvalidInput

    url = check_url(redis_url)  # a malformed URL is refused as `connect` refuses it
    parts = urlsplit(url)
    if parts.scheme == "fakeredis":
        raise InvalidInput(
            "the network drills need a real redis-server: the proxy impairs a TCP connection, and an "
            "embedded fakeredis has none (give no URL to start a server on loopback)"
        )
    if parts.scheme != "redis" or not parts.hostname or "," in parts.netloc:
        raise InvalidInput(
            f"the network drills put a proxy in front of one server, redis://[user:password@]host:port[/db]; "
            f"got {redis_url!r} (TLS, cluster and Sentinel URLs are not proxied)"
        )
    return parts


def network_drills(
    profile: Any, redis_url: str | None = None, drills: Sequence[str] = NETWORK_DRILLS, **options: Any
) -> dict[str, Any]:
    """Every network drill in `drills` for `profile` (see `network_drill`), on the
    redis-server at `redis_url`, or on one started here on loopback and stopped by its pid.

    The drills need a TCP connection to impair: an embedded fakeredis (`fakeredis://`), a
    TLS, cluster or Sentinel URL is refused with `InvalidInput` before anything starts.
    """
    import datetime as dt

    unknown = sorted(set(drills) - set(NETWORK_DRILLS))
    if unknown:
        raise ValueError(f"unknown drills {unknown}; the drills are {list(NETWORK_DRILLS)}")
    server: RedisServer | None = None
    if redis_url is None:
        server = RedisServer().start()
        redis_url = server.url
    else:
        _drill_url(redis_url)
    try:
        results = {name: network_drill(profile, name, redis_url=redis_url, **options) for name in drills}
    finally:
        if server is not None:
            server.stop()
    return {"measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "drills": results}
