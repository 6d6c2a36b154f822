"""Calibration: does it recover a production's parameters, and what does sampling save?

    python benchmarks/bench_calibrate.py [--seeds 100] [--sessions 100000] [--sample 2000] [--json FILE]

1. Recovery: `--seeds` simulated productions (statekit.drills.calibrate, known parameters:
   Poisson arrivals, lognormal turns per session and bytes per turn), each measured with a
   sampling window; for each parameter, in how many seeds its 99% interval covers the truth.
2. Sampling: a production of about `--sessions` sessions held, written through SessionStore;
   a full read of every session against a random sample of `--sample`: bytes-per-session
   p50/p95/p99 and their error against the exact values, time and round trips of each.

Starts its own redis-server on loopback (stopped by its pid).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.drills.calibrate import Production, simulate  # noqa: E402
from statekit.observe.calibrate import measure  # noqa: E402
from statekit.testing import RedisServer  # noqa: E402

#: The recovery test's production, larger: ~170 sessions held, ~90 arriving in the window.
PRODUCTION = Production(
    arrivals_per_s=0.1, turns_median=6, turns_sigma=0.6, bytes_median=700, bytes_sigma=0.5, session_minutes=4
)
POLICY = sk.LifecyclePolicy(
    window_turns=200, ttl_seconds=1200, max_bytes=1_000_000, summary_max_bytes=0, summarizer=None
)
PARAMETERS = ("new_sessions_per_s", "appends_per_s", "turns_per_session", "bytes_per_turn", "session_minutes")


def recovery(url: str, seeds: int) -> dict:
    client = sk.connect(url)
    covered = dict.fromkeys(PARAMETERS, 0)
    widths: dict[str, list[float]] = {p: [] for p in PARAMETERS}
    held = []
    for seed in range(seeds):
        client.flushall()
        sim = simulate(client, "prod", PRODUCTION, POLICY, seed=seed)
        m = measure(
            client,
            "prod",
            ttl_seconds=1200,
            finished_after_s=300,
            window_s=900,
            wait=sim.advance,
            clock=sim.clock,
            seed=seed,
        )
        held.append(m.sessions)
        for name, truth in sim.truth().items():
            e = m.estimates[name]
            covered[name] += e.covers(truth)
            widths[name].append((e.high - e.low) / 2 / truth)
    return {
        "seeds": seeds,
        "sessions_held_mean": sum(held) / len(held),
        "covered": covered,
        "half_width_mean": {k: sum(v) / len(v) for k, v in widths.items()},
        "truth": PRODUCTION.truth(),
    }


def sampling(url: str, sessions: int, sample: int) -> dict:
    client = sk.connect(url, socket_timeout=60)
    client.flushall()
    # arrivals at a rate that holds about `sessions` sessions (session ~3 min, TTL 20 min)
    production = Production(
        arrivals_per_s=sessions / (1200 + 180),
        turns_median=2,
        turns_sigma=0.6,
        bytes_median=700,
        bytes_sigma=0.8,
        session_minutes=3,
    )
    t0 = time.perf_counter()
    sim = simulate(client, "big", production, POLICY, seed=7, horizon_s=1200 + 300)
    written_s = time.perf_counter() - t0
    out = {"sessions_held": sim.held_at_start, "turns_written": sim.written_turns, "write_s": written_s}
    for name, size in (("full", None), (f"sample {sample}", sample)):
        m = measure(client, "big", ttl_seconds=1200, finished_after_s=300, sample=size, seed=1)
        out[name] = {
            "sessions_read": m.sampled,
            "seconds": m.seconds,
            "round_trips": m.round_trips,
            "keys_scanned": m.keys_scanned,
            "bytes": {q: [e.value, e.low, e.high] for q, e in m.bytes_percentiles.items()},
        }
    exact = out["full"]["bytes"]
    est = out[f"sample {sample}"]["bytes"]
    out["relative_error"] = {q: abs(est[q][0] - exact[q][0]) / exact[q][0] for q in ("p50", "p95", "p99")}
    out["interval_covers_exact"] = {q: est[q][1] <= exact[q][0] <= est[q][2] for q in ("p50", "p95", "p99")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        result = {
            "recovery": recovery(server.url, args.seeds),
            "sampling": sampling(server.url, args.sessions, args.sample),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
