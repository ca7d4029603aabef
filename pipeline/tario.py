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
_PADDING = [bytes(n) for n in range(BLOCK)]  # zeros that round a member's data up to a block


def _member(
    name: bytes, name_fill: bytes, name_sum: int, data: bytes, mtime_field: bytes, fixed_sum: int
) -> tuple:
    """The pieces of one regular-file member: header, ``data``, zero padding to 512 bytes.

    ``name_fill`` ends the 100-byte name field (any suffix, then zeros) and holds mode/uid/gid;
    ``name_sum`` is the byte sum of ``name`` and that suffix; ``fixed_sum`` that of every other
    constant header byte, the mtime field included.
    """
    size = len(data)
    size_field = b"%011o\0" % size
    return (
        name,
        name_fill,
        size_field,
        mtime_field,
        b"%06o\0 " % (fixed_sum + name_sum + sum(size_field)),
        _TAIL,
        data,
        _PADDING[(-size) % BLOCK],
    )


def tar_member(name: str, data: bytes, mtime: int = 0) -> bytes:
    """Encode one regular-file member (header, data, zero padding to 512 bytes).

    ``name`` must be ASCII and at most 100 bytes (shard keys are 32 hex chars plus an extension).
    """
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name too long (>100 bytes): {name!r}")
    mtime_field = b"%011o\0" % mtime
    fill = bytes(100 - len(encoded)) + _MODE_UID_GID
    return b"".join(_member(encoded, fill, sum(encoded), data, mtime_field, _FIXED_SUM + sum(mtime_field)))


class SampleEncoder:
    """Encodes a WebDataset sample (``<key>.jpg`` + ``<key>.json``) as two tar members at once.

    The constant parts of both headers (the name suffix and fill, mode, owner, magic, the mtime
    field) are prepared once, so a sample costs two small formatting calls and one join.
    """

    def __init__(self, mtime: int = 0):
        self._mtime = b"%011o\0" % mtime
        self._fixed_sum = _FIXED_SUM + sum(self._mtime)

    def encode(self, key: str, jpeg: bytes, meta: bytes) -> bytes:
        """Both members of one sample; ``key`` is ASCII without a dot (32 hex chars in shards)."""
        name = key.encode("ascii")
        n = len(name)
        if n > 95:
            raise ValueError(f"tar member name too long (>100 bytes): {key!r}.json")
        key_sum = sum(name)
        return b"".join(
            (
                *_member(name, _JPG_FILLS[n], key_sum + _JPG_SUM, jpeg, self._mtime, self._fixed_sum),
                *_member(name, _JSON_FILLS[n], key_sum + _JSON_SUM, meta, self._mtime, self._fixed_sum),
            )
        )


# ".jpg" / ".json", the name field's zero fill and mode/uid/gid, for each key length.
_JPG_FILLS = [b".jpg" + bytes(96 - n) + _MODE_UID_GID for n in range(96)]
_JSON_FILLS = [b".json" + bytes(95 - n) + _MODE_UID_GID for n in range(96)]
_JPG_SUM, _JSON_SUM = sum(b".jpg"), sum(b".json")
