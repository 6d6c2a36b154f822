"""The blocking store of another commit against this one, interleaved call by call in one process.

    python benchmarks/bench_ab.py --old REV [--iterations N] [--runs R]

Checks REV's `statekit` out into a temporary directory, imports it as `statekit_old` beside
the working tree's `statekit`, and times `append_turn` and `load_context` of both against one
redis-server (started on a loopback port), alternating which goes first. Reports p50 per
call and the new / old ratio per run: a change's cost, free of the drift between two runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import statekit  # noqa: E402
from statekit.testing import RedisServer  # noqa: E402


def load_old(rev: str, into: Path):
    tree = into / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev], check=True,
                   capture_output=True)  # fmt: skip
    shutil.copytree(tree / "statekit", into / "pkg" / "statekit_old")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    sys.path.insert(0, str(into / "pkg"))
    import statekit_old

    return statekit_old


def run_once(old_pkg, url: str, iterations: int) -> dict[str, float]:
    turn = {"role": "user", "content": "lorem ipsum " * 57}
    stores = {
        "new": statekit.SessionStore(statekit.connect(url), statekit.LifecyclePolicy(window_turns=10)),
        "old": old_pkg.SessionStore(old_pkg.connect(url), old_pkg.LifecyclePolicy(window_turns=10)),
    }
    for store in stores.values():
        for _ in range(20):
            store.append_turn("warm", turn)
            store.load_context("warm")
    times: dict[str, list[int]] = {f"{n}_{op}": [] for n in stores for op in ("append", "load")}
    for i in range(iterations):
        for name in ("new", "old") if i % 2 else ("old", "new"):
            store = stores[name]
            a = time.perf_counter_ns()
            store.append_turn(name, turn)
            b = time.perf_counter_ns()
            store.load_context(name)
            c = time.perf_counter_ns()
            times[f"{name}_append"].append(b - a)
            times[f"{name}_load"].append(c - b)
    p50 = {k: statistics.median(v) / 1000 for k, v in times.items()}
    return {**p50, "append new/old": p50["new_append"] / p50["old_append"],
            "load new/old": p50["new_load"] / p50["old_load"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the commit to compare with")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = load_old(args.old, Path(tmp))
        with RedisServer() as server:
            for run in range(args.runs):
                r = run_once(old_pkg, server.url, args.iterations)
                print(f"run {run + 1}: " + ", ".join(f"{k} {v:.3f}" if "/" in k else f"{k} {v:.1f} us"
                                                     for k, v in r.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
