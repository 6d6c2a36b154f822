"""How statekit turns values into bytes: orjson behind a one-byte envelope, compressed with
zstd when that pays.

The first byte names the format, so a later format can be read next to this one and a
blob that is not statekit's (or is truncated, or garbled) is caught at once instead of
being half-decoded. Schema versions of the data itself are the Migrations' business.

- `0x01` + orjson bytes: what every statekit writes without compression, and what a
  compressing `Codec` still writes for a value under `min_bytes` or one that zstd would not
  shrink (no CPU is spent to grow a record). Readable forever.
- `0x02` + a zstd frame of the orjson bytes. The frame's header names the dictionary it was
  compressed with (zstd's own dictionary id; 0 for none), so a reader finds the dictionary a
  record needs in the record itself, and a record whose dictionary is unknown is a
  `MissingDictionary` (a `CorruptStateError` that names the id), never garbage.

A statekit older than the compressing codec refuses `0x02` with a `CorruptStateError`
("unknown encoding byte"), never misreads it: upgrade every reader first, then turn
compression on in the writers (`SessionStore(..., codec=Codec())`); turning it off again
only stops new records from being compressed, and old ones stay readable.

Summaries are stored as text; a compressed summary is a bare zstd frame, told apart by its
magic number (28 B5 2F FD, never the start of valid UTF-8). The LangGraph saver's records
are msgpack; a compressed one is a bare zstd frame too (0x28 never starts a msgpack array).

Dictionaries are registered per process (`register`), by zstd's dictionary id: an id names
one dictionary's content, whichever namespace it came from. zstd's compressor and
decompressor objects are not safe for simultaneous use from several threads, so each
thread has its own, and a forked child builds new ones.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from typing import Any

import orjson

from statekit._optional import require
from statekit.errors import CorruptStateError, InvalidInput

__all__ = [
    "encode",
    "decode",
    "FORMAT_ORJSON",
    "FORMAT_ZSTD",
    "ZSTD_MAGIC",
    "Codec",
    "PLAIN",
    "MissingDictionary",
    "register",
    "registered",
    "dictionary_id",
    "unpack",
    "decompress",
    "train",
    "is_frame",
    "read_text",
    "cache_decoded",
]

FORMAT_ORJSON = b"\x01"
FORMAT_ZSTD = b"\x02"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Below this many orjson bytes a value is stored raw: zstd's frame (about 10 bytes) and its
#: CPU cost buy nothing on a short value (benchmarks/bench_compress.py measures where it pays).
MIN_BYTES = 96
#: A frame whose header says it decodes to more than this is corrupt: a Redis value holds at most
#: 512 MB, and statekit's records stay far below (its byte caps reject what is larger), so a
#: header claiming more must not make the reader try to allocate it (a MemoryError otherwise).
MAX_DECODED_BYTES = 1 << 30


_zstandard: Any = None


def _zstd() -> Any:
    global _zstandard
    if _zstandard is None:
        _zstandard = require("zstandard", extra="compress", what="compressed records (statekit.codec)")
    return _zstandard


class MissingDictionary(CorruptStateError):
    """A record names a zstd dictionary this process does not have (yet). The store fetches it
    from Redis once; when Redis does not have it either, the record cannot be read."""

    def __init__(self, dict_id: int, key: str, asked_redis: bool = False) -> None:
        if asked_redis:
            where = "which is not in Redis (retired or never stored)"
            then = "store the dictionary again, or delete the value"
        else:
            where = "which this process has not loaded"
            then = "a store or saver of its namespace fetches it from Redis"
        super().__init__(f"{key}: written with zstd dictionary {dict_id}, {where}; the value was left as is ({then})")
        self.dict_id = dict_id
        self.key = key


# -- dictionaries, per process -----------------------------------------------------------

_dictionaries: dict[int, Any] = {}  # zstd dictionary id -> zstandard.ZstdCompressionDict
_dict_lock = threading.Lock()


def register(data: bytes) -> int:
    """Make a dictionary (as `train` returns it, or as stored in Redis) known to this process;
    return its id. Raises `CorruptStateError` for bytes that are not a zstd dictionary."""
    zstd = _zstd()
    try:
        zdict = zstd.ZstdCompressionDict(bytes(data), dict_type=zstd.DICT_TYPE_FULLDICT)
        dict_id = zdict.dict_id()
    except zstd.ZstdError as exc:
        raise CorruptStateError(f"not a zstd dictionary ({exc})") from None
    if not dict_id:
        raise CorruptStateError("not a trained zstd dictionary (its id is 0)")
    with _dict_lock:
        _dictionaries.setdefault(dict_id, zdict)
    return dict_id


def registered(dict_id: int) -> bool:
    """Does this process know dictionary `dict_id`?"""
    return dict_id in _dictionaries


def train(samples: list[bytes], size: int = 32_768) -> bytes:
    """A zstd dictionary of at most `size` bytes trained on `samples` (orjson bytes of records)."""
    zstd = _zstd()
    try:
        return zstd.train_dictionary(size, samples).as_bytes()
    except zstd.ZstdError as exc:
        raise InvalidInput(f"cannot train a dictionary on {len(samples)} samples: {exc}; sample more records") from None


# -- per-thread compressors --------------------------------------------------------------

_local = threading.local()


def _renew() -> None:
    global _local
    _local = threading.local()
    _recent.cache_clear()


os.register_at_fork(after_in_child=_renew)


#: Values up to this size are compressed with a dictionary through small match tables.
SMALL_BYTES = 8192


def _compressor(level: int, dict_id: int, small: bool = False) -> Any:
    try:
        return _local.c[(level, dict_id, small)]
    except (AttributeError, KeyError):
        pass
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    zstd = _zstd()
    zdict = None
    options: dict[str, Any] = {
        "level": level,
        # 4 bytes a frame written with a dictionary: decoded with another dictionary than the one
        # it was written with (a dictionary key overwritten in Redis, an id reused), it fails its
        # checksum and is a CorruptStateError, never garbage. A frame without a dictionary has no
        # such hazard (zstd's own format checks catch a damaged frame) and no checksum.
        "write_checksum": bool(dict_id),
        "write_content_size": True,
        "write_dict_id": True,
    }
    if dict_id:
        # A dictionary of its own, digested once: without it zstandard loads the whole dictionary
        # on every compress() (tens of microseconds for 32 KB). For a small value, the digest's
        # match tables are sized for the value, not for the dictionary: tables of the level's
        # size (hundreds of KB) are cold in the CPU's caches by the time the next turn comes,
        # and cost more to touch than the compression itself; the ratio is the same.
        zdict = zstd.ZstdCompressionDict(_dictionaries[dict_id].as_bytes(), dict_type=zstd.DICT_TYPE_FULLDICT)
        if small:
            params = zstd.ZstdCompressionParameters(
                window_log=15,
                hash_log=13,
                chain_log=13,
                search_log=1,
                min_match=5,
                strategy=zstd.STRATEGY_DFAST,
                write_content_size=1,
                write_dict_id=1,
                write_checksum=1,
            )
            zdict.precompute_compress(compression_params=params)
            options = {"compression_params": params}
        else:
            zdict.precompute_compress(level=level)
    found = cache[(level, dict_id, small)] = zstd.ZstdCompressor(dict_data=zdict, **options)
    return found


def _decompressor(dict_id: int) -> Any:
    cache = getattr(_local, "d", None)
    if cache is None:
        cache = _local.d = {}
    found = cache.get(dict_id)
    if found is None:
        zstd = _zstd()
        found = cache[dict_id] = zstd.ZstdDecompressor(dict_data=_dictionaries[dict_id] if dict_id else None)
    return found


def is_frame(raw: bytes) -> bool:
    """Does `raw` start with zstd's magic number (a compressed summary or saver record)?"""
    return raw[:4] == ZSTD_MAGIC


def dictionary_id(frame: bytes) -> int:
    """The dictionary id a zstd frame names in its header (0 for none); -1 when `frame` is not
    a zstd frame. Reads the header only (no zstandard needed)."""
    if len(frame) < 5 or frame[:4] != ZSTD_MAGIC:
        return -1
    fhd = frame[4]
    size = (0, 1, 2, 4)[fhd & 3]
    start = 5 + (0 if fhd & 0x20 else 1)  # a window descriptor byte unless single-segment
    if size == 0 or len(frame) < start + size:
        return 0 if size == 0 else -1
    return int.from_bytes(frame[start : start + size], "little")


#: Frames of at most this many bytes (a turn record, a state) are remembered once decoded,
#: when what they hold (the size a frame's header gives) is at most CACHED_DECODED_BYTES: a small
#: frame can hold megabytes of repetitive text, and the cache keeps what frames decode to.
CACHED_FRAME_BYTES = 1024
CACHED_DECODED_BYTES = 8192
_cache_entries = 2048


def _decompress_once(frame: bytes) -> bytes:
    return _local.d[0 if frame[4] & 3 == 0 else dictionary_id(frame)].decompress(frame)


_recent = functools.lru_cache(maxsize=_cache_entries)(_decompress_once)


def cache_decoded(entries: int) -> None:
    """Remember the last `entries` small frames decoded in this process (0: none; 2048 by
    default: at most 2,048 x 8 KB = 16 MB, as only frames that decode to 8 KB or less are kept).

    A process that serves a session loads the same window of turns request after request
    (sticky routing keeps a session on one process), and all but the newest are unchanged
    since the last load: a frame seen before is not decompressed again. A frame's bytes name
    its dictionary, and a dictionary id names one content, so a remembered frame always decodes
    to the same bytes."""
    global _recent, _cache_entries
    if isinstance(entries, bool) or not isinstance(entries, int) or entries < 0:
        raise InvalidInput(f"bad cache size {entries!r}: a whole number of frames, 0 for none")
    _cache_entries = entries
    _recent = functools.lru_cache(maxsize=entries)(_decompress_once)


def decompress(frame: bytes, key: str) -> bytes:
    """The bytes a zstd frame holds. `MissingDictionary` when it names a dictionary this process
    does not know; `CorruptStateError` naming `key` for a frame that does not decode."""
    zstd = _zstandard or _zstd()  # a process whose first contact with zstd is a read
    if _cache_entries and len(frame) <= CACHED_FRAME_BYTES and _small_content(frame):
        try:
            return _recent(frame)
        except (AttributeError, KeyError, IndexError):
            pass  # this thread has no decompressor for it yet, or not a frame: the careful path
        except zstd.ZstdError as exc:
            if dictionary_id(frame) > 0:
                forget(dictionary_id(frame))  # perhaps a damaged copy: the next read fetches it again
            raise CorruptStateError(f"{key}: corrupt zstd frame ({exc}); the value was left as is") from None
    dict_id = dictionary_id(frame) if len(frame) < 6 or frame[4] & 3 else 0  # most frames name none: no parse
    try:
        found = _local.d[dict_id]
    except (AttributeError, KeyError):
        if dict_id < 0 or frame[:4] != ZSTD_MAGIC:
            raise CorruptStateError(f"{key}: a truncated zstd frame; the value was left as is") from None
        if dict_id and dict_id not in _dictionaries:
            raise MissingDictionary(dict_id, key) from None
        found = _decompressor(dict_id)
    try:
        declared = zstd.frame_content_size(frame)
        if declared > MAX_DECODED_BYTES:
            raise CorruptStateError(
                f"{key}: a zstd frame that says it holds {declared:,} bytes, more than any "
                f"record statekit writes ({MAX_DECODED_BYTES:,}); the value was left as is"
            )
        return found.decompress(frame)
    except zstd.ZstdError as exc:
        if dict_id > 0:
            # the dictionary this process holds may be a damaged copy: the next read fetches it again
            forget(dict_id)
        raise CorruptStateError(f"{key}: corrupt zstd frame ({exc}); the value was left as is") from None


def _small_content(frame: bytes) -> bool:
    """Does the frame's header say it holds at most CACHED_DECODED_BYTES? (zstandard is loaded.)"""
    try:
        return 0 <= _zstandard.frame_content_size(frame) <= CACHED_DECODED_BYTES
    except _zstandard.ZstdError:
        return False


def forget(dict_id: int) -> None:
    """Drop this process's copy of dictionary `dict_id` (and this thread's decompressor and
    compressors for it), so that the next record naming it fetches it from Redis again."""
    with _dict_lock:
        _dictionaries.pop(dict_id, None)
    for table in (getattr(_local, "d", None), getattr(_local, "c", None)):
        if table:
            for k in [k for k in table if k == dict_id or (isinstance(k, tuple) and k[1] == dict_id)]:
                del table[k]
    _recent.cache_clear()


# -- the envelope ------------------------------------------------------------------------


def encode(value: Any, what: str = "value") -> bytes:
    """Encode `value` (JSON types, dataclasses, datetimes, numpy) as envelope + orjson bytes.

    Raises `InvalidInput` naming `what` when the value cannot be serialised.
    """
    try:
        return FORMAT_ORJSON + orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise InvalidInput(f"{what} cannot be serialised to JSON: {exc}; nothing was written") from None


def unpack(raw: bytes, key: str) -> bytes:
    """The orjson bytes inside an envelope (decompressed when the record is compressed)."""
    if not raw:
        raise CorruptStateError(f"{key}: empty value where an encoded blob was expected")
    head = raw[:1]
    if head == FORMAT_ORJSON:
        return raw[1:]
    if head == FORMAT_ZSTD:
        return decompress(raw[1:], key)
    raise CorruptStateError(
        f"{key}: unknown encoding byte 0x{raw[0]:02x} (not written by this statekit); the value was left as is"
    )


def decode(raw: bytes, key: str) -> Any:
    """Decode a blob written by `encode` or a `Codec`; raise `CorruptStateError` naming `key`
    otherwise (`MissingDictionary` when its dictionary is not known to this process)."""
    body = unpack(raw, key)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CorruptStateError(f"{key}: corrupt JSON ({exc}); the value was left as is") from None


class Codec:
    """What a store or saver writes: raw envelopes (`compress=False`, `PLAIN`), or zstd at
    `level` for values of at least `min_bytes` that it shrinks, with the namespace's newest
    trained dictionary when `dictionaries` is true (the store looks it up in Redis on its first
    write, then every `refresh_s` seconds: one extra GET then, none in between).

    Every codec reads every format, so a store with `PLAIN` reads compressed records too.
    """

    __slots__ = ("compress", "level", "min_bytes", "dictionaries", "refresh_s")

    def __init__(
        self,
        compress: bool = True,
        level: int = 3,
        min_bytes: int = MIN_BYTES,
        dictionaries: bool = True,
        refresh_s: float = 300.0,
    ) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not -7 <= level <= 22:
            raise InvalidInput(f"bad zstd level {level!r}: an integer from -7 to 22 (3 is zstd's default)")
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
            raise InvalidInput(f"bad min_bytes {min_bytes!r}: a non-negative integer")
        if (
            isinstance(refresh_s, bool)
            or not isinstance(refresh_s, (int, float))
            or not math.isfinite(refresh_s)
            or refresh_s <= 0
        ):
            raise InvalidInput(f"bad refresh_s {refresh_s!r}: seconds, a finite number more than 0")
        if compress:
            _zstd()  # a codec that cannot compress fails now, naming the extra, not at the first write
        self.compress = bool(compress)
        self.level = level
        self.min_bytes = min_bytes
        self.dictionaries = bool(compress and dictionaries)
        self.refresh_s = float(refresh_s)

    def __repr__(self) -> str:
        if not self.compress:
            return "Codec(compress=False)"
        return f"Codec(level={self.level}, min_bytes={self.min_bytes}, dictionaries={self.dictionaries})"

    def frame(self, data: bytes, dictionary: int = 0) -> bytes | None:
        """`data` as a zstd frame (with `dictionary` when not 0), or None when this codec does
        not compress, `data` is under `min_bytes`, or the frame would not be shorter."""
        if not self.compress or len(data) < self.min_bytes:
            return None
        if dictionary and dictionary not in _dictionaries:
            dictionary = 0
        out = _compressor(self.level, dictionary, dictionary != 0 and len(data) <= SMALL_BYTES).compress(data)
        return out if len(out) < len(data) else None

    def pack(self, body: bytes, dictionary: int = 0) -> bytes:
        """The envelope for orjson bytes `body`: compressed when that pays, else raw."""
        out = self.frame(body, dictionary)
        return FORMAT_ORJSON + body if out is None else FORMAT_ZSTD + out

    def encode(self, value: Any, what: str = "value", dictionary: int = 0) -> bytes:
        """`encode(value, what)`, compressed when that pays."""
        try:
            body = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            raise InvalidInput(f"{what} cannot be serialised to JSON: {exc}; nothing was written") from None
        return self.pack(body, dictionary)

    def text(self, text: str, dictionary: int = 0) -> bytes:
        """A summary as stored: UTF-8, or a bare zstd frame when that pays."""
        data = text.encode()
        out = self.frame(data, dictionary)
        return data if out is None else out


#: Writes raw envelopes, reads every format: what a store uses unless given a codec.
PLAIN = Codec(compress=False)


def read_text(raw: bytes, key: str) -> str:
    """A stored summary as text: decompressed when it is a zstd frame, else UTF-8."""
    if raw[:4] == ZSTD_MAGIC:
        raw = decompress(raw, key)
    return raw.decode("utf-8", errors="replace")
