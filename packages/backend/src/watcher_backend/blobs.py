"""Content-addressed file content: verified by SHA-256, zstd-compressed, stored once.

``prepare_blob`` (hash + compress) is pure CPU and can run outside the writer thread;
``insert_blob`` is the cheap database part.
"""

from __future__ import annotations

import hashlib
import threading
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import zstandard
from sqlalchemy import Connection, and_, func, literal_column, select

from watcher_common.timeutil import now_us

from .db.models import BLOB_KEY_CHARS
from .db.tables import BLOBS
from .db.upsert import insert_ignore

# Level 1, not 3: on source files (~7.5 KiB) it compresses 1.6x faster (35 vs 57 µs)
# for 3.5% more bytes (ratio 2.78 vs 2.88); decompression reads any level.
ZSTD_LEVEL = 1
# Below this, zstd's frame overhead makes compression pointless.
MIN_COMPRESS = 64
# Up to this size, contents are compressed with the shipped source-code dictionary
# (scripts/train_zstd_dict.py): a small frame then reuses the dictionary's entropy tables
# instead of building its own, ~30 % less CPU at 1 KiB (bench b: 7.7 -> 3.3 µs per
# event) for the same or a slightly better ratio. Larger files gain nothing from it.
DICT_MAX = 8 * 1024
# codec -> dictionary file. A shipped dictionary never changes (stored blobs need its
# exact bytes); a better one is added under a new codec name.
DICTS = {"zstd-d1": "source-1.zdict"}
DICT_CODEC = "zstd-d1"
_DICT_DIR = Path(__file__).parent / "dicts"

_local = threading.local()


class BlobHashMismatch(ValueError):
    """The bytes do not hash to the sha256 they were sent under."""


# A msgspec Struct: built once per ingested event, and its C __init__ costs ~0.3 µs where
# a slots dataclass's Python __init__ cost ~0.8 (a frozen one ~0.85 more). Not frozen:
# ``store.prepare_events`` compresses after building it.
class PreparedBlob(msgspec.Struct, gc=False):
    sha256: str
    size: int
    codec: str  # "zstd" | "zstd-d1" | "raw"
    data: bytes


@cache
def _dictionary(codec: str) -> zstandard.ZstdCompressionDict:
    d = zstandard.ZstdCompressionDict((_DICT_DIR / DICTS[codec]).read_bytes())
    d.precompute_compress(level=ZSTD_LEVEL)  # digested once, shared by every thread
    return d


def compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor for contents larger than ``DICT_MAX`` (codec zstd)."""
    # ZstdCompressor objects are not thread-safe: one per thread.
    comp: zstandard.ZstdCompressor | None = getattr(_local, "comp", None)
    if comp is None:
        comp = _local.comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return comp


def dict_compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor for contents up to ``DICT_MAX`` (codec ``DICT_CODEC``)."""
    comp: zstandard.ZstdCompressor | None = getattr(_local, "dcomp", None)
    if comp is None:
        comp = _local.dcomp = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, dict_data=_dictionary(DICT_CODEC)
        )
    return comp


def dict_compress_many(datas: list[bytes]) -> list[bytes]:
    """``dict_compressor().compress(d)`` for each of ``datas``, in one call.

    The same frames, but the C library is entered once per request instead of once per
    content: ``compress`` releases the GIL on every call, and on the backend's one core
    each release let the writer thread take the GIL and the event loop wait for it back
    (py-spy: 11 % of the backend's samples on the event loop's compress line, vs ~3 %
    of its instructions).
    """
    comp = dict_compressor()
    many = getattr(comp, "multi_compress_to_buffer", None)  # python-zstandard's C backend
    if many is None or len(datas) < 2:
        return [comp.compress(d) for d in datas]
    return [seg.tobytes() for seg in many(datas, threads=0)]


def pack_small_blobs(blobs: list[PreparedBlob]) -> None:
    """:func:`pack_blob` for raw blobs of ``MIN_COMPRESS`` to ``DICT_MAX`` bytes, in place
    and in one zstd call: each stays raw unless the dictionary makes it smaller."""
    for blob, packed in zip(blobs, dict_compress_many([b.data for b in blobs]), strict=True):
        if len(packed) < blob.size:
            blob.codec = DICT_CODEC
            blob.data = packed


def _decompressor(codec: str) -> zstandard.ZstdDecompressor:
    decs: dict[str, zstandard.ZstdDecompressor] | None = getattr(_local, "decs", None)
    if decs is None:
        decs = _local.decs = {}
    dec = decs.get(codec)
    if dec is None:
        if codec == "zstd":
            dec = zstandard.ZstdDecompressor()
        elif codec in DICTS:
            dec = zstandard.ZstdDecompressor(dict_data=_dictionary(codec))
        else:
            raise ValueError(f"unknown blob codec {codec!r}")
        decs[codec] = dec
    return dec


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_blob(sha256: str, data: bytes) -> PreparedBlob:
    """Verify ``data`` hashes to ``sha256`` and compress it (raw when that does not help)."""
    if sha256_hex(data) != sha256:
        raise BlobHashMismatch("content does not match its sha256")
    return pack_blob(sha256, data)


def pack_blob(sha256: str, data: bytes) -> PreparedBlob:
    """Compress ``data`` already verified to hash to ``sha256`` (raw when that does not help)."""
    n = len(data)
    if n >= MIN_COMPRESS:
        small = n <= DICT_MAX
        packed = (dict_compressor() if small else compressor()).compress(data)
        if len(packed) < n:
            return PreparedBlob(sha256, n, DICT_CODEC if small else "zstd", packed)
    return PreparedBlob(sha256, n, "raw", bytes(data))


_ONE: Any = literal_column("1")
_KEY: Any = literal_column(str(BLOB_KEY_CHARS))
_REST: Any = literal_column(str(BLOB_KEY_CHARS + 1))


def is_blob(table_sha256: Any, sha256: Any) -> Any:
    """``table_sha256 = sha256`` in a form that ``ix_blobs_sha_prefix`` serves (BlobRow).

    Prefix and rest are compared separately: with a plain ``sha256 = ?`` next to it,
    SQLite propagates the constant into ``substr(sha256, ...)`` and no longer sees the
    indexed expression (a table scan); the index also needs the literal 1 and 16.
    """
    if isinstance(sha256, str):
        head: Any = sha256[:BLOB_KEY_CHARS]
        tail: Any = sha256[BLOB_KEY_CHARS:]
    else:
        head = func.substr(sha256, _ONE, _KEY)
        tail = func.substr(sha256, _REST)
    return and_(
        func.substr(table_sha256, _ONE, _KEY) == head, func.substr(table_sha256, _REST) == tail
    )


def insert_blob(conn: Connection, blob: PreparedBlob) -> bool:
    """Store a prepared blob; False when that sha256 was already stored (dedupe)."""
    row = {
        "sha256": blob.sha256,
        "size": blob.size,
        "stored_size": len(blob.data),
        "codec": blob.codec,
        "data": blob.data,
        "created_us": now_us(),
    }
    if conn.dialect.name == "postgresql":  # concurrent writers: the unique index decides
        return insert_ignore(conn, BLOBS, row, ("sha256",))
    # SQLite: the caller is the one writer (BEGIN IMMEDIATE), so look, then insert
    if blob_exists(conn, blob.sha256):
        return False
    conn.execute(BLOBS.insert(), row)
    return True


def blob_exists(conn: Connection, sha256: str) -> bool:
    found = conn.execute(select(BLOBS.c.id).where(is_blob(BLOBS.c.sha256, sha256)).limit(1))
    return found.first() is not None


def decode_blob(codec: str, data: bytes, size: int) -> bytes:
    if codec == "raw":
        return bytes(data)
    return _decompressor(codec).decompress(data, max_output_size=size)


def load_blob(conn: Connection, sha256: str) -> bytes | None:
    row = conn.execute(
        select(BLOBS.c.codec, BLOBS.c.data, BLOBS.c.size)
        .where(is_blob(BLOBS.c.sha256, sha256))
        .limit(1)
    ).first()
    if row is None:
        return None
    return decode_blob(row.codec, row.data, row.size)
