"""statekit for asyncio services: `AsyncSessionStore`, `AsyncResilientStore`, `connect_async`.

The names an asyncio service imports, in one namespace (as `redis.asyncio` gathers
redis-py's); they are defined beside their blocking twins (`statekit.store.aio`,
`statekit.resilience.aio`, `statekit.backends`).

The same operations as `SessionStore` and `ResilientStore`, awaitable, for services that run
on an event loop (FastAPI, LangGraph's `ainvoke`), where a blocking Redis call would stall
every request of the worker. Nothing here is a second copy: the scripts, the key layout,
the decoding and every operation's logic are the blocking store's own (written once as
steps, see `statekit.store.StoreCore`); this module only carries those steps out with
awaits.

- `connect_async(url)` takes every URL `connect` takes: fakeredis (its asyncio client, on
  the same named embedded server), `redis.asyncio`, and `redis.asyncio.cluster.RedisCluster`.
- On a single server a store call is one round trip on a pooled connection, as in the
  blocking store. On Redis Cluster every call goes through redis-py's own asyncio cluster
  routing (`evalsha`, which follows MOVED and ASK), and `load_context` runs the read script
  instead of a MULTI/EXEC transaction: still one round trip, with redis-py's routing cost.
- Listeners are called synchronously, in the event loop: keep them cheap (the bundled
  metrics and OpenTelemetry listeners are).
- A summarizer or an `update_state` function may be a coroutine function: it is awaited.
"""

from statekit.backends import check_reachable_async, connect_async
from statekit.resilience.aio import AsyncResilientStore
from statekit.store.aio import AsyncSessionStore, adrive

__all__ = ["AsyncSessionStore", "AsyncResilientStore", "connect_async", "check_reachable_async", "adrive"]
