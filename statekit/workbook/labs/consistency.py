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
from statekit.workbook.labs.result import Result, _what, cleanup, failed, namespace, passed, shared, with_deadline

LAB = "consistency"
#: a field of the session's state next to the cart, which adding an item must keep
CUSTOMER = "C-1000"


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


@with_deadline(LAB)
def check(add_item: Any, redis_url: str = "fakeredis://") -> Result:
    """Run `add_item(store, session, "hat")` on instance A while instance B adds "socks" to the
        same cart, once for every place B's write can land: before A's first round trip to Redis,
        between each two, and after the last. Each run has a cart of its own, holding "shoes" and a
    first "hat" (a customer may buy two), next to the customer's id, which must stay."""
    from statekit.backends import connect

    if not callable(add_item):
        return failed(LAB, "add_item is not a function: define add_item(store, session_id, item)")
    ns, url = namespace(LAB), shared(redis_url)
    a = SessionStore(connect(url), namespace=ns)
    b = SessionStore(connect(url), namespace=ns)
    a.get_state("warm-up")  # A's connection is open: its handshake is not one of add_item's round trips
    try:
        n, last = 1, 1
        while n <= last + 1 and n <= 20:
            result, trips = _interleaved(add_item, a, b, f"s-{n}", n)
            if not result.ok:
                return result
            last = max(last, trips)
            n += 1
    finally:
        cleanup(a.client, ns)
    return passed(
        LAB,
        f"instance B's write landed before, between and after each of your {last} round trips to Redis, "
        "and the cart never lost an item, an add, or the session's other fields, nor took one add twice",
        round_trips=last,
    )


def _interleaved(add_item: Any, a: SessionStore, b: SessionStore, sid: str, n: int) -> tuple[Result, int]:
    """One run: B's write lands just before A's `n`-th round trip (or after A's last one)."""
    from statekit.testing.faults import before_round_trip

    b.update_state(sid, lambda s: {**s, "customer": CUSTOMER, "items": ["shoes", "hat"]})
    a_view = _Counting(a)

    def instance_b_adds() -> None:
        b.update_state(sid, lambda s: {**s, "items": [*s.get("items", []), "socks"]})

    with before_round_trip(n, instance_b_adds) as trips:
        try:
            add_item(a_view, sid, "hat")
        except Exception as exc:
            return failed(LAB, f"add_item raised {type(exc).__name__}: {exc}"), trips.count
    if trips.count < n:
        try:
            instance_b_adds()  # A is done: B's write comes after it
        except Exception as exc:  # the state A left cannot be updated: say what is in it
            state, _ = b.get_state(sid)
            return failed(
                LAB,
                f"after your add_item the session's state is {state!r}, and another instance's update "
                f"of it raised {type(exc).__name__}: {exc}",
            ), trips.count
    state, _ = b.get_state(sid)
    items = state.get("items", []) if isinstance(state, dict) else []
    calls = a_view.calls
    when = f"(instance B wrote just before your round trip {n} to Redis)" if n <= trips.count else ""
    if not isinstance(items, list):
        return failed(
            LAB,
            f"the cart's items are {_what(items)} ({items!r}): the lab's cart keeps a list under 'items', one entry "
            "per item added",
        ), trips.count
    if not isinstance(state, dict) or state.get("customer") != CUSTOMER:
        kept = sorted(state) if isinstance(state, dict) else state
        return failed(
            LAB,
            f"the session's state was {{'customer': {CUSTOMER!r}, 'items': [...]}}; after your add_item it holds "
            f"{kept!r}: the update replaced the whole state, and the customer's other fields are gone",
        ), trips.count
    hats = items.count("hat")
    if hats < 2:
        if "update_state" not in calls:
            return failed(
                LAB,
                f"the cart holds {items}: your 'hat' never reached the session's state (store.get_state shows "
                "what every instance reads); your function did not update it",
            ), trips.count
        if hats == 1 and len(set(items)) == len(items):
            return failed(
                LAB,
                f"the cart held one 'hat' and your add_item added another, and it holds {items}: a customer may buy "
                "two of the same item, and your cart keeps each item once",
            ), trips.count
        return failed(LAB, f"the cart holds {items}: the 'hat' your add_item wrote is not in it {when}"), trips.count
    if hats > 2:
        if calls.count("update_state") > 1:
            return failed(
                LAB,
                f"the cart holds {items} {when}: 'hat' went in {hats - 1} times for one add_item, which called "
                f"store.update_state {calls.count('update_state')} times, each adding it",
            ), trips.count
        return failed(
            LAB,
            f"the cart holds {items} {when}: 'hat' went in {hats - 1} times for one add_item. After a conflict the "
            "store calls your update function again; yours added the item each time it ran",
        ), trips.count
    if "socks" not in items:
        how = (
            "your function wrote back a copy of the cart read before instance B's write, so the compare-and-set "
            "succeeded with old data"
            if "update_state" in calls
            else "a read, then a write, with another instance's write in between"
        )
        return failed(
            LAB,
            f"the cart holds {items}: the 'socks' instance B added between your read and your write is lost "
            f"{when}: {how}",
        ), trips.count
    if "shoes" not in items:
        return failed(LAB, f"the cart holds {items}: the 'shoes' already in it are gone {when}"), trips.count
    return passed(LAB, "ok"), trips.count
