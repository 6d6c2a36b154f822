"""OpenTelemetry traces and metrics for statekit, through the store's listener hooks.

The store sends its commands as packed RESP on redis-py's pooled connections (the fast path
in `store._Wire`), so OpenTelemetry's redis instrumentation, which wraps redis-py's
`execute_command` and pipeline `execute`, sees none of them. `OpenTelemetryListener` gives
every store operation a span of its own instead: `statekit.append_turn`,
`statekit.load_context`, ..., a child of whatever span is current in the caller, with the
semantic-convention attributes for Redis (`db.system`, `server.address`, `server.port`,
`db.namespace`, `db.operation.name`) and statekit's own (`statekit.namespace`,
`statekit.round_trips`, `statekit.request_bytes`, `statekit.outcome`, and on a
ResilientStore's degraded reads `statekit.degraded_source`). The session id is recorded only
when asked (`record_session_id=True`): it may identify a person. Durations and lifecycle
events also go to the OpenTelemetry metrics API, beside the Prometheus collector.

Needs the `otel` extra (`opentelemetry-api`); exporting needs an SDK and an exporter of
your choice, configured as usual.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from statekit._optional import require
from statekit._version import __version__
from statekit.backends import backend_kind
from statekit.errors import ConflictError, CorruptStateError, StateTooLarge, StoreUnavailable
from statekit.store.core import StoreListener

trace = require("opentelemetry.trace", extra="otel", what="statekit.otel")
metrics = require("opentelemetry.metrics", extra="otel", what="statekit.otel")

__all__ = ["OpenTelemetryListener", "instrument"]

_OUTCOMES = (
    (StoreUnavailable, "unavailable"),
    (StateTooLarge, "rejected"),
    (CorruptStateError, "corrupt"),
    (ConflictError, "conflict"),
)


def _server(client: Any) -> dict[str, Any]:
    """The semantic-convention attributes of the server behind `client` (none for embedded
    fakeredis; a cluster has many nodes, so only the system is named)."""
    attrs: dict[str, Any] = {"db.system": "redis"}
    if backend_kind(client) != "redis":
        return attrs
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        attrs["server.address"] = kwargs["path"]
    else:
        attrs["server.address"] = kwargs.get("host", "localhost")
        attrs["server.port"] = int(kwargs.get("port", 6379))
    attrs["db.namespace"] = str(kwargs.get("db", 0))
    return attrs


class OpenTelemetryListener(StoreListener):
    """A span and metrics per store operation; lifecycle events as a counter.

    Attach it with `instrument(store)` (which also reads the server and namespace from the
    store), or pass it in `SessionStore(..., listeners=[...])` with `attributes` of your own.
    `tracer_provider` and `meter_provider` default to the global ones.
    """

    def __init__(
        self,
        *,
        attributes: Mapping[str, Any] | None = None,
        record_session_id: bool = False,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self.attributes = dict(attributes or {"db.system": "redis"})
        self.record_session_id = record_session_id
        self._tracer = trace.get_tracer("statekit", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("statekit", __version__, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "statekit.operation.duration", unit="s", description="Duration of session-store operations."
        )
        self._events = meter.create_counter(
            "statekit.lifecycle.events", unit="{event}", description="Lifecycle events of sessions, by kind."
        )
        self._local = threading.local()  # the outcome an event implies for this thread's operation

    def _metric_attributes(self, **extra: Any) -> dict[str, Any]:
        keep = ("db.system", "server.address", "server.port", "statekit.namespace")
        return {k: v for k, v in self.attributes.items() if k in keep} | extra

    def on_event(self, kind: str, session_id: str, info: Mapping[str, Any]) -> None:
        self._events.add(1, self._metric_attributes(**{"statekit.event": kind}))
        if kind in ("duplicate", "rejected"):
            self._local.outcome = kind
        elif kind == "fallback":  # a ResilientStore read served without the store
            now = time.time_ns()
            span = self._tracer.start_span(
                "statekit.fallback", kind=trace.SpanKind.INTERNAL, start_time=now, attributes=self._span_attributes(
                    "fallback", session_id, outcome="degraded", **{"statekit.degraded_source": info.get("source", "")}
                ),
            )  # fmt: skip
            span.end(end_time=now)

    def _span_attributes(self, op: str, session_id: str, outcome: str, **extra: Any) -> dict[str, Any]:
        attrs = {**self.attributes, "db.operation.name": op, "statekit.outcome": outcome, **extra}
        if self.record_session_id:
            attrs["statekit.session_id"] = session_id
        return attrs

    def on_operation_detail(
        self, op: str, session_id: str, seconds: float, error: BaseException | None, detail: Mapping[str, int]
    ) -> None:
        implied, self._local.outcome = getattr(self._local, "outcome", None), None
        if error is not None:
            outcome = next((name for cls, name in _OUTCOMES if isinstance(error, cls)), "error")
        else:
            outcome = implied or "ok"
        end = time.time_ns()
        attrs = self._span_attributes(
            op,
            session_id,
            outcome,
            **{"statekit.round_trips": detail.get("round_trips", 0), "statekit.request_bytes": detail.get("bytes", 0)},
        )
        span = self._tracer.start_span(
            f"statekit.{op}", kind=trace.SpanKind.CLIENT, start_time=end - int(seconds * 1e9), attributes=attrs
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end(end_time=end)
        self._duration.record(
            seconds, self._metric_attributes(**{"db.operation.name": op, "statekit.outcome": outcome})
        )


def instrument(store: Any, **kwargs: Any) -> OpenTelemetryListener:
    """Attach an OpenTelemetryListener to a SessionStore or AsyncSessionStore, or to a
    (Async)ResilientStore and the store inside it (its degraded reads become
    `statekit.fallback` spans), with the server and namespace read from the store. Under
    asyncio each span is a child of the span current in the calling task. Returns the listener."""
    inner = getattr(store, "store", store)
    attributes = {**_server(inner.client), "statekit.namespace": inner.namespace}
    listener = OpenTelemetryListener(attributes=attributes, **kwargs)
    inner.listeners.append(listener)
    if inner is not store:
        store.listeners.append(listener)
    return listener
