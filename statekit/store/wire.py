"""What the blocking and asyncio wires share: commands packed as redis-py packs them (its
`Encoder`, hiredis's C packer when installed) and `load_context`'s MULTI/EXEC reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from statekit.errors import (
    CorruptStateError,
)
from statekit.scripts import EXEC, MULTI


def _pack_py(*args: bytes) -> bytes:
    """One command in RESP from arguments already encoded to bytes."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


try:  # hiredis packs in C, about twice as fast; the extra `statekit[hiredis]` installs it
    from hiredis import pack_command as _hiredis_pack

    def _pack_bytes(*args: bytes) -> bytes:
        return _hiredis_pack(args)

except ImportError:  # pragma: no cover - exercised where hiredis is absent
    _hiredis_pack = None
    _pack_bytes = _pack_py


def _packer(encoder: Any, pack_bytes: Callable[..., bytes] | None = None) -> Callable[..., bytes]:
    """A packer that encodes arguments exactly as redis-py's `encoder` does, then packs them.

    The command name is UTF-8 and split on spaces (as redis-py does). With a strict UTF-8
    encoder and hiredis installed, the whole command goes to hiredis's C packer, which
    writes bytes, str, int and float as redis-py's Encoder does; anything it refuses
    (bool, None, bytearray) takes the careful path. The careful path encodes each argument
    with redis-py's own `Encoder.encode` (so floats are written as redis-py writes them,
    and bool and None raise redis-py's `DataError`), then packs the bytes.
    """
    encode = encoder.encode
    utf8 = encoder.encoding.replace("-", "").lower() == "utf8" and encoder.encoding_errors == "strict"
    fast = _hiredis_pack if (utf8 and pack_bytes is None) else None
    pack_bytes = pack_bytes or _pack_bytes

    def careful(command: str | bytes, *args: Any) -> bytes:
        out = command.encode().split() if isinstance(command, str) else [command]
        for arg in args:
            value = encode(arg)
            out.append(value if type(value) is bytes else bytes(value))
        return pack_bytes(*out)

    if fast is None:
        return careful

    def pack(command: str | bytes, *args: Any) -> bytes:
        if type(command) is str and " " not in command:
            try:
                return fast((command, *args))
            except TypeError:
                pass
        return careful(command, *args)

    return pack


def _context_reads(pack: Callable[..., bytes], keys: list[str]) -> bytes:
    """load_context's reads as one packed MULTI/EXEC transaction (five replies)."""
    return b"".join(
        (MULTI, pack("HMGET", keys[0], "v", "b"), pack("LRANGE", keys[1], 0, -1), pack("GET", keys[2]), EXEC)
    )


def _check_context(reply: Any, keys: list[str]) -> list[Any]:
    if reply is None:
        raise redis.exceptions.ResponseError("EXEC aborted")
    for part, key in zip(reply, keys, strict=False):
        if isinstance(part, Exception):
            raise CorruptStateError(f"{key}: {part}; the session was left as is")
    return reply
