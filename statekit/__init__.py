"""statekit: decide and run the state of AI agents on Redis.

Decide: `assess(profile)` says whether a workload needs state at all, and where it should live.
Run: `connect(url)` (or `connect_async(url)` for asyncio) gives a Redis client (embedded
fakeredis by default) with explicit timeouts and retries; `SessionStore` (`AsyncSessionStore`)
keeps bounded session state on it.
`review.run_review(...)` renders a design review for a profile.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import codec, sizing  # noqa: E402
from .assess import Assessment, CostModel, RubricAnswer, assess, what_if  # noqa: E402
from .backends import check_reachable, connect, connect_async, redact_url  # noqa: E402
from .errors import (  # noqa: E402
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
from .lifecycle import ExtractiveSummarizer, LifecyclePolicy, LLMSummarizer, recommend  # noqa: E402
from .migrate import Migrations, check_compatibility  # noqa: E402
from .observe import StateMetrics  # noqa: E402
from .profile import StateClass, WorkloadProfile  # noqa: E402
from .resilience import ResilientStore  # noqa: E402
from .store import Context, SessionStore, StoreListener  # noqa: E402

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
    """`statekit.consistency` on first use: its models need numpy, which only the workbook
    extra installs, so `import statekit` does not import it."""
    if name == "consistency":
        import importlib

        return importlib.import_module(".consistency", __name__)
    if name in ("AsyncSessionStore", "AsyncResilientStore"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'statekit' has no attribute {name!r}")
