"""The key layout of a session, in one place: `{namespace}:{<session id>}:<part>`.

Every key of a session shares the hash tag `{<session id>}`, so each multi-key script and
transaction stays on one Redis Cluster slot. The store, the batch migration, the health
scan, the expiry watcher and the memory model all build and parse keys here.
"""

from __future__ import annotations

import re

from statekit.errors import InvalidInput

__all__ = [
    "PARTS",
    "MAX_SESSION_ID_BYTES",
    "validate_session_id",
    "validate_namespace",
    "session_keys",
    "key_pattern",
    "session_id_of",
    "key_name_bytes",
    "sibling_key",
    "THREAD_PARTS",
    "thread_keys",
    "thread_pattern",
    "thread_id_of",
    "dictionary_key",
    "newest_dictionary_key",
    "dictionary_pattern",
]

#: The parts of a session, in the order the store's scripts take their keys.
PARTS = ("meta", "log", "summary", "state")
#: Longest session id, in UTF-8 bytes (what Redis stores), not characters.
MAX_SESSION_ID_BYTES = 256

# Braces would break the hash tag; control characters (newlines included) break logs and
# the key layout. fullmatch, not match: `$` also matches before a trailing newline.
_SESSION_ID = re.compile(r"[^{}\x00-\x1f\x7f\ud800-\udfff]+")  # no lone surrogates: UTF-8 cannot hold them
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def valid_id(value: object, pattern: re.Pattern[str], max_bytes: int) -> bool:
    """Is `value` a string that `pattern` matches in full, of at most `max_bytes` in UTF-8?"""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return False
    if len(value) <= max_bytes // 4:  # a character is at most 4 bytes: short ids need no encoding
        return True
    try:
        return len(value.encode()) <= max_bytes
    except UnicodeEncodeError:
        return False


def validate_session_id(session_id: str) -> str:
    """Return `session_id`, or raise `InvalidInput` when it is not a string of 1 to 256 UTF-8
    bytes without braces or control characters (newlines included), or cannot be UTF-8."""
    if not valid_id(session_id, _SESSION_ID, MAX_SESSION_ID_BYTES):
        raise InvalidInput(
            f"bad session id {session_id!r}: 1 to {MAX_SESSION_ID_BYTES} bytes of UTF-8, "
            "no braces, newlines or other control characters"
        )
    return session_id


def validate_namespace(namespace: str) -> str:
    """Return `namespace`, or raise `InvalidInput` when it is empty or holds braces, colons or
    control characters (each would let one namespace's keys pass for another's)."""
    if not isinstance(namespace, str) or not namespace or re.search(r"[{}:\x00-\x1f\x7f]", namespace):
        raise InvalidInput(f"bad namespace {namespace!r}: non-empty, no braces, colons or control characters")
    return namespace


def session_keys(namespace: str, session_id: str) -> list[str]:
    """The four keys of a session, in the order the scripts expect (meta, log, summary, state)."""
    tag = f"{namespace}:{{{validate_session_id(session_id)}}}"
    return [f"{tag}:{part}" for part in PARTS]


def key_pattern(namespace: str, part: str = "*") -> str:
    """A SCAN MATCH pattern for one part (or every part) of every session in `namespace`.

    Glob characters in the namespace are escaped, so `a*` matches only its own keys.
    """
    if part != "*" and part not in PARTS:
        raise ValueError(f"unknown key part {part!r}: one of {PARTS} or '*'")
    escaped = _GLOB_SPECIAL.sub(r"\\\1", namespace)
    return f"{escaped}:{{*}}:{part}"


def session_id_of(key: str | bytes, namespace: str, part: str | None = None) -> str | None:
    """The session id in `key`, or None when the key is not a session key of `namespace`
    (or not of `part`, when given)."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    prefix = f"{namespace}:{{"
    if not key.startswith(prefix):
        return None
    body, sep, tail = key[len(prefix) :].rpartition("}:")
    if not sep or tail not in PARTS or (part is not None and tail != part):
        return None
    return body


def key_name_bytes(namespace: str, session_id_bytes: int, part: str) -> int:
    """Length in bytes of a session key's name, for the memory model."""
    return len(namespace.encode()) + session_id_bytes + len(f":{{}}:{part}")


def sibling_key(key: str, part: str) -> str:
    """Another part of the same session as `key` (e.g. its meta hash from its state key)."""
    if part not in PARTS:
        raise ValueError(f"unknown key part {part!r}: one of {PARTS}")
    return f"{key.rsplit(':', 1)[0]}:{part}"


#: The two keys of a LangGraph thread (statekit.langgraph): checkpoint hash and its index.
THREAD_PARTS = ("cp", "cx")


def thread_keys(namespace: str, thread_id: str) -> list[str]:
    """The keys of a checkpointed thread (hash, index), under one hash tag. Thread ids follow
    the rules of session ids (no braces or control characters, at most 256 bytes)."""
    if not isinstance(thread_id, str) or not valid_id(thread_id, _SESSION_ID, MAX_SESSION_ID_BYTES):
        raise InvalidInput(
            f"bad thread id {thread_id!r}: 1 to {MAX_SESSION_ID_BYTES} bytes of UTF-8, "
            "no braces, newlines or other control characters"
        )
    tag = f"{namespace}:{{{thread_id}}}"
    return [f"{tag}:{part}" for part in THREAD_PARTS]


def thread_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern for the index key of every thread in `namespace`."""
    escaped = _GLOB_SPECIAL.sub(r"\\\1", namespace)
    return f"{escaped}:{{*}}:{THREAD_PARTS[1]}"


def thread_id_of(key: str | bytes, namespace: str) -> str | None:
    """The thread id in a thread's index key, or None for any other key."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    prefix, suffix = f"{namespace}:{{", f"}}:{THREAD_PARTS[1]}"
    if not (key.startswith(prefix) and key.endswith(suffix)):
        return None
    return key[len(prefix) : -len(suffix)]


def dictionary_key(namespace: str, dict_id: int) -> str:
    """Where a namespace's zstd dictionary `dict_id` is stored (`statekit dict train`).

    Dictionaries are not session state: no session pattern matches them, and they have no TTL
    (a record may name one for as long as it lives); `statekit dict retire` removes one."""
    return f"{validate_namespace(namespace)}:dict:{int(dict_id)}"


def newest_dictionary_key(namespace: str) -> str:
    """The key holding the id of the dictionary a namespace's writers use."""
    return f"{validate_namespace(namespace)}:dict:newest"


def namespace_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern for every key of `namespace`, its glob characters escaped (so `a*`
    matches only its own keys, not those of `ab`)."""
    escaped = _GLOB_SPECIAL.sub(r"\\\1", validate_namespace(namespace))
    return f"{escaped}:*"


def newest_since_key(namespace: str) -> str:
    """The key holding when (ms, the server's clock) the namespace's newest dictionary became it."""
    return f"{validate_namespace(namespace)}:dict:since"


def dictionary_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern for the dictionaries of `namespace` (and its `newest` pointer)."""
    escaped = _GLOB_SPECIAL.sub(r"\\\1", namespace)
    return f"{escaped}:dict:*"
