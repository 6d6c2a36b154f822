"""Batch migration of 100,000 sessions on a real redis-server, interrupted and resumed.

    python benchmarks/bench_migrate.py [--sessions 100000] [--batch 500] [--json FILE]

Seeds v1 support-agent sessions (the store's layout: state blob and meta hash, one-day
TTL) with pipelines, migrates them to v3 with `migrate_namespace`, stops halfway, resumes
from the checkpoint, and checks that every session ends at v3, that the counts add up to
exactly one migration per session, and that the TTLs were kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statekit as sk  # noqa: E402
from statekit.migrate import Migrations, migrate_namespace  # noqa: E402
from statekit.testing import RedisServer  # noqa: E402
from statekit.workbook.examples import support_agent_migrations  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    n = args.sessions
    v1 = Migrations(current=1)
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        client = sk.connect(server.url, socket_timeout=30)
        store = sk.SessionStore(client, namespace="app")
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            meta, _, _, state = store.keys(f"s-{i:08d}")
            pipe.set(state, v1.dump({"ticket_id": f"T-{i}", "customer": f"C-{i}"}), px=86_400_000)
            pipe.hset(meta, mapping={"sv": 1, "v": 1, "b": 60})
            pipe.pexpire(meta, 86_400_000)
            if i % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
        checkpoint = Path(tmp) / "cursor.json"
        with tqdm(total=n, desc="first run", unit="session") as bar:
            first = migrate_namespace(
                client,
                "app",
                support_agent_migrations,
                batch=args.batch,
                checkpoint=checkpoint,
                progress=bar.update,
                stop_after=n // 2,
            )
        with tqdm(total=n - first.scanned, desc="resumed", unit="session") as bar:
            resumed = migrate_namespace(
                client, "app", support_agent_migrations, batch=args.batch, checkpoint=checkpoint, progress=bar.update
            )
        start = time.perf_counter()
        versions: dict[int, int] = {}
        ttls_kept = 0
        for key in client.scan_iter(match="app:*:state", count=1000):
            v = support_agent_migrations.version_of(client.get(key))
            versions[v] = versions.get(v, 0) + 1
            ttls_kept += client.pttl(key) > 0
        verify_s = time.perf_counter() - start
    result = {
        "sessions": n,
        "first_run": {"scanned": first.scanned, "migrated": first.migrated, "seconds": first.seconds},
        "after_resume": {
            "scanned": resumed.scanned,
            "migrated": resumed.migrated,
            "seconds": resumed.seconds,
            "conflicts": resumed.conflicts,
            "failed": resumed.failed,
        },
        "rate_sessions_per_s": resumed.scanned / resumed.seconds,
        "versions_after": versions,
        "ttls_kept": ttls_kept,
        "verify_seconds": verify_s,
    }
    print(
        f"first run stopped after {first.scanned:,} sessions ({first.migrated:,} migrated); "
        f"resumed from the checkpoint to {resumed.scanned:,} scanned, {resumed.migrated:,} migrated"
    )
    print(f"{result['rate_sessions_per_s']:,.0f} sessions per second over {resumed.seconds:.1f} s")
    print(
        f"after: versions {versions}, TTL kept on {ttls_kept:,}; "
        f"each session migrated once: {resumed.migrated == n and versions == {3: n}}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if resumed.migrated == n and versions == {3: n} and ttls_kept == n else 1


if __name__ == "__main__":
    sys.exit(main())
