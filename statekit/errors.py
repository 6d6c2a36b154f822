"""Errors a caller can catch. Each message says what went wrong and what to do."""

from __future__ import annotations

import re


class StatekitError(Exception):
    """Base class of every error statekit raises on purpose."""


class ProfileError(StatekitError, ValueError):
    """A workload profile is missing, unreadable or invalid.

    The message names the file and, for a validation failure, each offending field.
    """


class InvalidInput(StatekitError, ValueError):
    """A session id, turn id or value that statekit refuses before touching Redis."""


class ConnectionURLError(StatekitError, ValueError):
    """A Redis URL is malformed or uses a scheme statekit does not know. The message may go on
    to list the URL forms statekit knows; `brief` is its first line (the URL, password
    redacted, and what is wrong with it), what the CLI prints."""

    @property
    def brief(self) -> str:
        return str(self).partition("\n")[0]


class StoreUnavailable(StatekitError):
    """The state store could not be reached (refused, timed out, or the breaker is open)."""


class StoreFull(StoreUnavailable):
    """Redis refused a write because it is at `maxmemory` with a `noeviction` policy (an OOM
    reply). A ResilientStore degrades on it as on an outage; size the server (or let it evict)."""


class AccessDenied(StatekitError):
    """Redis refused the command to this user (NOPERM, NOAUTH, WRONGPASS): a permanent error
    of the deployment, not an outage, so a ResilientStore raises it instead of degrading."""


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


class CheckpointPruned(StatekitError, LookupError):
    """A LangGraph checkpoint asked for by id was pruned (`keep_last`, `prune`): it cannot be
    read, resumed or forked from. A checkpoint that never existed is not an error (None)."""

    def __init__(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, newest_pruned: str) -> None:
        self.thread_id, self.checkpoint_ns, self.checkpoint_id = thread_id, checkpoint_ns, checkpoint_id
        self.newest_pruned = newest_pruned
        where = f" (checkpoint namespace {checkpoint_ns!r})" if checkpoint_ns else ""
        super().__init__(
            f"checkpoint {checkpoint_id} of thread {thread_id!r}{where} was pruned: the thread keeps only its "
            f"newest checkpoints (keep_last, prune), and those up to {newest_pruned} are gone. List the thread "
            "for the checkpoints it holds; to travel further back, raise keep_last."
        )


#: Error replies that mean the store cannot serve right now but will again by itself: a
#: failover under way (READONLY from a demoted primary, MASTERDOWN from a replica cut off,
#: CLUSTERDOWN, TRYAGAIN during a slot move), a server loading its data (LOADING), a script
#: running past busy-reply-threshold (BUSY), too few replicas for min-replicas-to-write
#: (NOREPLICAS), a server that stopped accepting writes because it could not persist (MISCONF).
TRANSIENT_REPLIES = frozenset(
    {"READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "BUSY", "NOREPLICAS", "MISCONF"}
)
#: Error replies of a server at maxmemory with noeviction.
FULL_REPLIES = frozenset({"OOM"})
#: Error replies that refuse this user: permanent until the deployment changes.
DENIED_REPLIES = frozenset({"NOPERM", "NOAUTH", "WRONGPASS"})


def reply_code(exc: BaseException) -> str:
    """The error code of an error reply (`READONLY`, `OOM`...), or '' for none.

    redis-py raises a class of its own for the codes it knows and strips the code from the
    message (ReadOnlyError, OutOfMemoryError...); for the others (BUSY...) the message
    starts with the code, inside a Lua script too."""
    import redis.exceptions as rx

    for cls, code in (
        (rx.ReadOnlyError, "READONLY"),
        (rx.MasterDownError, "MASTERDOWN"),  # a ClusterDownError in redis-py: ask first
        (rx.ClusterDownError, "CLUSTERDOWN"),
        (rx.TryAgainError, "TRYAGAIN"),
        (rx.BusyLoadingError, "LOADING"),
        (rx.OutOfMemoryError, "OOM"),
        (rx.NoPermissionError, "NOPERM"),
        (rx.AuthenticationError, "NOAUTH"),
    ):
        if isinstance(exc, cls):
            return code
    word = str(exc).lstrip("-").split(" ", 1)[0]
    return word if word.isupper() and word.isalpha() else ""


def classify_reply(exc: BaseException, what: str) -> StatekitError | None:
    """The statekit error for an error reply `exc` of the call described by `what`: a
    `StoreUnavailable` for a transient one, `StoreFull` for OOM, `AccessDenied` for a refused
    user; None for any other reply (the caller decides: corrupt data, or a bug)."""
    code = reply_code(exc)
    if "user executing the script can't" in str(exc) or "NOPERM" in str(exc).split(" ", 1)[0]:
        code = "NOPERM"  # an ACL refusal inside a Lua script comes back without its code
    reason = str(exc).split(" script: ")[0]
    if not reason.startswith(code):
        reason = f"{code} {reason}"
    if code in TRANSIENT_REPLIES:
        return StoreUnavailable(
            f"{what} failed: Redis answered {reason!r} (transient: a failover, a load or a busy script)"
        )
    if code in FULL_REPLIES:
        return StoreFull(f"{what} refused: Redis is at maxmemory and may not evict ({reason!r})")
    if code in DENIED_REPLIES:
        rule = missing_rule(exc)
        grant = f"add {rule} to the user" if rule else "grant it what statekit needs"
        return AccessDenied(
            f"{what} refused to this Redis user: {reason!r}; {grant} (statekit.acl.setuser prints the full line)"
        )
    return None


_NOPERM_COMMAND = re.compile(r"has no permissions to run the '([^']+)' command")

_NOPERM_KEY = re.compile(r"no permissions to access (?:one of the keys|a key)")

_NOPERM_CHANNEL = re.compile(r"no permissions to access (?:one of the channels|a channel)")


def missing_rule(error: BaseException | str) -> str:
    """The rule to add for a NOPERM reply, in ACL syntax, or '' when the reply names none."""
    text = str(error)
    if "user executing the script can't run this command" in text:
        return "every command of the component's rules (a command inside a script was refused)"
    if "user executing the script can't access" in text:
        return "~<the namespace>:* (a key a script touches is outside the user's key patterns)"
    if match := _NOPERM_COMMAND.search(text):
        return f"+{match.group(1)}"
    if _NOPERM_KEY.search(text):
        return "~<the namespace>:* (the key is outside the user's key patterns)"
    if _NOPERM_CHANNEL.search(text):
        return "&<the channel>"
    return ""
