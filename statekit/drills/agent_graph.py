"""Small deterministic LangGraph agents, for workshops and tests: the support desk graph and
how its thread grows with and without `keep_last`, and a graph that runs a subgraph every
turn (each run has a checkpoint namespace of its own)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from statekit.langgraph import StatekitSaver, ThreadPolicy

#: Messages the support desk's state keeps (a rolling window, lesson 2 of the workbook).
SUPPORT_WINDOW = 6


def _window(left: list[str], right: list[str]) -> list[str]:
    """LangGraph reducer: append, then keep the last SUPPORT_WINDOW messages."""
    return (list(left or []) + list(right or []))[-SUPPORT_WINDOW:]


class SupportState(TypedDict, total=False):
    """The support desk's state: the last messages (a rolling window), the last message's
    intent, an approval."""

    messages: Annotated[list[str], _window]
    intent: str
    approved: bool


def support_graph() -> Any:
    """A support desk as a LangGraph `StateGraph` (uncompiled), with no model in it: classify
    the last message; a refund needs a human's approval (an `interrupt`); then reply. Every
    node is deterministic, so a workshop runs it anywhere and a test can assert on it."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def classify(state: SupportState) -> dict[str, Any]:
        return {"intent": "refund" if "refund" in state["messages"][-1].lower() else "question"}

    def approve(state: SupportState) -> dict[str, Any]:
        answer = interrupt({"approve": state["messages"][-1]})
        return {"approved": answer == "yes"}

    def reply(state: SupportState) -> dict[str, Any]:
        if state["intent"] == "refund":
            text = "refund issued" if state.get("approved") else "refund declined"
        else:
            text = f"answer to {state['messages'][-1]!r}"
        return {"messages": [text], "approved": False}

    builder = StateGraph(SupportState)
    builder.add_node("classify", classify)
    builder.add_node("approve", approve)
    builder.add_node("reply", reply)
    builder.add_edge(START, "classify")
    builder.add_conditional_edges("classify", lambda s: "approve" if s["intent"] == "refund" else "reply")
    builder.add_edge("approve", "reply")
    builder.add_edge("reply", END)
    return builder


def growth(
    url: str,
    turns: int,
    *,
    keep_last: int | None = None,
    namespace: str = "lg",
    thread_id: str = "growth",
    policy: ThreadPolicy | None = None,
) -> list[dict[str, Any]]:
    """Run `support_graph` for `turns` questions on one thread and return the thread's
    `footprint` after each: how checkpoints, bytes and memory grow without `keep_last` and
    stay flat with it."""
    from tqdm.auto import tqdm

    saver = StatekitSaver.from_url(url, namespace=namespace, policy=policy, keep_last=keep_last)
    try:
        saver.delete_thread(thread_id)
        graph = support_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": thread_id}}
        rows = []
        for turn in tqdm(range(1, turns + 1), desc=f"keep_last={keep_last}", leave=False):
            graph.invoke({"messages": [f"question {turn}"]}, config)
            rows.append({"turn": turn, "keep_last": keep_last or "all", **saver.footprint(thread_id)})
        return rows
    finally:
        saver.close()


def _last_four(left: list[str], right: list[str]) -> list[str]:
    return (list(left or []) + list(right or []))[-4:]


class StepLog(TypedDict):
    """The steps a graph ran, the last four."""

    log: Annotated[list[str], _last_four]


def graph_with_a_subgraph() -> Any:
    """A graph (uncompiled) that runs a two-step subgraph every turn: node `a`, then `sub`
    (s1, s2). Each subgraph run gets its own checkpoint namespace, whose checkpoints go with
    the root checkpoint they ran under when `keep_last` prunes it."""
    from langgraph.graph import END, START, StateGraph

    sub = StateGraph(StepLog)
    sub.add_node("s1", lambda s: {"log": ["s1"]})
    sub.add_node("s2", lambda s: {"log": ["s2"]})
    sub.add_edge(START, "s1")
    sub.add_edge("s1", "s2")
    sub.add_edge("s2", END)
    builder = StateGraph(StepLog)
    builder.add_node("a", lambda s: {"log": ["a"]})
    builder.add_node("sub", sub.compile())
    builder.add_edge(START, "a")
    builder.add_edge("a", "sub")
    builder.add_edge("sub", END)
    return builder
