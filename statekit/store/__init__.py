"""The session store: bounded session state on Redis, one round trip per operation.

Each operation (append, fold, load, get and update state, migrate on read, tag, delete) is
written once, as a generator of steps, in `StoreCore` (`core`); no I/O happens there. The
drivers carry the steps out: `SessionStore` with blocking calls (`blocking`), and
`AsyncSessionStore` with awaits (`aio`). What both wires share (packing commands as
redis-py does) is in `wire`. The Lua scripts and the key layout are in `statekit.scripts`
and `statekit.keys`.
"""

from statekit.store.aio import AsyncSessionStore, adrive
from statekit.store.blocking import SessionStore, drive
from statekit.store.core import Context, Step, Steps, StoreCore, StoreListener, validate_turn_id

__all__ = [
    "SessionStore",
    "AsyncSessionStore",
    "StoreCore",
    "Context",
    "StoreListener",
    "Step",
    "Steps",
    "drive",
    "adrive",
    "validate_turn_id",
]
