"""Generated test lakes: every bad case the ingest must survive, built from scratch."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(array: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width × height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rng_image(seed: int, size: tuple[int, int] = (24, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def exif_rotated_jpeg() -> bytes:
    """40 wide × 20 high stored, EXIF orientation 6 (display rotated 90° clockwise: 20 × 40)."""
    im = Image.fromarray(rng_image(7, (40, 20)))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    im.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


#: relative path → (expected status, expected reason or None)
EXPECTED: dict[str, tuple[str, str | None]] = {}


def make_bad_lake(root: Path, outside: Path) -> dict[str, tuple[str, str | None]]:
    """Write the bad-case lake under ``root`` (and a file under ``outside`` for the symlink).

    Returns relative path → (status, reason) that the manifest must show.
    """
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    expected: dict[str, tuple[str, str | None]] = {}

    good = _jpeg(rng_image(1))
    files["good/plain.jpg"] = good
    expected["good/plain.jpg"] = ("sharded", None)
    files["good/copy_of_plain.jpeg"] = good  # exact duplicate
    expected["good/copy_of_plain.jpeg"] = ("duplicate", None)
    files["good/no_extension"] = _jpeg(rng_image(2))  # detected by content
    expected["good/no_extension"] = ("sharded", None)
    files["good/png_named.jpg"] = _png(Image.fromarray(rng_image(3)))  # wrong extension, valid PNG
    expected["good/png_named.jpg"] = ("sharded", None)
    files["formats/palette.gif"] = (
        lambda b: (Image.fromarray(rng_image(4)).convert("P").save(b, "GIF"), b.getvalue())[1]
    )(io.BytesIO())
    expected["formats/palette.gif"] = ("sharded", None)
    files["formats/pic.bmp"] = (lambda b: (Image.fromarray(rng_image(5)).save(b, "BMP"), b.getvalue())[1])(
        io.BytesIO()
    )
    expected["formats/pic.bmp"] = ("sharded", None)
    files["formats/pic.webp"] = (lambda b: (Image.fromarray(rng_image(6)).save(b, "WEBP"), b.getvalue())[1])(
        io.BytesIO()
    )
    expected["formats/pic.webp"] = ("sharded", None)
    files["formats/pic.tiff"] = (lambda b: (Image.fromarray(rng_image(8)).save(b, "TIFF"), b.getvalue())[1])(
        io.BytesIO()
    )
    expected["formats/pic.tiff"] = ("sharded", None)
    files["modes/cmyk.jpg"] = (
        lambda b: (Image.fromarray(rng_image(9)).convert("CMYK").save(b, "JPEG"), b.getvalue())[1]
    )(io.BytesIO())
    expected["modes/cmyk.jpg"] = ("sharded", None)
    gray16 = (np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 170).astype(np.uint16)
    files["modes/gray16.png"] = _png(Image.fromarray(gray16))
    expected["modes/gray16.png"] = ("sharded", None)
    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :12, 3] = 0  # left half fully transparent → white
    rgba[:, 12:, 3] = 255
    files["modes/rgba.png"] = _png(Image.fromarray(rgba, mode="RGBA"))
    expected["modes/rgba.png"] = ("sharded", None)
    files["modes/exif_rotated.jpg"] = exif_rotated_jpeg()
    expected["modes/exif_rotated.jpg"] = ("sharded", None)
    files["names/ünïcødé 图像 with space.png"] = _png(Image.fromarray(rng_image(10)))
    expected["names/ünïcødé 图像 with space.png"] = ("sharded", None)
    files["names/dots.in.the.name.v2.jpg"] = _jpeg(rng_image(11))
    expected["names/dots.in.the.name.v2.jpg"] = ("sharded", None)

    big = _jpeg(rng_image(12, (64, 64)))
    files["bad/truncated.jpg"] = big[: len(big) // 2]
    expected["bad/truncated.jpg"] = ("rejected", "truncated")
    files["bad/zero.jpg"] = b""
    expected["bad/zero.jpg"] = ("rejected", "empty")
    files["bad/text.jpg"] = b"this is not an image, just text pretending to be one\n" * 4
    expected["bad/text.jpg"] = ("rejected", "not_an_image")
    files["bad/bomb.png"] = bomb_png()
    expected["bad/bomb.png"] = ("rejected", "decompression_bomb")
    files["bad/random.bin"] = np.random.default_rng(0).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    expected["bad/random.bin"] = ("rejected", "not_an_image")
    files[".hidden.jpg"] = _jpeg(rng_image(13))
    expected[".hidden.jpg"] = ("skipped", "hidden")

    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    (outside / "secret.jpg").write_bytes(_jpeg(rng_image(14)))
    os.symlink(outside / "secret.jpg", root / "good" / "link_outside.jpg")
    expected["good/link_outside.jpg"] = ("skipped", "symlink_outside_source")
    os.symlink(root / "good" / "plain.jpg", root / "good" / "link_inside.jpg")
    expected["good/link_inside.jpg"] = ("duplicate", None)
    return expected


def make_plain_lake(root: Path, count: int, start: int = 0, size: tuple[int, int] = (16, 16)) -> list[Path]:
    """``count`` distinct small JPEGs in folders of 100."""
    paths = []
    for i in range(start, start + count):
        path = root / f"part-{i // 100:03d}" / f"img-{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(rng_image(100_000 + i, size)))
        paths.append(path)
    return paths
