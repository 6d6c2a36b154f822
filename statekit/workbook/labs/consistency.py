"""Lab 3, consistency per kind of state: two app instances add to one customer's cart.

The first version reads the cart as a JSON blob with GET on whichever instance got the
request and writes it back with SET: an item another instance added in between is lost. A
cart must lose nothing (strong, per session), so the attendee's fix is
`add_item(store, session_id, item)` on the session's structured state. The check puts
another instance's write exactly between the attendee's first two round trips to Redis (no
threads, no timing: `before_round_trip`), then reads the cart back.
"""

from __future__ import annotations

import json
from typing import Any

from statekit.store.blocking import SessionStore
from statekit.workbook.labs.result import Result, cleanup, failed, namespace, passed, shared

LAB = "consistency"


def break_it(redis_url: str = "fakeredis://", *, rounds: int = 100) -> dict[str, Any]:
    """The first version, twice: instance A reads the cart (GET), instance B adds an item
    (GET, SET), A writes its copy back (SET). Every B item is lost; counts of each."""
    from statekit.backends import connect

    url = shared(redis_url)
    a, b = connect(url), connect(url)
    ns = namespace(LAB)
    key = f"{ns}:cart"
    a.set(key, json.dumps({"items": []}))
    for i in range(rounds):
        cart_a = json.loads(a.get(key))  # instance A reads
        cart_b = json.loads(b.get(key))  # instance B reads, adds, writes
        cart_b["items"].append(f"B{i}")
        b.set(key, json.dumps(cart_b))
        cart_a["items"].append(f"A{i}")  # A writes back the copy it read first
        a.set(key, json.dumps(cart_a))
    items = json.loads(a.get(key))["items"]
    cleanup(a, ns)
    return {
        "items added": 2 * rounds,
        "items in the cart": len(items),
        "lost": 2 * rounds - len(items),
        "lost, all from instance B": sum(1 for i in range(rounds) if f"B{i}" not in items),
    }


class _Counting:
    """The store handed to the attendee's function: the lab's SessionStore, counting the
    calls the function makes (for the hint, never for the verdict)."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if callable(value):
            self.calls.append(name)
        return value


def check(add_item: Any, redis_url: str = "fakeredis://") -> Result:
    """Run `add_item(store, "s-1", "hat")` on instance A while instance B adds "socks"
    between A's first and second round trip to Redis; then read the cart."""
    from statekit.backends import connect
    from statekit.testing.faults import before_round_trip

    if not callable(add_item):
        return failed(LAB, "add_item is not a function: define add_item(store, session_id, item)")
    ns, url = namespace(LAB), shared(redis_url)
    a = SessionStore(connect(url), namespace=ns)
    b = SessionStore(connect(url), namespace=ns)
    sid = "s-1"
    b.update_state(sid, lambda s: {**s, "items": ["shoes"]})
    a_view = _Counting(a)

    def instance_b_adds() -> None:
        b.update_state(sid, lambda s: {**s, "items": [*s.get("items", []), "socks"]})

    try:
        with before_round_trip(2, instance_b_adds) as trips:
            try:
                add_item(a_view, sid, "hat")
            except Exception as exc:
                return failed(LAB, f"add_item raised {type(exc).__name__}: {exc}")
        if trips.count < 2:
            instance_b_adds()  # A made one round trip at most: B's write comes after it
        state, version = b.get_state(sid)
    finally:
        cleanup(a.client, ns)
    items = state.get("items", []) if isinstance(state, dict) else []
    calls = set(a_view.calls)
    if "hat" not in items:
        if "update_state" not in calls:
            return failed(
                LAB,
                f"the cart holds {items}: 'hat' never reached the session's state (store.get_state shows "
                "what every instance reads); your function did not update it",
            )
        return failed(LAB, f"the cart holds {items}: the 'hat' your add_item wrote is not in it")
    if items.count("hat") > 1:
        return failed(
            LAB,
            f"the cart holds {items}: 'hat' is in it {items.count('hat')} times. After a conflict the store "
            "calls your update function again; yours added the item each time it ran",
        )
    if "socks" not in items:
        how = (
            "your function wrote back a copy of the cart read before instance B's write, so the compare-and-set "
            "succeeded with old data"
            if "update_state" in calls
            else "a read, then a write, with another instance's write in between"
        )
        return failed(
            LAB, f"the cart holds {items}: the 'socks' instance B added between your read and your write is lost: {how}"
        )
    if "shoes" not in items:
        return failed(LAB, f"the cart holds {items}: the 'shoes' already in it are gone")
    return passed(
        LAB,
        f"the cart holds {sorted(items)}: instance B's write landed between your read and your write, and "
        f"nothing was lost (session version {version})",
        round_trips=trips.count,
    )
