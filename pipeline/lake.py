"""Listing an image lake: a local folder, an fsspec URL, or a tar/zip archive of images.

Every file found under the source becomes exactly one :class:`LakeFile`; files that are found but
deliberately not read (hidden, symlinks leaving the source, ...) carry a ``skip_reason``.
Listing order is deterministic (names sorted within each directory).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import operator
import os
import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


class LakeFile(NamedTuple):
    """One file found under the source.

    ``uri`` is what the manifest records; ``path`` is what the source's filesystem opens (``None``
    for archive members, whose bytes travel in ``data``).
    """

    uri: str
    path: str | None = None
    data: bytes | None = None
    skip_reason: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class SourceSpec:
    """Where a lake lives: enough to re-open it in another process (picklable)."""

    url: str
    kind: str  # "local" | "fsspec" | "archive"
    protocol: str = "file"
    root: str = ""
    storage_options: dict = field(default_factory=dict)


class SourceError(ValueError):
    """The lake source cannot be opened."""


def is_archive(url: str) -> bool:
    """True when ``url`` names a tar or zip archive (by suffix)."""
    return url.lower().endswith(ARCHIVE_SUFFIXES)


def resolve_source(src: str, storage_options: dict | None = None) -> SourceSpec:
    """Classify ``src`` (a folder, ``file://``/``s3://``/``gs://`` URL, or archive) and check it exists."""
    if not isinstance(src, str) or not src:
        raise SourceError(f"source must be a non-empty path or URL, got {src!r}")
    storage_options = dict(storage_options or {})
    if "://" in src or src.startswith("data:"):  # a URL: fsspec loads only for one (~45 ms)
        import fsspec

        protocol, path = fsspec.core.split_protocol(src)
    else:
        protocol, path = None, src
    protocol = protocol or "file"
    if protocol in ("file", "local"):
        local = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(local):
            raise SourceError(f"source does not exist: {src!r}")
        if os.path.isdir(local):
            return SourceSpec(url=src, kind="local", protocol="file", root=local)
        if is_archive(local):
            return SourceSpec(url=src, kind="archive", protocol="file", root=local)
        raise SourceError(f"source is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}): {src!r}")
    import fsspec

    try:
        fs = fsspec.filesystem(protocol, **storage_options)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open filesystem for {src!r}: {exc}") from exc
    root = fs._strip_protocol(src)
    if is_archive(root):
        if not fs.exists(root):
            raise SourceError(f"source does not exist: {src!r}")
        return SourceSpec(
            url=src, kind="archive", protocol=protocol, root=root, storage_options=storage_options
        )
    if not fs.isdir(root):
        raise SourceError(f"source is not a folder or archive: {src!r}")
    return SourceSpec(
        url=src, kind="fsspec", protocol=protocol, root=root.rstrip("/"), storage_options=storage_options
    )


#: bytes kept as they are when a name that is not UTF-8 is percent-encoded: printable ASCII but ``%``
_KEPT_BYTES = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def stored_uri(uri: str) -> str:
    """The manifest's lossless form of a URI: unchanged when it is valid UTF-8 (nearly always); else
    (a file name of raw bytes that are not UTF-8, which Python holds as surrogate escapes) its raw
    bytes percent-encoded, ``%`` itself as ``%25`` (``urllib.parse.unquote_to_bytes`` gives them back)."""
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        from urllib.parse import quote_from_bytes

        return quote_from_bytes(uri.encode("utf-8", "surrogateescape"), safe=_KEPT_BYTES)
    return uri


def stored_uris(prefix: str, paths: list[str]) -> list[str]:
    """``stored_uri(prefix + path)`` for each path, checked a list at a time (one encode for a folder)."""
    uris = [prefix + path for path in paths]
    try:
        "".join(uris).encode("utf-8")
    except UnicodeEncodeError:
        return [stored_uri(uri) for uri in uris]
    return uris


def file_uri(path: str) -> str:
    """fsspec URL of an absolute local path (not percent-encoded: ``fsspec.open`` takes it as is),
    in its :func:`stored_uri` form."""
    return stored_uri("file://" + path)


def remote_uri(protocol: str, path: str) -> str:
    return f"{protocol}://{path}"


def archive_base_uri(spec: SourceSpec) -> str:
    return file_uri(spec.root) if spec.protocol == "file" else remote_uri(spec.protocol, spec.root)


def member_uri(spec: SourceSpec, member: str) -> str:
    """fsspec chained URL of an archive member (``tar://m::file:///lake.tar.gz``)."""
    scheme = "zip" if spec.root.lower().endswith(".zip") else "tar"
    return stored_uri(f"{scheme}://{member}::{archive_base_uri(spec)}")


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def iter_lake(spec: SourceSpec) -> Iterator[LakeFile]:
    """Every file under the source, in a deterministic order."""
    if spec.kind == "local":
        for plain, others in _iter_local_chunks(spec.root):
            files = map(LakeFile, stored_uris(_FILE_PREFIX, plain), plain)
            yield from heapq.merge(files, others, key=_BY_URI)  # both sorted by name
    elif spec.kind == "fsspec":
        yield from _iter_fsspec(spec)
    else:
        yield from _iter_archive(spec)


#: Files per chunk of :func:`iter_lake_chunks` for sources listed file by file.
CHUNK_FILES = 1024


def iter_lake_chunks(spec: SourceSpec) -> Iterator[tuple[list[str], list[LakeFile]]]:
    """The files of :func:`iter_lake`, a chunk at a time, as ``(plain_paths, others)``.

    ``plain_paths`` are local regular files reached without a symlink (URI ``file://`` + path,
    no skip reason): the bulk of a local lake, listed with no per-file object. ``others`` holds
    every other file. A local chunk is one folder (each list sorted by name).
    """
    if spec.kind == "local":
        yield from _iter_local_chunks(spec.root)
        return
    files = iter_lake(spec)
    while chunk := list(itertools.islice(files, CHUNK_FILES)):
        yield [], chunk


_BY_NAME = operator.attrgetter("name")
_BY_URI = operator.attrgetter("uri")
_FILE_PREFIX = file_uri("")


def _iter_local_chunks(root: str) -> Iterator[tuple[list[str], list[LakeFile]]]:
    real_root = os.path.realpath(root)
    visited = {real_root}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=_BY_NAME)
        except OSError:
            continue
        plain: list[str] = []
        rest = []
        for entry in entries:  # one pass, no call per name: this loop sees every file of the lake
            name = entry.name
            if entry.is_file(follow_symlinks=False) and name[0] != "." and name != "__MACOSX":
                plain.append(entry.path)
            else:
                rest.append(entry)
        others: list[LakeFile] = []
        subdirs = []
        if rest:
            for entry in rest:
                uri = file_uri(entry.path)
                if _hidden(entry.name):
                    reason = "hidden_directory" if entry.is_dir(follow_symlinks=False) else "hidden"
                    others.append(LakeFile(uri, skip_reason=reason))
                elif entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    inside = target == real_root or target.startswith(real_root + os.sep)
                    if not inside:
                        others.append(LakeFile(uri, skip_reason="symlink_outside_source"))
                        continue
                    try:
                        st = os.stat(target)
                    except OSError as exc:  # a chain of links that comes back to itself: ELOOP
                        loop = exc.errno == errno.ELOOP
                        others.append(LakeFile(uri, skip_reason="symlink_loop" if loop else "broken_symlink"))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if target in visited:
                            others.append(LakeFile(uri, skip_reason="symlink_loop"))
                        else:
                            visited.add(target)
                            subdirs.append(entry.path)
                    elif stat.S_ISREG(st.st_mode):
                        others.append(LakeFile(uri, path=entry.path, size=st.st_size))
                    else:
                        others.append(LakeFile(uri, skip_reason="not_a_regular_file"))
                elif entry.is_dir(follow_symlinks=False):
                    visited.add(os.path.realpath(entry.path))
                    subdirs.append(entry.path)
                else:
                    others.append(LakeFile(uri, skip_reason="not_a_regular_file"))
        if plain or others:
            yield plain, others
        stack.extend(reversed(subdirs))


def _iter_fsspec(spec: SourceSpec) -> Iterator[LakeFile]:
    import fsspec

    fs = fsspec.filesystem(spec.protocol, **spec.storage_options)
    prefix = spec.root.rstrip("/") + "/"
    for folder, dirs, files in fs.walk(spec.root, detail=True):
        folder_rel = folder[len(prefix) :] if folder.startswith(prefix) else ""
        hidden_parent = any(_hidden(part) for part in folder_rel.split("/") if part)
        dirs_sorted = sorted(dirs)
        for name in dirs_sorted:
            if _hidden(name) and not hidden_parent:
                yield LakeFile(
                    remote_uri(spec.protocol, posixpath.join(folder, name)), skip_reason="hidden_directory"
                )
        # prune hidden directories in place so walk does not descend
        for name in list(dirs):
            if _hidden(name):
                del dirs[name]
        if hidden_parent:
            continue
        for name in sorted(files):
            info = files[name]
            path = info.get("name", posixpath.join(folder, name))
            uri = remote_uri(spec.protocol, path)
            if _hidden(name):
                yield LakeFile(uri, skip_reason="hidden")
            elif info.get("type", "file") != "file":
                yield LakeFile(uri, skip_reason="not_a_regular_file")
            else:
                yield LakeFile(uri, path=path, size=info.get("size"))


def _iter_archive(spec: SourceSpec) -> Iterator[LakeFile]:
    import fsspec

    opener = fsspec.open(
        archive_base_uri(spec) if spec.protocol != "file" else spec.root, "rb", **spec.storage_options
    )
    with opener as fileobj:
        if spec.root.lower().endswith(".zip"):
            yield from _iter_zip(spec, fileobj)
        else:
            yield from _iter_tar(spec, fileobj)


def _hidden_member(name: str) -> bool:
    return any(_hidden(part) for part in Path(name).parts)


def _iter_tar(spec: SourceSpec, fileobj) -> Iterator[LakeFile]:
    with tarfile.open(fileobj=fileobj, mode="r|*") as archive:
        for member in archive:
            if member.isdir():
                continue
            uri = member_uri(spec, member.name)
            if _hidden_member(member.name):
                yield LakeFile(uri, skip_reason="hidden")
            elif member.issym() or member.islnk():
                yield LakeFile(
                    uri, skip_reason="symlink_outside_source" if member.issym() else "not_a_regular_file"
                )
            elif not member.isfile():
                yield LakeFile(uri, skip_reason="not_a_regular_file")
            else:
                extracted = archive.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                yield LakeFile(uri, data=data, size=member.size)


def _iter_zip(spec: SourceSpec, fileobj) -> Iterator[LakeFile]:
    with zipfile.ZipFile(fileobj) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            uri = member_uri(spec, info.filename)
            if _hidden_member(info.filename):
                yield LakeFile(uri, skip_reason="hidden")
                continue
            unix_mode = info.external_attr >> 16
            if unix_mode and stat.S_ISLNK(unix_mode):
                yield LakeFile(uri, skip_reason="symlink_outside_source")
                continue
            yield LakeFile(uri, data=archive.read(info), size=info.file_size)
