"""What every lab shares: the `Result` a check answers with, the `Link` it cuts to make an
outage, and the namespace a run writes under."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlsplit


@dataclass(repr=False)
class Result:
    """A check's answer: `ok`, a `hint` (what happened, with its numbers, and where to look)
    and the `numbers` the check measured. Shown as ✔ or ✘ in a notebook."""

    lab: str
    ok: bool
    hint: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def mark(self) -> str:
        return "✔" if self.ok else "✘"

    def __str__(self) -> str:
        return f"{self.mark} {self.hint}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#cf222e"
        return (
            f'<div class="statekit-check" data-ok="{str(self.ok).lower()}" style="border-left:4px solid {colour};'
            f'padding:4px 10px"><b style="color:{colour}">{self.mark}</b> {escape(self.hint)}</div>'
        )

    def as_dict(self) -> dict[str, Any]:
        return {"lab": self.lab, "ok": self.ok, "hint": self.hint, "numbers": self.numbers}


def passed(lab: str, hint: str, **numbers: Any) -> Result:
    return Result(lab, True, hint, numbers)


def failed(lab: str, hint: str, **numbers: Any) -> Result:
    return Result(lab, False, hint, numbers)


#: how long a check waits for the attendee's code (a check takes a few seconds at most)
DEADLINE_S = 60.0


def with_deadline(lab: str) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Give a lab's check a deadline: it runs in a worker thread, and when it has not answered
    within `DEADLINE_S` the check answers ✘ and moves on. A thread cannot be stopped, so
    attendee code that hangs keeps its (daemon) thread until it returns or the kernel
    restarts. A check that raises answers ✘ with what was raised, never a traceback."""

    def wrap(check: Callable[..., Result]) -> Callable[..., Result]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> Result:
            box: dict[str, Any] = {}

            def work() -> None:
                try:
                    box["result"] = check(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - reported as the check's answer
                    box["error"] = exc

            worker = threading.Thread(target=work, name=f"statekit-check-{lab}", daemon=True)
            worker.start()
            worker.join(DEADLINE_S)
            if worker.is_alive():
                return failed(
                    lab,
                    f"your code did not answer within {DEADLINE_S:g} s: the check stopped waiting (a call that "
                    "never returns is still running in the background; restart the kernel to end it)",
                )
            if "error" in box:
                exc = box["error"]
                why = (str(exc).splitlines() or [""])[0]
                return failed(lab, f"the check could not finish: {type(exc).__name__} was raised: {why}")
            return box["result"]

        return run

    return wrap


def namespace(lab: str) -> str:
    """A namespace of its own for one run of a check, so that runs (and attendees sharing a
    trainer's server) never read each other's sessions."""
    return f"lab-{lab}-{os.urandom(4).hex()}"


def _what(value: Any) -> str:
    """How a hint names a value the attendee left in place of the fix."""
    return "still `...`" if value is Ellipsis else f"a {type(value).__name__}"


def shared(redis_url: str) -> str:
    """A URL every client of one run shares: `fakeredis://` alone gives each client a private
    embedded server, so two app instances need one named server."""
    if redis_url.rstrip("/") == "fakeredis:":
        return f"fakeredis://labs-{os.urandom(4).hex()}"
    return redis_url


def cleanup(client: Any, ns: str) -> None:
    """Delete every key a run wrote under `ns:`."""
    keys = list(client.scan_iter(match=f"{ns}:*"))
    if keys:
        client.delete(*keys)


class Link:
    """The lab's way to its Redis, which a check can cut: on fakeredis an embedded server
    whose calls hang (`FaultInjector`), on a real server a `TcpProxy` in front of it that
    drops every byte both ways. Either way a command sent during the outage never lands and
    its caller waits out its own socket timeout."""

    def __init__(self, redis_url: str = "fakeredis://") -> None:
        from statekit.backends import resolve_url
        from statekit.testing.faults import FaultInjector
        from statekit.testing.proxy import TcpProxy

        self.url = redis_url
        self.real = not redis_url.startswith("fakeredis")
        self.injector = None if self.real else FaultInjector()
        self.proxy = None
        if self.real:
            parts = urlsplit(resolve_url(redis_url))
            if not parts.scheme.startswith("redis") or "cluster" in parts.scheme:
                raise ValueError(f"a lab needs fakeredis:// or one redis:// server, got {parts.scheme}://")
            self._parts = parts
            self.proxy = TcpProxy(parts.port or 6379, upstream_host=parts.hostname or "127.0.0.1").start()

    def client(self, socket_timeout: float = 1.0) -> Any:
        """A statekit client (explicit timeout, no retries) whose link the check can cut."""
        if self.injector is not None:
            return self.injector.client(socket_timeout=socket_timeout)
        from statekit.backends import connect

        p = self._parts
        auth = f"{p.username or ''}:{p.password}@" if p.password else ""
        return connect(f"redis://{auth}127.0.0.1:{self.proxy.port}{p.path or ''}", socket_timeout=socket_timeout)  # type: ignore[union-attr]

    def down(self) -> None:
        if self.injector is not None:
            self.injector.hang()
        else:
            self.proxy.drop("up")  # type: ignore[union-attr]
            self.proxy.drop("down")  # type: ignore[union-attr]

    def up(self) -> None:
        if self.injector is not None:
            self.injector.heal()
        else:
            self.proxy.heal()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
