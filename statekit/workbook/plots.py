"""Plots the notebooks show. Each takes statekit results and returns a matplotlib Axes."""

from __future__ import annotations

from typing import Any

from statekit._optional import require
from statekit.decide.assess import Assessment

__all__ = [
    "payload_growth",
    "verdict_overview",
    "memory_over_turns",
    "memory_over_days",
    "live_memory",
    "outage_timeline",
    "visibility_curves",
    "replica_staleness",
    "thread_growth",
]


def payload_growth(assessment: Assessment | dict[str, Any], ax: Any = None) -> Any:
    """Plot request bytes and prompt tokens per turn, full replay against server state.

    Takes an `Assessment` or its `as_dict()` form (the `assessment` section of a review).
    """
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    a = assessment.as_dict() if isinstance(assessment, Assessment) else assessment
    c = a["cost"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(c["turns"], c["replay_request_bytes"], marker="o", label="request bytes, full replay")
    ax.plot(c["turns"], c["server_request_bytes"], marker="o", label="request bytes, server state")
    ax.set_xlabel("turn")
    ax.set_ylabel("bytes per request")
    ax.set_title(f"{a['service']}: what each request carries")
    if any(c["replay_prompt_tokens"]):
        tok = ax.twinx()
        tok.plot(c["turns"], c["replay_prompt_tokens"], ls="--", color="tab:red", label="prompt tokens, full replay")
        tok.plot(c["turns"], c["server_prompt_tokens"], ls="--", color="tab:green", label="prompt tokens, server state")
        tok.set_ylabel("prompt tokens")
        lines = ax.get_lines() + tok.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize="small")
    else:
        ax.legend(loc="upper left", fontsize="small")
    return ax


def verdict_overview(assessments: list[Assessment], ax: Any = None) -> Any:
    """Bar chart of each profile's largest full-replay request, coloured by verdict."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    colours = {
        "stateless": "tab:gray",
        "client-side state": "tab:blue",
        "server-side session state": "tab:orange",
        "durable workflow state": "tab:red",
    }
    names = [a.service for a in assessments]
    sizes = [a.cost.largest_replay_request_bytes for a in assessments]
    ax.barh(names, sizes, color=[colours[a.verdict] for a in assessments])
    ax.set_xscale("log")
    ax.set_xlabel("largest request with full replay (bytes, log scale)")
    for verdict, colour in colours.items():
        ax.barh([], [], color=colour, label=verdict)
    ax.legend(fontsize="small", loc="lower right")
    return ax


def _mb(values: list[float]) -> list[float]:
    return [v / 1e6 for v in values]


def memory_over_turns(growth: dict[str, Any], ax: Any = None) -> Any:
    """One session's memory as turns accumulate: with the lifecycle policy and without."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(growth["turns"], [v / 1e3 for v in growth["without_policy"]], label="without policy (plain list)")
    ax.plot(growth["turns"], [v / 1e3 for v in growth["with_policy"]], label="with policy (window + summary)")
    ax.set_xlabel("turns in the session")
    ax.set_ylabel("KB per session (modelled)")
    ax.set_title("one session's memory")
    ax.legend(fontsize="small")
    return ax


def memory_over_days(growth: dict[str, Any], node_maxmemory_bytes: int | None = None, ax: Any = None) -> Any:
    """Total Redis memory at the end of each day: TTL and window against neither."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(growth["days"], _mb(growth["without_policy"]), marker="o", label="without policy (nothing expires)")
    ax.plot(growth["days"], _mb(growth["with_policy"]), marker="o", label="with policy (TTL, window, summary)")
    if node_maxmemory_bytes:
        ax.axhline(node_maxmemory_bytes / 1e6, ls=":", color="gray", label="one node's maxmemory")
    ax.set_xlabel("day")
    ax.set_ylabel("MB (modelled)")
    ax.set_yscale("log")
    ax.set_title("total Redis memory")
    ax.legend(fontsize="small")
    return ax


def live_memory(growth: dict[str, Any], ax: Any = None) -> Any:
    """Memory of N sessions turn by turn, unbounded against bounded, labelled measured or estimated."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(growth["turns"], _mb(growth["unbounded_bytes"]), marker="o", label="unbounded (RPUSH, no TTL)")
    ax.plot(growth["turns"], _mb(growth["bounded_bytes"]), marker="o", label="SessionStore (bounded)")
    ax.set_xlabel("turns per session")
    ax.set_ylabel("MB")
    ax.set_title(f"{growth['sessions']} sessions of {growth['turn_bytes']}-byte turns ({growth['source']})")
    ax.legend(fontsize="small")
    return ax


def outage_timeline(records: list[dict[str, Any]], axes: Any = None) -> Any:
    """Each call's latency over time through an outage, statekit against a plain client,
    and below it what statekit answered from (store, cache, default)."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = axes
    for series, colour in (("plain redis-py", "tab:red"), ("statekit ResilientStore", "tab:blue")):
        rows = [r for r in records if r["series"] == series]
        top.scatter(
            [r["t_s"] for r in rows],
            [max(r["latency_ms"], 0.01) for r in rows],
            s=10,
            color=colour,
            label=series,
            alpha=0.7,
        )
    if records:
        start, end = records[0]["outage_start_s"], records[0]["outage_end_s"]
        for ax in axes:
            ax.axvspan(start, end, color="gray", alpha=0.15)
        top.text(start, top.get_ylim()[1] if top.get_ylim()[1] > 0 else 1, " outage", va="top", fontsize="small")
    top.set_yscale("log")
    top.set_ylabel("latency per call (ms, log)")
    top.legend(fontsize="small", loc="upper right")
    top.set_title("the same outage, two clients")
    sources = {"store": 0, "cache": 1, "default": 2}
    loads = [r for r in records if r["series"].startswith("statekit") and r.get("source")]
    bottom.scatter(
        [r["t_s"] for r in loads],
        [sources[r["source"]] for r in loads],
        s=8,
        c=["tab:green" if r["mode"] == "normal" else "tab:orange" for r in loads],
    )
    bottom.set_yticks(list(sources.values()), list(sources.keys()))
    bottom.set_ylabel("answered from")
    bottom.set_xlabel("seconds")
    return axes


def latency_histograms(metrics: Any, ax: Any = None) -> Any:
    """Latency distribution of each operation (log-spaced microseconds)."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")
    np = require("numpy", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.logspace(1, 6, 60)
    for op in metrics.operations():
        pairs = metrics.latency_histogram(op)
        if pairs:
            values, counts = zip(*pairs, strict=True)
            ax.hist(values, bins=bins, weights=counts, histtype="step", label=op)
    ax.set_xscale("log")
    ax.set_xlabel("latency (us, log)")
    ax.set_ylabel("calls")
    ax.set_title("store latency by operation")
    ax.legend(fontsize="small")
    return ax


def size_distribution(metrics: Any, cap: int | None = None, ax: Any = None) -> Any:
    """Session sizes seen after each append, against the byte cap."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    pairs = metrics.size_histogram()
    if pairs:
        values, counts = zip(*pairs, strict=True)
        ax.hist(values, bins=40, weights=counts, color="tab:purple")
    if cap:
        ax.axvline(cap, color="tab:red", ls="--", label=f"cap {cap:,} B")
        ax.legend(fontsize="small")
    ax.set_xlabel("session bytes after an append")
    ax.set_ylabel("appends")
    ax.set_title("session size distribution")
    return ax


def hit_rates(metrics: Any, ax: Any = None) -> Any:
    """Share of context reads served by each tier."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.5))
    rates = metrics.hit_rates()
    ax.bar(list(rates), list(rates.values()), color=["tab:green", "tab:orange", "tab:red"])
    ax.set_ylim(0, 1)
    ax.set_title("context reads by tier")
    return ax


def events_timeline(metrics: Any, ax: Any = None) -> Any:
    """Lifecycle events over time, one row per kind, with the workload's phases marked."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.5))
    events = list(metrics.timeline)
    if not events:
        return ax
    t0 = events[0][0]
    kinds = sorted({k for _, k, _ in events if not k.startswith("phase: ")})
    rows = {k: i for i, k in enumerate(kinds)}
    xs = [t - t0 for t, k, _ in events if k in rows]
    ys = [rows[k] for _, k, _ in events if k in rows]
    ax.scatter(xs, ys, s=6, alpha=0.6)
    for t, k, _ in events:
        if k.startswith("phase: "):
            ax.axvline(t - t0, color="gray", ls=":")
            ax.text(t - t0, len(kinds) - 0.5, k[7:], rotation=90, va="top", fontsize="x-small")
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("seconds")
    ax.set_title("lifecycle events")
    return ax


def visibility_curves(curves: dict[str, dict[str, tuple[Any, Any]]], axes: Any = None) -> Any:
    """One panel per latency fit: P(consistent read) against ms after commit, a line per quorum
    (the output of `consistency.visibility_curves`)."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if axes is None:
        _, axes = plt.subplots(1, len(curves), figsize=(4.7 * len(curves), 3.5), squeeze=False)
        axes = axes[0]
    for ax, (name, lines) in zip(axes, curves.items(), strict=True):
        for label, (t, p) in lines.items():
            ax.plot(t, p, label=label)
        ax.set_title(name)
        ax.set_xlabel("ms after commit")
        ax.set_ylim(0.4, 1.005)
    axes[0].set_ylabel("P(consistent read)")
    axes[0].legend(fontsize="small")
    return axes


def replica_staleness(lag_samples_ms: Any, ax: Any = None, title: str = "replica reads, measured") -> Any:
    """P(a replica read misses a write) against the time between the write's acknowledgement
    and the read, from measured replica lag."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")
    np = require("numpy", what="statekit.workbook.plots")

    from statekit.decide.consistency import replica_stale_probability

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    gaps = np.linspace(0, max(lag_samples_ms), 100)
    ax.plot(gaps, replica_stale_probability(lag_samples_ms, gaps))
    ax.set_xlabel("ms between the write's acknowledgement and the replica read")
    ax.set_ylabel("P(stale)")
    ax.set_title(title)
    return ax


def thread_growth(rows: list[dict[str, Any]], axes: Any = None) -> Any:
    """Two panels from `statekit.langgraph.growth` rows of one or more runs: checkpoints kept,
    and the thread's size (Redis's MEMORY USAGE on a real server, the saver's payload bytes on
    fakeredis), per turn, one line per `keep_last`."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.plots")

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(13, 3.5))
    measured = all(r["memory_bytes"] is not None for r in rows)
    size_key, size_label = ("memory_bytes", "MEMORY USAGE (KB)") if measured else ("payload_bytes", "payload (KB)")
    for policy in dict.fromkeys(r["keep_last"] for r in rows):
        run = [r for r in rows if r["keep_last"] == policy]
        label = "no history bound" if policy == "all" else f"keep_last={policy}"
        axes[0].plot([r["turn"] for r in run], [r["checkpoints"] for r in run], marker=".", label=label)
        axes[1].plot([r["turn"] for r in run], [r[size_key] / 1024 for r in run], marker=".", label=label)
    axes[0].set_ylabel("checkpoints in the thread")
    axes[1].set_ylabel(size_label)
    for ax in axes:
        ax.set_xlabel("turn")
        ax.legend()
    axes[0].set_title("history kept")
    axes[1].set_title("what the thread holds")
    return axes
