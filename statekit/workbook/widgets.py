"""The workshop questionnaire: answer the rubric with widgets and watch the verdict change."""

from __future__ import annotations

from typing import Any

from statekit._optional import require
from statekit.decide.assess import assess, what_if
from statekit.decide.profile import WorkloadProfile
from statekit.errors import ProfileError

__all__ = ["questionnaire"]


def questionnaire(profile: WorkloadProfile) -> Any:
    """An ipywidgets form seeded with `profile`'s answers; every change re-runs `assess()`.

    Returns the container widget; display it in a notebook. Headless runs (papermill)
    show nothing interactive, so notebooks also print `assess(profile).as_text()`.
    """
    w = require("ipywidgets", what="the questionnaire")
    plt = require("matplotlib.pyplot", what="the questionnaire")

    from statekit.workbook.plots import payload_growth

    style = {"description_width": "initial"}
    controls = {
        "can_send_full_context": w.Checkbox(
            value=profile.client.can_send_full_context, description="the client can send the full context", style=style
        ),
        "reused_across_requests": w.Checkbox(
            value=profile.state.reused_across_requests, description="state is reused across requests", style=style
        ),
        "units_independent": w.Checkbox(
            value=profile.state.units_independent, description="each unit of work is independent", style=style
        ),
        "shared_across_clients": w.Checkbox(
            value=profile.state.shared_across_clients, description="several callers share a session", style=style
        ),
        "long_running_steps": w.Checkbox(
            value=profile.state.long_running_steps, description="progress must survive restarts", style=style
        ),
        "turns_per_session": w.IntSlider(
            value=profile.turns.per_session, min=1, max=100, description="turns per session", style=style
        ),
    }
    out = w.Output()

    def refresh(_change: Any = None) -> None:
        with out:
            out.clear_output(wait=True)
            try:
                result = assess(what_if(profile, **{k: c.value for k, c in controls.items()}))
            except ProfileError as exc:
                print(exc)
                return
            print(result.as_text())
            payload_growth(result)
            plt.show()

    for control in controls.values():
        control.observe(refresh, names="value")
    refresh()
    box = w.VBox([w.HTML(f"<b>{profile.service}</b>: answer the rubric"), *controls.values(), out])
    return box
