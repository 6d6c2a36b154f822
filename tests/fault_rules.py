"""The faults both fault schedules (tests/test_fault_schedule.py, tests/test_saver_schedule.py)
draw from a `statekit.testing.Nemesis` in `self.nemesis`: replies lost after the write landed,
a freeze and its thaw (the frozen writes landing late), the store down and back."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from statekit.backends import backend_kind

#: The Lua that reads the PTTL of each of a session's or thread's keys (one slot) in one round trip.
PTTLS = "local out = {} for i = 1, #KEYS do out[i] = redis.call('PTTL', KEYS[i]) end return out"


def pttls(client: Any, groups: list[list[Any]]) -> list[list[int]]:
    """The PTTL of every key of each group (a session's or a thread's keys, one slot), in one
    round trip: on a cluster one script per group (each group is one slot, the groups are
    not), on one server a pipeline of all of them. The invariants run this after every step;
    on fakeredis a script costs about twice a pipeline of the same PTTLs (each script is
    compiled and checked for globals), so one server gets the pipeline."""
    if backend_kind(client) == "cluster":
        return [client.eval(PTTLS, len(keys), *keys) for keys in groups]
    pipe = client.pipeline(transaction=False)
    for keys in groups:
        for key in keys:
            pipe.pttl(key)
    flat = iter(pipe.execute())
    return [[next(flat) for _ in keys] for keys in groups]


class NemesisRules(RuleBasedStateMachine):
    nemesis: object

    @rule(n=st.integers(1, 3))
    def lose_replies(self, n: int) -> None:
        self.nemesis.lose_replies(n)

    @precondition(lambda self: self.nemesis.mode == "ok")
    @rule()
    def freeze(self) -> None:
        self.nemesis.freeze()

    @precondition(lambda self: self.nemesis.mode == "frozen")
    @rule()
    def thaw(self) -> None:
        self.nemesis.thaw()

    @precondition(lambda self: self.nemesis.mode == "ok")
    @rule()
    def kill(self) -> None:
        self.nemesis.kill()

    @precondition(lambda self: self.nemesis.mode == "down")
    @rule()
    def restart(self) -> None:
        self.nemesis.restart()
