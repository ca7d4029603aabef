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
