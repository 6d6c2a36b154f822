"""The memory model against a real Redis's INFO memory, from 1,000 to 100,000 sessions.

    python benchmarks/bench_memory.py [--sessions 1000 10000 100000] [--json FILE] [--check]

For each size, a fresh redis-server on a loopback port receives that many support-agent
sessions (14 turns of 700 bytes, the default LifecyclePolicy: 10-turn window, summary)
written through SessionStore by four threads; used_memory is read from INFO memory and
set against sizing.estimate_memory for the same sessions. --check exits 1 when an error
exceeds 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.testing import RedisServer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--turns", type=int, default=14)
    parser.add_argument("--turn-bytes", type=int, default=700)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    policy = sk.LifecyclePolicy()
    rows = []
    for n in args.sessions:
        with RedisServer() as server, tqdm(total=n, desc=f"{n:,} sessions", unit="session") as bar:
            client = sk.connect(server.url, socket_timeout=30)
            m = sk.sizing.measure(client, policy, n, args.turns, args.turn_bytes, progress=bar.update)
            rows.append(m.as_dict() | {"writes_per_second": n * args.turns / m.seconds})
    print(f"\n{'sessions':>9} {'used_memory':>13} {'model':>13} {'error':>7} {'appends/s':>10}")
    for r in rows:
        print(
            f"{r['sessions']:>9,} {r['used_memory_after']:>13,} {r['estimated_total']:>13,} "
            f"{r['error']:>+7.2%} {r['writes_per_second']:>10,.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if args.check and any(abs(r["error"]) > 0.05 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
