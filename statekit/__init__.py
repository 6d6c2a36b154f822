"""statekit: decide and run the state of AI agents on Redis.

Decide: `assess(profile)` says whether a workload needs state at all, and where it should live.
Run: `connect(url)` (or `connect_async(url)` for asyncio) gives a Redis client (embedded
fakeredis by default) with explicit timeouts and retries; `SessionStore` (`AsyncSessionStore`)
keeps bounded session state on it.
`statekit.workbook.review.run_review(...)` renders a design review for a profile.
"""

from __future__ import annotations

from statekit import codec
from statekit._version import __version__
from statekit.backends import check_reachable, connect, connect_async, redact_url
from statekit.decide import sizing
from statekit.decide.assess import Assessment, CostModel, RubricAnswer, assess, what_if
from statekit.decide.compat import check_compatibility
from statekit.decide.lifecycle import recommend
from statekit.decide.profile import StateClass, WorkloadProfile
from statekit.errors import (
    AccessDenied,
    ConflictError,
    ConnectionURLError,
    CorruptStateError,
    InvalidInput,
    MissingExtra,
    NeedsRealRedis,
    ProfileError,
    ReplicationStalled,
    StatekitError,
    StateTooLarge,
    StoreFull,
    StoreUnavailable,
    UnknownVersionError,
)
from statekit.lifecycle import ExtractiveSummarizer, LifecyclePolicy, LLMSummarizer
from statekit.migrate import Migrations
from statekit.observe import StateMetrics
from statekit.resilience import ResilientStore
from statekit.store import Context, SessionStore, StoreListener

__all__ = [
    "__version__",
    "assess",
    "what_if",
    "Assessment",
    "CostModel",
    "RubricAnswer",
    "connect",
    "connect_async",
    "AsyncSessionStore",
    "AsyncResilientStore",
    "check_reachable",
    "redact_url",
    "WorkloadProfile",
    "LifecyclePolicy",
    "recommend",
    "sizing",
    "consistency",
    "calibrate",
    "codec",
    "ExtractiveSummarizer",
    "LLMSummarizer",
    "SessionStore",
    "ResilientStore",
    "Migrations",
    "StateMetrics",
    "check_compatibility",
    "Context",
    "StoreListener",
    "InvalidInput",
    "StateClass",
    "StatekitError",
    "ProfileError",
    "ConnectionURLError",
    "StoreUnavailable",
    "StoreFull",
    "AccessDenied",
    "StateTooLarge",
    "CorruptStateError",
    "UnknownVersionError",
    "ConflictError",
    "NeedsRealRedis",
    "MissingExtra",
    "ReplicationStalled",
]


def __getattr__(name: str) -> object:
    """`statekit.consistency` and `statekit.calibrate` on first use: they need numpy, which
    only the workbook extra installs, so `import statekit` does not import them."""
    if name == "consistency":
        import importlib

        return importlib.import_module("statekit.decide.consistency")
    if name == "calibrate":  # the decisions it compares need numpy too
        from statekit.decide.calibrate import calibrate

        return calibrate
    if name in ("AsyncSessionStore", "AsyncResilientStore"):
        from statekit import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'statekit' has no attribute {name!r}")
