"""Realistic payloads for compression tests and benchmarks: English text that Python ships.

The text is CPython's own `pydoc_data.topics` (the language reference's topics, as `help()`
shows them): prose and code examples, written by people, never random letters nor text made
repetitive on purpose. It is shaped as what an agent stores: chat turns (a user's question, an
assistant's answer), tool calls with JSON arguments and results, and LangGraph messages.
Everything is drawn from a seeded `random.Random`, so a test or a benchmark sees the same
payloads on every run.
"""

from __future__ import annotations

import functools
import json
import random
import re
from typing import Any

__all__ = ["paragraphs", "Conversation", "chat_turns", "langgraph_messages"]

_TOOLS = ("search_docs", "lookup_order", "open_ticket", "check_refund_policy")


@functools.cache
def paragraphs() -> tuple[tuple[str, str], ...]:
    """(topic, paragraph) for every paragraph of at least 80 characters in `pydoc_data.topics`."""
    from pydoc_data.topics import topics

    out = []
    for topic, text in sorted(topics.items()):
        for block in re.split(r"\n\s*\n", text):
            lines = [line.strip() for line in block.splitlines()]
            if set("".join(lines)) <= set("*=-~ "):  # a heading's underline
                continue
            para = " ".join(line for line in lines if line)
            if len(para) >= 80:
                out.append((topic, para))
    return tuple(out)


def _sentence(text: str) -> str:
    cut = text.find(". ")
    return text if cut < 0 else text[: cut + 1]


class Conversation:
    """One conversation's turns, drawn from `paragraphs()` by `rng`: a user asks about a topic,
    the assistant answers (sometimes after a tool call and its result), and so on."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.paras = paragraphs()
        self.n = 0

    def _para(self) -> tuple[str, str]:
        return self.paras[self.rng.randrange(len(self.paras))]

    def _run(self, i: int) -> str:
        start = self.rng.randrange(len(self.paras) - 3)
        return " ".join(p for _, p in self.paras[start : start + i])

    def turns(self) -> list[dict[str, Any]]:
        """The next exchange: 2 turns, or 4 when the assistant calls a tool first."""
        self.n += 1
        topic, para = self._para()
        question = {"role": "user", "content": f"About {topic.replace('-', ' ')}: {_sentence(para)} Can you explain?"}
        answer = {"role": "assistant", "content": self._run(self.rng.choice((1, 2, 3, 4)))}
        if self.rng.random() >= 0.3:
            return [question, answer]
        call_id = f"call_{self.rng.getrandbits(64):016x}"
        tool = self.rng.choice(_TOOLS)
        call = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"query": _sentence(para)[:120], "top_k": 2})},
                }
            ],
        }
        hits = [self._para() for _ in range(2)]
        result = {
            "role": "tool",
            "tool_call_id": call_id,
            "name": tool,
            "content": json.dumps(
                {"results": [{"topic": t, "score": round(self.rng.uniform(0.5, 0.99), 3), "text": p} for t, p in hits]}
            ),
        }
        return [question, call, result, answer]


def chat_turns(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` turns of one conversation (seeded)."""
    conversation = Conversation(random.Random(seed))
    out: list[dict[str, Any]] = []
    while len(out) < count:
        out += conversation.turns()
    return out[:count]


def langgraph_messages(count: int, seed: int = 0) -> list[Any]:
    """`count` LangChain messages (HumanMessage, AIMessage with tool calls, ToolMessage), as a
    LangGraph agent's `messages` channel holds them; needs langchain-core (the langgraph extra)."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    out: list[Any] = []
    for i, turn in enumerate(chat_turns(count, seed)):
        if turn["role"] == "user":
            out.append(HumanMessage(turn["content"], id=f"m{seed}-{i}"))
        elif turn["role"] == "tool":
            out.append(ToolMessage(turn["content"], tool_call_id=turn["tool_call_id"], id=f"m{seed}-{i}"))
        elif turn.get("tool_calls"):
            call = turn["tool_calls"][0]
            out.append(
                AIMessage(
                    "",
                    id=f"m{seed}-{i}",
                    tool_calls=[
                        {
                            "id": call["id"],
                            "name": call["function"]["name"],
                            "args": json.loads(call["function"]["arguments"]),
                        }
                    ],
                )
            )
        else:
            out.append(AIMessage(turn["content"], id=f"m{seed}-{i}"))
    return out
