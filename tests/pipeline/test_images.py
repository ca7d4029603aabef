from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lakelabel.pipeline.images import check_image
from tests.lakes import bomb_png, exif_rotated_jpeg, rng_image

LIMIT = 89_478_485


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_plain_rgb_jpeg_keeps_original_bytes():
    out = io.BytesIO()
    Image.fromarray(rng_image(1)).save(out, "JPEG")
    check = check_image(out.getvalue(), max_pixels=LIMIT)
    assert check.reason is None and not check.reencoded
    assert check.data == out.getvalue()
    assert (check.width, check.height) == (24, 16)


def test_exif_orientation_applied_and_reencoded():
    check = check_image(exif_rotated_jpeg(), max_pixels=LIMIT)
    assert check.reason is None and check.reencoded
    assert (check.original_width, check.original_height) == (40, 20)
    im = _decode(check.data)
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (20, 40)


def test_rgba_composited_onto_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 2] = 255
    rgba[:, :4, 3] = 0
    rgba[:, 4:, 3] = 255
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    arr = np.asarray(_decode(check_image(out.getvalue(), max_pixels=LIMIT).data)).astype(int)
    assert (arr[:, :3] > 240).all()  # transparent half → white
    assert arr[:, 6, 2].min() > 200 and arr[:, 6, 0].max() < 40  # opaque half stays blue


def test_16_bit_scaled_not_clipped():
    gray16 = np.full((8, 8), 32768, dtype=np.uint16)
    out = io.BytesIO()
    Image.fromarray(gray16).save(out, "PNG")
    arr = np.asarray(_decode(check_image(out.getvalue(), max_pixels=LIMIT).data)).astype(int)
    assert abs(arr.mean() - 128) < 3  # 32768/65535 of full scale, not clipped to 255


def test_cmyk_converted_to_rgb():
    out = io.BytesIO()
    Image.fromarray(rng_image(2)).convert("CMYK").save(out, "JPEG")
    check = check_image(out.getvalue(), max_pixels=LIMIT)
    assert check.reason is None and check.mode == "CMYK" and _decode(check.data).mode == "RGB"


def test_max_side_resizes_keeping_aspect():
    out = io.BytesIO()
    Image.fromarray(rng_image(3, (200, 100))).save(out, "JPEG")
    check = check_image(out.getvalue(), max_pixels=LIMIT, max_side=50)
    assert check.reencoded and _decode(check.data).size == (50, 25)


def test_rejections_name_the_reason():
    out = io.BytesIO()
    Image.fromarray(rng_image(4, (64, 64))).save(out, "JPEG")
    jpeg = out.getvalue()
    assert check_image(b"", max_pixels=LIMIT).reason == "empty"
    assert check_image(b"hello world" * 10, max_pixels=LIMIT).reason == "not_an_image"
    assert check_image(jpeg[: len(jpeg) // 2], max_pixels=LIMIT).reason == "truncated"
    assert check_image(bomb_png(), max_pixels=LIMIT).reason == "decompression_bomb"
    assert check_image(jpeg, max_pixels=64 * 64 - 1).reason == "decompression_bomb"
    ppm = b"P6 4 4 255\n" + bytes(48)
    assert check_image(ppm, max_pixels=LIMIT).reason == "unsupported_format"


def test_scaled_validation_accepts_exactly_what_a_full_decode_accepts():
    """The fast path validates at 1/8 scale; damaged files must fare as under a full strict decode."""
    import random

    import simplejpeg

    from lakelabel.pipeline.images import check_plain_jpeg

    rng = random.Random(0)
    verdicts = {True: 0, False: 0}
    for seed in range(20):
        out = io.BytesIO()
        Image.fromarray(rng_image(seed, (48, 40))).save(out, "JPEG", quality=80, progressive=seed % 2 == 1)
        raw = out.getvalue()
        assert check_plain_jpeg(raw, LIMIT, None) == (48, 40)
        for variant in range(30):
            damaged = bytearray(raw)
            if variant % 3 == 0:
                damaged = damaged[: rng.randrange(2, len(raw))]
            elif variant % 3 == 1:
                i = rng.randrange(len(raw) // 3, len(raw))
                damaged[i] ^= 1 << rng.randrange(8)
            else:
                i = rng.randrange(len(raw) // 3, len(raw))
                damaged[i : i + 8] = bytes(len(damaged[i : i + 8]))
            damaged = bytes(damaged)
            try:
                simplejpeg.decode_jpeg(damaged, strict=True)
                full_ok = True
            except ValueError:
                full_ok = False
            assert isinstance(check_plain_jpeg(damaged, LIMIT, None), tuple) == full_ok
            verdicts[full_ok] += 1
    assert verdicts[True] > 50 and verdicts[False] > 200  # both outcomes were exercised
