"""ResilientStore: its cost when all is well, and its behaviour when Redis is frozen.

    python benchmarks/bench_resilience.py [--iterations N] [--json FILE] [--check]

Starts its own redis-server on a loopback port. Measures, in one run:
  1. overhead: ResilientStore against the SessionStore it wraps, load_context and
     append_turn interleaved call by call; the difference of the medians, in microseconds;
  2. a frozen server (SIGSTOP), breaker still closed: each call's latency against the
     100 ms deadline; then a killed server: one call of a redis-py client with its
     defaults (10 retries with backoff on a refused connection) against ResilientStore's;
  3. breaker open: latency per call (no store call is made);
  4. recovery: from SIGCONT until mode is 'normal' again, with calls every 10 ms.
--check exits 1 when a floor is missed: overhead <= 5 us at p50; hung calls <= timeout +
20 ms; open-breaker p99 <= 1 ms; recovery <= reset_timeout + 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.testing import RedisServer  # noqa: E402

TIMEOUT_MS, RESET_S, FAIL_MAX = 100, 2.0, 5


def turn(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"turn {i}: " + "lorem ipsum " * 57}


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def overhead(url: str, iterations: int) -> dict:
    policy = sk.LifecyclePolicy(window_turns=10)
    plain = sk.SessionStore(sk.connect(url), policy, namespace="plain")
    rs = sk.ResilientStore(sk.SessionStore(sk.connect(url), policy, namespace="res"), timeout_ms=TIMEOUT_MS)
    for i in range(40):
        plain.append_turn("s", turn(i))
        rs.append_turn("s", turn(i))
        plain.load_context("s")
        rs.load_context("s")
    samples: dict[str, list[int]] = {
        k: [] for k in ("load plain", "load resilient", "append plain", "append resilient")
    }
    perf = time.perf_counter_ns
    for i in range(iterations):
        pairs = [
            ("load plain", lambda: plain.load_context("s")),
            ("load resilient", lambda: rs.load_context("s")),
            ("append plain", lambda n=i: plain.append_turn("s", turn(n))),
            ("append resilient", lambda n=i: rs.append_turn("s", turn(n))),
        ]
        if i % 2:
            pairs.reverse()
        for name, fn in pairs:
            t0 = perf()
            fn()
            samples[name].append(perf() - t0)
    us = {k: p(v, 50) / 1e3 for k, v in samples.items()}
    return {
        "p50_us": us,
        "load_overhead_us": us["load resilient"] - us["load plain"],
        "append_overhead_us": us["append resilient"] - us["append plain"],
    }


def outage(server: RedisServer) -> dict:
    url = server.url
    rs = sk.ResilientStore(
        sk.SessionStore(sk.connect(url)), timeout_ms=TIMEOUT_MS, fail_max=FAIL_MAX, reset_timeout_s=RESET_S
    )
    rs.append_turn("s", turn(0))
    rs.load_context("s")
    os.kill(server.pid, signal.SIGSTOP)
    try:
        hung = []
        while rs.breaker_state == "closed":
            t0 = time.perf_counter()
            rs.load_context("s")
            hung.append((time.perf_counter() - t0) * 1000)
        open_calls = []
        for i in range(2000):
            t0 = time.perf_counter()
            rs.load_context("s") if i % 2 else rs.append_turn("s", turn(i))
            open_calls.append((time.perf_counter() - t0) * 1000)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    back = time.perf_counter()
    while rs.mode != "normal":
        rs.load_context("s")
        time.sleep(0.01)
    recovery_s = time.perf_counter() - back

    # a killed server: redis-py's defaults against a fresh ResilientStore
    # redis.Redis(host, port) carries redis-py 8's default retry policy (10 retries with backoff);
    # Redis.from_url builds its pool without it, so it would not show the defaults' cost
    defaults = redis.Redis(host="127.0.0.1", port=server.port)
    defaults.ping()
    fresh = sk.ResilientStore(sk.SessionStore(sk.connect(url)), timeout_ms=TIMEOUT_MS)
    fresh.load_context("s")
    server.kill()
    t0 = time.perf_counter()
    try:
        defaults.get("x")
        retry_outcome = "answered"
    except redis.exceptions.RedisError as exc:
        retry_outcome = type(exc).__name__
    retrying_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    fresh.load_context("s")
    statekit_killed_ms = (time.perf_counter() - t0) * 1000
    server.restart()
    return {
        "hung_calls_ms": {"count": len(hung), "max": max(hung), "p50": p(hung, 50)},
        "killed_server_redis_py_defaults_one_call_ms": retrying_ms,
        "killed_server_redis_py_defaults_outcome": retry_outcome,
        "killed_server_statekit_one_call_ms": statekit_killed_ms,
        "open_breaker_ms": {"p50": p(open_calls, 50), "p99": p(open_calls, 99), "max": max(open_calls)},
        "recovery_s": recovery_s,
        "buffered_then_replayed": rs.stats.writes_replayed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        result = {"overhead": overhead(server.url, args.iterations), "outage": outage(server)}
    o, f = result["overhead"], result["outage"]
    floors = {
        "load overhead p50 <= 5 us": o["load_overhead_us"] <= 5,
        "append overhead p50 <= 5 us": o["append_overhead_us"] <= 5,
        f"hung calls <= {TIMEOUT_MS + 20} ms": f["hung_calls_ms"]["max"] <= TIMEOUT_MS + 20,
        "open-breaker p99 <= 1 ms": f["open_breaker_ms"]["p99"] <= 1,
        f"recovery <= {RESET_S + 1:g} s": f["recovery_s"] <= RESET_S + 1,
    }
    result["floors"] = floors
    print("p50 per call (us): " + ", ".join(f"{k} {v:.1f}" for k, v in o["p50_us"].items()))
    print(
        f"overhead of ResilientStore at p50: load {o['load_overhead_us']:+.1f} us, "
        f"append {o['append_overhead_us']:+.1f} us"
    )
    hung = f["hung_calls_ms"]
    print(f"frozen server, breaker closed: {hung['count']} calls, max {hung['max']:.1f} ms (deadline {TIMEOUT_MS} ms)")
    killed_ms = f["killed_server_redis_py_defaults_one_call_ms"]
    print(
        f"killed server: one call with redis-py's defaults took {killed_ms:.0f} ms "
        f"({f['killed_server_redis_py_defaults_outcome']}); ResilientStore's took "
        f"{f['killed_server_statekit_one_call_ms']:.2f} ms and answered from its cache"
    )
    opened = f["open_breaker_ms"]
    print(f"breaker open: p50 {opened['p50'] * 1000:.1f} us, p99 {opened['p99'] * 1000:.1f} us per call")
    print(
        f"back to normal {f['recovery_s']:.2f} s after the server returned (reset timeout {RESET_S:g} s); "
        f"{f['buffered_then_replayed']} buffered writes replayed"
    )
    for name, ok in floors.items():
        print(f"  {'met   ' if ok else 'MISSED'} {name}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if args.check and not all(floors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
