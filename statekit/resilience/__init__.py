"""Lesson 1: a state-store failure degrades the service instead of failing it.

`ResilientStore` (`store`) wraps a `SessionStore` with deadlines, a circuit breaker,
fallbacks to the last context seen or a default, and a write buffer replayed on recovery;
`AsyncResilientStore` (`aio`) is the same for asyncio, sharing every line of it. The buffer
can live on disk (`buffer.DurableBuffer`). The settings a profile needs are a decision:
`statekit.decide.resilience`.
"""

from statekit.resilience.aio import AsyncResilientStore
from statekit.resilience.buffer import DurableBuffer
from statekit.resilience.store import Clock, ResilienceStats, ResilientStore, SystemClock, WritePolicy

__all__ = [
    "ResilientStore",
    "AsyncResilientStore",
    "ResilienceStats",
    "DurableBuffer",
    "WritePolicy",
    "Clock",
    "SystemClock",
]
