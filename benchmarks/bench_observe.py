"""What observing costs, and a health scan of 100,000 sessions.

    python benchmarks/bench_observe.py [--iterations N] [--sessions 100000] [--json FILE]

1. StateMetrics overhead: SessionStore with and without metrics attached, load_context and
   append_turn interleaved call by call on a redis-server on loopback; the difference of
   the medians (floor: at most 3 us per operation).
2. The audit trail's overhead the same way (entries batched into pipelined XADDs).
3. `health_scan` over 100,000 sessions (written with pipelines in the store's layout):
   its time, and DEBUG DIGEST before and after to show it changed nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.observe import AuditLog, StateMetrics, health_scan  # noqa: E402
from statekit.testing import RedisServer  # noqa: E402


def turn(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"turn {i}: " + "lorem ipsum " * 57}


def overhead(url: str, iterations: int) -> dict:
    policy = sk.LifecyclePolicy(window_turns=10)
    plain = sk.SessionStore(sk.connect(url), policy, namespace="plain")
    observed = sk.SessionStore(sk.connect(url), policy, namespace="observed", metrics=StateMetrics())
    audited = sk.SessionStore(
        sk.connect(url), policy, namespace="audited", listeners=[AuditLog(sk.connect(url), "bench:audit")]
    )
    stores = {"plain": plain, "metrics": observed, "audit": audited}
    for store in stores.values():
        for i in range(40):
            store.append_turn("s", turn(i))
            store.load_context("s")
    samples: dict[str, list[int]] = {f"{op} {name}": [] for op in ("load", "append") for name in stores}
    perf = time.perf_counter_ns
    for i in range(iterations):
        order = list(stores.items())
        if i % 2:
            order.reverse()
        for name, store in order:
            t0 = perf()
            store.load_context("s")
            samples[f"load {name}"].append(perf() - t0)
            t0 = perf()
            store.append_turn("s", turn(i))
            samples[f"append {name}"].append(perf() - t0)
    p50 = {k: float(np.percentile(v, 50)) / 1e3 for k, v in samples.items()}
    return {
        "p50_us": p50,
        "metrics_overhead_us": {op: p50[f"{op} metrics"] - p50[f"{op} plain"] for op in ("load", "append")},
        "audit_overhead_us": {op: p50[f"{op} audit"] - p50[f"{op} plain"] for op in ("load", "append")},
    }


def scan(sessions: int) -> dict:
    with RedisServer(["--enable-debug-command", "yes"]) as server:
        client = sk.connect(server.url, socket_timeout=60)
        store = sk.SessionStore(client, namespace="app")
        record = b"0123456789abcdef0123\x1f" + sk.codec.encode(turn(0))
        pipe = client.pipeline(transaction=False)
        for i in range(sessions):
            meta, log, _, _ = store.keys(f"s-{i:08d}")
            pipe.rpush(log, *([record] * 10))
            pipe.hset(meta, mapping={"v": 10, "b": 10 * len(record), "c": int(time.time() * 1000)})
            pipe.pexpire(log, 86_400_000)
            pipe.pexpire(meta, 86_400_000)
            if i % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
        digest = client.execute_command("DEBUG", "DIGEST")
        report = health_scan(client, "app", retention_days=30, allowed_regions=["eu-west-1"])
        unchanged = client.execute_command("DEBUG", "DIGEST") == digest
    return {
        "sessions": report.sessions,
        "seconds": report.seconds,
        "sessions_per_second": report.sessions / report.seconds,
        "unchanged": unchanged,
        "sampled_memory_bytes": report.sampled_memory_bytes,
        "findings": report.findings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with RedisServer() as server:
        o = overhead(server.url, args.iterations)
    s = scan(args.sessions)
    print("p50 per call (us): " + ", ".join(f"{k} {v:.1f}" for k, v in o["p50_us"].items()))
    print("metrics overhead at p50: " + ", ".join(f"{k} {v:+.1f} us" for k, v in o["metrics_overhead_us"].items()))
    print("audit overhead at p50: " + ", ".join(f"{k} {v:+.1f} us" for k, v in o["audit_overhead_us"].items()))
    print(
        f"health scan: {s['sessions']:,} sessions in {s['seconds']:.2f} s ({s['sessions_per_second']:,.0f}/s); "
        f"data unchanged (DEBUG DIGEST): {s['unchanged']}"
    )
    ok = all(v <= 3 for v in o["metrics_overhead_us"].values()) and s["unchanged"]
    print(f"  {'met   ' if ok else 'MISSED'} metrics overhead <= 3 us per operation, scan read-only")
    if args.json:
        args.json.write_text(json.dumps({"overhead": o, "scan": s}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
