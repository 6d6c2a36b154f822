"""The stale-read model's speed and fidelity, and replica lag on a real primary and replica.

    python benchmarks/bench_consistency.py [--json FILE]

1. t_visibility: 100,000 trials at 200 time points for each PBS fit (floor: 2 s each), and
   the probability of a consistent read right after commit (LNKD-SSD: the paper's 97.4%).
2. Replica lag on a primary and replica it starts on loopback: 1,000 writes each with and
   without WAIT 1, idle and under two load writers; stale fraction and lag percentiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statekit import consistency as c  # noqa: E402
from statekit.testing import RedisReplicaPair  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result: dict = {"pbs": {}, "replica_lag": {}}
    print(f"{'fit':<10} {'seconds':>8} {'P(consistent at t=0)':>21} {'99.9% after (ms)':>17}")
    for name, fit in c.PBS_FITS.items():
        t = np.linspace(0, 100, 200)
        start = time.perf_counter()
        p = c.t_visibility(fit, t, n=3, r=1, w=1, trials=100_000)
        seconds = time.perf_counter() - start
        tail = c.visibility_time(fit, 0.999, n=3, r=1, w=1, trials=400_000)
        result["pbs"][name] = {
            "seconds_100k_trials_200_points": seconds,
            "p_consistent_t0": float(p[0]),
            "t_999_ms": tail,
        }
        print(f"{name:<10} {seconds:>8.3f} {p[0]:>21.4f} {tail:>17.2f}")
    with RedisReplicaPair() as pair:
        print(f"\n{'replica reads':<28} {'stale':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label, r in c.replica_lag_runs(pair.primary_url, pair.replica_url, writes=1000).items():
            result["replica_lag"][label] = {k: r[k] for k in ("stale_fraction", "p50_ms", "p99_ms", "max_ms")}
            cells = f"{r['stale_fraction']:>7.1%} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['max_ms']:>8.2f}"
            print(f"{label:<28} {cells}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
