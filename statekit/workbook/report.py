"""A review as a reader sees it: the tables and text of the report notebook, built from the
review dict (`review.build_review`), so the notebook only displays them.

Each function takes the review and returns a pandas DataFrame (text columns left-aligned
when shown) or Markdown text. Needs the workbook install (pandas).
"""

from __future__ import annotations

from typing import Any

from statekit._optional import require

__all__ = [
    "decision_summary",
    "rubric",
    "cost_by_turn",
    "cost_summary",
    "cost_assumptions",
    "resilience_settings",
    "write_policies",
    "degraded_experience",
    "lifecycle_note",
    "lifecycle_policy",
    "capacity",
    "consistency",
    "consistency_limits",
    "migration_parts",
    "alerts",
    "dashboards",
    "judgements",
    "left_aligned",
]


def _pd() -> Any:
    return require("pandas", what="statekit.workbook.report")


def left_aligned(frame: Any) -> Any:
    """A Styler that left-aligns text (pandas right-aligns every column, which makes long
    "why" and "recipe" columns hard to read) and keeps numbers to the right."""
    from pandas.api.types import is_numeric_dtype

    # anything not numeric is text: object columns, and pandas 3's str columns too
    text = [c for c in frame.columns if not is_numeric_dtype(frame[c])]
    styler = frame.style
    if text:
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    return styler.set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])


def _bullets(title: str, lines: list[str]) -> str:
    return f"**{title}**\n\n" + "\n".join(f"- {line}" for line in lines)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    if seconds < 3 * 86_400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86_400:,.1f} days"


def decision_summary(review: dict[str, Any]) -> str:
    """One screen of decisions, each linking to its section: verdict, policy, memory and
    nodes, consistency per class, rollout verdict, alert count."""
    a, life, cons = review["assessment"], review["lifecycle"], review["consistency"]
    cap, pol, mig = life["capacity"], life["policy"], review["migrations"]
    levels = ", ".join(f"{c['state_class']}: {c['level']}" for c in cons["classes"])
    rollout = mig["compatibility"]["verdict"] if mig.get("compatibility") else "no schema change proposed"
    if not mig["applies"]:
        rollout = "no state schema declared"
    rows = [
        ("Stateful or stateless", "#0.-Does-this-workload-need-state-at-all?", a["verdict"]),
        (
            "Lifecycle policy",
            "#2.-Bounded-growth:-lifecycle-policy-and-memory",
            f"window {pol['window_turns']} turns, TTL {_duration(pol['ttl_seconds'])}, cap {pol['max_bytes']:,} B"
            + ("" if life["applies"] else " (not needed for this verdict)"),
        ),
        (
            "Memory and nodes",
            "#2.-Bounded-growth:-lifecycle-policy-and-memory",
            f"{_mb(cap['total_bytes'])} for {cap['active_sessions']:,} sessions, {cap['nodes']} node(s)"
            + ("" if life["applies"] else " (not needed for this verdict)"),
        ),
        ("Consistency", "#3.-Consistency,-chosen-per-kind-of-state", levels),
        ("Schema rollout", "#4.-State-outlives-code:-schema-changes", rollout),
        ("Alerts", "#5.-State-health-you-can-see", f"{len(review['observability']['alerts'])} alerts to load"),
    ]
    lines = ["| decision | answer |", "|---|---|"]
    lines += [f"| [{name}]({anchor}) | {answer} |" for name, anchor, answer in rows]
    return "\n".join(lines)


def rubric(review: dict[str, Any]) -> Any:
    """The four questions, each answer with its evidence."""
    frame = _pd().DataFrame(review["assessment"]["rubric"])
    return frame.assign(answer=frame["answer"].map({True: "yes", False: "no"}))


def cost_by_turn(review: dict[str, Any]) -> Any:
    """Bytes and tokens per request, turn by turn, full replay against server state."""
    cost = review["assessment"]["cost"]
    columns = (
        "turns",
        "replay_request_bytes",
        "server_request_bytes",
        "store_read_bytes",
        "replay_prompt_tokens",
        "server_prompt_tokens",
    )
    return _pd().DataFrame({k: cost[k] for k in columns}).set_index("turns")


def cost_summary(review: dict[str, Any]) -> Any:
    """Break-even turns and the cost of 1,000 sessions each way."""
    cost = review["assessment"]["cost"]
    values = {
        "server state pays from turn (wire bytes)": cost["wire_break_even_turn"] or "never",
        "server state pays from turn (prompt tokens, per request)": cost["token_break_even_turn"] or "never",
        "server state pays from turn (prompt tokens, a whole session)": cost["session_token_break_even_turn"]
        or "never",
        "full replay, USD per 1,000 sessions": cost["replay_cost_per_1000_sessions"],
        "server state, USD per 1,000 sessions": cost["server_cost_per_1000_sessions"],
        "  of which Redis memory": cost["server_memory_cost_per_1000_sessions"],
    }
    return _pd().Series(values, name="value", dtype=object).to_frame()


def cost_assumptions(review: dict[str, Any]) -> Any:
    """What the cost model assumed."""
    return _pd().Series(review["assessment"]["cost"]["assumptions"], name="value").to_frame()


def resilience_settings(review: dict[str, Any]) -> Any:
    """Timeout, breaker and buffer, each with its reason."""
    res = review["resilience"]
    keys = ("timeout_ms", "fail_max", "reset_timeout_s", "buffer_max_turns", "durable_buffer")
    return _pd().DataFrame({"value": {k: res[k] for k in keys}, "why": {k: res["reasons"][k] for k in keys}})


def write_policies(review: dict[str, Any]) -> Any:
    """What happens to each state class's writes while the store is down."""
    res = review["resilience"]
    purposes = {c["name"]: c["purpose"] for c in review["profile"]["state_classes"]}
    return _pd().DataFrame({"write policy": res["write_policy_by_state_class"], "purpose": purposes})


def degraded_experience(review: dict[str, Any]) -> str:
    """What users see while the store is degraded, as Markdown bullets."""
    return _bullets("What users see while degraded", review["resilience"]["degraded_experience"])


def lifecycle_note(review: dict[str, Any]) -> str:
    """A note when the verdict needs no server state (the policy is then shown for comparison)."""
    if review["lifecycle"]["applies"]:
        return ""
    return f"**Not needed for this workload** (verdict: {review['assessment']['verdict']}); shown for comparison."


def lifecycle_policy(review: dict[str, Any]) -> Any:
    """Each policy value with its reason."""
    policy = review["lifecycle"]["policy"]
    values = {k: v for k, v in policy.items() if k != "reasons"}
    return _pd().DataFrame({"value": values, "why": policy["reasons"]}).fillna("")


def capacity(review: dict[str, Any]) -> Any:
    """Sessions held at once, memory with and without the policy, nodes."""
    cap = review["lifecycle"]["capacity"]
    node = f"nodes at {cap['node_maxmemory_bytes'] / 2**30:.0f} GiB maxmemory, {cap['usable_fraction']:.0%} used"
    values = {
        "sessions held at once (sized for)": f"{cap['active_sessions']:,}",
        "  over the day (Little's law: arrivals x (session + TTL))": f"{cap['daily_held_sessions']:,}",
        "  at the peak (peak sessions x (session + TTL) / session)": f"{cap['peak_held_sessions']:,}",
        "memory per session, with policy": f"{cap['per_session_bytes']:,} B",
        "memory per session, without (same turns)": f"{cap['unbounded_per_session_bytes']:,} B",
        "total with policy": _mb(cap["total_bytes"]),
        "total without policy after a week": f"{cap['unbounded_week_bytes'] / 1e9:,.2f} GB",
        node: cap["nodes"],
        "nodes without policy after a week": cap["nodes_without_policy_after_a_week"],
    }
    return _pd().Series(values, name="value").to_frame()


def _probability(p: float) -> str:
    if p == 0:
        return "0"
    return f"{p:.1e} (1 in {1 / p:,.0f})"


def consistency(review: dict[str, Any]) -> Any:
    """Level, routing and recipe per state class, with the stale-read numbers that decide it:
    the share of reads that are stale, the probability at the 1st and 50th percentile gap
    between a write and the next read of it, and the gap after which fewer than 1 read in
    1,000 is stale."""
    rows = []
    for ch in review["consistency"]["classes"]:
        gaps = ch.get("stale_at_gaps", {})
        replica = ch["reads_from"] == "replica"
        rows.append(
            {
                "state class": ch["state_class"],
                "purpose": ch["purpose"],
                "level": ch["level"],
                "reads from": ch["reads_from"],
                "stale reads": _probability(ch["stale_read_probability"]),
                **{
                    f"P(stale) at the {q} gap": f"{_probability(g['p'])} at {g['gap_ms'] / 1000:,.1f} s"
                    for q, g in gaps.items()
                },
                "under 1 in 1,000 after": f"{ch['safe_after_ms']:,.1f} ms" if replica else "always (primary)",
                "routing": ch["routing"],
                "recipe": "; ".join(ch["recipe"]),
            }
        )
    return _pd().DataFrame(rows).set_index("state class")


def failover(review: dict[str, Any]) -> str:
    """What a failover did to acknowledged writes, as measured by the drills, in Markdown; or
    how to measure it when this review ran without them."""
    f = review["consistency"].get("failover", {"measured": False, "how": "statekit review --failover-drill"})
    if not f["measured"]:
        return (
            "**Failover: not measured for this review.** A primary that fails before its replica has a "
            "write loses that write although it was acknowledged; `WAIT 1` makes the write wait for a "
            f"replica. Measure it: `{f['how']}`."
        )
    no_wait, wait, store = f["wait_0"], f["wait_1"], f["store"]
    return "\n".join([
        f"**Failover, measured** ({f['setup']}, {f['measured_at']}); one replica cut off for the last "
        f"{no_wait['writes_sent'] - wait['acknowledged']} of {no_wait['writes_sent']} writes, then its primary killed:",
        "",
        f"- without WAIT: **{no_wait['lost']} of {no_wait['acknowledged']} acknowledged writes lost**; the replica was "
        f"promoted {no_wait['failover_s']} s after the kill;",
        f"- with WAIT 1: {wait['lost']} of {wait['acknowledged']} acknowledged writes lost "
        f"({wait['writes_sent'] - wait['acknowledged']} writes were never confirmed, so the caller knew);",
        f"- a ResilientStore through the same failover: degraded, {store['buffered']} turns buffered and "
        f"{store['replayed']} replayed, {store['lost_from_buffer']} lost, normal again {store['recovered_s']} s "
        "after the kill.",
    ])  # fmt: skip


def access(review: dict[str, Any]) -> str:
    """The Redis users of the service and the `ACL SETUSER` line for each, in Markdown."""
    a = review.get("access")
    if a is None:
        return "**Least privilege:** this review predates the access section; render it again."
    if not a["applies"]:
        return "**Least privilege:** nothing to grant; this workload keeps no state on the server."
    lines = [
        "**Least privilege.** One Redis user per kind of process, each limited to the namespace "
        f"`{a['users'][0]['namespace']}` and to the commands its components send (replace `<password>`):",
        "",
        "```",
        *(u["setuser"] for u in a["users"]),
        "```",
        "",
    ]
    lines += [f"- `{u['user']}` runs {', '.join(u['components'])}" for u in a["users"]]
    lines += [
        "",
        "A command a user lacks comes back as `AccessDenied` naming the rule to add "
        "(`statekit.acl.missing_rule`); a user of one namespace cannot read another's sessions.",
    ]
    return "\n".join(lines)


def consistency_limits(review: dict[str, Any]) -> str:
    """The honest limits of the recipes, once each, as Markdown bullets."""
    limits = sorted({limit for ch in review["consistency"]["classes"] for limit in ch["limits"]})
    return _bullets("Honest limits", limits)


def migration_parts(review: dict[str, Any]) -> list[Any]:
    """The schema section: Markdown text and a DataFrame of the changes, in reading order."""
    mig = review["migrations"]
    if not mig["applies"]:
        return [f"_{mig['note']}_"]
    if "compatibility" not in mig:
        return [f"**{mig['current']}**: no next version proposed, nothing to roll out."]
    comp = mig["compatibility"]
    parts: list[Any] = [
        f"**{mig['current']} -> {mig['next']}: {comp['verdict']}** (Schema Registry mode {comp['mode']})"
    ]
    if comp["changes"]:
        columns = ["field", "kind", "detail", "backward", "forward", "verdict"]
        parts.append(_pd().DataFrame(comp["changes"])[columns])
    if comp.get("warnings"):
        parts.append(_bullets("Check by hand", comp["warnings"]))
    for phase in comp["plan"]:
        parts.append(_bullets(f"Phase {phase['phase']}: {phase['name']} (then: {phase['wait_for']})", phase["steps"]))
    return parts


def alerts(review: dict[str, Any]) -> Any:
    """The alerts to load, with their thresholds and reasons."""
    return _pd().DataFrame(review["observability"]["alerts"]).set_index("alert")[["expr", "for", "why"]]


def dashboards(review: dict[str, Any]) -> Any:
    """The dashboard panels to build."""
    frame = _pd().DataFrame(review["observability"]["dashboards"]).set_index("panel")
    return frame.assign(query=frame["exprs"].map("\n".join))[["metric", "note", "query"]]


def judgements(review: dict[str, Any]) -> Any:
    """The judgement calls: what was chosen, its numbers, and why."""
    rows = [
        {
            "judgement": j["name"],
            "chosen": j["choice"],
            "numbers": ", ".join(f"{k}: {v}" for k, v in j["numbers"].items()),
            "why": j["why"],
        }
        for j in review["judgements"]
    ]
    return _pd().DataFrame(rows).set_index("judgement")


def calibration(review: dict[str, Any]) -> str:
    """The calibration section as Markdown: assumed against measured, and the decisions that
    flipped; or how to calibrate when the review carries none."""
    cal = review.get("calibration")
    if not cal:
        return (
            "_Not calibrated: once the service runs, `statekit calibrate URL --namespace NS --profile P "
            "--review DIR` measures its namespace and renders this review with the measured numbers._"
        )

    def num(x: Any) -> str:
        if x is None:
            return "-"
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"

    m = cal["measurement"]
    lines = [
        f"Measured on namespace `{cal['namespace']}`: {m['sessions']:,} sessions, {m['sampled']:,} read, "
        f"99% intervals; flagged beyond {cal['tolerance']:.0%} of drift when the interval excludes the assumption.",
        "",
        "| assumption | assumed | measured [99% interval] | drift | |",
        "|---|---:|---:|---:|---|",
    ]
    for r in cal["rows"]:
        ends = [num(x) if x is not None else "unbounded" for x in (r["low"], r["high"])]
        interval = "" if r["measured"] is None or r["low"] == r["high"] else f" [{ends[0]}, {ends[1]}]"
        drift = "" if r["drift"] is None else f"{r['drift']:+.0%}"
        flag = ("**drift**" if r["flagged"] else "") + (", applied" if r["applied"] else "")
        lines.append(f"| {r['label']} | {num(r['assumed'])} | {num(r['measured'])}{interval} | {drift} | {flag} |")
    lines += ["", "**Decisions that flip** (as profiled -> as measured):", ""]
    lines += [f"- {f['text']}" for f in cal["flips"]] or ["- none: the review holds as profiled"]
    return "\n".join(lines)
