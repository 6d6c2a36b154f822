"""A namespace's zstd dictionaries, as versioned state in Redis (`statekit dict ...`).

`train` samples the namespace's live records (turns, summaries, structured state, the
LangGraph saver's records) over SCAN, trains a dictionary, measures it on a held-out part of
the sample, stores it under `{ns}:dict:<id>` and points `{ns}:dict:newest` at it. Writers
(a store with `Codec()`) use the newest; readers use the one a record names, fetched once per
process. Dictionaries have no TTL: a record may name one for as long as the record lives.
`retire` removes one only when the census finds no record that names it (after a batch
rewrite, or after the records that used it have expired), never the newest, and not before
`RETIRE_GRACE_S` after it stopped being the newest: a writer looks the newest up every
`Codec.refresh_s` seconds (300 by default), and until then may still write with the old one.

A dictionary holds fragments of the records it was trained on, and has no TTL: deleting a
session does not remove what a dictionary learnt from it. Train again and retire the old one
to drop text that must go (`docs/guide/compression.md`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from statekit import codec
from statekit.errors import CorruptStateError, InvalidInput
from statekit.keys import (
    PARTS,
    dictionary_key,
    dictionary_pattern,
    namespace_pattern,
    newest_dictionary_key,
    newest_since_key,
    validate_namespace,
)
from statekit.walk import Walker

__all__ = [
    "RETIRE_GRACE_S",
    "Trained",
    "train",
    "store",
    "newest",
    "newest_for_s",
    "listing",
    "census",
    "check_retirable",
    "retire",
    "rewrite",
    "values",
    "body_of",
]

_SEP = b"\x1f"

#: How long after a dictionary stops being the newest `retire` waits: twice a codec's default
#: refresh_s, so that every writer has looked up the newer one since.
RETIRE_GRACE_S = 600.0


@dataclass(frozen=True)
class Trained:
    """A dictionary trained on a namespace's sample, and what it buys on the held-out part."""

    dict_id: int
    size: int
    samples: int
    held_out: int
    raw_bytes: int  # orjson bytes of the held-out records
    zstd_bytes: int  # their frames without a dictionary
    dict_bytes: int  # their frames with the new dictionary

    @property
    def ratio_zstd(self) -> float:
        return self.raw_bytes / max(1, self.zstd_bytes)

    @property
    def ratio_dict(self) -> float:
        return self.raw_bytes / max(1, self.dict_bytes)


def values(client: Any, namespace: str, *, batch: int = 500) -> Iterator[tuple[str, bytes]]:
    """(key, value) of every stored value under `namespace`: each list element, string and hash
    field value of its session and thread keys (not its dictionaries)."""
    validate_namespace(namespace)
    skip = f"{namespace}:dict:"
    walker = Walker(client, namespace_pattern(namespace), batch)
    for node_batch in walker:
        keys = [k for k in node_batch.keys if not k.startswith(skip)]
        kinds = walker.execute(node_batch.node, [("TYPE", k) for k in keys])
        commands = []
        for key, kind in zip(keys, kinds, strict=True):
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            reads = {"list": ("LRANGE", key, 0, -1), "string": ("GET", key), "hash": ("HVALS", key)}
            commands.append(reads.get(kind, ("TYPE", key)))
        for key, reply in zip(keys, walker.execute(node_batch.node, commands), strict=True):
            if isinstance(reply, bytes) and reply not in (b"none", b"set", b"zset", b"stream"):
                yield key, reply
            elif isinstance(reply, list):
                for value in reply:
                    if isinstance(value, bytes):
                        yield key, value


def _frame_of(value: bytes) -> bytes | None:
    """The zstd frame inside a stored value, when it holds one."""
    if codec.is_frame(value):
        return value  # a summary or a saver record
    if value[:1] == codec.FORMAT_ZSTD and codec.is_frame(value[1:]):
        return value[1:]  # a state
    cut = value.find(_SEP, 0, 130)
    if cut >= 0 and value[cut + 1 : cut + 2] == codec.FORMAT_ZSTD:
        return value[cut + 2 :]  # a turn record
    return None


def body_of(value: bytes, key: str) -> bytes | None:
    """The uncompressed bytes of a value statekit wrote (JSON, summary text or msgpack), or None
    for one that is not a record (a meta field, a number)."""
    frame = _frame_of(value)
    if frame is not None:
        return codec.decompress(frame, key)
    if value[:1] == codec.FORMAT_ORJSON:
        return value[1:]
    cut = value.find(_SEP, 0, 130)
    if cut >= 0 and value[cut + 1 : cut + 2] == codec.FORMAT_ORJSON:
        return value[cut + 2 :]
    if len(value) > 16 and (0x92 <= value[0] <= 0x9F or value[0] == 0xDC):
        return value  # a LangGraph saver's record: a msgpack array (its fields are not this long)
    return None


def census(client: Any, namespace: str, *, batch: int = 500) -> dict[int, int]:
    """How many stored values of `namespace` name each dictionary id (0: compressed without one).
    Read-only; raw values are not counted."""
    counts: dict[int, int] = {}
    for _key, value in values(client, namespace, batch=batch):
        frame = _frame_of(value)
        if frame is not None:
            dict_id = codec.dictionary_id(frame)
            counts[dict_id] = counts.get(dict_id, 0) + 1
    return dict(sorted(counts.items()))


def newest(client: Any, namespace: str) -> int:
    """The id of the dictionary `namespace`'s writers use (0 for none)."""
    key = newest_dictionary_key(namespace)
    raw = client.get(key)
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise CorruptStateError(
            f"{key} holds {raw!r}, not a dictionary id; set it again with statekit dict train"
        ) from None


def _server_ms(client: Any) -> int:
    """The server's clock in ms (TIME): one clock for every process that reads it."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def newest_for_s(client: Any, namespace: str) -> float | None:
    """Seconds since the newest dictionary became the newest (None: not recorded)."""
    raw = client.get(newest_since_key(namespace))
    try:
        return max(0.0, (_server_ms(client) - int(raw)) / 1000) if raw else None
    except ValueError:
        return None


def load(client: Any, namespace: str, dict_id: int) -> None:
    """Register dictionary `dict_id` of `namespace` in this process (a GET unless known)."""
    if codec.registered(dict_id):
        return
    data = client.get(dictionary_key(namespace, dict_id))
    if not data:
        raise codec.MissingDictionary(dict_id, dictionary_key(namespace, dict_id), asked_redis=True)
    if codec.register(data) != dict_id:
        raise CorruptStateError(f"{dictionary_key(namespace, dict_id)} holds another dictionary than {dict_id}")


def store(client: Any, namespace: str, data: bytes) -> int:
    """Store dictionary `data` (no TTL) and make it the newest; return its id."""
    dict_id = codec.register(data)
    client.set(dictionary_key(namespace, dict_id), data)
    if newest(client, namespace) != dict_id:
        client.set(newest_since_key(namespace), str(_server_ms(client)))
    client.set(newest_dictionary_key(namespace), str(dict_id))
    return dict_id


def listing(client: Any, namespace: str) -> list[dict[str, Any]]:
    """Each dictionary of `namespace`: id, bytes, whether writers use it, records naming it."""
    validate_namespace(namespace)
    ids = []
    for node_batch in Walker(client, dictionary_pattern(namespace), 1000):  # every primary of a cluster
        for key in node_batch.keys:
            tail = key.rsplit(":", 1)[1]
            if tail.isdigit():
                ids.append(int(tail))
    current = newest(client, namespace)
    counts = census(client, namespace)
    return [
        {
            "id": i,
            "bytes": int(client.strlen(dictionary_key(namespace, i))),
            "newest": i == current,
            "records": counts.get(i, 0),
        }
        for i in sorted(ids)
    ]


def check_retirable(client: Any, namespace: str, dict_id: int, *, grace_s: float = RETIRE_GRACE_S) -> None:
    """`InvalidInput` unless dictionary `dict_id` exists, is not the newest, and the newest has
    been the newest for `grace_s` seconds at least (until then a writer may still use the old one)."""
    if not client.exists(dictionary_key(namespace, dict_id)):
        raise InvalidInput(f"namespace {namespace!r} has no dictionary {dict_id}")
    if newest(client, namespace) == dict_id:
        raise InvalidInput(f"dictionary {dict_id} is the newest (writers use it): train a newer one first")
    since = newest_for_s(client, namespace)
    if since is not None and since < grace_s:
        raise InvalidInput(
            f"dictionary {dict_id} stopped being the newest {since:.0f} s ago; writers look the newest up every "
            f"Codec.refresh_s (300 s by default), so one may still write with it: retire it after "
            f"{grace_s - since:.0f} s more (or give a grace shorter than {grace_s:.0f} s if every writer's "
            "refresh_s is shorter)"
        )


def retire(client: Any, namespace: str, dict_id: int, *, grace_s: float = RETIRE_GRACE_S) -> None:
    """Remove dictionary `dict_id`; `InvalidInput` while it is the newest, while any record
    names it, or within `grace_s` seconds of a newer one becoming the newest."""
    check_retirable(client, namespace, dict_id, grace_s=grace_s)
    using = census(client, namespace).get(dict_id, 0)
    if using:
        raise InvalidInput(
            f"dictionary {dict_id} is still named by {using} stored values of namespace {namespace!r}: "
            "retire it once they have expired or been rewritten"
        )
    client.delete(dictionary_key(namespace, dict_id))


def train(
    client: Any, namespace: str, *, size: int = 32_768, sample: int = 5_000, level: int = 3, seed: int = 0
) -> Trained:
    """Train a dictionary on up to `sample` of `namespace`'s records (reservoir-sampled over
    SCAN), measure it on a fifth of them held out, store it and make it the newest."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    seen = 0
    for key, value in values(client, namespace):
        try:
            frame = _frame_of(value)
            if frame is not None and codec.dictionary_id(frame) > 0:
                load(client, namespace, codec.dictionary_id(frame))
            body = body_of(value, key)
        except CorruptStateError:
            continue
        if not body:
            continue
        seen += 1
        if len(bodies) < sample:
            bodies.append(body)
        else:
            j = rng.randrange(seen)
            if j < sample:
                bodies[j] = body
    if len(bodies) < 10:
        raise InvalidInput(
            f"namespace {namespace!r} holds {len(bodies)} records: too few to train a dictionary (10 at least)"
        )
    rng.shuffle(bodies)
    held = max(1, len(bodies) // 5)
    test, learn = bodies[:held], bodies[held:]
    data = codec.train(learn, size)
    dict_id = codec.register(data)
    plain = codec.Codec(level=level, min_bytes=0)
    raw = sum(len(b) for b in test)
    zstd_bytes = sum(len(plain.frame(b) or b) for b in test)
    dict_bytes = sum(len(plain.frame(b, dict_id) or b) for b in test)
    store(client, namespace, data)
    return Trained(dict_id, len(data), len(learn), held, raw, zstd_bytes, dict_bytes)


# Replace one stored value if it is still what was read, and move the byte count the cap is
# checked against (a session's meta `b`, a thread hash's `bytes`) by the difference, keeping
# the TTL. KEYS: the value's key, the key of its byte count. ARGV: kind (list, string, hash),
# list index or hash field, the value read, the new value, the byte count's field.
_REWRITE_LUA = """
local kind, at, old, new, field = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur
if kind == 'list' then cur = redis.call('LINDEX', KEYS[1], tonumber(at))
elseif kind == 'string' then cur = redis.call('GET', KEYS[1])
else cur = redis.call('HGET', KEYS[1], at) end
if cur ~= old then return 0 end
if kind == 'list' then redis.call('LSET', KEYS[1], tonumber(at), new)
elseif kind == 'string' then redis.call('SET', KEYS[1], new, 'KEEPTTL')
else redis.call('HSET', KEYS[1], at, new) end
if redis.call('HEXISTS', KEYS[2], field) == 1 then redis.call('HINCRBY', KEYS[2], field, #new - #old) end
return 1
"""


def _recoded(value: bytes, key: str, encoder: codec.Codec, dict_id: int) -> bytes:
    """`value` (a record naming some dictionary) written again by `encoder` with `dict_id`."""
    body = codec.decompress(_frame_of(value) or b"", key)
    if codec.is_frame(value):  # a summary (text) or a saver record (msgpack): bare frames
        return encoder.frame(body, dict_id) or body
    if value[:1] == codec.FORMAT_ZSTD:  # a state
        return encoder.pack(body, dict_id)
    cut = value.find(_SEP, 0, 130)  # a turn record
    return value[: cut + 1] + encoder.pack(body, dict_id)


def rewrite(client: Any, namespace: str, dict_id: int, *, level: int = 3, batch: int = 500) -> dict[str, int]:
    """Write every stored value of `namespace` that names dictionary `dict_id` again, with the
    namespace's newest dictionary (or without one when `dict_id` is the newest or there is
    none): the batch migration that lets `retire` remove it before those values expire.

    Each value is replaced by a script only if it is still what was read (a value changed
    meanwhile is counted in `changed` and left to a second run), its key's TTL is kept, and the
    byte count the cap is checked against moves by the difference. Idempotent; returns counts
    of values `rewritten`, `changed` meanwhile and `failed` (unreadable)."""
    validate_namespace(namespace)
    target = newest(client, namespace)
    target = 0 if target == dict_id else target
    if target:
        load(client, namespace, target)
    load(client, namespace, dict_id)
    encoder = codec.Codec(level=level, min_bytes=0)
    counts = {"rewritten": 0, "changed": 0, "failed": 0}
    skip = f"{namespace}:dict:"
    walker = Walker(client, namespace_pattern(namespace), batch)
    for node_batch in walker:
        keys = [k for k in node_batch.keys if not k.startswith(skip)]
        kinds = [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in walker.execute(node_batch.node, [("TYPE", k) for k in keys])
        ]
        reads = {
            "list": lambda k: ("LRANGE", k, 0, -1),
            "string": lambda k: ("GET", k),
            "hash": lambda k: ("HGETALL", k),
        }
        chosen = [(k, kind) for k, kind in zip(keys, kinds, strict=True) if kind in reads]
        replies = walker.execute(node_batch.node, [reads[kind](k) for k, kind in chosen])
        commands = []
        for (key, kind), reply in zip(chosen, replies, strict=True):
            if isinstance(reply, Exception) or reply is None:
                continue
            if kind == "list":
                located = [(str(i), v) for i, v in enumerate(reply)]
            elif kind == "string":
                located = [("", reply)]
            else:
                pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
                located = [(f.decode() if isinstance(f, bytes) else f, v) for f, v in pairs]
            part = key.rsplit(":", 1)[1]
            counter, field = (key.rsplit(":", 1)[0] + ":meta", "b") if part in PARTS else (key, "bytes")
            for at, value in located:
                frame = _frame_of(value) if isinstance(value, bytes) else None
                if frame is None or codec.dictionary_id(frame) != dict_id:
                    continue
                try:
                    new = _recoded(value, key, encoder, target)
                except CorruptStateError:
                    counts["failed"] += 1
                    continue
                commands.append(("EVAL", _REWRITE_LUA, 2, key, counter, kind, at, value, new, field))
        for ok in walker.execute(node_batch.node, commands):
            if isinstance(ok, Exception):
                counts["failed"] += 1
            else:
                counts["rewritten" if ok == 1 else "changed"] += 1
    return counts
