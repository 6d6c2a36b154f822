"""How statekit turns values into bytes: orjson behind a one-byte envelope.

The first byte names the format, so a later format can be read next to this one and a
blob that is not statekit's (or is truncated, or garbled) is caught at once instead of
being half-decoded. Schema versions of the data itself are the Migrations' business.
"""

from __future__ import annotations

from typing import Any

import orjson

from statekit.errors import CorruptStateError, InvalidInput

__all__ = ["encode", "decode", "FORMAT_ORJSON"]

FORMAT_ORJSON = b"\x01"


def encode(value: Any, what: str = "value") -> bytes:
    """Encode `value` (JSON types, dataclasses, datetimes, numpy) as envelope + orjson bytes.

    Raises `InvalidInput` naming `what` when the value cannot be serialised.
    """
    try:
        return FORMAT_ORJSON + orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise InvalidInput(f"{what} cannot be serialised to JSON: {exc}; nothing was written") from None


def decode(raw: bytes, key: str) -> Any:
    """Decode a blob written by `encode`; raise `CorruptStateError` naming `key` otherwise."""
    if not raw:
        raise CorruptStateError(f"{key}: empty value where an encoded blob was expected")
    if raw[:1] != FORMAT_ORJSON:
        raise CorruptStateError(
            f"{key}: unknown encoding byte 0x{raw[0]:02x} (not written by this statekit); the value was left as is"
        )
    try:
        return orjson.loads(raw[1:])
    except orjson.JSONDecodeError as exc:
        raise CorruptStateError(f"{key}: corrupt JSON ({exc}); the value was left as is") from None
