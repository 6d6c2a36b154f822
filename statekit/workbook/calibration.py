"""The calibration for people: a text table (the CLI), an HTML page (`write_report`), the
plots the notebook shows, and the "as profiled" / "as measured" pair of scenarios of the
live review app. Every number comes from `statekit.decide.calibrate`."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from statekit._optional import require
from statekit.decide.calibrate import Calibration

__all__ = ["render_text", "render_html", "write_report", "drift_plot", "bytes_plot", "scenarios"]


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "not measured"
    if math.isinf(x):
        return "unbounded"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:,.3g}"


def _rows(cal: Calibration) -> list[list[str]]:
    out = []
    for row, r in zip(cal.rows, cal.table(), strict=True):
        m = row.measured  # the Estimate itself: the table's None stands for "unbounded" and "not measured" alike
        measured = "not measured" if m is None else _num(m.value)
        interval = "" if m is None or m.low == m.high or math.isnan(m.value) else f"[{_num(m.low)}, {_num(m.high)}]"
        drift = "" if r["drift"] is None else f"{r['drift']:+.0%}"
        flag = "DRIFT" if r["flagged"] else ""
        if r["applied"]:
            flag += " (applied)"
        out.append(
            [r["label"], f"{_num(r['assumed'])} {r['unit']}".strip(), f"{measured} {interval}".strip(), drift, flag]
        )
    return out


def render_text(cal: Calibration) -> str:
    """The calibration as the CLI prints it: the measurement in a line, the table, the flips."""
    m = cal.measurement
    lines = [
        f"{m.sessions:,} sessions in {m.namespace!r} on {m.nodes} node(s), {m.sampled:,} read "
        f"({'all' if m.sampled + m.corrupt >= m.sessions else 'a random sample'}"
        + (f", {m.corrupt:,} corrupt" if m.corrupt else "")
        + (f"; {m.foreign:,} foreign key{'s' if m.foreign > 1 else ''} not counted" if m.foreign else "")
        + f"), {m.round_trips:,} round trips, "
        f"{m.seconds:.2f} s (read-only); intervals are 99%"
        + (f"; rates over a {m.window_s:,.0f} s window" if m.window_s else ""),
    ]
    head = ["assumption", "assumed", "measured [99% interval]", "drift", f"> {cal.tolerance:.0%}"]
    rows = [head, *_rows(cal)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if m.schema_versions:
        lines.append("state schema versions: " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.schema_versions.items())))
    for note in m.notes:
        lines.append(f"  ({note})")
    flips = cal.flips()
    lines.append(f"decisions that flip: {len(flips)}" + ("" if flips else " (the review holds as profiled)"))
    lines += [f"  - {f}" for f in flips]
    lines += [f"  moved: {c}" for c in cal.changes]
    return "\n".join(lines)


def drift_plot(cal: Calibration, ax: Any = None) -> Any:
    """Measured / assumed per profile assumption, with its 99% interval; the band is the
    tolerance. A bar outside the band, with its interval, is a flagged drift."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.calibration")
    rows = [r for r in cal.table() if r["assumed"] and None not in (r["measured"], r["low"], r["high"])]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    names = [r["label"] for r in rows]
    ratio = [r["measured"] / r["assumed"] for r in rows]
    lows = [max(0.0, ratio[i] - r["low"] / r["assumed"]) for i, r in enumerate(rows)]
    highs = [max(0.0, r["high"] / r["assumed"] - ratio[i]) for i, r in enumerate(rows)]
    colors = ["tab:red" if r["flagged"] else "tab:blue" for r in rows]
    ax.barh(names, ratio, xerr=[lows, highs], color=colors, alpha=0.8, capsize=3)
    ax.axvspan(1 - cal.tolerance, 1 + cal.tolerance, color="0.85", zorder=0, label=f"±{cal.tolerance:.0%}")
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("measured / assumed (log scale; red: drift beyond tolerance)")
    ax.set_title(f"{cal.assumed.service}: as profiled against as measured")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    return ax


def bytes_plot(cal: Calibration, ax: Any = None) -> Any:
    """The distribution of stored bytes per session (sampled), against the policy's cap."""
    plt = require("matplotlib.pyplot", what="statekit.workbook.calibration")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    sizes = cal.measurement.sizes
    cap = cal.before.get("lifecycle.max_bytes")
    ax.hist(sizes, bins=40, color="tab:blue", alpha=0.8)
    for name, e in cal.measurement.bytes_percentiles.items():
        if name != "max":
            ax.axvline(e.value, color="tab:orange", ls="--", lw=1)
            ax.text(e.value, ax.get_ylim()[1] * 0.9, name, color="tab:orange", fontsize=8)
    if cap:
        ax.axvline(cap, color="tab:red", lw=2, label=f"cap {cap:,} B")
        ax.legend()
    ax.set_xlabel("stored bytes per session")
    ax.set_ylabel("sessions")
    ax.set_title("bytes per session, measured")
    return ax


def _figure_html(ax: Any) -> str:
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png", bbox_inches="tight", dpi=100)
    require("matplotlib.pyplot", what="statekit.workbook.calibration").close(ax.figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def render_html(cal: Calibration, plots: bool = True) -> str:
    """A self-contained HTML page: the table, the decisions as profiled and as measured, the
    flips, and (with `plots`) the drift and bytes plots."""
    e = html.escape
    head = ["assumption", "assumed", "measured [99% interval]", "drift", f"beyond {cal.tolerance:.0%}"]
    table = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
    for r in _rows(cal):
        cls = ' class="flag"' if r[-1] else ""
        table += f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
    table += "</table>"
    decisions = "<table><tr><th>decision</th><th>as profiled</th><th>as measured</th></tr>"
    for name, before in cal.before.items():
        after = cal.after.get(name)
        cls = ' class="flag"' if before != after else ""
        decisions += f"<tr{cls}><td>{e(name)}</td><td>{e(str(before))}</td><td>{e(str(after))}</td></tr>"
    decisions += "</table>"
    flips = "".join(f"<li>{e(str(f))}</li>" for f in cal.flips()) or "<li>none: the review holds as profiled</li>"
    figures = ""
    if plots:
        figures = _figure_html(drift_plot(cal)) + _figure_html(bytes_plot(cal))
    m = cal.measurement
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>calibration: {e(cal.assumed.service)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} td,th{{padding:2px 8px;text-align:left}}
tr.flag{{background:#fde2e1}} table{{border-collapse:collapse;margin:1em 0}}</style></head><body>
<h1>Calibration: {e(cal.assumed.service)}, as profiled against as measured</h1>
<p>{m.sessions:,} sessions in namespace <code>{e(m.namespace)}</code>, {m.sampled:,} read, {m.round_trips:,} round
trips (read-only). Intervals are 99%. A row is flagged when its drift is beyond {cal.tolerance:.0%} and its interval
excludes the assumed value; flagged profile fields are replaced in the calibrated profile.</p>
{table}<h2>Decisions that flip</h2><ul>{flips}</ul>{decisions}{figures}</body></html>
"""


def write_report(cal: Calibration, path: str | Path) -> Path:
    """Write `render_html(cal)` to `path` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(cal), encoding="utf-8")
    return path


def scenarios(cal: Calibration) -> dict[str, Any]:
    """The two scenarios the live review app pins side by side: the profile as written
    ("as profiled") and as measured, each as profile data."""
    return {
        "as profiled": cal.assumed.model_dump(mode="json"),
        "as measured": cal.calibrated.model_dump(mode="json"),
    }
