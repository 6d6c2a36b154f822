"""Slow and lossy networks: the TCP proxy's impairments, and the drills that put a
ResilientStore, set up from a profile, behind them."""

from __future__ import annotations

import json
import time

import pytest
import redis

from statekit import connect
from statekit.decide.profile import WorkloadProfile
from statekit.drills.network import network_drills
from statekit.errors import InvalidInput
from statekit.testing import TcpProxy

pytestmark = pytest.mark.realredis


@pytest.fixture
def proxy(redis_server):
    with TcpProxy(redis_server.port) as p:
        yield p


def _client(proxy: TcpProxy, timeout: float = 1.0):
    """A statekit client through the proxy: explicit timeouts and no retries, so each
    impairment shows instead of being retried away."""
    return connect(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=timeout)


def test_added_latency_is_paid_each_way(proxy):
    client = _client(proxy)
    client.ping()
    proxy.delay_ms, proxy.jitter_ms = 50, 5
    start = time.perf_counter()
    client.ping()
    # a lower bound: the proxy holds each chunk at least delay - jitter, each way
    assert time.perf_counter() - start >= 2 * 0.045


def test_a_half_open_link_delivers_requests_and_loses_replies(proxy, redis_server):
    client = _client(proxy, timeout=0.3)
    client.ping()
    proxy.drop("down")
    with pytest.raises(redis.exceptions.TimeoutError):
        client.set("half-open", "landed")
    assert redis_server.client().get("half-open") == b"landed", "the request reached the server"
    proxy.heal()
    assert _client(proxy).get("half-open") == b"landed"


def test_a_stalled_link_passes_nothing_until_it_resumes(proxy):
    client = _client(proxy, timeout=0.3)
    client.ping()
    proxy.stall()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    proxy.resume()
    assert _client(proxy).ping()


def test_a_cut_fails_the_request_in_flight_and_new_connections_are_accepted(proxy):
    import concurrent.futures

    client = _client(proxy, timeout=30)
    client.ping()
    proxy.stall()
    sent = proxy.received["up"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.ping)
        assert proxy.wait_received("up", sent + 1), "the request reached the proxy"
        assert proxy.cut() == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            in_flight.result(timeout=20)  # reset, not left to its 30 s timeout
    proxy.resume()
    assert client.ping(), "the next call connects again"
    assert proxy.connections == 2
    # redis-py checks an idle pooled connection before use: a cut between calls is not seen
    proxy.cut()
    assert client.ping() and proxy.connections == 3


def test_the_drills_degrade_without_flapping_and_lose_nothing(redis_server, profiles_dir):
    """support_agent's budget gives a 16 ms timeout: 200 ms more per round trip cannot fit,
    so the application reads from its cache and buffers its turns; a half-open link drops
    replies of requests that landed (the replay must not store them twice); a link that
    flaps every 300 ms fails more of the drill's calls (one every 10 ms) than the breaker's
    fail_max, which is sized for each process's share of the profile's peak (4): the breaker
    opens with the flaps and closes again, and nothing is lost or raised."""
    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    result = network_drills(profile, redis_server.url, reset_timeout_s=0.5, impaired_s=1.5)["drills"]
    for name, drill in result.items():
        assert drill["raised_to_application"] == [], name
        turns = drill["turns"]
        assert turns["acknowledged"] > 0 and (turns["lost"], turns["duplicated"], turns["still_buffered"]) == (0, 0, 0)
        assert drill["mode_after"] == "normal", name
    latency, half_open, flapping = result["latency"], result["half_open"], result["flapping"]
    timeout = latency["settings"]["timeout_ms"]
    assert timeout < 200
    # opened once and stayed open (each probe during the impairment failed): no flapping. (Counted
    # during the impairment: on a loaded machine four calls in a row can also pass the 16 ms
    # timeout before it, which opens the breaker as it should.)
    breaker = latency["breaker"]
    assert breaker["opened_while_impaired"] <= 1 and breaker["closed_while_impaired"] == 0
    assert breaker["state_at_heal"] == "open" and breaker["opened"] >= 1
    assert latency["breaker"]["closed_again"] == latency["breaker"]["opened"]
    impaired = latency["phases"]["impaired"]
    # the deadline is the feature: without it every call would take 200 ms or more; the
    # median call answers from the cache (margin: 200 ms less the 16 ms timeout)
    assert impaired["load_context"]["p50_ms"] < 200 and impaired["append_turn"]["p50_ms"] < 200
    assert impaired["load_context"]["saw"].keys() <= {"cache", "default"}
    assert impaired["append_turn"]["saw"] == {"buffered": impaired["append_turn"]["calls"]}
    breaker = half_open["breaker"]
    assert breaker["opened_while_impaired"] <= 1 and breaker["closed_while_impaired"] == 0
    assert breaker["state_at_heal"] == "open"
    assert flapping["settings"]["fail_max"] < 300 / 20, "a flap fails more calls than fail_max"
    assert flapping["breaker"]["opened"] >= 1 and flapping["breaker"]["closed_again"] == flapping["breaker"]["opened"]
    saw = flapping["phases"]["impaired"]["append_turn"]["saw"]
    assert saw.get("store", 0) > 0, "between flaps the store answers"


def test_drills_refuse_what_they_cannot_proxy(profiles_dir):
    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    with pytest.raises(InvalidInput, match="need a real redis-server"):
        network_drills(profile, "fakeredis://")
    with pytest.raises(InvalidInput, match="one server"):
        network_drills(profile, "redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    with pytest.raises(ValueError, match="unknown drills"):
        network_drills(profile, "redis://127.0.0.1:6379/0", drills=["earthquake"])
    assert connect("fakeredis://").ping()


def test_the_cli_reports_a_drill_and_refuses_fakeredis(redis_server, profiles_dir, capsys):
    from statekit.cli import main

    profile = str(profiles_dir / "support_agent.yaml")
    assert main(["network-drill", profile, "--redis-url", redis_server.url, "--drill", "flapping"]) == 0
    out = capsys.readouterr().out
    assert "flapping: link down and up every 300 ms" in out and "timeout 16 ms" in out and "lost 0, duplicated 0" in out
    assert main(["network-drill", profile, "--redis-url", "fakeredis://"]) == 2
    assert "need a real redis-server" in capsys.readouterr().err


def _drill_keys(url: str) -> set[bytes]:
    return set(connect(url).scan_iter(match="net-*"))


def test_the_cli_drill_removes_its_keys_and_leaves_the_users(redis_url, profiles_dir, capsys):
    """`statekit network-drill --redis-url URL` left its `net-*` sessions on the user's server."""
    from statekit.cli import main

    user = connect(redis_url)
    user.set("net-config", "the user's, not the drill's")
    user.set("app:{s1}:state", "mine")
    assert main(["network-drill", str(profiles_dir / "support_agent.yaml"), "--redis-url", redis_url,
                 "--drill", "latency", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)["drills"]["latency"]
    assert result["turns"]["stored"] > 0, "the drill wrote sessions of its own"
    assert _drill_keys(redis_url) == {b"net-config"}
    assert user.get("net-config") == b"the user's, not the drill's" and user.get("app:{s1}:state") == b"mine"


def test_an_interrupted_drill_removes_its_keys_too(redis_url, profiles_dir, monkeypatch):
    user = connect(redis_url)
    user.set("app:{s1}:state", "mine")
    written: list[bytes] = []

    def interrupted(proxy: TcpProxy) -> None:
        written.extend(_drill_keys(redis_url))
        raise RuntimeError("interrupted while the link was impaired")

    monkeypatch.setattr(TcpProxy, "heal", interrupted)
    profile = WorkloadProfile.from_yaml(profiles_dir / "support_agent.yaml")
    with pytest.raises(RuntimeError, match="interrupted while the link was impaired"):
        network_drills(profile, redis_url, drills=["half_open"], before_s=0.3, impaired_s=0.3)
    assert written, "the drill had written keys when it was interrupted"
    assert _drill_keys(redis_url) == set()
    assert user.get("app:{s1}:state") == b"mine"


def test_a_drill_whose_store_did_not_recover_says_so_and_exits_1(monkeypatch, profiles_dir, capsys):
    """The CLI printed "normal again 31 s after the link healed" and exited 0 for a store still
    degraded when the drill ended, its buffered turns counted as lost."""
    from statekit.cli import main
    from statekit.drills import network

    def drill(mode: str, buffered: int) -> dict:
        phase = {"calls": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "saw": {}}
        return {
            "impairment": "link down and up every 300 ms", "profile": "support_agent",
            "settings": {"timeout_ms": 16, "fail_max": 4, "reset_timeout_s": 10},
            "phases": {"before": {"load_context": phase}}, "breaker": {"opened": 2, "closed_again": 1},
            "raised_to_application": [], "turns": {"acknowledged": 10, "lost": buffered, "duplicated": 0,
                                                   "still_buffered": buffered},
            "recovered_s": 31.03, "mode_after": mode,
        }  # fmt: skip

    results = {"flapping": drill("degraded", 7), "latency": drill("normal", 0)}
    monkeypatch.setattr(network, "network_drills", lambda *a, **k: {"drills": results})
    code = main(["network-drill", str(profiles_dir / "support_agent.yaml"), "--redis-url", "redis://127.0.0.1:1/0"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "NOT recovered: still degraded 31.03 s after the link healed, 7 turns still buffered" in out
    assert "normal again 31.03 s" in out, "the drill that did recover says so"
    assert err.strip() == "statekit: error: the store did not recover after the flapping drill(s)"
