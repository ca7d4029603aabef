"""A small synthetic image lake for the embedded default run (no download, no shared data).

Four "vehicle-like" classes of coloured shapes on noisy backgrounds, at mixed sizes and formats,
plus a few files the ingest must reject or skip, so a first run shows every outcome.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEMO_CLASSES: tuple[str, ...] = ("box_truck", "round_car", "tri_plane", "bar_ship")


def _draw(cls: int, rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(40, 215, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    im = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    c, r = size / 2 + rng.normal(0, size / 12, 2), size * rng.uniform(0.2, 0.35)
    box = (c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    if cls == 0:
        draw.rectangle(box, fill=colour)
    elif cls == 1:
        draw.ellipse(box, fill=colour)
    elif cls == 2:
        draw.polygon([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], fill=colour)
    else:
        for k in range(3):
            y = c[1] - r + k * r
            draw.rectangle((c[0] - r, y, c[0] + r, y + r / 3), fill=colour)
    return im


def make_demo_lake(folder: str | Path, per_class: int = 150, seed: int = 0) -> Path:
    """Write the demo lake under ``folder`` (idempotent: an existing lake is left as is)."""
    folder = Path(folder)
    marker = folder / ".demo-complete"
    if marker.exists() and demo_truth_csv(folder).exists():
        return folder
    truth_rows = []
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(per_class):
        for cls in range(len(DEMO_CLASSES)):
            im = _draw(cls, rng, int(rng.choice([32, 48, 64])))
            fmt = "PNG" if n % 7 == 0 else "JPEG"
            out = io.BytesIO()
            im.save(out, fmt, quality=92) if fmt == "JPEG" else im.save(out, fmt)
            cam = folder / f"camera-{n % 3}" / f"{i:04d}"
            cam.parent.mkdir(parents=True, exist_ok=True)
            path = Path(f"{cam}-{n:05d}.{fmt.lower()}")
            path.write_bytes(out.getvalue())
            truth_rows.append((path.relative_to(folder).as_posix(), cls, DEMO_CLASSES[cls]))
            n += 1
    bad = folder / "camera-0"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_bytes(b"not an image\n")
    first = sorted(bad.glob("*.jpeg"))[0]
    (bad / "copy-of-first.jpeg").write_bytes(first.read_bytes())
    lines = ["path,label,label_name"] + [f"{p},{c},{name}" for p, c, name in truth_rows]
    demo_truth_csv(folder).write_text("\n".join(lines) + "\n")
    seeds = [row for i, row in enumerate(truth_rows) if i < 5 * len(DEMO_CLASSES)]  # 5 per class
    demo_seed_csv(folder).write_text(
        "\n".join(["path,label,label_name"] + [f"{p},{c},{name}" for p, c, name in seeds]) + "\n"
    )
    marker.write_text("ok\n")
    return folder


def demo_truth_csv(folder: str | Path) -> Path:
    """Ground truth of the demo lake (next to it, not inside: it is not an image)."""
    return Path(folder).parent / "demo-truth.csv"


def demo_seed_csv(folder: str | Path) -> Path:
    """Five labeled images per demo class, for semi-supervised runs and cluster naming."""
    return Path(folder).parent / "demo-seed.csv"
