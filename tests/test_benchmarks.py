"""What the benchmarks say the store sends is what the store sends."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from statekit import SessionStore, connect

BENCH_STORE = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_store.py"


def _commands_of(server, operation) -> list[str]:
    """The command names that `operation()` sends to `server`, as its MONITOR sees them."""
    marker = "end-of-operation"
    ender = server.client()
    ender.ping()  # connected before MONITOR starts: its handshake is not seen
    with server.client().monitor() as monitor:  # MONITOR is on once this returns
        operation()
        ender.echo(marker)
        names = []
        for seen in monitor.listen():
            if seen["command"] == f"ECHO {marker}":
                return names
            names.append(seen["command"].split()[0].upper())
    raise AssertionError("MONITOR ended before the marker")


@pytest.mark.realredis
def test_bench_store_help_says_what_load_context_sends(fresh_redis_server):
    """`bench_store.py --help` said load_context is one Lua script; it is one MULTI/EXEC."""
    store = SessionStore(connect(fresh_redis_server.url), namespace="bench")
    store.append_turn("s", {"role": "user", "content": "hello"})
    sent = _commands_of(fresh_redis_server, lambda: store.load_context("s"))
    if {"EVAL", "EVALSHA"} & set(sent):
        says, must_not_say = "Lua script", "MULTI/EXEC"
    else:
        assert sent[0] == "MULTI" and sent[-1] == "EXEC", sent
        says, must_not_say = "MULTI/EXEC", "Lua script"

    helped = subprocess.run(
        [sys.executable, str(BENCH_STORE), "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    # the contender's description runs from its line to the next contender (or the options)
    [load] = re.findall(r"SessionStore\.load_context:(.*?)(?=\n\s{2}\w+\s{3}|\n\n)", helped, re.S)
    assert says in load and must_not_say not in load, (sent, load)
