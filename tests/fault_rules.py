"""The faults both fault schedules (tests/test_fault_schedule.py, tests/test_saver_schedule.py)
draw from a `statekit.testing.Nemesis` in `self.nemesis`: replies lost after the write landed,
a freeze and its thaw (the frozen writes landing late), the store down and back."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

#: The Lua that reads the PTTL of each of a session's or thread's keys (one slot) in one round trip.
PTTLS = "local out = {} for i = 1, #KEYS do out[i] = redis.call('PTTL', KEYS[i]) end return out"


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
