"""Up-front checks of what a stage reads and where it writes, so that a missing input or an output
path under a file fails in a second with one message naming it, not after the stage's work."""

from __future__ import annotations

from pathlib import Path

from lakelabel.data_specs.layout import Layout


def output_folder(path: str | Path, what: str) -> Path:
    """``path`` as a folder a stage may write into: one already, or one that can be made (nothing on
    its way is a file). Raises :class:`NotADirectoryError` naming ``what`` and the file in the way."""
    path = Path(path).expanduser()
    for step in (path, *path.parents):
        if step.exists():
            if not step.is_dir():
                where = "is a file" if step == path else f"lies under the file {str(step)!r}"
                raise NotADirectoryError(f"{what} must be a folder, but {str(path)!r} {where}")
            break
    return path


def output_url(url: str, what: str) -> str:
    """:func:`output_folder` for a local path or ``file://`` URL; other URLs (s3://…) pass as they are."""
    if "://" not in url or url.startswith("file://"):
        output_folder(url.removeprefix("file://"), what)
    return url


def input_file(path: str | Path, what: str) -> Path:
    """``path`` as a file a stage reads, or :class:`FileNotFoundError` naming ``what``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    return path


def manifest_of(root: str | Path) -> Path:
    """ROOT's manifest folder, or :class:`FileNotFoundError` when no ingest committed a part there."""
    folder = Layout(root).manifest
    if not any(folder.glob("part-*.parquet")):
        raise FileNotFoundError(
            f"no ingest manifest under {str(folder)!r}; run `lakelabel ingest SRC --out ROOT`"
        )
    return folder
