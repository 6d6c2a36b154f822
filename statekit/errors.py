"""Errors a caller can catch. Each message says what went wrong and what to do."""

from __future__ import annotations


class StatekitError(Exception):
    """Base class of every error statekit raises on purpose."""


class ProfileError(StatekitError, ValueError):
    """A workload profile is missing, unreadable or invalid.

    The message names the file and, for a validation failure, each offending field.
    """


class InvalidInput(StatekitError, ValueError):
    """A session id, turn id or value that statekit refuses before touching Redis."""


class ConnectionURLError(StatekitError, ValueError):
    """A Redis URL is malformed or uses a scheme statekit does not know."""


class StoreUnavailable(StatekitError):
    """The state store could not be reached (refused, timed out, or the breaker is open)."""


class StateTooLarge(StatekitError):
    """An update would take a session past its byte cap; nothing was written."""

    def __init__(self, session_id: str, size: int, cap: int) -> None:
        self.session_id, self.size, self.cap = session_id, size, cap
        super().__init__(
            f"session {session_id!r} would grow to {size} bytes, over its cap of {cap} bytes; "
            "nothing was written. Shorten the turn, lower window_turns or raise max_bytes."
        )


class CorruptStateError(StatekitError):
    """A stored blob could not be decoded. Other sessions are unaffected."""


class UnknownVersionError(StatekitError):
    """A stored blob was written by a newer schema than this code knows; it was left untouched."""


class ConflictError(StatekitError):
    """A compare-and-set update lost every retry to concurrent writers."""


class NeedsRealRedis(StatekitError):
    """The operation needs a real redis-server (fakeredis lacks INFO, MEMORY USAGE, WAIT, ...)."""


class ReplicationStalled(StatekitError):
    """A replica did not show a write within the deadline: replication is stopped or far behind."""


class MissingExtra(StatekitError, ImportError):
    """A feature needs a package that only one of statekit's extras installs; the message names it."""
