"""Minimal, fast tar member encoding (POSIX ustar), for writing WebDataset shards.

``tarfile`` builds headers in pure Python at ~10 µs a member; shards hold millions of tiny
members, so workers pre-encode ``header + data + padding`` and the writer only appends bytes.
"""

from __future__ import annotations

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)

# Fixed header fields (offsets 100..124 and 156..512): mode, uid, gid / type, magic, owner names.
_MODE_UID_GID = b"0000644\0" + b"0000000\0" + b"0000000\0"
_TAIL = bytearray(BLOCK - 156)
_TAIL[0:1] = b"0"
_TAIL[257 - 156 : 265 - 156] = b"ustar\x0000"
_TAIL[265 - 156 : 269 - 156] = b"root"
_TAIL[297 - 156 : 301 - 156] = b"root"
_TAIL = bytes(_TAIL)
_FIXED_SUM = sum(_MODE_UID_GID) + sum(_TAIL) + 8 * 0x20  # checksum field counts as spaces


def tar_member(name: str, data: bytes, mtime: int = 0) -> bytes:
    """Encode one regular-file member (header, data, zero padding to 512 bytes).

    ``name`` must be ASCII and at most 100 bytes (shard keys are 32 hex chars plus an extension).
    """
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name too long (>100 bytes): {name!r}")
    size = len(data)
    size_mtime = b"%011o\0%011o\0" % (size, mtime)
    checksum = _FIXED_SUM + sum(encoded) + sum(size_mtime)
    return b"".join(
        (
            encoded,
            b"\0" * (100 - len(encoded)),
            _MODE_UID_GID,
            size_mtime,
            b"%06o\0 " % checksum,
            _TAIL,
            data,
            b"\0" * ((-size) % BLOCK),
        )
    )


class SampleEncoder:
    """Encodes a WebDataset sample (``<key>.jpg`` + ``<key>.json``) as two tar members at once.

    The fixed parts of both headers (mode, owner, magic, the mtime field) are prepared once, so a
    sample costs two small formatting calls and one join.
    """

    def __init__(self, mtime: int = 0):
        self._mtime = b"%011o\0" % mtime
        self._fixed_sum = _FIXED_SUM + sum(self._mtime)

    def encode(self, key: str, jpeg: bytes, meta: bytes) -> bytes:
        """Both members of one sample; ``key`` is ASCII without a dot (32 hex chars in shards)."""
        name = key.encode("ascii")
        if len(name) > 95:
            raise ValueError(f"tar member name too long (>100 bytes): {key!r}.json")
        jpg_size, json_size = len(jpeg), len(meta)
        jpg_size_field = b"%011o\0" % jpg_size
        json_size_field = b"%011o\0" % json_size
        base = self._fixed_sum + sum(name)
        return b"".join(
            (
                name,
                _JPG_SUFFIXES[len(name)],
                jpg_size_field,
                self._mtime,
                b"%06o\0 " % (base + _JPG_SUM + sum(jpg_size_field)),
                _TAIL,
                jpeg,
                _PADDING[(-jpg_size) % BLOCK],
                name,
                _JSON_SUFFIXES[len(name)],
                json_size_field,
                self._mtime,
                b"%06o\0 " % (base + _JSON_SUM + sum(json_size_field)),
                _TAIL,
                meta,
                _PADDING[(-json_size) % BLOCK],
            )
        )


# ".jpg" / ".json", the name field's zero fill and mode/uid/gid, for each key length.
_JPG_SUFFIXES = [b".jpg" + bytes(96 - n) + _MODE_UID_GID for n in range(96)]
_JSON_SUFFIXES = [b".json" + bytes(95 - n) + _MODE_UID_GID for n in range(96)]
_JPG_SUM, _JSON_SUM = sum(b".jpg"), sum(b".json")
_PADDING = [bytes(n) for n in range(BLOCK)]
