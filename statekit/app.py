"""The live design review: the review's decisions, recomputed as a reviewer changes the
profile's assumptions, with scenarios pinned and compared side by side.

Every number comes from `review.build_review` and the `report` functions, the same ones
the static report uses; this module only turns widget values into a profile (`apply`),
picks the headline decisions a comparison shows (`decisions`, `compare`) and lays the
widgets out (`ReviewApp`). `statekit app` serves it with Voilà.
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from statekit._optional import require
from statekit.decide.profile import WorkloadProfile
from statekit.errors import ProfileError, StatekitError

__all__ = ["ASSUMPTIONS", "apply", "assumptions_of", "decisions", "compare", "export_yaml", "ReviewApp", "review_app"]

#: The assumptions a reviewer changes, by key: (label, kind, min, max, step).
#: `traffic_x` scales the day's new sessions and the peak together; `ttl_minutes` 0 keeps
#: the TTL the lifecycle recommendation derives; `staleness.<class>` is each state class's
#: staleness tolerance in seconds.
ASSUMPTIONS: dict[str, tuple[str, str, float, float, float]] = {
    "traffic_x": ("traffic, times the profile's", "log", 0.1, 100.0, 0.1),
    "turns_per_session": ("turns per session", "int", 1, 200, 1),
    "bytes_per_turn": ("bytes per turn", "int", 50, 20_000, 50),
    "tokens_per_turn": ("tokens per turn", "int", 0, 5_000, 10),
    "token_price_per_million": ("USD per million tokens", "float", 0.0, 30.0, 0.1),
    "context_window_turns": ("window, turns", "int", 1, 200, 1),
    "ttl_minutes": ("TTL, min (0: derived)", "int", 0, 10_080, 5),
    "can_send_full_context": ("the caller can resend its history", "bool", 0, 1, 1),
    "latency_budget_ms": ("latency budget, ms", "log", 1.0, 1_000.0, 1.0),
}
#: Each state class's staleness tolerance, in seconds: a box, since 0 (never stale) is a
#: value a slider on a log scale cannot hold.
STALENESS = ("staleness, s", "number", 0.0, 1e7, 0.1)


def assumptions_of(profile: WorkloadProfile) -> dict[str, Any]:
    """The profile's own values of every assumption (the app's starting point)."""
    return {
        "traffic_x": 1.0,
        "turns_per_session": profile.turns.per_session,
        "bytes_per_turn": profile.turns.bytes_per_turn,
        "tokens_per_turn": profile.turns.tokens_per_turn,
        "token_price_per_million": profile.costs.token_price_per_million,
        "context_window_turns": profile.state.context_window_turns or profile.turns.per_session,
        "ttl_minutes": 0,
        "can_send_full_context": profile.client.can_send_full_context,
        "latency_budget_ms": profile.latency_budget_ms,
        **{f"staleness.{c.name}": c.staleness_tolerance_s for c in profile.state_classes},
    }


def apply(profile: WorkloadProfile, values: dict[str, Any]) -> WorkloadProfile:
    """`profile` with the assumptions in `values` changed (missing keys keep the profile's),
    validated again: an impossible combination raises `ProfileError`."""
    base = assumptions_of(profile)
    unknown = sorted(set(values) - set(base))
    if unknown:
        raise ProfileError(f"unknown assumptions {unknown}; the app changes {sorted(base)}")
    v = {**base, **values}
    data = profile.model_dump(mode="json")
    x = float(v["traffic_x"])
    if x <= 0:
        raise ProfileError(f"traffic_x must be positive, got {x}")
    t = data["traffic"]
    t["new_sessions_per_day"] = max(1, round(profile.traffic.new_sessions_per_day * x))
    t["peak_concurrent_sessions"] = max(1, round(profile.traffic.peak_concurrent_sessions * x))
    turns = int(v["turns_per_session"])
    data["turns"].update(
        per_session=turns, bytes_per_turn=int(v["bytes_per_turn"]), tokens_per_turn=int(v["tokens_per_turn"])
    )
    if turns != profile.turns.per_session:  # one request per turn, as the profile's own ratio says
        ratio = profile.traffic.requests_per_session / profile.turns.per_session
        t["requests_per_session"] = max(1, round(turns * ratio))
    data["costs"]["token_price_per_million"] = float(v["token_price_per_million"])
    window = int(v["context_window_turns"])
    if profile.state.context_window_turns is None and window == base["context_window_turns"]:
        data["state"]["context_window_turns"] = None  # untouched: still every turn of a session
    else:
        data["state"]["context_window_turns"] = min(window, turns)
    data["client"]["can_send_full_context"] = bool(v["can_send_full_context"])
    data["latency_budget_ms"] = float(v["latency_budget_ms"])
    for c in data["state_classes"]:
        c["staleness_tolerance_s"] = float(v[f"staleness.{c['name']}"])
    return WorkloadProfile.from_dict(data, source=f"what-if of {profile.service}")


def _review(profile: WorkloadProfile, redis_url: str, ttl_minutes: int = 0) -> dict[str, Any]:
    """The review of `profile`; with `ttl_minutes`, the lifecycle policy's TTL set by the
    reviewer and the capacity planned again with it."""
    from statekit.decide.lifecycle import recommend
    from statekit.decide.sizing import plan_capacity
    from statekit.workbook.review import build_review

    review = build_review(profile, redis_url)
    if ttl_minutes:
        rec = recommend(profile)
        policy = replace(rec.policy, ttl_seconds=int(ttl_minutes) * 60)
        life = review["lifecycle"]
        life["policy"] = {**life["policy"], "ttl_seconds": policy.ttl_seconds}
        life["policy"]["reasons"] = {
            **life["policy"]["reasons"],
            "ttl_seconds": f"set by the reviewer ({rec.policy.ttl_seconds:,} s recommended for this profile)",
        }
        life["capacity"] = plan_capacity(profile, policy)
    return review


def decisions(review: dict[str, Any]) -> dict[str, Any]:
    """The headline decisions of a review, flat, in the order a comparison shows them."""
    a, life, cons, res = review["assessment"], review["lifecycle"], review["consistency"], review["resilience"]
    cap, pol, cost = life["capacity"], life["policy"], a["cost"]
    mig = review["migrations"]
    out: dict[str, Any] = {
        "verdict": a["verdict"],
        "window, turns": pol["window_turns"],
        "TTL, s": pol["ttl_seconds"],
        "cap, bytes": pol["max_bytes"],
        "sessions held at once": cap["active_sessions"],
        "memory, MB": round(cap["total_bytes"] / 1e6, 1),
        "nodes": cap["nodes"],
        "replay, USD per 1,000 sessions": cost["replay_cost_per_1000_sessions"],
        "server state, USD per 1,000 sessions": round(cost["server_cost_per_1000_sessions"], 2),
        "server state pays from turn (tokens)": cost["token_break_even_turn"] or "never",
        "timeout, ms": res["timeout_ms"],
        "breaker opens after": res["fail_max"],
    }
    for c in cons["classes"]:
        out[f"consistency: {c['state_class']}"] = c["level"]
    out["schema rollout"] = mig["compatibility"]["verdict"] if mig.get("compatibility") else "none"
    return out


def compare(scenarios: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> Any:
    """A table of scenarios side by side: (name, assumptions, review) each. Rows: the
    assumptions that differ between them (what changed), then every decision; the last
    column says which decisions flip and by how much memory and cost move against the first."""
    pd = require("pandas", what="the scenario comparison")
    if not scenarios:
        return pd.DataFrame()
    names = [name for name, _, _ in scenarios]
    rows: dict[str, list[Any]] = {}
    keys = list(scenarios[0][1])
    for key in keys:
        values = [s[1].get(key) for s in scenarios]
        if len({repr(v) for v in values}) > 1:
            rows[f"assumed: {ASSUMPTIONS.get(key, (key,))[0]}"] = values
    table = [decisions(review) for _, _, review in scenarios]
    for key in table[0]:
        rows[key] = [d.get(key) for d in table]
    frame = pd.DataFrame(rows, index=names).T
    change = []
    for key, values in rows.items():
        first, rest = values[0], values[1:]
        if key.startswith("assumed: ") or all(v == first for v in rest):
            change.append("")
        elif all(isinstance(v, (int, float)) for v in values) and first:
            change.append(", ".join(f"{(v - first) / first:+.0%}" for v in rest))
        else:
            change.append("flips")
    frame["change vs first"] = change
    return frame


def export_yaml(profile: WorkloadProfile) -> str:
    """`profile` as YAML that `statekit review` accepts."""
    text = yaml.safe_dump(profile.model_dump(mode="json", exclude_none=True), sort_keys=False)
    WorkloadProfile.from_yaml_text(text, source="the exported scenario")  # it must load back
    return text


def _html(part: Any) -> str:
    """HTML for a report part: Markdown text, a DataFrame or a Styler."""
    if isinstance(part, str):
        mistune = require("mistune", what="the review app")
        return str(mistune.html(part)) if part else ""
    if hasattr(part, "style"):  # a DataFrame: text left-aligned, as in the static report
        from statekit.workbook.report import left_aligned

        part = left_aligned(part).format(lambda v: f"{v:,.6g}" if isinstance(v, float) else v)
    if hasattr(part, "to_html"):
        return str(part.to_html())
    return f"<pre>{part!s}</pre>"


def _figure_html(draw: Any) -> str:
    plt = require("matplotlib.pyplot", what="the review app")
    fig = draw(plt)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return f'<img alt="memory" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


@dataclass
class _Scenario:
    name: str
    values: dict[str, Any]
    review: dict[str, Any]


@dataclass
class ReviewApp:
    """The live review as ipywidgets: controls for the assumptions, one HTML widget per
    section, a status line with the last recomputation's time, scenarios and export.

    Changes are debounced (`debounce_s`): a recomputation starts once the controls have been
    still that long, and only the newest values are computed. `set(**values)` changes the
    controls from code (as a reviewer would), `wait_idle()` waits for the recomputation.
    """

    profile: WorkloadProfile
    redis_url: str = "fakeredis://"
    debounce_s: float = 0.15
    out_dir: Path = Path("scenarios")
    scenarios: list[_Scenario] = field(default_factory=list)

    def __post_init__(self) -> None:
        w = require("ipywidgets", what="the review app")
        self._w = w
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._generation = 0
        self._computing = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.controls: dict[str, Any] = {}
        style = {"description_width": "15.5em"}
        layout = w.Layout(width="36em")  # the left column's width
        for key, value in assumptions_of(self.profile).items():
            label, kind, lo, hi, step = ASSUMPTIONS.get(key, STALENESS)
            if key.startswith("staleness."):
                label = f"{key[len('staleness.') :]}, {label}"
            common = {"description": label, "style": style, "layout": layout, "continuous_update": False}
            if kind == "number":
                control = w.BoundedFloatText(value=float(value), min=lo, max=hi, step=step, **common)
            elif kind == "bool":
                control = w.Checkbox(value=bool(value), description=label, style=style, layout=layout)
            elif kind == "int":
                control = w.IntSlider(value=int(value), min=int(lo), max=int(max(hi, value)), step=int(step), **common)
            elif kind == "log":
                control = w.FloatLogSlider(
                    value=max(float(value), lo), base=10, min=math.log10(lo), max=math.log10(max(hi, value)),
                    step=0.05, readout_format=".3g", **common,
                )  # fmt: skip
            else:
                control = w.FloatSlider(value=float(value), min=lo, max=max(hi, value), step=step, **common)
            control.add_class(f"statekit-{key.replace('.', '-')}")
            control.observe(self._changed, names="value")
            self.controls[key] = control
        self.status = w.HTML().add_class("statekit-status")
        self.sections = {
            name: w.HTML().add_class(f"statekit-{name}")
            for name in ("verdict", "cost", "memory", "memory_plot", "resilience", "consistency", "schema", "scenarios")
        }
        self.scenario_name = w.Text(value="scenario 1", description="name", layout=w.Layout(width="20em"))
        self.scenario_name.add_class("statekit-scenario-name")
        self.pin_button = w.Button(description="Pin as scenario", icon="thumb-tack").add_class("statekit-pin")
        self.export_button = w.Button(description="Export YAML and report").add_class("statekit-export")
        self.exported = w.HTML().add_class("statekit-exported")
        self.pin_button.on_click(lambda _b: self.pin())
        self.export_button.on_click(lambda _b: self.export(render=True))
        self.review: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self.seconds = 0.0
        self.recompute()

    # -- recomputation --------------------------------------------------------------------

    def current_values(self) -> dict[str, Any]:
        return {k: c.value for k, c in self.controls.items()}

    def _changed(self, _change: Any = None) -> None:
        # ipywidgets has no debounce of its own: a timer restarted by each change
        with self._lock:
            self._idle.clear()
            self._generation += 1
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce_s, self._run_timer, args=(self._generation,))
            self._timer.daemon = True
            self._timer.start()
        self.status.value = "<i>updating...</i>"

    def _run_timer(self, generation: int) -> None:
        try:
            with self._lock:
                if generation != self._generation:
                    return  # a newer change restarted the timer
            self.recompute()
        finally:
            with self._lock:
                if generation == self._generation:
                    self._idle.set()

    def recompute(self) -> None:
        """Build the review for the controls' values now and update every section."""
        with self._computing:
            self._recompute()

    def _recompute(self) -> None:
        from statekit.workbook import report

        values = self.current_values()
        start = time.perf_counter()
        try:
            profile = apply(self.profile, values)
            review = _review(profile, self.redis_url, int(values["ttl_minutes"]))
        except ProfileError as exc:
            self.status.value = f'<span class="statekit-error">Not a valid profile: {exc}</span>'
            return
        except StatekitError as exc:  # Redis gone, say: shown where the reviewer looks, not lost in a timer thread
            self.status.value = f'<span class="statekit-error">Could not recompute: {exc}</span>'
            return
        self.review, self.values, self._current_profile = review, values, profile
        s = self.sections
        summary = re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"\1", report.decision_summary(review))  # no sections to link to
        s["verdict"].value = _html(summary) + "<ul>" + "".join(
            f"<li>{r}</li>" for r in review["assessment"]["reasons"]
        ) + "</ul>"  # fmt: skip
        s["cost"].value = _html(report.cost_summary(review))
        cap = review["lifecycle"]["capacity"]

        def draw(plt: Any) -> Any:
            from statekit.workbook.plots import memory_over_days, memory_over_turns

            fig, axes = plt.subplots(1, 2, figsize=(11, 3))
            memory_over_turns(cap["growth_over_turns"], ax=axes[0])
            memory_over_days(cap["growth_over_days"], cap["node_maxmemory_bytes"], ax=axes[1])
            return fig

        s["memory"].value = _html(report.capacity(review))
        s["resilience"].value = _html(report.resilience_settings(review))
        s["consistency"].value = _html(report.consistency(review))
        s["schema"].value = "".join(_html(p) for p in report.migration_parts(review))
        self.seconds = time.perf_counter() - start
        self.status.value = f'numbers updated in <span class="statekit-ms">{self.seconds * 1000:.0f}</span> ms'
        # the plot after the numbers: drawing it takes longer than computing the whole review
        s["memory_plot"].value = _figure_html(draw)

    def set(self, **values: Any) -> None:
        """Change controls as a reviewer would (each change debounced like a slider's)."""
        for key, value in values.items():
            if key not in self.controls:
                raise ProfileError(f"unknown assumption {key!r}; the app changes {sorted(self.controls)}")
            self.controls[key].value = value

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no recomputation is pending or running."""
        return self._idle.wait(timeout_s)

    # -- scenarios ------------------------------------------------------------------------

    def pin(self, name: str | None = None) -> None:
        """Keep the current settings as a scenario (at most three: the oldest goes first)."""
        name = name or self.scenario_name.value or f"scenario {len(self.scenarios) + 1}"
        self.scenarios = [s for s in self.scenarios if s.name != name][-2:]
        self.scenarios.append(_Scenario(name, dict(self.values), self.review))
        self.scenario_name.value = f"scenario {len(self.scenarios) + 1}"
        self.sections["scenarios"].value = _html(self.comparison())

    def comparison(self) -> Any:
        return compare([(s.name, s.values, s.review) for s in self.scenarios])

    def pin_calibration(self, calibration: Any) -> None:
        """Pin two scenarios from a `statekit.decide.calibrate.Calibration`: the profile
        "as profiled" and "as measured" (the calibrated profile), each with its own review,
        side by side in the scenarios table."""
        for name, profile in (("as profiled", calibration.assumed), ("as measured", calibration.calibrated)):
            values = assumptions_of(profile)
            values["traffic_x"] = profile.traffic.new_sessions_per_day / self.profile.traffic.new_sessions_per_day
            values["session minutes"] = profile.traffic.session_minutes
            self.scenarios = [s for s in self.scenarios if s.name != name][-2:]
            self.scenarios.append(_Scenario(name, values, _review(profile, self.redis_url)))
        self.sections["scenarios"].value = _html(self.comparison())

    def export(self, render: bool = False) -> dict[str, Path]:
        """Write the current settings as a profile YAML under `out_dir` (and, with `render`,
        its static report next to it); return the paths."""
        from statekit.workbook.review import run_review

        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.scenario_name.value) or "scenario"
        path = self.out_dir / f"{self.profile.service}_{stem}.yaml"
        path.write_text(export_yaml(self._current_profile), encoding="utf-8")
        paths = {"profile": path}
        if render:
            self.exported.value = f"wrote {path}; rendering its report..."
            (report,) = run_review([path], self.out_dir / "reports", redis_url=self.redis_url, progress=False)
            paths["report"] = report.html
        self.exported.value = "wrote " + ", ".join(f"{k}: <code>{v}</code>" for k, v in paths.items())
        return paths

    # -- layout ---------------------------------------------------------------------------

    def widget(self) -> Any:
        w = self._w
        heading = {
            "verdict": "Verdict and reasons",
            "cost": "Cost: full replay against server state",
            "memory": "Memory and nodes",
            "resilience": "Resilience settings",
            "consistency": "Consistency per state class",
            "schema": "Schema rollout",
            "scenarios": "Scenarios side by side",
        }
        body = []
        for key, title in heading.items():
            body += [w.HTML(f"<h3>{title}</h3>"), self.sections[key]]
            if key == "memory":
                body.append(self.sections["memory_plot"])
            if key == "schema":
                body += [w.HBox([self.scenario_name, self.pin_button, self.export_button]), self.exported]
        # the controls stay in view while the decisions scroll past them
        sticky = "<style>.statekit-controls {position: sticky; top: 0; align-self: flex-start}</style>"
        title = w.HTML(f"{sticky}<h2>{self.profile.service}: what if?</h2>").add_class("statekit-app-title")
        controls = w.VBox(
            [title, *self.controls.values(), self.status],
            layout=w.Layout(width="38em", min_width="38em", padding="0 1.5em 0 0"),
        ).add_class("statekit-controls")
        # the assumptions on the left, the decisions they drive on the right, side by side
        return w.HBox([controls, w.VBox(body, layout=w.Layout(flex="1 1 auto"))], layout=w.Layout(width="100%"))


def review_app(profile: WorkloadProfile | str | Path, redis_url: str = "fakeredis://", **options: Any) -> ReviewApp:
    """A `ReviewApp` for a profile (or the path of its YAML)."""
    if not isinstance(profile, WorkloadProfile):
        profile = WorkloadProfile.from_yaml(profile)
    return ReviewApp(profile, redis_url, **options)
