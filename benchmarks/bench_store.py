"""SessionStore against raw redis-py and langchain-community, interleaved in one run.

    python benchmarks/bench_store.py [--redis-url URL] [--iterations N] [--json FILE] [--check]

Without --redis-url a redis-server is started on a free loopback port. Each iteration runs
every contender once, in a rotating order, on its own warm session of the same turns, so
that drift on a shared machine hits all of them alike. Reported: p50 and p99 latency per
call, round trips per call, and same-run ratios. --check exits 1 when a floor is missed.

Contenders for one append of a ~700-byte turn to a session kept at a 10-turn window:
  statekit   SessionStore.append_turn: one Lua script (id check, cap, push, window, TTL on
             every key), plus a fold into the summary every 4 evictions
  raw        EVALSHA of RPUSH + LTRIM + EXPIRE on one list, the turn encoded with orjson
  langchain  RedisChatMessageHistory.add_message with a TTL (LPUSH, then EXPIRE)
and for one read of that session:
  statekit   SessionStore.load_context: one MULTI/EXEC transaction (HMGET meta, LRANGE log,
             GET summary)
  raw        LRANGE + orjson decode of each turn
  langchain  RedisChatMessageHistory.messages (LRANGE, json, message objects)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.testing import RedisServer, count_round_trips  # noqa: E402

RAW_APPEND = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

FLOORS = {
    "append_turn p50 / raw EVALSHA p50": ("<=", 1.15),
    "load_context p50 / raw LRANGE+orjson p50": ("<=", 1.25),
    "langchain add_message p50 / append_turn p50": (">=", 1.3),
    "langchain messages p50 / load_context p50": (">=", 1.0),
}


def turn(i: int) -> dict[str, str]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "lorem ipsum " * 57}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="a real Redis (default: start redis-server on a loopback port)")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a floor is missed")
    args = parser.parse_args(argv)

    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer().start()
        url = server.url
    try:
        results = run(url, args.iterations)
    finally:
        if server is not None:
            server.stop()
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    missed = [name for name, ok in results["floors"].items() if not ok["met"]]
    return 1 if args.check and missed else 0


def run(url: str, iterations: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.chat_message_histories import RedisChatMessageHistory
        from langchain_core.messages import AIMessage, HumanMessage

    window, ttl = 10, 3600
    client = sk.connect(url, socket_timeout=5)
    client.flushall()
    store = sk.SessionStore(client, sk.LifecyclePolicy(window_turns=window, ttl_seconds=ttl), namespace="bench")
    raw_script = client.register_script(RAW_APPEND)
    history = RedisChatMessageHistory("bench-lc", url=url, ttl=ttl)
    raw_key = "bench-raw:{s}:log"
    turns = [turn(i) for i in range(64)]
    lc_messages = [(HumanMessage if i % 2 == 0 else AIMessage)(content=t["content"]) for i, t in enumerate(turns)]

    def sk_append(i: int) -> None:
        store.append_turn("s", turns[i % 64])

    def raw_append(i: int) -> None:
        raw_script(keys=[raw_key], args=[orjson.dumps(turns[i % 64]), window, ttl])

    def lc_append(i: int) -> None:
        history.add_message(lc_messages[i % 64])
        # keep langchain's list at the same window, outside the timed call's work
        if i % 64 == 63:
            client.ltrim(history.key, 0, window - 1)

    def sk_load(_i: int) -> None:
        store.load_context("s")

    def raw_load(_i: int) -> None:
        [orjson.loads(r) for r in client.lrange(raw_key, 0, -1)]

    def lc_load(_i: int) -> None:
        history.messages  # noqa: B018 - the property does the read

    contenders = {
        "append": {"statekit": sk_append, "raw": raw_append, "langchain": lc_append},
        "load": {"statekit": sk_load, "raw": raw_load, "langchain": lc_load},
    }
    # warm up: scripts loaded, windows full, one fold done
    for i in range(3 * window):
        for fns in contenders.values():
            for fn in fns.values():
                fn(i)
    client.ltrim(history.key, 0, window - 1)

    samples: dict[str, dict[str, list[int]]] = {op: {n: [] for n in fns} for op, fns in contenders.items()}
    trips: dict[str, dict[str, int]] = {op: dict.fromkeys(fns, 0) for op, fns in contenders.items()}
    perf = time.perf_counter_ns
    for i in range(iterations):
        for op, fns in contenders.items():
            names = list(fns)
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn = fns[name]
                t0 = perf()
                fn(i)
                samples[op][name].append(perf() - t0)
    # round trips, counted (not timed) over enough calls to include statekit's folds
    sampled = 400
    for op, fns in contenders.items():
        for name, fn in fns.items():
            with count_round_trips() as rt:
                for i in range(iterations, iterations + sampled):
                    fn(i)
            trips[op][name] = rt.count

    stats = {
        op: {
            name: {
                "p50_us": float(np.percentile(v, 50) / 1e3),
                "p99_us": float(np.percentile(v, 99) / 1e3),
                "round_trips_per_call": trips[op][name] / sampled,
                "calls": len(v),
            }
            for name, v in by_name.items()
        }
        for op, by_name in samples.items()
    }
    a, ld = stats["append"], stats["load"]
    ratios = {
        "append_turn p50 / raw EVALSHA p50": a["statekit"]["p50_us"] / a["raw"]["p50_us"],
        "load_context p50 / raw LRANGE+orjson p50": ld["statekit"]["p50_us"] / ld["raw"]["p50_us"],
        "langchain add_message p50 / append_turn p50": a["langchain"]["p50_us"] / a["statekit"]["p50_us"],
        "langchain messages p50 / load_context p50": ld["langchain"]["p50_us"] / ld["statekit"]["p50_us"],
    }
    floors = {
        name: {
            "ratio": ratios[name],
            "floor": f"{op} {bound}",
            "met": ratios[name] <= bound if op == "<=" else ratios[name] >= bound,
        }
        for name, (op, bound) in FLOORS.items()
    }
    info = client.info("server")
    return {
        "redis_version": info.get("redis_version"),
        "iterations": iterations,
        "turn_bytes": len(orjson.dumps(turns[0])),
        "window_turns": window,
        "stats": stats,
        "floors": floors,
    }


def format_results(r: dict) -> str:
    lines = [
        f"redis {r['redis_version']}, {r['iterations']} interleaved iterations, "
        f"{r['turn_bytes']}-byte turns, {r['window_turns']}-turn window",
        "",
        f"{'operation':<8} {'contender':<10} {'p50 us':>8} {'p99 us':>8} {'round trips':>12}",
    ]
    for op, by_name in r["stats"].items():
        for name, s in by_name.items():
            lines.append(
                f"{op:<8} {name:<10} {s['p50_us']:>8.1f} {s['p99_us']:>8.1f} {s['round_trips_per_call']:>12.2f}"
            )
    lines += ["", f"{'same-run ratio':<46} {'value':>6}  floor"]
    for name, f in r["floors"].items():
        lines.append(f"{name:<46} {f['ratio']:>6.2f}  {f['floor']:<7} {'met' if f['met'] else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
