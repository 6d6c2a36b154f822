"""The asyncio store and the LangGraph saver, against hand-written redis.asyncio and LangGraph's savers.

    python benchmarks/bench_aio.py [--redis-url URL] [--iterations N] [--json FILE] [--check]

Without --redis-url a redis-server is started on a free loopback port. Three parts, each
reported as same-run ratios (this machine is shared; absolute times drift run to run):

1. Latency, interleaved call by call in a rotating order:
   statekit  AsyncSessionStore.append_turn / load_context (window of 10, no summarizer)
   raw       redis.asyncio EVALSHA of the very same append script with the same arguments,
             and of the read script plus the same record decoding (the same work, by hand)
2. Throughput: 200 sessions served concurrently by one event loop (AsyncSessionStore)
   against the blocking SessionStore driven by 8 threads, each session doing appends and
   loads; operations per second.
3. LangGraph checkpoints: StatekitSaver aput / aget_tuple against InMemorySaver (no I/O at
   all: the floor of what a saver can cost) and AsyncSqliteSaver (a local file, no network);
   round trips per call counted on the connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.aio import AsyncSessionStore, connect_async  # noqa: E402
from statekit.scripts import SCRIPTS  # noqa: E402
from statekit.store.core import SEP  # noqa: E402
from statekit.testing import RedisServer, count_round_trips  # noqa: E402

FLOORS = {
    "async append_turn p50 / raw redis.asyncio EVALSHA p50": ("<=", 1.3),
    "async load_context p50 / raw redis.asyncio EVALSHA p50": ("<=", 1.3),
    "aput round trips": ("<=", 1),
    "aget_tuple round trips": ("<=", 1),
}


def turn(i: int) -> dict[str, str]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "lorem ipsum " * 57}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1. latency ---------------------------------------------------------------------------


async def latency(url: str, iterations: int) -> dict:
    # no summarizer: evicted turns are dropped by the script, so both sides do exactly the same
    # work (a fold into the summary is a second round trip every fold_batch evictions)
    policy = sk.LifecyclePolicy(window_turns=10, summarizer=None)
    client = connect_async(url)
    raw = connect_async(url)
    store = AsyncSessionStore(client, policy)
    append, load = SCRIPTS["append"], SCRIPTS["load"]
    await raw.script_load(append.script)
    await raw.script_load(load.script)
    for i in range(12):  # warm sessions at the window
        await store.append_turn("sk", turn(i))
        await store.append_turn("raw", turn(i))
    raw_keys = store.keys("raw")
    counter = iter(range(10**9))

    async def sk_append(i: int) -> None:
        await store.append_turn("sk", turn(i))

    async def raw_append(i: int) -> None:
        tid = f"raw{next(counter)}"
        record = tid.encode() + SEP + b"\x01" + orjson.dumps(turn(i))
        p = policy
        await raw.evalsha(
            append.sha, 4, *raw_keys, record, tid, p.window_turns, p.max_bytes, p.ttl_ms, p.fold_batch, 0, p.mode
        )

    async def sk_load(_i: int) -> None:
        await store.load_context("sk")

    async def raw_load(_i: int) -> None:
        (version, size), records, summary = await raw.evalsha(load.sha, 3, *raw_keys[:3])
        [orjson.loads(r[r.index(SEP) + 2 :]) for r in records]

    pairs = {"append": (sk_append, raw_append), "load": (sk_load, raw_load)}
    times: dict[str, list[float]] = {f"{k}_{w}": [] for k in pairs for w in ("statekit", "raw")}
    for i in range(iterations):
        for kind, (mine, theirs) in pairs.items():
            order = [("statekit", mine), ("raw", theirs)]
            if i % 2:
                order.reverse()
            for who, fn in order:
                start = time.perf_counter_ns()
                await fn(i)
                times[f"{kind}_{who}"].append((time.perf_counter_ns() - start) / 1000)
    with count_round_trips() as appends:
        await store.append_turn("sk", turn(0))
    with count_round_trips() as loads:
        await store.load_context("sk")
    await client.aclose()
    await raw.aclose()
    p50 = {k: statistics.median(v) for k, v in times.items()}
    return {
        "p50_us": p50,
        "p99_us": {k: pct(v, 0.99) for k, v in times.items()},
        "round_trips": {"append_turn": appends.count, "load_context": loads.count},
        "ratios": {
            "async append_turn p50 / raw redis.asyncio EVALSHA p50": p50["append_statekit"] / p50["append_raw"],
            "async load_context p50 / raw redis.asyncio EVALSHA p50": p50["load_statekit"] / p50["load_raw"],
        },
    }


# -- 2. throughput ------------------------------------------------------------------------


def throughput(url: str, sessions: int = 200, ops_per_session: int = 50, threads: int = 8) -> dict:
    policy = sk.LifecyclePolicy(window_turns=10)

    async def with_asyncio() -> float:
        store = AsyncSessionStore(connect_async(url, max_connections=sessions), policy)

        async def session(n: int) -> None:
            for i in range(ops_per_session // 2):
                await store.append_turn(f"a{n}", turn(i))
                await store.load_context(f"a{n}")

        await store.append_turn("warm", turn(0))
        start = time.perf_counter()
        await asyncio.gather(*(session(n) for n in range(sessions)))
        elapsed = time.perf_counter() - start
        await store.aclose()
        return elapsed

    def with_threads() -> float:
        client = sk.connect(url)
        store = sk.SessionStore(client, policy)
        store.append_turn("warm", turn(0))

        def session(n: int) -> None:
            for i in range(ops_per_session // 2):
                store.append_turn(f"t{n}", turn(i))
                store.load_context(f"t{n}")

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(session, range(sessions)))
        elapsed = time.perf_counter() - start
        client.close()
        return elapsed

    ops = sessions * (ops_per_session // 2) * 2
    runs = {"asyncio": [], "threads": []}
    for _ in range(3):  # alternate, so drift hits both
        runs["asyncio"].append(asyncio.run(with_asyncio()))
        runs["threads"].append(with_threads())
    best = {k: ops / min(v) for k, v in runs.items()}
    return {
        "ops": ops,
        "ops_per_s": best,
        "asyncio / threads": best["asyncio"] / best["threads"],
        "threads_alive_during_asyncio": threading.active_count(),
    }


# -- 3. LangGraph savers ------------------------------------------------------------------


async def savers(url: str, iterations: int) -> dict:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from statekit.langgraph import StatekitSaver

    messages = [{"role": "user", "content": "lorem ipsum " * 30, "n": i} for i in range(10)]

    def checkpoint(saver, step: int, versions: dict) -> tuple[dict, dict]:
        from langgraph.checkpoint.base import empty_checkpoint

        cp = empty_checkpoint()
        new = {"messages": saver.get_next_version(versions.get("messages"), None)}
        cp["channel_values"] = {"messages": messages + [{"n": step}], "step": step}
        cp["channel_versions"] = {**versions, **new, "step": saver.get_next_version(versions.get("step"), None)}
        new["step"] = cp["channel_versions"]["step"]
        return cp, new

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncSqliteSaver.from_conn_string(str(Path(tmp) / "cp.sqlite")) as sqlite:
            contenders = {
                "statekit": StatekitSaver.from_url(url, keep_last=20),
                "in_memory": InMemorySaver(),
                "sqlite": sqlite,
            }
            put_times: dict[str, list[float]] = {k: [] for k in contenders}
            get_times: dict[str, list[float]] = {k: [] for k in contenders}
            configs = {k: {"configurable": {"thread_id": f"bench-{k}", "checkpoint_ns": ""}} for k in contenders}
            versions: dict[str, dict] = {k: {} for k in contenders}
            names = list(contenders)
            for i in range(iterations):
                for name in names[i % 3 :] + names[: i % 3]:
                    saver = contenders[name]
                    cp, new = checkpoint(saver, i, versions[name])
                    versions[name] = cp["channel_versions"]
                    start = time.perf_counter_ns()
                    configs[name] = await saver.aput(configs[name], cp, {"source": "loop", "step": i}, new)
                    put_times[name].append((time.perf_counter_ns() - start) / 1000)
                    start = time.perf_counter_ns()
                    await saver.aget_tuple(configs[name])
                    get_times[name].append((time.perf_counter_ns() - start) / 1000)
            mine = contenders["statekit"]
            cp, new = checkpoint(mine, iterations, versions["statekit"])
            with count_round_trips() as put_trips:
                config = await mine.aput(configs["statekit"], cp, {"source": "loop", "step": iterations}, new)
            with count_round_trips() as get_trips:
                await mine.aget_tuple(config)
            await mine.aclose()
    for name in put_times:
        results[name] = {
            "aput_p50_us": statistics.median(put_times[name]),
            "aget_tuple_p50_us": statistics.median(get_times[name]),
        }
    results["statekit"]["aput_round_trips"] = put_trips.count
    results["statekit"]["aget_tuple_round_trips"] = get_trips.count
    ratios = {
        f"{op} p50 statekit / {other}": results["statekit"][f"{op}_p50_us"] / results[other][f"{op}_p50_us"]
        for op in ("aput", "aget_tuple")
        for other in ("in_memory", "sqlite")
    }
    return {"savers": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="a real Redis (default: start redis-server on a loopback port)")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a floor is missed")
    args = parser.parse_args(argv)
    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer().start()
        url = server.url
    try:
        lat = asyncio.run(latency(url, args.iterations))
        thr = throughput(url)
        sav = asyncio.run(savers(url, max(200, args.iterations // 5)))
    finally:
        if server is not None:
            server.stop()
    values = {
        **lat["ratios"],
        "aput round trips": sav["savers"]["statekit"]["aput_round_trips"],
        "aget_tuple round trips": sav["savers"]["statekit"]["aget_tuple_round_trips"],
    }
    floors = {
        name: {"value": values[name], "floor": f"{op} {bound}", "met": values[name] <= bound}
        for name, (op, bound) in FLOORS.items()
    }
    results = {"latency": lat, "throughput": thr, "savers": sav, "floors": floors}
    print("latency p50 (us):", {k: round(v, 1) for k, v in lat["p50_us"].items()})
    print("latency p99 (us):", {k: round(v, 1) for k, v in lat["p99_us"].items()})
    print("store round trips per call:", lat["round_trips"])
    print(
        f"throughput: asyncio {thr['ops_per_s']['asyncio']:,.0f} ops/s (200 sessions, one loop), "
        f"threads {thr['ops_per_s']['threads']:,.0f} ops/s (8 threads); ratio {thr['asyncio / threads']:.2f}"
    )
    for name, r in sav["savers"].items():
        print(f"saver {name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()))
    for name, ratio in sav["ratios"].items():
        print(f"  {name}: {ratio:.2f}")
    for name, f in floors.items():
        print(f"{'ok  ' if f['met'] else 'MISS'} {name}: {f['value']:.2f} (floor {f['floor']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if args.check and not all(f["met"] for f in floors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
