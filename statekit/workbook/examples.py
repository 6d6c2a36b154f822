"""Schema histories of the example services' structured state, with their migrations.

Used by the replay corpus in `data/sessions/` (blobs written by each earlier version),
the migrations notebook, and as a worked example for `statekit migrate --migrations
statekit.workbook.examples:support_agent_migrations`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from statekit.migrate import Migrations

__all__ = [
    "SupportAgentStateV1",
    "SupportAgentStateV2",
    "SupportAgentStateV3",
    "SupportAgentStateV4",
    "support_agent_migrations",
    "WorkflowStateV1",
    "WorkflowStateV2",
    "agentic_workflow_migrations",
    "MODELS",
    "MIGRATIONS",
]


# -- support agent -----------------------------------------------------------------------


class SupportAgentStateV1(BaseModel):
    """Monday's release: the ticket, the customer number as text, whether it was escalated."""

    ticket_id: str
    customer: str
    escalated: bool = False


class SupportAgentStateV2(SupportAgentStateV1):
    """Adds the conversation language, with a default: a safe change."""

    language: str = "en"


class SupportAgentStateV3(BaseModel):
    """Wednesday's release: the customer number becomes an integer `customer_id` (a rename and a
    type change, which old code cannot read), and the channel is recorded."""

    ticket_id: str
    customer_id: int
    escalated: bool = False
    language: str = "en"
    channel: Literal["web", "email", "whatsapp", "phone"] = "web"


class SupportAgentStateV4(SupportAgentStateV3):
    """A proposed next version: a required priority (needs an expand/contract rollout)."""

    priority: int = Field(ge=1, le=4)


support_agent_migrations = Migrations(current=3)


@support_agent_migrations.step(1, 2)
def _support_1_to_2(state: dict) -> dict:
    return {**state, "language": "en"}


@support_agent_migrations.step(2, 3)
def _support_2_to_3(state: dict) -> dict:
    state = dict(state)
    customer = state.pop("customer")
    state["customer_id"] = int(str(customer).removeprefix("C-"))
    state.setdefault("channel", "web")
    return state


# -- agentic workflow --------------------------------------------------------------------


class WorkflowStepV1(BaseModel):
    name: str
    done: bool = False


class WorkflowStateV1(BaseModel):
    task_id: str
    steps: list[WorkflowStepV1]


class WorkflowStepV2(BaseModel):
    name: str
    status: Literal["pending", "running", "done", "failed"] = "pending"
    attempts: int = 0


class WorkflowStateV2(BaseModel):
    """Step status replaces the done flag, and retries are counted."""

    task_id: str
    steps: list[WorkflowStepV2]
    approved_by: str | None = None


agentic_workflow_migrations = Migrations(current=2)


@agentic_workflow_migrations.step(1, 2)
def _workflow_1_to_2(state: dict) -> dict:
    steps = [
        {"name": s["name"], "status": "done" if s.get("done") else "pending", "attempts": 0} for s in state["steps"]
    ]
    return {"task_id": state["task_id"], "steps": steps, "approved_by": None}


#: The current model of each example service's state, and the models of earlier versions.
MODELS = {
    "support_agent": {1: SupportAgentStateV1, 2: SupportAgentStateV2, 3: SupportAgentStateV3},
    "agentic_workflow": {1: WorkflowStateV1, 2: WorkflowStateV2},
}
MIGRATIONS = {"support_agent": support_agent_migrations, "agentic_workflow": agentic_workflow_migrations}
