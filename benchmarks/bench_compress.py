"""Compression (statekit.codec): Redis memory per session and per LangGraph thread, raw against
zstd against zstd with a trained dictionary, and what it costs in latency, in one run.

    python benchmarks/bench_compress.py [--sessions 10000] [--threads 40] [--steps 25]
                                        [--iterations 3000] [--json FILE] [--check] [--no-postgres]

Payloads are text that Python ships: paragraphs of CPython's `pydoc_data.topics` (the
language reference as `help()` shows it), shaped as chat turns, tool calls with JSON
arguments and results, and LangGraph messages (statekit.testing.payloads). No random letters,
nothing made repetitive on purpose; every session and thread draws its own paragraphs.

1. Where zstd pays: the stored size of each record against its raw size, by size.
2. Sessions: `--sessions` support-agent sessions (data/profiles/support_agent.yaml: 14 turns,
   the recommended policy: 10-turn window, summary, TTL) written through SessionStore into a
   fresh redis-server per variant (raw, zstd, zstd with a 32 KB dictionary trained with
   `statekit.store.dictionaries.train` on 300 earlier sessions); INFO memory's used_memory
   growth per session.
3. Threads: `--threads` LangGraph threads of `--steps` invocations of a messages graph (a
   user message in; a tool call, its result and an answer out, some of the time) through
   StatekitSaver, full history and keep_last=20, raw against compressed, used_memory growth
   per thread on a fresh redis-server each; and the same graph through AsyncPostgresSaver on a
   PostgreSQL that the benchmark starts (initdb in a temporary directory, loopback port,
   stopped by its pid): pg_total_relation_size of its checkpoint tables per thread.
4. Latency: append_turn and load_context p50 and round trips, raw against zstd against zstd
   with the dictionary, interleaved in a rotating order on one server.

--check exits 1 when a target is missed: memory per session and per thread at most 0.5x of
raw, p50 at most 1.15x of raw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import statekit as sk  # noqa: E402
from statekit import codec  # noqa: E402
from statekit.codec import Codec  # noqa: E402
from statekit.decide.lifecycle import recommend  # noqa: E402
from statekit.store import dictionaries  # noqa: E402
from statekit.testing import RedisServer, count_round_trips  # noqa: E402
from statekit.testing.payloads import Conversation, chat_turns, langgraph_messages  # noqa: E402

TARGETS = {
    "session used_memory zstd / raw": 0.5,
    "session used_memory zstd+dict / raw": 0.5,
    "thread used_memory full history zstd+dict / raw": 0.5,
    "thread used_memory keep_last=20 zstd+dict / raw": 0.5,
    "append_turn p50 zstd+dict / raw": 1.15,
    "load_context p50 zstd+dict / raw": 1.15,
}


def policy() -> sk.LifecyclePolicy:
    profile = sk.WorkloadProfile.from_yaml(ROOT / "data" / "profiles" / "support_agent.yaml")
    return recommend(profile).policy


def session_turns(i: int, n: int = 14) -> list[dict]:
    return chat_turns(n, seed=10_000 + i)


def used_memory(client) -> int:
    time.sleep(0.3)  # let incremental rehashing settle
    return int(client.info("memory")["used_memory"])


# -- 1. where zstd pays ------------------------------------------------------------------------


def thresholds() -> list[dict]:
    plain = Codec(min_bytes=0, dictionaries=False)
    rows: dict[int, list[tuple[int, int]]] = {}
    conv = Conversation(__import__("random").Random(7))
    records = []
    for _ in range(800):
        records += conv.turns()
    for turn in records:
        for cut in (32, 64, 96, 128, 192, 256, 512, 100_000):  # prefixes of real turns, as short values
            value = {"role": turn["role"], "content": (turn.get("content") or "")[:cut]}
            raw = orjson.dumps(value)
            bucket = next(b for b in (64, 96, 128, 192, 256, 512, 1024, 1 << 30) if len(raw) < b)
            frame = plain.frame(raw)
            rows.setdefault(bucket, []).append((len(raw), len(frame) if frame else len(raw) + 12))
    out = []
    for bucket in sorted(rows):
        pairs = rows[bucket]
        raw = sum(r for r, _ in pairs)
        stored = sum(s for _, s in pairs)
        out.append({"raw_below": bucket, "records": len(pairs), "stored_over_raw": stored / raw})
    return out


# -- 2. sessions -----------------------------------------------------------------------------


def write_sessions(store, start: int, count: int, workers: int = 4) -> float:
    def one(i: int) -> None:
        for t in session_turns(i):
            store.append_turn(f"s-{i:08d}", t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(start, start + count)))
    return time.perf_counter() - t0


def sessions_memory(n: int) -> dict:
    pol = policy()
    out = {}
    for variant in ("raw", "zstd", "zstd+dict"):
        with RedisServer() as server:
            client = sk.connect(server.url, socket_timeout=30)
            extra = {}
            if variant == "zstd+dict":
                # live records to train on: 300 earlier sessions, then gone (their dictionary stays)
                trainer = sk.SessionStore(client, pol, namespace="sk")
                write_sessions(trainer, 1_000_000, 300)
                trained = dictionaries.train(client, "sk", size=32_768, sample=5_000)
                for i in range(1_000_000, 1_000_300):
                    trainer.delete(f"s-{i:08d}")
                extra = {
                    "dictionary_bytes": trained.size,
                    "held_out_ratio_zstd": trained.ratio_zstd,
                    "held_out_ratio_dict": trained.ratio_dict,
                }
            cod = {"raw": None, "zstd": Codec(dictionaries=False), "zstd+dict": Codec()}[variant]
            store = sk.SessionStore(client, pol, namespace="sk", codec=cod)
            before = used_memory(client)
            seconds = write_sessions(store, 0, n)
            after = used_memory(client)
            sample = [store.load_context(f"s-{i:08d}").bytes for i in range(0, n, max(1, n // 500))]
            out[variant] = {
                "sessions": n,
                "used_memory_growth": after - before,
                "per_session": (after - before) / n,
                "stored_bytes_per_session": float(np.mean(sample)),
                "appends_per_second": n * 14 / seconds,
                **extra,
            }
            client.close()
    return out


# -- 3. LangGraph threads ----------------------------------------------------------------------


def build_graph(checkpointer, thread_seed: int):
    from langchain_core.messages import AIMessage
    from langgraph.graph import START, MessagesState, StateGraph

    script = [m for m in langgraph_messages(400, seed=thread_seed) if m.type != "human"]
    cursor = {"i": 0}

    def agent(state):
        out = []
        while cursor["i"] < len(script):
            m = script[cursor["i"]]
            cursor["i"] += 1
            out.append(m)
            if isinstance(m, AIMessage) and not m.tool_calls:
                break
        return {"messages": out}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    return builder.compile(checkpointer=checkpointer)


def user_messages(thread_seed: int, steps: int):
    return [m for m in langgraph_messages(400, seed=thread_seed) if m.type == "human"][:steps]


async def run_threads(saver, threads: int, steps: int, first: int = 0) -> None:
    for t in range(first, first + threads):
        graph = build_graph(saver, 20_000 + t)
        config = {"configurable": {"thread_id": f"t-{t:05d}"}}
        for m in user_messages(20_000 + t, steps):
            await graph.ainvoke({"messages": [m]}, config)


def threads_memory(threads: int, steps: int) -> dict:
    from statekit.langgraph import StatekitSaver

    out = {}
    for history, keep in (("full history", None), ("keep_last=20", 20)):
        for variant in ("raw", "zstd", "zstd+dict"):
            with RedisServer() as server:
                client = sk.connect(server.url, socket_timeout=30)
                extra = {}
                if variant == "zstd+dict":
                    # live records to train on: 10 earlier threads, then gone (their dictionary stays)
                    trainer = StatekitSaver.from_url(server.url, namespace="lg", keep_last=keep)
                    asyncio.run(run_threads(trainer, 10, steps, first=90_000))
                    trained = dictionaries.train(client, "lg", size=32_768, sample=5_000)
                    for t in range(10):
                        trainer.delete_thread(f"t-{90_000 + t:05d}")
                    trainer.close()
                    extra = {"held_out_ratio_zstd": trained.ratio_zstd, "held_out_ratio_dict": trained.ratio_dict}
                before = used_memory(client)
                cod = {"raw": None, "zstd": Codec(dictionaries=False), "zstd+dict": Codec()}[variant]
                saver = StatekitSaver.from_url(server.url, namespace="lg", keep_last=keep, codec=cod)

                async def go(saver=saver):
                    await run_threads(saver, threads, steps)
                    await saver.aclose()

                asyncio.run(go())
                after = used_memory(client)
                out[f"{history} {variant}"] = {
                    "threads": threads,
                    "steps": steps,
                    "used_memory_growth": after - before,
                    "per_thread": (after - before) / threads,
                    **extra,
                }
                client.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server():
    """A throwaway PostgreSQL from Debian's packages: initdb in a temporary directory, a
    loopback port, run as the postgres user when this is root (PostgreSQL refuses root),
    stopped by its own pid."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        raise RuntimeError("PostgreSQL not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    bindir = Path(bins[-1])
    tmp = tempfile.mkdtemp(prefix="statekit-pg-")
    user = {}
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid}
    data = Path(tmp) / "data"
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"],
        check=True,
        capture_output=True,
        **user,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [bindir / "postgres", "-D", data, "-p", str(port), "-k", tmp, "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **user,
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        import psycopg

        for _ in range(100):
            try:
                psycopg.connect(url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_bytes(threads: int, steps: int) -> dict:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    out = {}
    for history, keep in (("full history", None), ("keep_last=20", 20)):
        with postgres_server() as url:

            async def go(url=url, keep=keep):
                import psycopg

                async with AsyncPostgresSaver.from_conn_string(url) as saver:
                    await saver.setup()
                    await run_threads(saver, threads, steps)
                    if keep is not None:  # AsyncPostgresSaver has no keep_last: prune as a job would
                        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                            await conn.execute(
                                """
                                DELETE FROM checkpoints c USING (
                                  SELECT thread_id, checkpoint_ns, checkpoint_id,
                                         row_number() OVER (PARTITION BY thread_id, checkpoint_ns
                                                            ORDER BY checkpoint_id DESC) AS n
                                  FROM checkpoints) r
                                WHERE c.thread_id = r.thread_id AND c.checkpoint_ns = r.checkpoint_ns
                                  AND c.checkpoint_id = r.checkpoint_id AND r.n > %s""",
                                (keep,),
                            )
                            await conn.execute(
                                """DELETE FROM checkpoint_writes w WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
                                   WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns
                                   AND c.checkpoint_id = w.checkpoint_id)"""
                            )
                            await conn.execute(
                                """DELETE FROM checkpoint_blobs b WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
                                   WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
                                   AND c.checkpoint ->'channel_versions' ->> b.channel = b.version)"""
                            )
                            await conn.execute("VACUUM FULL")
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute("VACUUM ANALYZE")
                    cur = await conn.execute(
                        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                        "WHERE c.relname IN ('checkpoints', 'checkpoint_blobs', 'checkpoint_writes') "
                        "AND c.relkind = 'r'"
                    )
                    total = int((await cur.fetchone())[0])
                    cur = await conn.execute("SELECT count(*) FROM checkpoints")
                    checkpoints = int((await cur.fetchone())[0])
                return total, checkpoints

            total, checkpoints = asyncio.run(go())
            out[history] = {
                "threads": threads,
                "steps": steps,
                "on_disk_bytes": total,
                "per_thread": total / threads,
                "checkpoints": checkpoints,
            }
    return out


# -- 4. latency ----------------------------------------------------------------------------------


def latency(iterations: int, cache: bool = True) -> dict:
    codec.cache_decoded(2048 if cache else 0)
    pol = policy()
    with RedisServer() as server:
        client = sk.connect(server.url, socket_timeout=5)
        trainer = sk.SessionStore(client, pol, namespace="lat")
        write_sessions(trainer, 2_000_000, 300)
        dictionaries.train(client, "lat", size=32_768, sample=5_000)
        stores = {
            "raw": sk.SessionStore(client, pol, namespace="lat"),
            "zstd": sk.SessionStore(client, pol, namespace="lat", codec=Codec(dictionaries=False)),
            "zstd+dict": sk.SessionStore(client, pol, namespace="lat", codec=Codec()),
        }
        turns = chat_turns(512, seed=31)
        names = list(stores)
        for name, store in stores.items():  # warm: windows full, a fold done, the dictionary seen
            for i in range(3 * pol.window_turns):
                store.append_turn(f"bench-{name}", turns[i % 512])
        samples = {op: {n: [] for n in names} for op in ("append", "load")}
        perf = time.perf_counter_ns
        for i in range(iterations):
            shift = i % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                t0 = perf()
                stores[name].append_turn(f"bench-{name}", turns[i % 512])
                samples["append"][name].append(perf() - t0)
            for name in order:
                t0 = perf()
                stores[name].load_context(f"bench-{name}")
                samples["load"][name].append(perf() - t0)
        trips = {}
        for name, store in stores.items():
            with count_round_trips() as rt:
                for i in range(200):
                    store.append_turn(f"bench-{name}", turns[i % 512])
            with count_round_trips() as rl:
                for _ in range(200):
                    store.load_context(f"bench-{name}")
            trips[name] = {"append": rt.count / 200, "load": rl.count / 200}
        record = {name: len(client.lindex(f"lat:{{bench-{name}}}:log", -1)) for name in names}
        client.close()
    return {
        op: {
            n: {
                "p50_us": float(np.percentile(v, 50) / 1e3),
                "p99_us": float(np.percentile(v, 99) / 1e3),
                "round_trips_per_call": trips[n]["append" if op == "append" else "load"],
            }
            for n, v in by_name.items()
        }
        for op, by_name in samples.items()
    } | {"newest_record_bytes": record, "iterations": iterations}


# -- the report --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=40)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--iterations", type=int, default=3_000)
    parser.add_argument("--no-postgres", action="store_true", help="leave out AsyncPostgresSaver")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)

    result: dict = {"min_bytes": codec.MIN_BYTES}
    result["thresholds"] = thresholds()
    print("where zstd pays (stored / raw, by raw size; +12 B where it would grow):")
    for row in result["thresholds"]:
        print(f"  raw < {row['raw_below']:>10,} B: {row['stored_over_raw']:.2f}  ({row['records']:,} records)")

    result["sessions"] = s = sessions_memory(args.sessions)
    print(f"\nsupport-agent sessions ({args.sessions:,}), INFO memory used_memory growth per session:")
    for name, r in s.items():
        print(
            f"  {name:<10} {r['per_session']:>9,.0f} B   stored (cap counts) {r['stored_bytes_per_session']:>7,.0f} B"
            f"   {r['per_session'] / s['raw']['per_session']:.2f}x raw   {r['appends_per_second']:,.0f} appends/s"
        )
    if "held_out_ratio_dict" in s["zstd+dict"]:
        d = s["zstd+dict"]
        print(
            f"  dictionary {d['dictionary_bytes']:,} B; held-out ratio {d['held_out_ratio_zstd']:.2f}x zstd, "
            f"{d['held_out_ratio_dict']:.2f}x with it"
        )

    result["threads"] = t = threads_memory(args.threads, args.steps)
    print(f"\nLangGraph threads ({args.threads} threads x {args.steps} steps), used_memory growth per thread:")
    for name, r in t.items():
        print(f"  {name:<26} {r['per_thread']:>11,.0f} B")
    if not args.no_postgres:
        result["postgres"] = pg = postgres_bytes(args.threads, args.steps)
        for name, r in pg.items():
            print(
                f"  AsyncPostgresSaver {name:<14} {r['per_thread']:>8,.0f} B on disk "
                f"(pg_total_relation_size, {r['checkpoints']:,} checkpoints)"
            )

    result["latency"] = lat = latency(args.iterations)
    result["latency_no_decode_cache"] = cold = latency(args.iterations, cache=False)
    codec.cache_decoded(2048)
    for title, figures in (("", lat), (", decode cache off (codec.cache_decoded(0))", cold)):
        print(f"\nlatency ({args.iterations:,} interleaved iterations{title}): p50 / p99 us, round trips per call")
        for op in ("append", "load"):
            for name, r in figures[op].items():
                print(
                    f"  {op:<7}{name:<10} {r['p50_us']:>7.1f} {r['p99_us']:>8.1f}   {r['round_trips_per_call']:.2f}"
                    f"   {r['p50_us'] / figures[op]['raw']['p50_us']:.2f}x raw"
                )

    ratios = {
        "session used_memory zstd / raw": s["zstd"]["per_session"] / s["raw"]["per_session"],
        "session used_memory zstd+dict / raw": s["zstd+dict"]["per_session"] / s["raw"]["per_session"],
        "thread used_memory full history zstd / raw": t["full history zstd"]["per_thread"]
        / t["full history raw"]["per_thread"],
        "thread used_memory full history zstd+dict / raw": t["full history zstd+dict"]["per_thread"]
        / t["full history raw"]["per_thread"],
        "thread used_memory keep_last=20 zstd / raw": t["keep_last=20 zstd"]["per_thread"]
        / t["keep_last=20 raw"]["per_thread"],
        "thread used_memory keep_last=20 zstd+dict / raw": t["keep_last=20 zstd+dict"]["per_thread"]
        / t["keep_last=20 raw"]["per_thread"],
        "append_turn p50 zstd / raw": lat["append"]["zstd"]["p50_us"] / lat["append"]["raw"]["p50_us"],
        "append_turn p50 zstd+dict / raw": lat["append"]["zstd+dict"]["p50_us"] / lat["append"]["raw"]["p50_us"],
        "load_context p50 zstd / raw": lat["load"]["zstd"]["p50_us"] / lat["load"]["raw"]["p50_us"],
        "load_context p50 zstd+dict / raw": lat["load"]["zstd+dict"]["p50_us"] / lat["load"]["raw"]["p50_us"],
        "load_context p50 zstd+dict / raw, decode cache off": cold["load"]["zstd+dict"]["p50_us"]
        / cold["load"]["raw"]["p50_us"],
        "append_turn p50 zstd+dict / raw, decode cache off": cold["append"]["zstd+dict"]["p50_us"]
        / cold["append"]["raw"]["p50_us"],
    }
    if "postgres" in result:
        for history in ("full history", "keep_last=20"):
            ratios[f"thread {history}: StatekitSaver raw used_memory / AsyncPostgresSaver on disk"] = (
                t[f"{history} raw"]["per_thread"] / result["postgres"][history]["per_thread"]
            )
            ratios[f"thread {history}: StatekitSaver zstd+dict used_memory / AsyncPostgresSaver on disk"] = (
                t[f"{history} zstd+dict"]["per_thread"] / result["postgres"][history]["per_thread"]
            )
    result["ratios"] = ratios
    result["targets"] = {k: {"ratio": ratios[k], "at_most": v, "met": ratios[k] <= v} for k, v in TARGETS.items()}
    print("\nsame-run ratios:")
    for k, v in ratios.items():
        target = TARGETS.get(k)
        mark = "" if target is None else (f"  (target <= {target}: " + ("met)" if v <= target else "MISSED)"))
        print(f"  {k:<82} {v:6.2f}{mark}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if args.check and not all(x["met"] for x in result["targets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
